"""Figures as PNG files (matplotlib, no screen needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["ipf_rgb", "pattern_grid", "pyplot"]


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pattern_grid(
    rows: Sequence[np.ndarray],
    path: str | Path,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Save patterns as a grid PNG: ``rows`` is a list of ``(n, H, W)`` arrays."""
    plt = pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.6 * n_cols + 0.8, 1.6 * n_rows + 0.4), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                # Percentile limits: one hot pixel must not grey out the bands.
                lo, hi = np.percentile(row[j], (0.5, 99.5))
                ax.imshow(row[j], cmap="gray", vmin=lo, vmax=hi)
            else:
                ax.axis("off")
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ipf_rgb(quaternions, point_group: str, shape: tuple[int, ...], direction: str = "z"):
    """IPF colours ``(*shape, 3)`` of quaternions ``(N, 4)`` along sample ``direction``."""
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation
    from orix.vector import Vector3d

    from ebsdnet.rotations import orix_point_group

    sym = orix_point_group(point_group)
    vec = {"x": Vector3d.xvector(), "y": Vector3d.yvector(), "z": Vector3d.zvector()}[direction]
    ori = Orientation(np.asarray(quaternions, dtype=np.float64), symmetry=sym)
    return IPFColorKeyTSL(sym, direction=vec).orientation2color(ori).reshape(*shape, 3)
