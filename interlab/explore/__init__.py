"""Interactive explorers (ipywidgets) of the inter-image branch; each also draws a static figure.

Work in progress (issue 6): `MarginExplorer` and `NegativeExplorer` are here; the cluster
(UMAP) explorer, `notebooks/04_explore.ipynb` and the browser test are not written yet.
"""

from interlab.explore.margin import MarginExplorer, margin_curves
from interlab.explore.negatives import NegativeExplorer

__all__ = ["MarginExplorer", "NegativeExplorer", "margin_curves"]
