"""Error and similarity statistics."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["error_summary", "normalised_cross_correlation", "unit_patterns"]


def unit_patterns(x: Tensor) -> Tensor:
    """Flatten ``(B, ...)`` patterns to zero-mean unit vectors ``(B, P)``.

    The NCC of two patterns is the dot product of their unit vectors.
    """
    x = x.reshape(x.shape[0], -1)
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def normalised_cross_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-pattern NCC of ``(B, ...)`` and ``(B, ...)`` in float64, ``(B,)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(3, 8, 8)
    >>> normalised_cross_correlation(x, 2 * x + 1).round(decimals=6).tolist()
    [1.0, 1.0, 1.0]
    """
    return (unit_patterns(a.double()) * unit_patterns(b.double())).sum(-1)


def error_summary(disorientation_deg: Tensor) -> dict[str, float]:
    """Mean, median, 90th percentile (degrees), shares above 3°, 5° and 10°.

    Examples
    --------
    >>> import torch
    >>> error_summary(torch.tensor([0.5, 1.0, 20.0]))["share_above_10"]
    0.3333333432674408
    """
    d = disorientation_deg.detach().float().cpu()
    return {
        "n": int(d.numel()),
        "mean": float(d.mean()),
        "median": float(d.median()),
        "p90": float(torch.quantile(d, 0.9)),
        "share_above_3": float((d > 3).float().mean()),
        "share_above_5": float((d > 5).float().mean()),
        "share_above_10": float((d > 10).float().mean()),
    }
