"""Solutions of the exercises of lesson margins (filled in by `solutions=True`)."""
