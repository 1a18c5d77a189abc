"""Pattern files in, one kikuchipy ``EBSD`` signal out.

:func:`load_scan` reads whatever kikuchipy reads, and otherwise whatever
HyperSpy reads as a stack of 2D patterns (``.hspy``, ``.zspy``, TIFF stacks...),
lazily where the reader can. A scan size puts flat ``(N, H, W)`` stacks on their
grid and lets a NORDIF ``.dat`` be read without its ``Setting.txt``. Files that
HyperSpy reads hold no detector: their pattern centre must then be given
(``--pc``), as :func:`~ebsdnet.indexing.index` says when it is missing.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np

__all__ = ["ScanReadError", "load_scan"]

log = logging.getLogger(__name__)


class ScanReadError(ValueError):
    """A file that cannot be read as one map of EBSD patterns; the message is one line."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _nordif_without_settings(path: Path, scan_size: tuple[int, int]) -> dict:
    """kikuchipy's NORDIF reader needs the scan and pattern size that ``Setting.txt``
    would give: the scan from ``scan_size``, the (square) patterns from the file size."""
    rows, cols = scan_size
    size = path.stat().st_size  # one byte per pixel
    side = math.isqrt(size // (rows * cols))
    if side * side * rows * cols != size:
        raise ScanReadError(
            f"{path.name} ({size:,} bytes) is not {rows}×{cols} square 8-bit patterns; "
            "check --scan-size, or put the scan's Setting.txt beside it"
        )
    return {"scan_size": (cols, rows), "pattern_size": (side, side)}


def _read(reader, path: Path, **kwargs):
    """``reader(path, lazy=True, **kwargs)`` with the readers' warnings logged, not printed
    (kikuchipy warns of every NORDIF file without its background image), and HyperSpy's
    own log (to stdout, in colour) silenced: a file it cannot read ends in one line."""
    loggers = [logging.getLogger(name) for name in ("hyperspy", "rsciio")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            for logger in loggers:
                logger.setLevel(logging.CRITICAL + 1)
            signal = reader(str(path), lazy=True, **kwargs)
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
    for w in caught:
        log.info("%s: %s", path.name, _first_line(w.message))
    return signal


def _hyperspy_reads(path: Path) -> bool:
    """Whether one of HyperSpy's readers (RosettaSciIO) takes files of this extension;
    others it would hand to an image library, which reads any file as something."""
    from rsciio import IO_PLUGINS

    extension = path.suffix[1:].lower()
    return any(extension in (e.lower() for e in p["file_extensions"]) for p in IO_PLUGINS)


def _one_pattern_stack(signal, path: Path):
    """The one signal of 2D patterns among what HyperSpy read."""
    signals = signal if isinstance(signal, list) else [signal]
    stacks = [s for s in signals if s.axes_manager.signal_dimension == 2]
    if len(stacks) != 1:
        raise ScanReadError(
            f"{path.name} holds {len(stacks)} stacks of 2D patterns (of {len(signals)} "
            "signals): expected one"
        )
    return stacks[0]


def _as_ebsd(signal):
    """A HyperSpy signal of 2D patterns as a kikuchipy ``EBSD``/``LazyEBSD``, with the
    static background that kikuchipy keeps in the original metadata of files it saved."""
    signal.set_signal_type("EBSD")  # registered by kikuchipy: the class changes in place
    background = signal.original_metadata.get_item("static_background")
    if background is not None and np.shape(background) == signal.data.shape[-2:]:
        signal.static_background = np.asarray(background)
    return signal


def _on_grid(signal, scan_size: tuple[int, int]):
    """``signal``'s patterns on a ``rows × cols`` grid, row by row."""
    import kikuchipy as kp

    rows, cols = scan_size
    n = signal.axes_manager.navigation_size or 1
    if n != rows * cols:
        raise ScanReadError(
            f"the file holds {n:,} patterns, not --scan-size {rows}×{cols} = {rows * cols:,}"
        )
    if signal.axes_manager.navigation_shape[::-1] == (rows, cols):
        return signal
    data = signal.data.reshape((rows, cols, *signal.data.shape[-2:]))
    cls = kp.signals.LazyEBSD if hasattr(data, "compute") else kp.signals.EBSD
    # A flat stack's one step has no meaning on the grid: steps of one, in pixels.
    grid = cls(data, detector=signal.detector, static_background=signal.static_background)
    for axis in grid.axes_manager.navigation_axes:
        axis.units = "px"
    return grid


def load_scan(path: str | Path, scan_size: tuple[int, int] | None = None):
    """Read a file of EBSD patterns as one kikuchipy ``EBSD`` signal (lazy where possible).

    kikuchipy's readers come first (h5ebsd, NORDIF, EDAX, Oxford, EMsoft...):
    they keep the file's detector, pattern centres and static background. A file
    they refuse is read by HyperSpy, as a stack of 2D patterns, and made an
    ``EBSD`` signal; it then has kikuchipy's default detector (pattern centre
    given separately) and the static background kept in its original metadata,
    if any (files kikuchipy saved keep it there).

    Parameters
    ----------
    path
        The pattern file.
    scan_size
        ``(rows, cols)`` of the map. Needed for a NORDIF ``.dat`` without its
        ``Setting.txt`` beside it (patterns are then square, their size from the
        file's); puts a flat ``(N, H, W)`` stack (or a map stored with another
        grid) on this grid, row by row.

    Returns
    -------
    kikuchipy.signals.EBSD or kikuchipy.signals.LazyEBSD

    Raises
    ------
    ScanReadError
        No reader takes the file; it holds no single stack of 2D patterns; the
        scan size does not fit it, or a NORDIF file needs one.

    Examples
    --------
    >>> import kikuchipy as kp, tempfile, os
    >>> folder = tempfile.mkdtemp()
    >>> flat = kp.signals.EBSD(kp.data.nickel_ebsd_small().data.reshape(9, 60, 60))
    >>> flat.save(os.path.join(folder, "flat.hspy"))
    >>> load_scan(os.path.join(folder, "flat.hspy"), scan_size=(3, 3)).data.shape
    (3, 3, 60, 60)
    """
    import hyperspy.api as hs
    import kikuchipy as kp

    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"{path} does not exist")
    if scan_size is not None:
        scan_size = tuple(int(v) for v in scan_size)
        if len(scan_size) != 2 or min(scan_size) < 1:
            raise ScanReadError(f"the scan size must be two positive numbers, not {scan_size}")
    kwargs = {}
    if path.suffix.lower() == ".dat" and not (path.parent / "Setting.txt").is_file():
        if scan_size is None:
            raise ScanReadError(
                f"{path.name} is NORDIF without a Setting.txt beside it: give --scan-size "
                "ROWS COLS"
            )
        kwargs = _nordif_without_settings(path, scan_size)
    try:
        signal = _read(kp.load, path, **kwargs)
    except Exception as kp_error:  # readers raise many types for files they cannot read
        if kwargs or not _hyperspy_reads(path):
            raise ScanReadError(f"kikuchipy: {_first_line(kp_error)}") from kp_error
        try:
            signal = _as_ebsd(_one_pattern_stack(_read(hs.load, path), path))
        except ScanReadError:
            raise
        except Exception as hs_error:
            raise ScanReadError(
                f"kikuchipy: {_first_line(kp_error)}; HyperSpy: {_first_line(hs_error)}"
            ) from hs_error
    if isinstance(signal, list) or not hasattr(signal, "detector"):
        raise ScanReadError(f"{path.name} holds no single EBSD map")
    if signal.axes_manager.signal_dimension != 2 or signal.axes_manager.navigation_dimension > 2:
        raise ScanReadError(
            f"{path.name} holds data of shape {signal.data.shape}, not a map of 2D patterns"
        )
    if scan_size is not None:
        signal = _on_grid(signal, scan_size)
    return signal
