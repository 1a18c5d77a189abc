"""Differentiable projection of a master pattern onto a detector, in torch.

The same geometry as kikuchipy's ``EBSDMasterPattern.get_patterns``: each
detector pixel's direction from the source point (pattern centre in Bruker
convention, EDAX TSL sample frame, sample and camera tilts) is rotated into
the crystal by the orientation, mapped to the square Lambert projection and
read from the master pattern's upper or lower hemisphere by bilinear
interpolation. Gradients flow to the rotations and to the pattern centre.

Master patterns are symmetrised over their point group when loaded, on a grid
twice as fine for small ones (:meth:`MasterPattern.symmetrised`): a stored Lambert grid
is not invariant under the crystal's three-fold rotations, so equivalent
orientations would give slightly different patterns. kikuchipy's own methods
can read the same texture through :meth:`MasterPattern.to_kikuchipy`.

Data flow::

    pc (B, 3) ──► detector_directions ──► (B|1, P, 3) sample-frame unit vectors
    quaternions (B, 4) ─► rotate ─► lambert_coordinates ─► grid_sample ─► (B, H, W)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ebsdnet.rotations import quaternion_to_matrix

__all__ = [
    "DetectorGeometry",
    "MasterPattern",
    "Projector",
    "lambert_coordinates",
    "resample_to_pattern_centre",
    "unphysical_pattern_centres",
]

_SQRT_PI = math.sqrt(math.pi)

#: Coefficients of ``atan(r) ≈ r·Σ cₖ r²ᵏ`` on ``[-1, 1]``: a near-minimax fit
#: (Lawson's reweighted least squares), error 2.5e-7 rad (3e-7 in float32).
_ATAN_COEFFICIENTS = (
    0.9999961115, -0.3331736794, 0.198078146, -0.1323333854, 0.0796236091,
    -0.0336041668, 0.0068117758,
)  # fmt: skip


def unphysical_pattern_centres(pcs) -> np.ndarray:
    """Which Bruker PCs ``(N, 3)`` lie outside 0 ≤ x, y ≤ 1, z > 0 (or are not finite).

    Examples
    --------
    >>> unphysical_pattern_centres([[0.4, 0.2, 0.5], [0.4, 1.3, 0.5]]).tolist()
    [False, True]
    """
    pcs = np.asarray(pcs, dtype=np.float64).reshape(-1, 3)
    x, y, z = pcs.T
    with np.errstate(invalid="ignore"):
        physical = np.isfinite(pcs).all(1) & (x >= 0) & (x <= 1) & (y >= 0) & (y <= 1) & (z > 0)
    return ~physical


def resample_to_pattern_centre(patterns: Tensor, pc: Tensor, target: Tensor) -> Tensor:
    """Patterns ``(B, H, W)`` recorded at pattern centres ``pc`` (``(3,)`` or ``(B, 3)``,
    Bruker) as the same detector would record them at pattern centre ``target`` ``(3,)``.

    The detector plane keeps its tilt, so a pixel's gnomonic coordinates are
    ``((u − PCx) / PCz, (v − PCy) / PCz)`` up to the aspect ratio, and moving the
    pattern centre only scales and shifts the image: each target pixel reads the
    recorded pattern at ``u = PCx + (u₀ − targetx) · PCz / targetz`` (``v`` alike),
    bilinearly. What the recorded detector did not see reads 0, a conditioned
    pattern's mean. Patterns already at ``target`` come back unchanged.

    Examples
    --------
    >>> p = torch.rand(2, 60, 60)
    >>> pc = torch.tensor([0.425, 0.213, 0.501])
    >>> bool((resample_to_pattern_centre(p, pc, pc) == p).all())
    True
    """
    target = target.to(patterns)
    pc = pc.to(patterns).expand(len(patterns), 3)
    if bool((pc == target).all()):
        return patterns
    if bool((pc == pc[:1]).all()):  # one PC for the batch: one pair of matrices
        pc = pc[:1]
    scale = pc[:, 2] / target[2]
    # Image coordinates from -1 to 1 (x = 2u − 1): each axis is scaled and shifted.
    shift_x = 2 * pc[:, 0] - 1 + scale * (1 - 2 * target[0])
    shift_y = 2 * pc[:, 1] - 1 + scale * (1 - 2 * target[1])
    rows, cols = patterns.shape[-2:]
    along_y = _linear_interpolation_matrix(rows, scale, shift_y)  # (1 or B, H, H)
    along_x = _linear_interpolation_matrix(cols, scale, shift_x)  # (1 or B, W, W)
    return along_y @ patterns @ along_x.transpose(-1, -2)


def _linear_interpolation_matrix(n: int, scale: Tensor, shift: Tensor) -> Tensor:
    """``(B, n, n)``: row ``k`` reads ``n`` samples (pixel centres at ``(2i + 1)/n − 1``)
    linearly at ``scale·x_k + shift``, ``x_k`` the ``k``-th centre; outside reads 0.

    Bilinear resampling with zero padding is separable: as the two products
    ``Ry · P · Rxᵀ`` it equals ``grid_sample`` (``align_corners=False``) to float
    rounding, at a fraction of its cost on CPUs (measured, per 256 patterns of
    60×60: 10.8 → 2.6 ms with one PC for the batch, 10.5 → 8.6 ms with one each).
    """
    k = torch.arange(n, dtype=scale.dtype, device=scale.device)
    centres = (2 * k + 1) / n - 1
    source = scale[:, None] * centres + shift[:, None]  # (B, n), image coordinates
    position = ((source + 1) * n - 1) / 2  # in source pixels
    below = position.floor()
    frac = (position - below)[..., None]
    below = below[..., None]
    return (1 - frac) * (k == below) + frac * (k == below + 1)


@dataclass(frozen=True)
class DetectorGeometry:
    """What the projector needs of an EBSD detector.

    Parameters
    ----------
    shape
        ``(rows, columns)`` of the (binned) pattern, pixels.
    pc
        Pattern centre ``(PCx, PCy, PCz)`` in Bruker convention (fractions of
        the detector width, height, height).
    sample_tilt, tilt, azimuthal, twist
        Degrees, as in :class:`kikuchipy.detectors.EBSDDetector`.
    """

    shape: tuple[int, int] = (60, 60)
    pc: tuple[float, float, float] = (0.425, 0.213, 0.501)
    sample_tilt: float = 70.0
    tilt: float = 0.0
    azimuthal: float = 0.0
    twist: float = 0.0

    @classmethod
    def from_kikuchipy(cls, detector) -> DetectorGeometry:
        """Geometry of a kikuchipy ``EBSDDetector``, with its mean pattern centre."""
        return cls(
            shape=tuple(int(n) for n in detector.shape),
            pc=tuple(float(v) for v in detector.pc_average),
            sample_tilt=float(detector.sample_tilt),
            tilt=float(detector.tilt),
            azimuthal=float(detector.azimuthal),
            twist=float(detector.twist),
        )

    def to_kikuchipy(self, pc: np.ndarray | None = None):
        """The equivalent kikuchipy ``EBSDDetector`` (``pc`` may hold one PC per pattern)."""
        from kikuchipy.detectors import EBSDDetector

        return EBSDDetector(
            shape=self.shape,
            pc=self.pc if pc is None else pc,
            sample_tilt=self.sample_tilt,
            tilt=self.tilt,
            azimuthal=self.azimuthal,
            twist=self.twist,
        )

    def detector_to_sample(self) -> np.ndarray:
        """3×3 matrix taking detector-frame vectors to the sample frame (kikuchipy's own)."""
        det = self.to_kikuchipy()
        return (~det.sample_to_detector).to_matrix().squeeze().astype(np.float64)


@dataclass
class MasterPattern:
    """Both hemispheres of a square Lambert master pattern, as float32 tensors.

    ``texture`` stacks upper over lower, ``(2N, N)``, so one bilinear look-up
    serves both: a pixel's row is offset by ``N`` when its direction points
    into the lower hemisphere.
    """

    texture: Tensor
    point_group: str
    phase_name: str = ""
    sha256: str = ""
    phase: object | None = None  # orix Phase, when the source file had one
    meta: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.texture.shape[-1])

    @classmethod
    def from_kikuchipy(
        cls, master_pattern, energy: float | None = None, symmetrise: bool = True
    ) -> MasterPattern:
        """Take the hemispheres of a kikuchipy ``EBSDMasterPattern`` (Lambert projection).

        Like ``get_patterns``, the highest energy is used when none is given.
        ``symmetrise``: return :meth:`symmetrised` (what ebsdnet simulates and
        refines with); ``False`` keeps the file's texture as it is, the one
        ``get_patterns`` reads. ``sha256`` is the file's texture either way.
        """
        if master_pattern.projection != "lambert":
            raise ValueError(
                f"master pattern is in the {master_pattern.projection!r} projection; "
                "ebsdnet needs 'lambert' (load it with projection='lambert')"
            )
        upper, lower = master_pattern._get_master_pattern_arrays_from_energy(energy)
        upper = np.asarray(upper, dtype=np.float32)
        lower = np.asarray(lower, dtype=np.float32)
        texture = torch.from_numpy(np.concatenate([upper, lower], axis=0))
        digest = hashlib.sha256(texture.numpy().tobytes()).hexdigest()
        phase = master_pattern.phase
        raw = cls(
            texture=texture,
            point_group=phase.point_group.name if phase.point_group is not None else "1",
            phase_name=phase.name,
            sha256=digest,
            phase=phase.deepcopy(),
        )
        return raw.symmetrised() if symmetrise else raw

    def to_kikuchipy(self):
        """This texture as a kikuchipy ``EBSDMasterPattern`` (Lambert, both hemispheres):
        kikuchipy's own methods then read the same master pattern as ebsdnet."""
        import kikuchipy as kp
        from orix.crystal_map import Phase

        n = self.size
        data = self.texture.reshape(2, n, n).numpy().copy()
        if self.phase is not None:
            phase = self.phase.deepcopy()
        else:
            phase = Phase(point_group=self.point_group)
        return kp.signals.EBSDMasterPattern(
            data, hemisphere="both", projection="lambert", phase=phase
        )

    @property
    def texture_key(self) -> tuple:
        """Identifies the texture itself: the source's hash and how it was symmetrised."""
        return (self.sha256, self.meta.get("symmetrised"), self.meta.get("upsampled"))

    def symmetrised(self, upsample: int | None = None) -> MasterPattern:
        """This master pattern averaged over its point group's rotations, on a grid
        ``upsample`` times finer (bicubic look-ups; default: 2 for grids under 801
        pixels a side, such as kikuchipy's 401, else 1).

        A square Lambert grid maps onto itself under the square's own symmetries
        only: a three-fold rotation of the crystal reads the texture between its
        grid points. Stored Lambert master patterns are not exactly invariant
        there (kikuchipy's Ni: patterns of two equivalent orientations correlate
        at 0.9956, not 1), so refinement lands ~0.006° apart depending on which of
        the 24 equivalent descriptions it starts from. Averaging ``T(g·v)`` over the
        rotations ``g`` makes the texture invariant; bicubic look-ups on a finer
        grid keep the average from blurring it, and bilinear projection from a
        grid twice as fine drops the interpolation error (NCC to a 4× bicubic
        reference 0.9982 → 0.9998). Inversion is left out: dynamical patterns
        of non-centrosymmetric phases do not obey Friedel's law.
        """
        from ebsdnet.rotations import point_group_operators

        if upsample is None:
            upsample = 2 if self.size < FINE_GRID else 1
        key = (self.sha256, self.point_group, upsample)
        # Only a file's own texture is cached: its hash names it (not a texture built in memory).
        cacheable = bool(self.sha256) and self.meta.get("symmetrised") is None
        if cacheable and key in _SYMMETRISED:
            texture = _SYMMETRISED[key]
        else:
            texture = self._symmetrised_texture(upsample, point_group_operators(self.point_group))
            if cacheable:
                _SYMMETRISED.clear()  # keep one: ~5 MB each
                _SYMMETRISED[key] = texture
        meta = {**self.meta, "symmetrised": self.point_group, "upsampled": upsample}
        return replace(self, texture=texture, meta=meta)

    def _symmetrised_texture(self, upsample: int, operators: Tensor) -> Tensor:
        n = self.size
        m = (n - 1) * upsample + 1
        grid = torch.linspace(-1, 1, m, dtype=torch.float64)
        big_y, big_x = torch.meshgrid(grid, grid, indexing="ij")
        rotations = quaternion_to_matrix(operators.double())
        halves = self.texture.reshape(2, 1, n, n).double()
        out = []
        for upper in (True, False):
            v = _lambert_to_sphere(big_x.reshape(-1), big_y.reshape(-1), upper)  # (P, 3)
            total = torch.zeros(len(v), dtype=torch.float64)
            for r in rotations:
                c = v @ r.T
                xy = lambert_coordinates(c)
                value = torch.empty_like(total)
                for h, in_half in enumerate((c[:, 2] >= 0, c[:, 2] < 0)):
                    grid_h = xy[in_half][None, None]  # (1, 1, Q, 2)
                    value[in_half] = torch.nn.functional.grid_sample(
                        halves[h : h + 1], grid_h, mode="bicubic", padding_mode="border",
                        align_corners=True,
                    )[0, 0, 0]  # fmt: skip
                total += value
            out.append((total / len(rotations)).reshape(m, m))
        return torch.cat(out).float()

    @classmethod
    def nickel(cls) -> MasterPattern:
        """kikuchipy's shipped dynamical Ni master pattern (20 kV, 401×401, offline)."""
        import kikuchipy as kp

        mp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
        return cls.from_kikuchipy(mp)

    @classmethod
    def from_file(cls, path: str, energy: float | None = None) -> MasterPattern:
        """Load an EMsoft or kikuchipy master-pattern file (both hemispheres, Lambert)."""
        import kikuchipy as kp

        mp = kp.load(path, projection="lambert", hemisphere="both")
        return cls.from_kikuchipy(mp, energy=energy)


#: Master patterns with fewer pixels a side are symmetrised onto a grid twice as fine.
FINE_GRID = 801

#: The last symmetrised texture, by (source hash, point group, upsampling): the
#: symmetrisation takes ~2 s, and the shipped Ni master pattern is loaded often.
_SYMMETRISED: dict[tuple, Tensor] = {}


def lambert_coordinates(v: Tensor) -> Tensor:
    """Unit vectors ``(..., 3)`` to square Lambert coordinates in ``[-1, 1]²``.

    Returns ``(..., 2)`` as ``(X, Y)``: ``X`` indexes master-pattern columns and
    ``Y`` rows, as in kikuchipy (EMsoft's equal-area square projection).
    """
    x, y, z = v.unbind(-1)
    # sqrt(2(1-|z|)) has an infinite slope at the pole; the floor keeps it finite.
    radius = torch.sqrt((2 * (1 - z.abs())).clamp_min(1e-12))
    x_major = y.abs() <= x.abs()
    major = torch.where(x_major, x, y)
    minor = torch.where(x_major, y, x)
    safe_major = torch.where(major == 0, torch.ones_like(major), major)
    sign = torch.sign(major)
    # In [-1, 1] after dividing kikuchipy's coordinates by sqrt(π/2).
    along = sign * radius / math.sqrt(2)
    ratio = minor / safe_major
    # Compiled, a polynomial (fused into the projection's loop); eager, torch's own kernel.
    angle = _atan_unit(ratio) if torch.compiler.is_compiling() else torch.atan(ratio)
    across = sign * radius * (2 * math.sqrt(2) / math.pi) * angle
    big_x = torch.where(x_major, along, across)
    big_y = torch.where(x_major, across, along)
    return torch.stack((big_x, big_y), dim=-1)


def _lambert_to_sphere(big_x: Tensor, big_y: Tensor, upper: bool) -> Tensor:
    """The inverse of :func:`lambert_coordinates`: square ``X, Y`` in ``[-1, 1]`` to unit
    vectors ``(..., 3)`` of the upper (``z ≥ 0``) or lower hemisphere."""
    x_major = big_y.abs() <= big_x.abs()
    major = torch.where(x_major, big_x, big_y)
    minor = torch.where(x_major, big_y, big_x)
    sign = torch.where(major < 0, -1.0, 1.0).to(big_x)
    radius = math.sqrt(2) * major.abs()  # sqrt(2(1 - |z|))
    safe = torch.where(radius == 0, torch.ones_like(radius), radius)
    angle = torch.where(radius == 0, 0.0, minor * math.pi / (sign * safe * 2 * math.sqrt(2)))
    z = (1 - radius**2 / 2).clamp_min(0)
    horizontal = torch.sqrt((1 - z**2).clamp_min(0))
    along = sign * horizontal * torch.cos(angle)
    across = sign * horizontal * torch.sin(angle)
    x = torch.where(x_major, along, across)
    y = torch.where(x_major, across, along)
    return torch.stack((x, y, z if upper else -z), dim=-1)


def _atan_unit(r: Tensor) -> Tensor:
    """``atan`` of ``r`` in ``[-1, 1]`` as an odd polynomial (error < 3e-7 rad).

    Every projection takes one per pixel, and compiled CPU code spent more on
    ``atan`` than on the rest of the Lambert map (256 × 3,600 directions,
    compiled: 10.4 ms with ``torch.atan``, 4.9 ms with this). Whole compiled
    projections of 256 patterns, interleaved in one process: forward 10–25%
    faster (14.1 → 10.7 ms; 18–20 → 16–18 ms with the high-pass); with the
    Jacobian no consistent change (its compiled code varies more from one
    compile to another). Eager, the polynomial's dozen whole-batch operations
    cost more than ``torch.atan`` (eager forward projections 11,190 → 6,877
    patterns/s), so only compiled code uses it. The error moves a look-up by
    less than 10⁻⁴ of a texel of a 401-texel master pattern.
    """
    r2 = r * r
    total = torch.full_like(r, _ATAN_COEFFICIENTS[-1])
    for c in reversed(_ATAN_COEFFICIENTS[:-1]):
        total = total * r2 + c
    return r * total


class Projector(torch.nn.Module):
    """Simulate EBSD patterns from rotations: ``(B, 4) → (B, H, W)``.

    Parameters
    ----------
    master_pattern
        A :class:`MasterPattern`.
    geometry
        A :class:`DetectorGeometry`; its ``pc`` is the default pattern centre.

    Examples
    --------
    >>> proj = Projector(MasterPattern.nickel(), DetectorGeometry(shape=(60, 60)))
    >>> proj(torch.tensor([[1.0, 0.0, 0.0, 0.0]])).shape
    torch.Size([1, 60, 60])
    """

    def __init__(self, master_pattern: MasterPattern, geometry: DetectorGeometry) -> None:
        super().__init__()
        self.master_pattern = master_pattern
        self.geometry = geometry
        rows, cols = geometry.shape
        # (1, 1, 2N, N): the batch and channel dimensions grid_sample expects.
        self.register_buffer("texture", master_pattern.texture[None, None].clone())
        self.register_buffer(
            "detector_to_sample", torch.from_numpy(geometry.detector_to_sample()).float()
        )
        # Pixel centres as fractions of the detector: (P,) each, row-major.
        jj, ii = torch.meshgrid(
            (torch.arange(cols, dtype=torch.float64) + 0.5) / cols,
            (torch.arange(rows, dtype=torch.float64) + 0.5) / rows,
            indexing="xy",
        )
        self.register_buffer("u", jj.reshape(-1).float())
        self.register_buffer("v", ii.reshape(-1).float())
        self.register_buffer("default_pc", torch.tensor(geometry.pc, dtype=torch.float32))

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape

    def binned(self, factor: int) -> Projector:
        """The projector of this detector binned ``factor``×``factor`` (cached; same device).

        Its pixel centres are the centres of the binned blocks.
        """
        if factor == 1:
            return self
        cache = self.__dict__.setdefault("_binned", {})
        key = (factor, self.u.device)
        if key not in cache:
            rows, cols = self.geometry.shape
            geometry = replace(self.geometry, shape=(rows // factor, cols // factor))
            cache[key] = Projector(self.master_pattern, geometry).to(self.u.device)
        return cache[key]

    def detector_directions(self, pc: Tensor | None = None) -> Tensor:
        """Unit vectors from the source to each pixel, sample frame.

        ``pc`` is ``(3,)`` or ``(B, 3)`` (Bruker); returns ``(P, 3)``, or ``(B, P, 3)``
        when the batch's pattern centres differ.
        """
        pc = self.default_pc if pc is None else pc.to(self.u)
        # One PC for the batch: one set of directions, broadcast. (Not decided inside
        # torch.compile, where a data-dependent branch breaks the graph; refine decides first.)
        shared = pc.ndim == 2 and not pc.requires_grad and not torch.compiler.is_compiling()
        if shared and bool((pc == pc[:1]).all()):
            pc = pc[0]
        rays = self._rays(pc)
        return rays / rays.norm(dim=-1, keepdim=True)

    def _rays(self, pc: Tensor) -> Tensor:
        """Source-to-pixel vectors ``(P, 3)`` or ``(B, P, 3)``, sample frame, unnormalised."""
        pcx, pcy, pcz = pc[..., 0:1], pc[..., 1:2], pc[..., 2:3]
        # Detector frame: x right, y up, z towards the source (kikuchipy's gnomonic frame).
        r_det = torch.stack(
            (self._aspect * (self.u - pcx), pcy - self.v, pcz.expand_as(pcy - self.v)), dim=-1
        )
        return r_det @ self.detector_to_sample.T

    @property
    def _aspect(self) -> float:
        rows, cols = self.geometry.shape
        return cols / rows

    def _ray_pc_derivatives(self) -> Tensor:
        """``(3, 3)``: row ``k`` is the change of every ray (sample frame) per unit of PC
        component ``k`` (the rays are affine in the PC: the same for every pixel)."""
        per_unit = torch.tensor([-self._aspect, 1.0, 1.0], dtype=self.u.dtype).to(self.u.device)
        return (self.detector_to_sample * per_unit).T

    def crystal_directions(self, quaternions: Tensor, pc: Tensor | None = None) -> Tensor:
        """Each pixel's direction in the crystal frame, ``(B, P, 3)``."""
        directions = self.detector_directions(pc)  # (P, 3) or (B, P, 3)
        rot = quaternion_to_matrix(quaternions.to(self.u))  # (B, 3, 3)
        if directions.ndim == 2:  # one (P, 3) @ (3, 3B) product: 5× a broadcast batched one
            return torch.einsum("pj,bij->bpi", directions, rot)
        return directions @ rot.transpose(-1, -2)

    def forward(self, quaternions: Tensor, pc: Tensor | None = None) -> Tensor:
        """Patterns ``(B, H, W)`` for quaternions ``(B, 4)``; ``pc`` is ``(3,)`` or ``(B, 3)``."""
        crystal = self.crystal_directions(quaternions, pc)
        return self._sample(crystal).reshape(-1, *self.geometry.shape)

    def with_jacobian(
        self, quaternions: Tensor, pc: Tensor | None = None, pc_columns: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Patterns ``(B, H, W)`` and their derivatives ``(B, H, W, 3)`` w.r.t. a small rotation
        (``(B, H, W, 6)`` with ``pc_columns``: then also w.r.t. the PC's three components).

        The derivative is taken w.r.t. the angles ``δ`` (radians) of a rotation
        applied on the left, ``q ← exp(δ) q``. A pixel's crystal direction
        ``c`` then moves by ``δ × c``, so its derivative is ``c × ∇c``, with
        ``∇c`` the gradient of the look-up w.r.t. ``c`` — one backward pass for
        all pixels, since each pixel depends on its own direction alone. The PC
        moves each pixel's ray ``r`` (unit ``d = r/|r|``, ``c = R d``) by a fixed
        ``m_k`` per unit of component ``k``, so ``∂I/∂pc_k = g·(m_k − d (d·m_k))/|r|``
        with ``g = Rᵀ∇c``: the same backward pass serves (instead of three more
        projections for finite differences).
        """
        if pc_columns:
            pc = self.default_pc if pc is None else pc.to(self.u)
            rays = self._rays(pc)
            length = rays.norm(dim=-1, keepdim=True)
            directions = rays / length
            rot = quaternion_to_matrix(quaternions.to(self.u))  # (B, 3, 3)
            crystal = directions @ rot.transpose(-1, -2)
        else:
            crystal = self.crystal_directions(quaternions, pc)
        crystal = crystal.detach()

        def total(c: Tensor) -> tuple[Tensor, Tensor]:
            intensity = self._sample(c)
            return intensity.sum(), intensity

        # torch.func rather than autograd.grad: the same backward pass, but one that
        # torch.compile can trace (see refine), and that works under no_grad.
        grad, (_, intensity) = torch.func.grad_and_value(total, has_aux=True)(crystal)
        jac = torch.linalg.cross(crystal, grad, dim=-1)  # (B, P, 3)
        if pc_columns:
            g = grad @ rot  # the gradient w.r.t. the sample-frame direction d
            m = self._ray_pc_derivatives()
            along = (g * directions).sum(-1, keepdim=True)  # g·d
            jac_pc = (g @ m.T - along * (directions @ m.T)) / length  # (B, P, 3)
            jac = torch.cat((jac, jac_pc), dim=-1)
        shape = self.geometry.shape
        return intensity.reshape(-1, *shape), jac.reshape(-1, *shape, jac.shape[-1])

    def _sample(self, crystal: Tensor) -> Tensor:
        """Bilinear look-up of crystal directions ``(B, P, 3)`` → intensities ``(B, P)``.

        Eager, ``grid_sample``; compiled, the same bilinear weights written out
        (:func:`_bilinear`), which the compiler fuses with the Lambert map and,
        in :meth:`with_jacobian`, with the gradient — where ``grid_sample``'s
        backward stayed a separate kernel (256 patterns, compiled, interleaved
        runs: forward 15.0 → 11.1 ms, a dose-15 refinement 0.29 → 0.265 s).
        """
        n = self.texture.shape[-1]
        xy = lambert_coordinates(crystal)  # (B, P, 2) in [-1, 1]
        # Row position in the stacked texture (lower hemisphere: offset by N).
        row = (xy[..., 1] + 1) * ((n - 1) / 2) + n * (crystal[..., 2] < 0)
        if torch.compiler.is_compiling():
            return _bilinear(self.texture[0, 0], (xy[..., 0] + 1) * ((n - 1) / 2), row)
        grid_y = row * (2 / (2 * n - 1)) - 1  # back to grid_sample's [-1, 1]
        grid = torch.stack((xy[..., 0], grid_y), dim=-1)[None]  # (1, B, P, 2)
        out = torch.nn.functional.grid_sample(
            self.texture.to(grid.dtype),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=True,
        )
        return out[0, 0]  # (B, P)


def _bilinear(texture: Tensor, col: Tensor, row: Tensor) -> Tensor:
    """``texture (H, W)`` at pixel positions ``col, row``, clamped to its border — what
    ``grid_sample(..., "bilinear", "border", align_corners=True)`` computes, as four
    gathers and their weights (differentiable in the positions)."""
    h, w = texture.shape
    col = col.clamp(0, w - 1)
    row = row.clamp(0, h - 1)
    c0 = col.detach().floor().clamp(max=w - 2)
    r0 = row.detach().floor().clamp(max=h - 2)
    fc, fr = col - c0, row - r0
    i = r0.long() * w + c0.long()
    flat = texture.reshape(-1).to(col.dtype)
    top = flat[i] + fc * (flat[i + 1] - flat[i])
    bottom = flat[i + w] + fc * (flat[i + w + 1] - flat[i + w])
    return top + fr * (bottom - top)
