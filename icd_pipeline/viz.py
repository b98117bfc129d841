"""Figures: loss curves, and the two pieces every stage's figures share (``pyplot``,
``save_png``). Matplotlib with the Agg backend, imported lazily so that importing this module
stays cheap."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .misc.io import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, dpi: int = 100) -> None:
    """Lay out ``fig``, write it as a PNG atomically and close it."""
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def plot_loss_curves(csv_path: str | Path, png_path: str | Path, columns: Sequence[str],
                     x_column: str = "epoch", title: str | None = None) -> None:
    """Plot ``columns`` of a per-epoch metrics CSV against ``x_column`` (one panel per
    column, so that losses of different scales stay readable); written atomically."""
    plt = pyplot()
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = [c for c in columns if rows and c in rows[0]]
    if not cols:
        raise ValueError(f"{csv_path}: none of the columns {list(columns)} found")
    xs = [float(r[x_column]) for r in rows]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 2.8), squeeze=False)
    for ax, col in zip(axes[0], cols):
        ax.plot(xs, [float(r[col]) for r in rows], marker="o", markersize=3)
        ax.set_title(col)
        ax.set_xlabel(x_column)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_png(fig, png_path)
