"""Batched pattern-matching refinement on the torch projector.

Each pattern's orientation is moved to maximise the normalised
cross-correlation (NCC) between the conditioned pattern and its re-projection.
Both sides are unit vectors, so maximising their NCC is minimising
``‖s(q) − t‖²``: a least-squares problem in the three angles of a small
rotation ``δ`` (``q ← exp(δ) q``), solved by Levenberg–Marquardt for the whole
batch at once. The 3-column Jacobian comes from forward differences (three
extra projections per iteration; bilinear interpolation has no useful second
derivative, so this is as good as an analytic one). A step is kept only when
it raises the NCC, so refinement never lowers the NCC of its start; patterns
stop costing time once their step falls below ``tol_deg``.

When the start holds several candidates per pattern (the CNN's hypotheses),
the one whose re-projection correlates best is refined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ebsdnet.preprocess import PreprocessConfig, preprocess
from ebsdnet.projector import Projector
from ebsdnet.rotations import (
    axis_angle_to_quaternion,
    quaternion_multiply,
    standardise_quaternion,
)

__all__ = ["RefineResult", "refine_orientations"]


@dataclass
class RefineResult:
    """Refined quaternions ``(B, 4)``, their NCC ``(B,)``, the start's NCC, iterations used."""

    quaternions: Tensor
    ncc: Tensor
    ncc_start: Tensor
    iterations: Tensor


def _unit(x: Tensor) -> Tensor:
    x = x.flatten(1)
    x = x - x.mean(1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def refine_orientations(
    patterns: Tensor,
    start: Tensor,
    projector: Projector,
    pc: Tensor | None = None,
    preprocessing: PreprocessConfig = PreprocessConfig(),
    max_iterations: int = 12,
    tol_deg: float = 0.002,
    fd_step_deg: float = 0.02,
) -> RefineResult:
    """Refine orientations ``start`` against conditioned ``patterns``.

    Parameters
    ----------
    patterns
        ``(B, H, W)`` from :func:`~ebsdnet.preprocess.preprocess` (same shape as
        ``projector``).
    start
        ``(B, 4)`` quaternions, or ``(B, K, 4)`` candidates of which the best is refined.
    projector
        The :class:`~ebsdnet.projector.Projector` of the patterns' detector.
    pc
        ``(B, 3)`` Bruker pattern centres (default: the projector's).
    preprocessing
        The conditioning of ``patterns``; re-projections get the same, except
        for outlier clipping (a clean simulation has no outliers).
    max_iterations, tol_deg, fd_step_deg
        Iteration cap, step size (degrees) below which a pattern is done, and
        the finite-difference step (degrees).

    Returns
    -------
    RefineResult
    """
    sim_config = PreprocessConfig(dynamic_sigma=preprocessing.dynamic_sigma, outlier_clip=0.0)
    device = projector.u.device
    target = _unit(patterns.to(device))  # (B, P)
    b = target.shape[0]
    pcs = (projector.default_pc.expand(b, 3) if pc is None else pc.to(device)).float()

    def simulate(q: Tensor, pc_: Tensor) -> Tensor:
        return _unit(preprocess(projector(q, pc_), sim_config))

    with torch.no_grad():
        q = standardise_quaternion(start.to(device).float())
        if q.ndim == 3:  # (B, K, 4): keep each pattern's best candidate
            k = q.shape[1]
            sims = simulate(q.reshape(-1, 4), pcs.repeat_interleave(k, 0)).reshape(b, k, -1)
            scores = (sims * target[:, None]).sum(-1)
            q = q[torch.arange(b, device=device), scores.argmax(1)]
        ncc = (simulate(q, pcs) * target).sum(1)
        ncc_start = ncc.clone()
        iterations = torch.zeros(b, dtype=torch.long, device=device)
        damping = torch.full((b,), 1e-3, device=device)
        active = torch.ones(b, dtype=torch.bool, device=device)
        h = math.radians(fd_step_deg)
        tol = math.radians(tol_deg)
        eye = torch.eye(3, device=device)
        for _ in range(max_iterations):
            idx = active.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            qa, pa, ta = q[idx], pcs[idx], target[idx]
            s0 = simulate(qa, pa)
            columns = []
            for axis in range(3):
                d = torch.zeros(len(idx), 3, device=device)
                d[:, axis] = h
                columns.append(
                    (simulate(quaternion_multiply(axis_angle_to_quaternion(d), qa), pa) - s0) / h
                )
            jac = torch.stack(columns, dim=-1)  # (A, P, 3)
            jtj = jac.transpose(1, 2) @ jac  # (A, 3, 3)
            grad = (jac.transpose(1, 2) @ (s0 - ta)[..., None])[..., 0]  # (A, 3)
            lam = damping[idx, None, None] * (
                jtj.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] + 1e-12
            )
            step = -torch.linalg.solve(jtj + lam * eye, grad)
            q_new = standardise_quaternion(quaternion_multiply(axis_angle_to_quaternion(step), qa))
            ncc_new = (simulate(q_new, pa) * ta).sum(1)
            better = ncc_new > ncc[idx]
            q[idx[better]] = q_new[better]
            ncc[idx[better]] = ncc_new[better]
            damping[idx] = torch.where(better, damping[idx] / 4, damping[idx] * 8)
            iterations[idx] += 1
            done = (better & (step.norm(dim=1) < tol)) | (damping[idx] > 1e4)
            active[idx[done]] = False
    return RefineResult(quaternions=q, ncc=ncc, ncc_start=ncc_start, iterations=iterations)
