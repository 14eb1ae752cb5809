"""One colour and marker per curve, distinct for up to 20 curves (tab20's ten strong colours first, then their
light partners; a marker cycle of 12 on top), so that curves of one plot are told apart in print and by
colour-blind readers."""

from __future__ import annotations

import matplotlib.pyplot as plt

MARKERS = "osD^v<>pPX*h"


def curve_style(index: int) -> dict:
    """Matplotlib keyword arguments for the index-th curve of a plot."""
    colour = plt.get_cmap("tab20")((2 * index) % 20 + (index // 10) % 2)
    return {"color": colour, "marker": MARKERS[index % len(MARKERS)], "markersize": 4, "linewidth": 1.2}
