"""Solutions of the exercises of lesson views (filled in by `solutions=True`)."""
