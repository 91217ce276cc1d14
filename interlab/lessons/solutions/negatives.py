"""Solutions of the exercises of lesson negatives (filled in by `solutions=True`)."""
