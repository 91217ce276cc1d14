"""Interactive explorers (ipywidgets) of the inter-image branch; each also draws a static figure.

`notebooks/04_explore.ipynb` shows all three on one InterCLR run; `tests/test_browser.py` drives
them in JupyterLab. Their public name is `interlab.explore`.
"""

from interlab.lab.explore.clusters import ClusterExplorer
from interlab.lab.explore.margin import MarginExplorer, margin_curves
from interlab.lab.explore.negatives import NegativeExplorer
from interlab.lab.explore.session import explore_run

__all__ = ["ClusterExplorer", "MarginExplorer", "NegativeExplorer", "explore_run", "margin_curves"]
