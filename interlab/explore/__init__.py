"""Interactive explorers (ipywidgets) of the inter-image branch; each also draws a static figure.

Work in progress (issue 6): `MarginExplorer` is here; the cluster and negative explorers,
`notebooks/04_explore.ipynb` and the browser test are not written yet.
"""

from interlab.explore.margin import MarginExplorer, margin_curves

__all__ = ["MarginExplorer", "margin_curves"]
