"""Figures as PNG files (matplotlib, no screen needed).

:func:`write_map_plots` draws the pictures users expect of a ``CrystalMap``:
per phase an IPF map beside orix's colour key, a phase map with a legend, and
the confidence (NCC) maps with colour bars.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ipf_rgb", "pattern_grid", "pyplot", "write_map_plots"]

_log = logging.getLogger(__name__)

#: Colour of points not indexed, in every map.
NOT_INDEXED_RGB = (0.0, 0.0, 0.0)
#: Colour of points of the other phases in a phase's IPF map.
OTHER_PHASE_RGB = (0.6, 0.6, 0.6)

_SAMPLE_DIRECTIONS = ("x", "y", "z")
# A map drawn thinner than this (a line scan) is stretched to it, or it vanishes.
_MIN_MAP_INCHES = 0.6
_MAP_INCHES = 5.0
_KEY_INCHES = 2.4
_UNITS = {"um": "µm"}


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
    from ebsdnet.rotations import orix_point_group

    q = np.asarray(quaternions, dtype=np.float64)
    return _ipf_colours(q, orix_point_group(point_group), direction).reshape(*shape, 3)


def _ipf_colours(quaternions: np.ndarray, symmetry, direction: str) -> np.ndarray:
    """orix's TSL IPF colours ``(N, 3)`` of quaternions ``(N, 4)``, crystal ``symmetry``."""
    from orix.plot import IPFColorKeyTSL
    from orix.quaternion import Orientation

    if len(quaternions) == 0:
        return np.zeros((0, 3))
    key = IPFColorKeyTSL(symmetry, direction=_sample_direction(direction))
    return key.orientation2color(Orientation(quaternions, symmetry=symmetry))


def _sample_direction(direction: str):
    from orix.vector import Vector3d

    if direction not in _SAMPLE_DIRECTIONS:
        raise ValueError(
            f"sample direction must be one of {', '.join(_SAMPLE_DIRECTIONS)}, not {direction!r}"
        )
    return Vector3d([[1.0 * (d == direction) for d in _SAMPLE_DIRECTIONS]])


def write_map_plots(xmap, folder: str | Path, direction: str = "z") -> list[Path]:
    """Save PNG pictures of an indexed map: IPF maps, phase map, NCC maps.

    Files written into ``folder`` (created if need be):

    - ``ipf_<direction>_<phase>.png`` for each phase of ``xmap.phases``: the
      inverse-pole-figure colours of that phase's points along the sample
      ``direction`` (orix's TSL key, drawn beside the map); points of other
      phases are grey, points not indexed black. ``<phase>`` is the phase name
      with characters other than letters, digits, ``.``, ``-`` and ``_``
      replaced by ``_`` (``phase<id>`` if that leaves nothing; ``_<id>`` is
      appended where two names would give one file).
    - ``phase_map.png``: one colour per phase (not indexed: black), with a legend
      giving each phase's share of the points in %.
    - ``ncc_map.png``: property ``ncc`` (the normalised cross-correlation of each
      pattern with its simulation) with a colour bar; left out if the map has
      no such property.
    - ``phase_margin.png``: property ``phase_margin`` (NCC of the best phase
      minus the runner-up) with a colour bar; only if the map has it.

    Maps are drawn at their true aspect (steps ``dx``, ``dy``) with a scale
    bar in the map's scan unit, row 0 (smallest ``y``) at the top. A line scan
    is stretched across so it remains visible.

    Parameters
    ----------
    xmap : orix.crystal_map.CrystalMap
        A map as :func:`ebsdnet.indexing.index` returns it: phase ids ≥ 0 with
        a point group each, -1 for points not indexed.
    folder
        Folder for the PNG files.
    direction
        Sample direction of the IPF maps: ``"x"``, ``"y"`` or ``"z"``.

    Returns
    -------
    list of pathlib.Path
        The files written, in the order above.

    Raises
    ------
    TypeError
        If ``xmap`` is not an orix ``CrystalMap``.
    ValueError
        If ``direction`` is not one of x, y, z, the map is empty, or a phase has
        no point group (its IPF colours are undefined).

    Examples
    --------
    >>> import tempfile
    >>> from orix.crystal_map import CrystalMap, Phase, PhaseList
    >>> from orix.quaternion import Rotation
    >>> yy, xx = np.mgrid[0:3, 0:4]
    >>> xmap = CrystalMap(
    ...     Rotation.identity(12),
    ...     phase_id=np.array([0] * 11 + [-1]),
    ...     x=xx.ravel() * 1.5,
    ...     y=yy.ravel() * 1.5,
    ...     phase_list=PhaseList(Phase(name="Ni", space_group=225)),
    ...     prop={"ncc": np.linspace(0.1, 0.6, 12)},
    ... )
    >>> paths = write_map_plots(xmap, tempfile.mkdtemp())
    >>> [p.name for p in paths]
    ['ipf_z_Ni.png', 'phase_map.png', 'ncc_map.png']
    """
    from orix.crystal_map import CrystalMap

    if not isinstance(xmap, CrystalMap):
        raise TypeError(f"expected an orix CrystalMap, got {type(xmap).__name__}")
    _sample_direction(direction)
    if xmap.size == 0:
        raise ValueError("the map has no points to draw")
    phases = _indexed_phases(xmap)
    for phase_id, phase in phases.items():
        if phase.point_group is None:
            raise ValueError(
                f"phase {phase_id} ({phase.name!r}) has no point group, so no IPF colours; "
                "give it a space group or point group"
            )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _write_map_plots(xmap, phases, folder, direction)


def _write_map_plots(xmap, phases: dict, folder: Path, direction: str) -> list[Path]:
    names = _file_safe_names(phases)
    paths = [
        _save(_ipf_figure(xmap, i, direction)[0], folder / f"ipf_{direction}_{names[i]}.png")
        for i in phases
    ]
    paths.append(_save(_phase_figure(xmap)[0], folder / "phase_map.png"))
    for prop, name in (("ncc", "ncc_map.png"), ("phase_margin", "phase_margin.png")):
        if prop in xmap.prop:
            paths.append(_save(_property_figure(xmap, prop)[0], folder / name))
        else:
            _log.info("map has no property %r: no %s", prop, name)
    _log.info("wrote %d map pictures to %s", len(paths), folder)
    return paths


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=fig.dpi)
    pyplot().close(fig)
    return path


def _indexed_phases(xmap) -> dict:
    """``{phase id: Phase}`` of the map's phases, not-indexed (-1) left out."""
    return {int(i): p for i, p in xmap.phases if int(i) >= 0}


def _file_safe_names(phases: dict) -> dict[int, str]:
    """Phase names usable in file names, unique among the phases."""
    safe = {
        i: re.sub(r"[^A-Za-z0-9._-]+", "_", p.name or "").strip("._") or f"phase{i}"
        for i, p in phases.items()
    }
    taken = list(safe.values())
    return {i: s if taken.count(s) == 1 else f"{s}_{i}" for i, s in safe.items()}


@dataclass(frozen=True)
class _Grid:
    """Where each point of a map lies in a ``(rows, cols)`` image, and the steps."""

    rows: int
    cols: int
    row: np.ndarray  # (N,)
    col: np.ndarray  # (N,)
    dx: float
    dy: float
    x0: float
    y0: float
    unit: str

    def image(self, values: np.ndarray, fill) -> np.ndarray:
        """Values ``(N, ...)`` placed on the grid; places no point covers get ``fill``."""
        values = np.asarray(values)
        out = np.empty((self.rows, self.cols, *values.shape[1:]), dtype=values.dtype)
        out[...] = fill
        out[self.row, self.col] = values
        return out

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``imshow`` extent: pixel edges in scan units, ``y`` growing downwards."""
        left, top = self.x0 - self.dx / 2, self.y0 - self.dy / 2
        return left, left + self.cols * self.dx, top + self.rows * self.dy, top


def _axis_positions(v: np.ndarray) -> tuple[np.ndarray, int, float | None]:
    """Index of each coordinate among the distinct ones, their number, the step."""
    span = float(np.ptp(v))
    if span == 0:
        return np.zeros(len(v), dtype=int), 1, None
    # Coordinates read from files carry rounding: equal to 1e-6 of the span is equal.
    key = np.round((v - v.min()) / span, 6)
    distinct, index = np.unique(key, return_inverse=True)
    return index.ravel(), len(distinct), float(np.median(np.diff(distinct))) * span


def _map_grid(xmap) -> _Grid:
    """The map's grid; orix keeps no ``x`` or ``y`` along an axis of one point."""
    x = np.zeros(xmap.size) if xmap.x is None else np.asarray(xmap.x, dtype=float)
    y = np.zeros(xmap.size) if xmap.y is None else np.asarray(xmap.y, dtype=float)
    col, cols, dx = _axis_positions(x)
    row, rows, dy = _axis_positions(y)
    dx = dx or dy or 1.0
    dy = dy or dx
    return _Grid(rows, cols, row, col, dx, dy, float(x.min()), float(y.min()), xmap.scan_unit)


def _ipf_map_rgb(xmap, phase_id: int, direction: str = "z") -> np.ndarray:
    """IPF colours ``(rows, cols, 3)`` of one phase's points; others grey, not indexed black."""
    grid = _map_grid(xmap)
    ids = np.asarray(xmap.phase_id)
    rgb = np.empty((xmap.size, 3))
    rgb[:] = OTHER_PHASE_RGB
    rgb[ids < 0] = NOT_INDEXED_RGB
    mine = ids == phase_id
    q = xmap.rotations.data.reshape(xmap.size, -1, 4)[:, 0]  # best of several per point
    rgb[mine] = _ipf_colours(q[mine], xmap.phases[phase_id].point_group, direction)
    return grid.image(rgb, 1.0)


def _phase_colours(xmap) -> dict[int, tuple[float, float, float]]:
    """A colour per phase id (-1: black): orix's phase colours unless two coincide."""
    from matplotlib import colormaps

    phases = _indexed_phases(xmap)
    colours = {i: tuple(p.color_rgb) for i, p in phases.items()}
    # orix gives every Phase made on its own "tab:blue": fall back to a palette (not
    # matplotlib's TABLEAU_COLORS, which importing orix fills with all CSS colours).
    if len(set(colours.values()) | {NOT_INDEXED_RGB}) < len(colours) + 1:
        palette = colormaps["tab10"].colors + colormaps["tab20"].colors[1::2]
        colours = {i: tuple(palette[k % len(palette)]) for k, i in enumerate(phases)}
    return {-1: NOT_INDEXED_RGB, **colours}


def _map_inches(grid: _Grid) -> tuple[float, float]:
    """Width and height of a map on the page: true aspect, unless too thin to see."""
    width, height = grid.cols * grid.dx, grid.rows * grid.dy
    scale = _MAP_INCHES / max(width, height)
    return max(width * scale, _MIN_MAP_INCHES), max(height * scale, _MIN_MAP_INCHES)


def _figure(grid: _Grid, side_inches: float, key_panel: bool = False):
    """A figure sized for the map and ``side_inches`` beside it (legend, colour bar, key);
    returns it, the map axes and, with ``key_panel``, the grid cell for the key."""
    plt = pyplot()
    map_w, map_h = _map_inches(grid)
    # Enough dots for one per map pixel, within reason.
    dpi = float(np.clip(max(grid.cols / map_w, grid.rows / map_h), 100, 300))
    fig_w = max(map_w + side_inches + 0.5, 4.0)
    fig_h = max(map_h, _KEY_INCHES if key_panel else 0.0) + 1.0
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi, layout="constrained")
    if key_panel:
        cells = fig.add_gridspec(1, 2, width_ratios=(map_w, side_inches))
        return fig, fig.add_subplot(cells[0]), cells[1]
    return fig, fig.add_subplot(), None


def _show_map(ax, grid: _Grid, image: np.ndarray, **imshow_kwargs):
    """Draw a map image in scan units, with a scale bar below it."""
    im = ax.imshow(
        image, extent=grid.extent, interpolation="nearest", aspect="auto", **imshow_kwargs
    )
    map_w, map_h = _map_inches(grid)
    ax.set_box_aspect(map_h / map_w)
    ax.set_xticks([])
    ax.set_yticks([])
    if grid.cols > 1:  # a bar a fraction of one pixel wide says nothing
        _add_scale_bar(ax, grid)
    return im


def _add_scale_bar(ax, grid: _Grid) -> None:
    """A bar of a round length, about a fifth of the map's width, under its right end."""
    from matplotlib.transforms import blended_transform_factory, offset_copy

    width = grid.cols * grid.dx
    magnitude = 10 ** np.floor(np.log10(width / 5))
    length = max(m for m in (1, 2, 5, 10) if m * magnitude <= max(width / 5, magnitude))
    length *= magnitude
    right = grid.extent[1]
    data_x = blended_transform_factory(ax.transData, ax.transAxes)
    fig = ax.figure
    bar = offset_copy(data_x, fig=fig, y=-6, units="points")
    ax.plot(
        [right - length, right],
        [0, 0],
        transform=bar,
        color="black",
        lw=3,
        solid_capstyle="butt",
        clip_on=False,
    )
    label = offset_copy(data_x, fig=fig, y=-10, units="points")
    ax.text(
        right - length / 2,
        0,
        f"{length:g} {_UNITS.get(grid.unit, grid.unit)}",
        transform=label,
        ha="center",
        va="top",
        fontsize=8,
    )


def _percent(ids: np.ndarray, phase_id: int) -> float:
    return 100.0 * float(np.mean(ids == phase_id))


def _ipf_figure(xmap, phase_id: int, direction: str = "z"):
    """One phase's IPF map beside orix's colour key; returns the figure and map axes."""
    from orix.plot import IPFColorKeyTSL  # importing orix.plot registers "ipf" axes

    grid = _map_grid(xmap)
    phase = xmap.phases[phase_id]
    fig, ax, side = _figure(grid, _KEY_INCHES, key_panel=True)
    _show_map(ax, grid, _ipf_map_rgb(xmap, phase_id, direction))
    key = IPFColorKeyTSL(phase.point_group, direction=_sample_direction(direction))
    key_ax = fig.add_subplot(
        side, projection="ipf", symmetry=key.symmetry, direction=key.direction
    )
    key_ax.plot_ipf_color_key(show_title=False)
    key_ax.set_title(f"IPF-{direction.upper()} key, {key.symmetry.name}", fontsize=9, pad=24)
    ids = np.asarray(xmap.phase_id)
    fig.suptitle(
        f"IPF-{direction.upper()}: {phase.name} ({phase.point_group.name}), "
        f"{_percent(ids, phase_id):.1f} % of points",
        fontsize=10,
    )
    return fig, ax


def _phase_figure(xmap):
    """Phase map with a legend of each phase's share; returns the figure and map axes."""
    from matplotlib.patches import Patch

    grid = _map_grid(xmap)
    ids = np.asarray(xmap.phase_id)
    colours = _phase_colours(xmap)
    table = np.array([colours.get(i, NOT_INDEXED_RGB) for i in range(-1, ids.max() + 1)])
    rgb = table[ids + 1]
    fig, ax, _ = _figure(grid, 1.8)
    _show_map(ax, grid, grid.image(rgb, 1.0))
    names = {i: p.name for i, p in _indexed_phases(xmap).items()} | {-1: "not indexed"}
    handles = [
        Patch(
            facecolor=colours[i], edgecolor="0.3", label=f"{names[i]} ({_percent(ids, i):.1f} %)"
        )
        for i in names
    ]
    fig.legend(handles=handles, loc="outside right center", frameon=False, fontsize=9)
    fig.suptitle(f"Phases, {xmap.size:,} points", fontsize=10)
    return fig, ax


_PROPERTY_LABELS = {
    "ncc": ("NCC", "Confidence: NCC of pattern and simulation", "gray"),
    "phase_margin": ("NCC margin", "Phase margin: NCC of best − runner-up phase", "viridis"),
}


def _property_figure(xmap, prop: str):
    """A map of a scalar property with a colour bar; returns the figure and map axes."""
    grid = _map_grid(xmap)
    label, title, cmap = _PROPERTY_LABELS.get(prop, (prop, prop, "viridis"))
    values = np.asarray(xmap.prop[prop], dtype=float).reshape(xmap.size, -1)[:, 0]
    finite = values[np.isfinite(values)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    image = np.ma.masked_invalid(grid.image(values, np.nan))
    fig, ax, _ = _figure(grid, 1.2)
    im = _show_map(ax, grid, image, cmap=cmap, vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax, label=label, shrink=0.9)
    fig.suptitle(f"{title}; median {np.median(finite):.3f}" if finite.size else title, fontsize=10)
    return fig, ax
