"""Solutions of the exercises of lesson first_model (filled in by `solutions=True`)."""
