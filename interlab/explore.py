"""`interlab.explore`, the explorers' public name (they live in `interlab.lab.explore`)."""

from interlab.lab.explore import (
    ClusterExplorer,
    MarginExplorer,
    NegativeExplorer,
    explore_run,
    margin_curves,
)

__all__ = ["ClusterExplorer", "MarginExplorer", "NegativeExplorer", "explore_run", "margin_curves"]
