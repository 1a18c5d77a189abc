"""Training losses: the 2016 periodic Euler loss and symmetry-aware geodesic losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ebsdnet.rotations import (
    matrix_to_quaternion,
    misorientation_angle,
    quaternion_to_euler,
    reduce_to_fundamental_zone,
    sixd_to_matrix,
)

__all__ = [
    "compute_loss",
    "periodic_euler_loss",
    "symmetric_geodesic",
    "symmetric_multi_hypothesis_loss",
]


def periodic_euler_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The 2016 study's ``mean(arccos(cos(y - ŷ)))``, in radians.

    Written as the absolute wrapped difference ``|atan2(sin Δ, cos Δ)|``, the
    same value without arccos's infinite slope at zero.

    Examples
    --------
    >>> import math
    >>> float(periodic_euler_loss(torch.tensor([0.0]), torch.tensor([2 * math.pi - 0.01])))
    0.01...
    """
    delta = pred - target
    return torch.atan2(torch.sin(delta), torch.cos(delta)).abs().mean()


def symmetric_geodesic(q_pred: Tensor, q_true: Tensor, operators: Tensor) -> Tensor:
    """Geodesic angle (radians) to the nearest symmetry-equivalent of the truth, ``(...,)``."""
    return misorientation_angle(q_true, q_pred, operators)


def symmetric_multi_hypothesis_loss(
    output: dict[str, Tensor], q_true: Tensor, operators: Tensor, relax: float = 0.05
) -> tuple[Tensor, dict[str, Tensor]]:
    """Winner-takes-most geodesic loss over ``K`` hypotheses, plus selection.

    The best hypothesis carries weight ``1 - relax`` and the others share
    ``relax`` (so none is left untrained); the logits learn, by cross-entropy,
    which hypothesis was best. With ``K = 1`` this is the symmetric geodesic loss.
    """
    q = matrix_to_quaternion(sixd_to_matrix(output["sixd"]))  # (B, K, 4)
    k = q.shape[1]
    angles = symmetric_geodesic(q, q_true[:, None], operators)  # (B, K)
    best = angles.detach().argmin(-1)
    if k == 1:
        weights = torch.ones_like(angles)
    else:
        weights = torch.full_like(angles, relax / (k - 1))
        weights.scatter_(1, best[:, None], 1 - relax)
    geodesic = (weights * angles).sum(-1).mean()
    select = F.cross_entropy(output["logits"], best) if k > 1 else angles.new_zeros(())
    chosen = angles.gather(1, output["logits"].argmax(-1, keepdim=True))[:, 0]
    return geodesic + 0.1 * select, {"chosen_deg": torch.rad2deg(chosen.detach())}


def compute_loss(
    model, output: dict[str, Tensor], q_true: Tensor, operators: Tensor
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss a model names in its ``loss`` attribute."""
    if model.loss == "periodic_euler":
        # The 2016 labels: Euler angles of the fundamental-zone representative.
        target = quaternion_to_euler(reduce_to_fundamental_zone(q_true, operators))
        return periodic_euler_loss(output["euler"], target), {}
    if model.loss == "symmetric_multi_hypothesis":
        return symmetric_multi_hypothesis_loss(output, q_true, operators)
    raise ValueError(f"unknown loss {model.loss!r}")
