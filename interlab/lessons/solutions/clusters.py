"""Solutions of the exercises of lesson clusters (filled in by `solutions=True`)."""
