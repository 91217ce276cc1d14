"""Solutions of the exercises of lesson beyond (filled in by `solutions=True`)."""
