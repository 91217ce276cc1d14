"""Interactive explorers (ipywidgets) of the inter-image branch; each also draws a static figure.

Work in progress (issue 6): the three explorers are here; `notebooks/04_explore.ipynb` and
the browser test are not written yet.
"""

from interlab.explore.clusters import ClusterExplorer
from interlab.explore.margin import MarginExplorer, margin_curves
from interlab.explore.negatives import NegativeExplorer

__all__ = ["ClusterExplorer", "MarginExplorer", "NegativeExplorer", "margin_curves"]
