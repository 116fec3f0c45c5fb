"""One look for every figure, and how figures are saved (PNG for pages, PDF for papers).

Figures are built as `matplotlib.figure.Figure` objects, not through pyplot, so making them
changes no global backend: it works headless and leaves a notebook's backend alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
from matplotlib.figure import Figure

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3",
           "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
RC = {
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
    "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.6, "lines.linewidth": 1.5, "lines.markersize": 4,
    "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
    "pdf.fonttype": 42,  # TrueType fonts: editable text in PDFs
}
PANEL_INCHES = (3.6, 2.6)


@contextmanager
def styled():
    """Apply the house style while building and saving a figure."""
    with mpl.rc_context(RC):
        yield


def figure(nrows: int = 1, ncols: int = 1, *, sharex: bool = False):
    """A new Figure with a grid of panels, sized per panel; returns (fig, flat list of axes)."""
    fig = Figure(figsize=(PANEL_INCHES[0] * ncols, PANEL_INCHES[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False)
    return fig, list(axes.flat)


def colors(labels) -> dict[str, str]:
    """A stable colour per label (sorted), so a policy keeps its colour across figures."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(sorted(set(labels)))}


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write `name.png` and `name.pdf` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with styled():
        fig.savefig(paths[0], dpi=150)
        fig.set_layout_engine("none")  # keep the layout just computed; don't redo it for the PDF
        fig.savefig(paths[1])
    return paths
