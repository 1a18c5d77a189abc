"""Batched pattern-matching refinement on the torch projector.

Each pattern's orientation (and optionally its pattern centre) is moved to
maximise the normalised cross-correlation (NCC) ``c = ⟨u(θ), t⟩`` between the
conditioned pattern ``t`` and its conditioned re-projection ``u``, both unit
vectors. Near the current parameters ``u(θ + δ) ≈ u + Jδ`` with ``J ⟂ u``, so
``c(δ) ≈ (c + gᵀδ) / √(1 + δᵀHδ)`` with ``g = Jᵀt`` and ``H = JᵀJ``, whose
maximum is at ``δ = H⁻¹g / c``: the Gauss–Newton step of ``‖u − t‖²``
divided by the NCC. On noisy patterns (NCC ≈ 0.3–0.5) plain Gauss–Newton
steps fall short by that factor and need tens of iterations.
Levenberg–Marquardt damping (``λ·diag H``) guards the step; a step is kept
only when it raises the NCC, so refinement never lowers the NCC of its start,
and patterns leave the batch once their step falls below ``tol_deg`` or below
half the standard error that their noise leaves in the rotation anyway (from
the NCC and ``JᵀJ``): a noisy pattern stops when further steps would only
chase its noise.

The Jacobian comes from :meth:`Projector.with_jacobian` (one backward pass
through the look-up, about twice a projection), pushed through
the coarse levels' blur and the normalisation to a unit vector (not through
the wide dynamic-background high-pass, which barely touches it); a point is
kept as its NCC and its normal equations ``JᵀJ``, ``Jᵀ(t − u)``. Each iteration
projects once: the trial point's projection also gives the next Jacobian.
Pattern-centre columns (``refine_pc``) come from the same backward pass.

The first iterations (one per ``coarse_levels`` entry) match binned and
blurred patterns: a start a degree or two off moves band edges by more than a
pixel, beyond the reach of the full-resolution linear model, while the
coarse NCC stays smooth that far — and a 2×2-binned projection costs a
quarter of a full one. Full-resolution iterations then finish.

When the start holds several candidates per pattern, the one whose coarse
re-projection correlates best is refined. That judges candidates far apart
well, but not under noise a few degrees from the truth, where the right one
correlates no better than a wrong one: ``index`` refines the CNN's most likely
hypothesis alone (see :class:`~ebsdnet.indexing._BatchIndexer`).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from ebsdnet.metrics import unit_patterns
from ebsdnet.preprocess import PreprocessConfig, gaussian_blur, rebin, remove_dynamic_background
from ebsdnet.projector import Projector
from ebsdnet.rotations import (
    axis_angle_to_quaternion,
    quaternion_multiply,
    standardise_quaternion,
)

__all__ = ["RefineResult", "match_ncc", "refine_orientations"]

log = logging.getLogger(__name__)

#: Compiled variants allowed per kernel. Dynamo's default, 8, is too few: indexing a
#: map with ``refine_pc`` compiles 14 of the projection (binning × Jacobian or not ×
#: one or many PCs × PC columns), and past the limit dynamo runs the rest eager.
RECOMPILE_LIMIT = 32
#: Default ``noise_tol`` of :func:`refine_orientations`.
NOISE_TOL = 0.5


@dataclass
class RefineResult:
    """Refined quaternions ``(B, 4)`` and pattern centres ``(B, 3)``, NCC, iterations used."""

    quaternions: Tensor
    pcs: Tensor
    ncc: Tensor
    ncc_start: Tensor
    iterations: Tensor


def _normal_equations(
    y: Tensor, jac: Tensor, target: Tensor, sigma: float
) -> tuple[Tensor, Tensor, Tensor]:
    """The NCC and Gauss–Newton system of re-projections ``y (B, h, w)`` with their
    Jacobian ``jac (B, n, h, w)`` against unit ``target (B, P)`` patterns.

    ``y`` is blurred by ``sigma`` and made a unit vector ``u``, its Jacobian carried
    along (``∂u/∂θ``, orthogonal to ``u``). Returns ``NCC (B,)``, ``JᵀJ (B, n, n)`` and
    ``Jᵀ(t − u) (B, n)``: all refinement keeps of a point, rather than the
    ``(B, n, P)`` Jacobian. Matrix products, not broadcast products and sums:
    compiled both run alike, but eager the latter build a ``(B, n, n, P)``
    temporary (measured with the PC columns, n = 6: 62 vs 133 ms per 256
    patterns).
    """
    b, n, h, w = jac.shape
    if sigma > 0:
        y = gaussian_blur(y, sigma)
        jac = gaussian_blur(jac.reshape(b * n, h, w), sigma).reshape(b, n, h, w)
    z = y.flatten(1)
    z = z - z.mean(1, keepdim=True)
    norm = z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    u = z / norm
    jz = jac.flatten(2)
    jz = jz - jz.mean(2, keepdim=True)
    ju = (jz - (jz @ u[..., None]) * u[:, None]) / norm[..., None]
    jtj = ju @ ju.transpose(1, 2)
    grad = (ju @ (target - u)[..., None])[..., 0]
    return (u * target).sum(1), jtj, grad


def _moved(
    q: Tensor, pc: Tensor, delta: Tensor, refine_pc: bool, pc_scale: float
) -> tuple[Tensor, Tensor]:
    """Rotate ``q`` by the angles ``delta[:, :3]`` (left), move the PC by ``delta[:, 3:]``."""
    q_new = standardise_quaternion(quaternion_multiply(axis_angle_to_quaternion(delta[:, :3]), q))
    return q_new, (pc + pc_scale * delta[:, 3:] if refine_pc else pc)


def _simulate(
    proj: Projector,
    q: Tensor,
    pc: Tensor,
    preprocessing: PreprocessConfig,
    jacobian: bool,
    refine_pc: bool = False,
    pc_scale: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """High-passed re-projections ``(A, h, w)``, with their Jacobian ``(A, n, h, w)`` or None."""
    if not jacobian:
        return remove_dynamic_background(proj(q, pc), preprocessing), None
    x, jac = proj.with_jacobian(q, pc, pc_columns=refine_pc)
    # The Jacobian skips the wide high-pass: it removes low frequencies, which the
    # derivative of sharp bands hardly has (measured: same accuracy, 1.4× faster).
    # The NCC that decides every step uses the exact conditioning.
    y = remove_dynamic_background(x, preprocessing)
    jac = jac.permute(0, 3, 1, 2).contiguous()
    if refine_pc:  # the PC columns in parameter units (analytic, high-pass skipped alike)
        jac = torch.cat((jac[:, :3], jac[:, 3:] * pc_scale), dim=1)
    return y, jac


def _rotation_sigma(jtj: Tensor, ncc: Tensor, n_pixels: int) -> Tensor:
    """The standard error (radians, ``(B,)``, root of the summed variances of the
    three angles) that noise leaves in a rotation fitted to unit patterns.

    With ``t = c·u(θ) + r``, the residual ``r`` (``‖r‖² = 1 − c²``) taken as white
    noise over ``n_pixels``, least squares leaves ``Cov θ = (1 − c²) / (n c²) ·
    (JᵀJ)⁻¹`` (the rotation block of it, where ``JᵀJ`` also has PC columns).
    Measured on the bench's 40×40 maps, right orientations after refinement:
    predicted 0.051°, 0.091°, 0.128° against root-mean-square errors of
    0.060°, 0.112°, 0.168° at doses 100, 30, 15.
    """
    c2 = ncc.clamp(0.05, 0.999) ** 2
    cov = torch.linalg.inv(jtj + 1e-12 * torch.eye(jtj.shape[-1], device=jtj.device))
    var = cov.diagonal(dim1=1, dim2=2)[:, :3].sum(1).clamp_min(0)
    return torch.sqrt(var * (1 - c2) / (n_pixels * c2))


class _Kernel:
    """A function, run as is or through ``torch.compile`` (compiled once, on first use).

    Compiled, the projection, its Jacobian and the conditioning run as a few fused
    loops instead of dozens of whole-batch tensor operations: measured 2× faster on
    these CPUs, after a compile of several seconds per variant (sigma, binning,
    Jacobian or not) — worth it for large maps only. Where compiling fails (no C++
    compiler, an unsupported device), the plain function runs, with one warning.

    ``dynamic=False`` compiles one graph per input shape; ``freezing`` lets the
    compiler treat a module's weights as constants (inference only: it folds and
    prepacks them, and fuses each convolution with its activation).
    """

    def __init__(self, fn, dynamic: bool = True, freezing: bool = False) -> None:
        self.fn = fn
        self.dynamic = dynamic
        self.freezing = freezing
        self.compiled = None
        self.failed = False

    def __call__(self, *args, compiled: bool = False):
        if compiled and not self.failed:
            from torch._dynamo import config as dynamo_config
            from torch._inductor import config as inductor_config

            if self.compiled is None:
                self.compiled = torch.compile(self.fn, dynamic=self.dynamic)
            try:
                with (
                    warnings.catch_warnings(),
                    inductor_config.patch(freezing=self.freezing),
                    dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT),
                ):
                    # Dynamo traces through preprocess's cached blur matrices, and says so;
                    # inductor's int8 lowering copies a tensor the way torch warns against.
                    warnings.filterwarnings("ignore", message=".*lru_cache", category=UserWarning)
                    warnings.filterwarnings(
                        "ignore", message="To copy construct", category=UserWarning
                    )
                    return self.compiled(*args)
            except Exception as exc:  # the compiler's own errors have no common base
                log.warning("torch.compile failed (%s); running without it", _first_line(exc))
                self.failed = True
        return self.fn(*args)


def _first_line(exc: BaseException) -> str:
    """An exception in one line for a warning (compiler errors run to pages)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_pc(pc: Tensor | None, compiled: bool) -> Tensor | None:
    """``pc (B, 3)`` as one ``(3,)`` when all rows agree and the projection is compiled.

    One PC means one set of detector directions; the projector decides that
    itself when eager, but the decision must be made outside compiled code.
    """
    if compiled and pc is not None and pc.ndim == 2 and len(pc) and bool((pc == pc[:1]).all()):
        return pc[0]
    return pc


_simulate_kernel = _Kernel(_simulate)
_normal_kernel = _Kernel(_normal_equations)


def match_ncc(
    patterns: Tensor,
    quaternions: Tensor,
    projector: Projector,
    pc: Tensor | None = None,
    preprocessing: PreprocessConfig = PreprocessConfig(),
    compiled: bool = False,
) -> Tensor:
    """The NCC ``(B,)`` of conditioned ``patterns`` with their re-projections at ``quaternions``.

    The confidence of every indexed point, refined or not: re-projections get
    the dynamic-background high-pass only (a clean simulation needs no outlier
    clipping), as inside :func:`refine_orientations`. ``compiled``: project
    through ``torch.compile``, as refinement does.
    """
    with torch.no_grad():
        simulated, _ = _simulate_kernel(
            projector, quaternions, _one_pc(pc, compiled), preprocessing, False, compiled=compiled
        )
        return (unit_patterns(simulated) * unit_patterns(patterns.to(simulated))).sum(1)


def refine_orientations(
    patterns: Tensor,
    start: Tensor,
    projector: Projector,
    pc: Tensor | None = None,
    preprocessing: PreprocessConfig = PreprocessConfig(),
    refine_pc: bool = False,
    max_iterations: int = 3,
    tol_deg: float = 0.005,
    extra_iterations: int = 5,
    moving_deg: float = 0.1,
    coarse_levels: tuple[tuple[int, float], ...] = ((2, 1.0), (2, 0.0)),
    pc_scale: float = 0.005,
    noise_tol: float = NOISE_TOL,
    give_up_ncc: float | None = None,
    compiled: bool = False,
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
        The conditioning of ``patterns``; re-projections get its dynamic
        background removal (a clean simulation needs no outlier clipping).
    refine_pc
        Also refine each pattern's centre (six parameters instead of three).
    max_iterations, tol_deg
        Full-resolution iterations every pattern may take, and the rotation step
        (degrees) below which a pattern is done.
    extra_iterations, moving_deg
        Further full-resolution iterations for the patterns still moving after
        ``max_iterations``: whose last step was taken and larger than
        ``moving_deg``. A start a few degrees off (a CNN answer on patterns unlike
        its training data) needs them; under noise the others stop (steps below
        0.04° after three iterations no longer change the mean error).
    coarse_levels
        ``(binning, blur σ in binned pixels)`` of one coarse iteration each,
        before the full-resolution iterations; the candidates are judged at
        the first level. Levels whose binning does not divide the pattern are
        skipped. A third level, full-size and blurred (``(1, 1.0)``), was the
        default until the noise-aware stop: without it the bench's maps index
        1.1–1.25× faster (blurring the full-size Jacobian alone cost a sixth of
        a refinement) for mean errors within 0.001° (dose 30: 0.1004° →
        0.1013°; the nine real patterns 0.0916° → 0.0910°).
    noise_tol
        A pattern is also done when its step is below this fraction of the
        standard error that the pattern's noise leaves in its rotation
        (estimated from its NCC and ``JᵀJ``; see :func:`_rotation_sigma`), and
        goes on after ``max_iterations`` only when its step was larger than
        that. Remaining offsets below half the standard error add at most
        12% to it in quadrature; measured on the bench maps (compiled, 40×40):
        iterations −21% at dose 15 (mean error 0.1499° → 0.1517°), −9% at
        dose 100 (0.0534° → 0.0536°), noise-free unchanged. 0 turns it off.
    give_up_ncc
        Patterns whose NCC is still below this after their first
        full-resolution iteration stop there: for a caller that tries other
        starts for low-NCC patterns anyway (see ``fallback_ncc`` of
        :func:`~ebsdnet.indexing.index`). ``None``: none give up.
    pc_scale
        Pattern-centre units per parameter unit. The PC columns of the Jacobian
        are analytic, from the projector's one backward pass (see
        :meth:`~ebsdnet.projector.Projector.with_jacobian`); finite differences
        of a 0.001 PC step, three more projections per iteration, ended the
        stated-PC-wrong benchmark map at 0.121° instead of 0.057° and 445
        instead of 556–571 patterns/s. The damping scales with the diagonal of
        ``JᵀJ``, so the choice of units does not bias the steps.
    compiled
        Run the projections and their conditioning through ``torch.compile``
        (same results to float rounding; pays off from some ten thousand patterns).

    Returns
    -------
    RefineResult
    """
    device = projector.u.device
    target = patterns.to(device).float()
    b = target.shape[0]
    pcs = (projector.default_pc.expand(b, 3) if pc is None else pc.to(device)).float().clone()
    if b == 0:  # e.g. a batch of a map whose patterns were all blank
        none = torch.zeros(0, device=device)
        return RefineResult(
            torch.zeros(0, 4, device=device), pcs, none, none, none.long()
        )  # fmt: skip
    n_params = 6 if refine_pc else 3
    tol = math.radians(tol_deg)

    def divisible(factor: int) -> bool:
        return target.shape[-2] % factor == 0 and target.shape[-1] % factor == 0

    def level_target(factor: int, sigma: float) -> Tensor:
        t = rebin(target, (target.shape[-2] // factor, target.shape[-1] // factor))
        return unit_patterns(gaussian_blur(t, sigma))  # sigma 0: unchanged

    def simulate(proj: Projector, q: Tensor, pc_: Tensor, jacobian: bool = True):
        return _simulate_kernel(
            proj, q, _one_pc(pc_, compiled), preprocessing, jacobian, refine_pc, pc_scale,
            compiled=compiled,
        )  # fmt: skip

    def normal(y: Tensor, jac: Tensor, t: Tensor, sigma: float):
        return _normal_kernel(y, jac, t, sigma, compiled=compiled)

    levels = [(f, sg) for f, sg in coarse_levels if divisible(f)] + [(1, 0.0)]
    with torch.no_grad():
        q = standardise_quaternion(start.to(device).float())
        if q.ndim == 3:  # (B, K, 4): keep each pattern's best candidate, judged coarsely
            k = q.shape[1]
            coarse = projector.binned(levels[0][0])
            sims, _ = simulate(coarse, q.reshape(-1, 4), pcs.repeat_interleave(k, 0), False)
            sims = unit_patterns(sims).reshape(b, k, -1)
            scores = (sims * level_target(levels[0][0], 0.0)[:, None]).sum(-1)
            q = q[torch.arange(b, device=device), scores.argmax(1)]
        q0, pc0 = q.clone(), pcs.clone()
        t_full = level_target(1, 0.0)
        ncc_start = (unit_patterns(simulate(projector, q, pcs, False)[0]) * t_full).sum(1)
        iterations = torch.zeros(b, dtype=torch.long, device=device)
        eye = torch.eye(n_params, device=device)
        current_factor = None
        for level, (factor, sigma) in enumerate(levels):
            proj = projector.binned(factor)
            t_level = level_target(factor, sigma)
            if factor != current_factor:  # same binning: the last level's projections serve
                y, jac = simulate(proj, q, pcs)
                current_factor = factor
            ncc, jtj, grad = normal(y, jac, t_level, sigma)
            damping = torch.full((b,), 1e-3, device=device)
            active = torch.ones(b, dtype=torch.bool, device=device)
            last_level = level == len(levels) - 1
            # The projections themselves are kept only for a next level of this binning.
            keep_projections = not last_level and levels[level + 1][0] == factor
            n_iterations = max_iterations + extra_iterations if last_level else 1
            for iteration in range(n_iterations):
                idx = active.nonzero().squeeze(1)
                if len(idx) == 0:
                    break
                # A trial whose Jacobian no later step reads (the last of the refinement,
                # or the last before another binning, or the last every pattern takes:
                # the few that go on get theirs then) is projected without one.
                base_end = last_level and iteration == max_iterations - 1
                jacobian = not (
                    base_end or (iteration == n_iterations - 1 and not keep_projections)
                )
                if len(idx) == b:  # all active: no gathered copies
                    ta, qa, pca, ncca = t_level, q, pcs, ncc
                    jtja, grada = jtj, grad
                else:
                    ta, qa, pca, ncca, jtja, grada = (
                        x[idx] for x in (t_level, q, pcs, ncc, jtj, grad)
                    )  # fmt: skip
                diag = jtja.diagonal(dim1=1, dim2=2).clamp_min(1e-12)
                lam = damping[idx, None, None] * torch.diag_embed(diag)
                step = torch.linalg.solve(jtja + lam + 1e-12 * eye, grada)
                step = step / ncca[:, None].clamp(0.1, 1.0)  # NCC-scaled Gauss–Newton step
                q_new, pc_new = _moved(qa, pca, step, refine_pc, pc_scale)
                y_new, jac_new = simulate(proj, q_new, pc_new, jacobian)
                if jacobian:
                    ncc_new, jtj_new, grad_new = normal(y_new, jac_new, ta, sigma)
                else:
                    ncc_new = (unit_patterns(gaussian_blur(y_new, sigma)) * ta).sum(1)
                better = ncc_new > ncca
                kept = idx[better]
                q[kept], pcs[kept], ncc[kept] = q_new[better], pc_new[better], ncc_new[better]
                if jacobian:
                    jtj[kept], grad[kept] = jtj_new[better], grad_new[better]
                if keep_projections:
                    y[kept], jac[kept] = y_new[better], jac_new[better]
                damping[idx] = torch.where(better, damping[idx] / 4, damping[idx] * 8)
                iterations[idx] += 1
                # Steps below the tolerance, or below noise_tol of the standard error
                # that noise leaves anyway, no longer change the answer. Only at full
                # resolution: a coarse level takes one iteration (nothing to stop), and
                # binned, blurred noise is not the white noise the estimate assumes.
                step_size = step[:, :3].norm(dim=1)
                floor = torch.zeros_like(step_size)
                if noise_tol > 0 and last_level:
                    floor = noise_tol * _rotation_sigma(jtja, ncca, ta.shape[1])
                done = (better & (step_size < floor.clamp_min(tol))) | (damping[idx] > 1e4)
                if base_end:
                    moving = step_size > floor.clamp_min(math.radians(moving_deg))
                    done |= ~(better & moving)
                if give_up_ncc is not None and last_level and iteration == 0:
                    done |= ncc[idx] < give_up_ncc
                active[idx[done]] = False
                if base_end and iteration < n_iterations - 1:
                    going = active.nonzero().squeeze(1)
                    if len(going):  # their Jacobian, skipped in the trial above
                        y_g, jac_g = simulate(proj, q[going], pcs[going])
                        _, jtj[going], grad[going] = normal(y_g, jac_g, t_level[going], sigma)
        # The coarse levels may, rarely, end lower at full resolution: keep the start there.
        worse = ncc < ncc_start
        q[worse], pcs[worse], ncc[worse] = q0[worse], pc0[worse], ncc_start[worse]
    return RefineResult(
        quaternions=q, pcs=pcs, ncc=ncc, ncc_start=ncc_start, iterations=iterations
    )
