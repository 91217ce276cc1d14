"""interlab: inter-image contrastive self-supervised learning, notebook-first."""

__version__ = "0.1.0"
