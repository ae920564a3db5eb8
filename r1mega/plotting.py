"""The one way r1mega draws a chart: matplotlib without a display, the figure laid out and saved
under a temporary name, then renamed, so a failed draw never leaves half a PNG."""
from __future__ import annotations

import contextlib
import os


@contextlib.contextmanager
def saved_figure(png: str, size: tuple[float, float]):
    """`with saved_figure("out.png", (8, 4)) as ax: ax.plot(...)` -> out.png (dpi 110)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        tmp = png + ".tmp.png"
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
