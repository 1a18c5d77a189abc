"""Error and similarity statistics."""

from __future__ import annotations

from torch import Tensor

__all__ = ["normalised_cross_correlation"]


def normalised_cross_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Per-pattern NCC of ``(B, ...)`` and ``(B, ...)`` in float64, ``(B,)``.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(3, 8, 8)
    >>> normalised_cross_correlation(x, 2 * x + 1).round(decimals=6).tolist()
    [1.0, 1.0, 1.0]
    """
    a = a.reshape(a.shape[0], -1).double()
    b = b.reshape(b.shape[0], -1).double()
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
