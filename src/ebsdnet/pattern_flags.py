"""Why a pattern of a map is not indexed: the map's property ``flag``.

====  ==================================================================
flag  meaning
====  ==================================================================
0     indexed
1     a NaN or infinite pixel
2     blank: every pixel the same value (all zero, constant, a wholly
      white frame)
3     saturated: at least half of its pixels at its highest value
4     final NCC below ``min_ncc``
5     indexed, but its phase is uncertain: several phases were given and
      the runner-up's NCC is within ``AMBIGUOUS_MARGIN`` of the best
      (:mod:`ebsdnet.indexing`); the point keeps its best phase
====  ==================================================================

1–3 are judged on the raw pattern before anything else: such patterns are
neither indexed nor counted in any whole-map statistic (the scan's mean
pattern), so that their neighbours are indexed as without them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FLAG_AMBIGUOUS_PHASE",
    "FLAG_BLANK",
    "FLAG_INDEXED",
    "FLAG_LOW_NCC",
    "FLAG_MEANINGS",
    "FLAG_NON_FINITE",
    "FLAG_SATURATED",
    "NOT_INDEXED_FLAGS",
    "as_tensor",
    "not_indexed_summary",
    "pattern_flags",
    "usable_mean",
]

FLAG_INDEXED = 0
FLAG_NON_FINITE = 1
FLAG_BLANK = 2
FLAG_SATURATED = 3
FLAG_LOW_NCC = 4
FLAG_AMBIGUOUS_PHASE = 5
#: Flags of points that carry no orientation (phase -1).
NOT_INDEXED_FLAGS = (1, 2, 3, 4)
FLAG_MEANINGS = {
    FLAG_INDEXED: "indexed",
    FLAG_NON_FINITE: "NaN/inf",
    FLAG_BLANK: "blank/constant",
    FLAG_SATURATED: "saturated",
    FLAG_LOW_NCC: "NCC below min_ncc",
    FLAG_AMBIGUOUS_PHASE: "phase uncertain",
}
#: Share of a pattern's pixels at its highest value from which it counts as clipped
#: (flag 3) rather than indexed: such a pattern has lost most of its bands.
SATURATED_SHARE = 0.5
SATURATED_STRIDE = 7  # prime to detector widths (60, 80, 120...): it samples every column
#: Pixels read at a time for the scan's mean pattern (32 MB of float64 sums).
MEAN_BLOCK_PIXELS = 2**22


def as_tensor(raw: np.ndarray) -> Tensor:
    """Raw patterns as a tensor, sharing ``raw``'s memory where torch can (not
    unsigned types above 8 bits: torch lacks most operations on them)."""
    raw = np.asarray(raw)
    if raw.dtype.kind == "u" and raw.dtype.itemsize > 1:
        raw = raw.astype(np.int32 if raw.dtype.itemsize == 2 else np.int64)
    return torch.from_numpy(raw)


def pattern_flags(raw: Tensor) -> Tensor:
    """Why raw patterns ``(B, H, W)`` carry no orientation: ``FLAG_*``, else 0; int8 ``(B,)``.

    Examples
    --------
    >>> raw = torch.rand(4, 60, 60)
    >>> raw[1, 5, 5], raw[2], raw[3, :40] = float("nan"), 0.0, 1.0
    >>> pattern_flags(raw).tolist()
    [0, 1, 2, 3]
    """
    flat = raw.flatten(1)
    low, high = flat.aminmax(dim=1)  # NaN propagates: a NaN anywhere makes both NaN
    flags = torch.zeros(len(flat), dtype=torch.int8)
    # The share at the highest value from every SATURATED_STRIDE-th pixel: counting all
    # pixels made the check 63 ms per 1,600 patterns of 60×60 (uint8, one core), this 12.
    sample = flat[:, ::SATURATED_STRIDE]
    at_high = (sample == high[:, None]).sum(1)
    flags[at_high >= SATURATED_SHARE * sample.shape[1]] = FLAG_SATURATED
    flags[high - low < 1e-6] = FLAG_BLANK
    if raw.is_floating_point():  # integer patterns hold no NaN or infinity
        flags[~(torch.isfinite(low) & torch.isfinite(high))] = FLAG_NON_FINITE
    return flags


def usable_mean(data, n: int) -> tuple[np.ndarray | None, int]:
    """Mean of the patterns ``data`` ``(n, H, W)`` (NumPy or dask) that carry an image
    (flag 0), and their number (``None, 0`` when none does): the scan's mean pattern
    serves as the static background of all, and one NaN or blank frame must not spoil it."""
    block = max(1, MEAN_BLOCK_PIXELS // int(np.prod(data.shape[1:])))
    total, count = None, 0
    for start in range(0, n, block):
        part = data[start : start + block]
        raw = as_tensor(part.compute() if hasattr(part, "compute") else part)
        usable = pattern_flags(raw) == FLAG_INDEXED
        summed = raw[usable].sum(0, dtype=torch.float64)
        total = summed if total is None else total + summed
        count += int(usable.sum())
    if count == 0:
        return None, 0
    return (total / count).numpy().astype(np.float32), count


_LIKELY_CAUSES = {
    FLAG_NON_FINITE: "a damaged file or a failed conversion?",
    FLAG_BLANK: "beam off, an area off the sample, or a file shorter than its scan?",
    FLAG_SATURATED: "exposure or gain too high?",
    FLAG_LOW_NCC: "wrong phase, pattern centre or detector tilt?",
}


def not_indexed_summary(flag: np.ndarray, min_ncc: float) -> str | None:
    """Why most of a map is not indexed, in one line; ``None`` when at least half is indexed.

    Parameters
    ----------
    flag
        The map's property ``flag`` from :func:`~ebsdnet.indexing.index`.
    min_ncc
        The threshold the map was indexed with (quoted in the text).

    Examples
    --------
    >>> not_indexed_summary(np.array([2, 2, 4]), 0.1).split(":")[0]
    '3 of 3 patterns not indexed'
    >>> not_indexed_summary(np.array([0, 0, 2]), 0.1) is None
    True
    """
    flag = np.asarray(flag)
    missing = int(np.isin(flag, NOT_INDEXED_FLAGS).sum())
    if 2 * missing <= flag.size:
        return None
    counts = {f: int((flag == f).sum()) for f in _LIKELY_CAUSES}
    main = max(counts, key=counts.get)
    reasons = ", ".join(f"{k:,} {FLAG_MEANINGS[f]}" for f, k in counts.items() if k)
    if counts[FLAG_LOW_NCC]:
        reasons += f" {min_ncc:g}"
    return f"{missing:,} of {flag.size:,} patterns not indexed: {reasons} ({_LIKELY_CAUSES[main]})"
