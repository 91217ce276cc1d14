"""What every explorer does with its figures: redraw one live output, or show a static copy."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def redraw(output: Any, draw: Callable[[], Figure]) -> None:
    """Replace the contents of an ipywidgets Output with a freshly drawn figure."""
    from IPython.display import display

    with output:
        output.clear_output(wait=True)
        fig = draw()
        display(fig)
        plt.close(fig)


def show_with_static(widget: Any, figures: Iterable[Callable[[], Figure]]) -> None:
    """The live widget, then static copies: an executed notebook has no live widgets."""
    from IPython.display import display

    display(widget)
    for draw in figures:
        fig = draw()
        display(fig)
        plt.close(fig)
