"""Interactive explorers (ipywidgets) of the inter-image branch; each also draws a static figure.

`notebooks/04_explore.ipynb` shows all three on one InterCLR run. Still to come (issue 6): the
end-to-end browser test in JupyterLab.
"""

from interlab.explore.clusters import ClusterExplorer
from interlab.explore.margin import MarginExplorer, margin_curves
from interlab.explore.negatives import NegativeExplorer

__all__ = ["ClusterExplorer", "MarginExplorer", "NegativeExplorer", "margin_curves"]
