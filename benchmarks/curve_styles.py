"""One colour and marker per curve, distinct for up to 20 curves (tab20's colours, a marker cycle coprime to
them), so that curves of one plot are told apart in print and by colour-blind readers."""

from __future__ import annotations

import matplotlib.pyplot as plt

MARKERS = "osD^v<>pPX*h"


def curve_style(index: int) -> dict:
    """Matplotlib keyword arguments for the index-th curve of a plot."""
    return {"color": plt.get_cmap("tab20")(index % 20), "marker": MARKERS[index % len(MARKERS)], "markersize": 4,
            "linewidth": 1.2}
