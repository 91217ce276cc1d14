"""Solutions of the exercises of lesson infonce (filled in by `solutions=True`)."""
