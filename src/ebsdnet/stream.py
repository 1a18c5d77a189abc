"""Simulated training data, made on the fly, and the dictionary writer.

:class:`PatternStream` is an ``IterableDataset`` of batches: random
orientations, pattern centres jittered around the nominal one, patterns from
the :class:`~ebsdnet.projector.Projector`, degraded like a real detector's
(:func:`degrade`), then conditioned by :func:`~ebsdnet.preprocess.preprocess`.
Batch ``k`` is drawn from a generator seeded by ``(seed, k)``, so the stream is
the same whatever the number of DataLoader workers.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebsdnet.preprocess import PreprocessConfig, gaussian_blur, preprocess
from ebsdnet.projector import (
    DetectorGeometry,
    MasterPattern,
    Projector,
    resample_to_pattern_centre,
)
from ebsdnet.rotations import orix_point_group, quaternion_to_euler, same_laue_group

__all__ = [
    "REALISTIC",
    "DegradationConfig",
    "PatternStream",
    "correlated_noise",
    "degrade",
    "lens_distortion",
    "random_quaternions",
    "residual_plane",
    "sample_fundamental_zone",
    "write_dictionary",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DegradationConfig:
    """How far simulated patterns are pushed towards real detector patterns.

    Parameters
    ----------
    dose
        Range of mean electron counts per pixel (log-uniform). Around 10 the
        bands are barely visible (NCC with the clean pattern ≈ 0.15), around
        100 they are clear but grainy (≈ 0.4); ``None`` leaves patterns
        noise-free.
    contrast
        Range of the band contrast relative to the smooth background.
    blur
        Range of the point-spread blur, pixels.
    background_strength
        Peak-to-edge fall-off of the smooth background/vignetting, 0..1.
    falloff
        Range (log-uniform) of the width of the band contrast's radial fall-off,
        as a fraction of the detector's half-width, about a point near its
        centre: real bands fade towards the detector edges, where electrons
        leave the sample at grazing angles. ``None``: uniform contrast.
    pc_jitter
        Half-width of the uniform pattern-centre jitter (Bruker units).
    bad_pixel_fraction
        Share of hot (saturated) and dead (zero) pixels.
    clean_fraction
        Share of patterns left noise-free (only the PC jitter applies).
    gamma
        Range (log-uniform) of the camera's response exponent: the recorded
        intensity is ``signal ** gamma`` (the signal scaled to a peak of 1).
        ``None``: linear.
    distortion
        Range of the radial lens-distortion coefficient ``k``: the pixel at
        ``u`` (centred, a unit half-diagonal) records the undistorted image at
        ``u · (1 + k |u|²)`` — barrel for ``k < 0``. ``None``: none.
    background_residual
        Largest amplitude of a random plane added to the signal (relative to
        its peak of 1): what is left of a background that drifts across the
        scan after the file's static background is removed. 0: none.
    correlated_noise
        Range of the standard deviation of additive Gaussian noise correlated
        over ``noise_sigma`` pixels, relative to the band signal's (its std over
        the pattern). Real patterns carry such noise beside the shot noise
        (phosphor grain, fibre optics, band profiles no simulation matches):
        what is left of kikuchipy's nine real Ni patterns after the best-fitting
        simulated pattern correlates 0.35, 0.19, 0.13 at 1, 2, 3 pixels, as 60%
        white and 40% blurred by σ ≈ 1.5 px would, and made the shipped CNN 3–4
        times less accurate than white noise of the same strength. ``None``: none.
    noise_sigma
        Range (log-uniform) of that noise's correlation length σ, pixels.
    pc_error
        Half-width of a uniform error in the PC the patterns are *said* to have
        (resampled from it to the nominal PC, as ``index`` does with the file's
        PC) against the one they were simulated at: a PC known only roughly.
    """

    dose: tuple[float, float] | None = (8.0, 3000.0)
    contrast: tuple[float, float] = (0.25, 0.6)
    blur: tuple[float, float] = (0.0, 1.0)
    background_strength: tuple[float, float] = (0.0, 0.6)
    falloff: tuple[float, float] | None = None
    pc_jitter: float = 0.03
    bad_pixel_fraction: float = 0.001
    clean_fraction: float = 0.0
    gamma: tuple[float, float] | None = None
    distortion: tuple[float, float] | None = None
    background_residual: float = 0.0
    pc_error: float = 0.0
    correlated_noise: tuple[float, float] | None = None
    noise_sigma: tuple[float, float] = (0.7, 3.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The conditions in words, for model cards.

        Examples
        --------
        >>> NOISE_FREE.describe()
        'no noise, nominal PC'
        >>> print(DegradationConfig(dose=(100.0, 100.0)).describe())
        dose 100 counts/pixel, band contrast 0.25–0.6, background fall-off 0–0.6,
        blur 0–1 px, PC jitter ±0.03, hot and dead pixels 0.1%
        """
        if self.dose is None and self.contrast == (1.0, 1.0) and self.blur[1] == 0:
            parts = ["no noise"]
        else:
            parts = [] if self.dose is None else [f"dose {_span(self.dose)} counts/pixel"]
            parts.append(f"band contrast {_span(self.contrast)}")
        if self.falloff is not None:
            parts.append(
                f"band contrast fading towards the edges (width {_span(self.falloff)} of the "
                "half-width)"
            )
        if self.background_strength[1] > 0:
            parts.append(f"background fall-off {_span(self.background_strength)}")
        if self.blur[1] > 0:
            parts.append(f"blur {_span(self.blur)} px")
        if self.gamma is not None:
            parts.append(f"gamma {_span(self.gamma)}")
        if self.distortion is not None:
            parts.append(f"lens distortion k {_span(self.distortion)}")
        if self.background_residual > 0:
            parts.append(f"background residual ≤ {self.background_residual:g}")
        if self.correlated_noise is not None:
            parts.append(
                f"correlated noise {_span(self.correlated_noise)} of the band signal "
                f"(σ {_span(self.noise_sigma)} px)"
            )
        parts.append(f"PC jitter ±{self.pc_jitter:g}" if self.pc_jitter else "nominal PC")
        if self.pc_error > 0:
            parts.append(f"PC stated wrong by ≤ {self.pc_error:g}")
        if self.bad_pixel_fraction > 0:
            parts.append(f"hot and dead pixels {100 * self.bad_pixel_fraction:g}%")
        if self.clean_fraction > 0:
            parts.append(f"{100 * self.clean_fraction:g}% left noise-free")
        return ", ".join(parts)


def _span(lo_hi: tuple[float, float]) -> str:
    lo, hi = lo_hi
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


#: A camera, not a simulation: the ranges ``train --camera realistic`` draws from. Each
#: is wider than what one detector shows, so that the network cannot lean on any of
#: them: PSF up to 2 px, gamma 0.6–1.6, barrel or pincushion distortion, band
#: contrast fading towards the edges, a drifting background's residual, noise
#: correlated over pixels, hot and dead pixels, and a PC known only to ±0.006.
REALISTIC = DegradationConfig(
    dose=(8.0, 3000.0), contrast=(0.15, 0.6), blur=(0.0, 2.0), background_strength=(0.0, 0.7),
    falloff=(0.5, 2.0), pc_jitter=0.03, bad_pixel_fraction=0.002, clean_fraction=0.05,
    gamma=(0.6, 1.6), distortion=(-0.06, 0.03), background_residual=0.3, pc_error=0.006,
    correlated_noise=(0.0, 1.5), noise_sigma=(0.7, 3.0),
)  # fmt: skip

NOISE_FREE = DegradationConfig(
    dose=None, contrast=(1.0, 1.0), blur=(0.0, 0.0), background_strength=(0.0, 0.0),
    pc_jitter=0.0, bad_pixel_fraction=0.0,
)  # fmt: skip


def random_quaternions(n: int, generator: torch.Generator) -> Tensor:
    """``n`` rotations uniform on SO(3) (normalised 4D Gaussians), ``w >= 0``."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64, device=generator.device)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[:, :1] < 0, -q, q).float()


def sample_fundamental_zone(resolution_deg: float, point_group: str) -> np.ndarray:
    """Orientations uniform in the fundamental zone (orix's cubochoric sampling).

    The same set as ``orix.sampling.get_sample_fundamental``, built one slab
    of the cubochoric cube at a time with orix's own conversions: orix holds
    the whole SO(3) sample at once (≈1.9 GB at 1.36°), this holds one slab.

    Returns quaternions ``(N, 4)``, float64.
    """
    from orix.quaternion import OrientationRegion, Rotation
    from orix.quaternion._conversions import ax2qu_2d, cu2ro_2d, ro2ax_2d
    from orix.sampling._cubochoric_sampling import resolution_to_semi_edge_steps

    group = orix_point_group(point_group).laue_proper_subgroup
    region = OrientationRegion.from_symmetry(group)
    steps = resolution_to_semi_edge_steps(resolution_deg)
    # orix's grid S_000(N): indices -N+1..N along each edge of the cube.
    coords = np.arange(-steps + 1, steps + 1) * (0.5 * np.pi ** (2 / 3) / steps)
    yy, zz = (a.ravel() for a in np.meshgrid(coords, coords, indexing="ij"))
    kept = []
    for x in coords:
        cube = np.column_stack((np.full_like(yy, x), yy, zz))
        slab = Rotation(ax2qu_2d(ro2ax_2d(cu2ro_2d(cube))))
        kept.append(slab.data[slab < region])
    return np.asarray(Rotation(np.concatenate(kept)).unique().data, dtype=np.float64)


def _uniform(lo_hi: tuple[float, float], n: int, g: torch.Generator) -> Tensor:
    lo, hi = lo_hi
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


def _smooth_background(n: int, shape: tuple[int, int], strength: Tensor, g: torch.Generator):
    """Broad 2D Gaussian hump at a random place: the detector's brighter centre."""
    rows, cols = shape
    yy = torch.linspace(0, 1, rows, device=g.device)[:, None]
    xx = torch.linspace(0, 1, cols, device=g.device)[None, :]
    cy = 0.2 + 0.6 * torch.rand(n, 1, 1, generator=g, device=g.device)
    cx = 0.2 + 0.6 * torch.rand(n, 1, 1, generator=g, device=g.device)
    width = 0.4 + 0.4 * torch.rand(n, 1, 1, generator=g, device=g.device)
    hump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
    return 1 - strength[:, None, None] * (1 - hump)


def _contrast_falloff(n: int, shape: tuple[int, int], width: Tensor, g: torch.Generator):
    """Gaussian fall-off of band contrast about a point near the detector centre."""
    rows, cols = shape
    yy = torch.linspace(-1, 1, rows, device=g.device)[:, None]
    xx = torch.linspace(-1, 1, cols, device=g.device)[None, :]
    cy = 0.6 * torch.rand(n, 1, 1, generator=g, device=g.device) - 0.3
    cx = 0.6 * torch.rand(n, 1, 1, generator=g, device=g.device) - 0.3
    r2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return torch.exp(-r2 / (2 * width[:, None, None] ** 2))


def lens_distortion(patterns: Tensor, k: Tensor) -> Tensor:
    """Radial lens distortion of ``(B, H, W)`` patterns, one coefficient per pattern.

    The output pixel at ``u`` (centred coordinates scaled so that the corners lie
    at ``|u| = 1``) takes the input's value at ``u · (1 + k |u|²)``, bilinearly;
    beyond the edge the nearest edge value.
    """
    h, w = patterns.shape[-2:]
    dev = patterns.device
    half = math.hypot(h - 1, w - 1) / 2  # pixels from the centre to a corner
    yy = (torch.arange(h, device=dev) - (h - 1) / 2)[:, None].expand(h, w) / half
    xx = (torch.arange(w, device=dev) - (w - 1) / 2)[None, :].expand(h, w) / half
    factor = 1 + k.to(patterns)[:, None, None] * (xx**2 + yy**2)  # (B, H, W)
    # grid_sample's coordinates, align_corners=True: -1 and 1 are the edge pixels' centres.
    gx = xx * factor * half / ((w - 1) / 2)
    gy = yy * factor * half / ((h - 1) / 2)
    grid = torch.stack((gx, gy), dim=-1)
    out = torch.nn.functional.grid_sample(
        patterns[:, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return out[:, 0]


def residual_plane(n: int, shape: tuple[int, int], amplitude: Tensor, g: torch.Generator):
    """Random planes ``a + b·x + c·y`` on ``x, y ∈ [-1, 1]``, ``(n, H, W)``, each with
    its largest absolute value (at a corner) equal to its ``amplitude``."""
    rows, cols = shape
    yy = torch.linspace(-1, 1, rows, device=g.device)[:, None]
    xx = torch.linspace(-1, 1, cols, device=g.device)[None, :]
    abc = 2 * torch.rand(n, 3, generator=g, device=g.device) - 1
    plane = abc[:, :1, None] + abc[:, 1:2, None] * xx + abc[:, 2:, None] * yy
    peak = plane.abs().amax((-2, -1), keepdim=True).clamp_min(1e-6)
    return plane * (amplitude[:, None, None] / peak)


def correlated_noise(n: int, shape: tuple[int, int], sigma: Tensor, g: torch.Generator):
    """Gaussian noise ``(n, H, W)`` blurred by ``sigma`` pixels (one per pattern), scaled
    to unit standard deviation over each pattern."""
    white = torch.randn(n, *shape, generator=g, device=g.device)
    field = gaussian_blur(white, sigma)
    field = field - field.mean((-2, -1), keepdim=True)
    return field / field.std((-2, -1), keepdim=True).clamp_min(1e-6)


def degrade(clean: Tensor, config: DegradationConfig, generator: torch.Generator) -> Tensor:
    """Turn clean simulated patterns ``(B, H, W)`` into detector-like raw counts.

    Lens distortion of the bands, band contrast (optionally fading towards
    the edges) on a smooth background, point-spread blur, the camera's gamma,
    a drifting background's residual, Poisson shot noise at a random dose,
    noise correlated over pixels, then hot and dead pixels. The output is
    float32 raw intensity, to be passed through
    :func:`~ebsdnet.preprocess.preprocess`.
    """
    b = clean.shape[0]
    g = generator
    lo = clean.amin((-2, -1), keepdim=True)
    hi = clean.amax((-2, -1), keepdim=True)
    bands = (clean - lo) / (hi - lo).clamp_min(1e-6)  # (B, H, W) in [0, 1]
    if config.distortion is not None:
        bands = lens_distortion(bands, _uniform(config.distortion, b, g))
    contrast = _uniform(config.contrast, b, g)[:, None, None]
    if config.falloff is not None:
        lo_w, hi_w = config.falloff
        width = torch.exp(_uniform((math.log(lo_w), math.log(hi_w)), b, g))
        contrast = contrast * _contrast_falloff(b, clean.shape[-2:], width, g)
    background = _smooth_background(
        b, clean.shape[-2:], _uniform(config.background_strength, b, g), g
    )
    signal = background * (1 - contrast + contrast * bands)
    sigma = _uniform(config.blur, b, g)
    signal = gaussian_blur(signal, sigma)
    if config.gamma is not None:
        lo_g, hi_g = config.gamma
        gamma = torch.exp(_uniform((math.log(lo_g), math.log(hi_g)), b, g))[:, None, None]
        peak = signal.amax((-2, -1), keepdim=True).clamp_min(1e-6)
        signal = (signal.clamp_min(0) / peak) ** gamma
    if config.background_residual > 0:
        amplitude = _uniform((0.0, config.background_residual), b, g)
        residual = residual_plane(b, signal.shape[-2:], amplitude, g)
        signal = (signal + residual).clamp_min(0)
    if config.dose is not None:
        log_dose = _uniform((math.log(config.dose[0]), math.log(config.dose[1])), b, g)
        dose = torch.exp(log_dose)[:, None, None]
        signal = torch.poisson(signal.clamp_min(0) * dose, generator=g) / dose
    if config.correlated_noise is not None:
        band_std = (background * contrast * bands).std((-2, -1), keepdim=True)
        amplitude = _uniform(config.correlated_noise, b, g)[:, None, None] * band_std
        lo_s, hi_s = config.noise_sigma
        sigma = torch.exp(_uniform((math.log(lo_s), math.log(hi_s)), b, g))
        signal = signal + amplitude * correlated_noise(b, signal.shape[-2:], sigma, g)
    if config.bad_pixel_fraction > 0:
        u = torch.rand(signal.shape, generator=g, device=g.device)
        top = signal.amax((-2, -1), keepdim=True)
        signal = torch.where(u < config.bad_pixel_fraction / 2, top * 4, signal)
        signal = torch.where(
            u > 1 - config.bad_pixel_fraction / 2, torch.zeros_like(signal), signal
        )
    return signal.float()


class PatternStream(torch.utils.data.IterableDataset):
    """Endless (or ``n_batches``-long) stream of simulated, degraded, preprocessed batches.

    Each item is a dict ``{"patterns": (B, H, W), "quaternions": (B, 4), "pc": (B, 3)}``.
    Use with ``DataLoader(stream, batch_size=None, num_workers=...)``. With
    ``at_nominal_pc`` the patterns, simulated at jittered pattern centres, come
    resampled to the geometry's own PC, as :func:`ebsdnet.index` shows them to
    the network (``pc`` still says where each was simulated).

    ``device`` is where batches are made and returned: the projector, the
    degradations and the conditioning are torch, so they run on a GPU too (one
    CPU process makes ≈2,000 60×60 patterns/s, too few to keep a GPU's training
    steps busy; the rate on a GPU is not measured yet). Batches are reproducible
    per device; CPU and CUDA random numbers differ.

    ``others``: more master patterns of the same phase (say a kinematical one
    beside the dynamical one); each pattern is drawn from one of them with
    probability ``other_fraction`` (uniform among them), else from
    ``master_pattern``. A ``degradation`` with a ``pc_error`` resamples each
    pattern from a PC that is off its true one by up to that much (it needs
    ``at_nominal_pc``).

    Examples
    --------
    >>> s = PatternStream(batch_size=4, n_batches=1, seed=1)
    >>> next(iter(s))["patterns"].shape
    torch.Size([4, 60, 60])
    """

    def __init__(
        self,
        master_pattern: MasterPattern | None = None,
        geometry: DetectorGeometry = DetectorGeometry(),
        batch_size: int = 256,
        degradation: DegradationConfig = DegradationConfig(),
        preprocessing: PreprocessConfig = PreprocessConfig(),
        seed: int = 0,
        n_batches: int | None = None,
        first_batch: int = 0,
        at_nominal_pc: bool = False,
        device: torch.device | str = "cpu",
        others: tuple[MasterPattern, ...] = (),
        other_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        self.master_pattern = master_pattern or MasterPattern.nickel()
        if degradation.pc_error > 0 and not at_nominal_pc:
            raise ValueError("a PC error is what resampling to the nominal PC gets wrong: "
                             "it needs at_nominal_pc")  # fmt: skip
        if not all(
            same_laue_group(o.point_group, self.master_pattern.point_group) for o in others
        ):
            raise ValueError(
                "every master pattern of a stream must be of one Laue group (point group)"
            )
        self.geometry = geometry
        self.batch_size = batch_size
        self.degradation = degradation
        self.preprocessing = preprocessing
        self.seed = seed
        self.n_batches = n_batches
        self.first_batch = first_batch
        self.at_nominal_pc = at_nominal_pc
        self.device = torch.device(device)
        self.others = tuple(others)
        self.other_fraction = other_fraction
        self._projector: Projector | None = None
        self._other_projectors: list[Projector] = []

    def batch(self, k: int) -> dict[str, Tensor]:
        """Batch number ``k``: the same tensors every time for the same seed."""
        if self._projector is None:  # built lazily: one per worker process
            self._projector = Projector(self.master_pattern, self.geometry).to(self.device)
            self._other_projectors = [
                Projector(o, self.geometry).to(self.device) for o in self.others
            ]
        g = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + k)
        b = self.batch_size
        q = random_quaternions(b, g)
        jitter = self.degradation.pc_jitter
        shift = 2 * torch.rand(b, 3, generator=g, device=g.device) - 1
        pc = self._projector.default_pc + jitter * shift
        with torch.no_grad():
            clean = self._projector(q, pc)
            if self._other_projectors:  # some patterns from another master pattern
                source = self._pick_sources(b, g)
                for k, projector in enumerate(self._other_projectors, start=1):
                    mine = (source == k).nonzero()[:, 0]
                    if len(mine):
                        clean[mine] = projector(q[mine], pc[mine])
            raw = degrade(clean, self.degradation, g)
            keep = torch.rand(b, generator=g, device=g.device) < self.degradation.clean_fraction
            raw = torch.where(keep[:, None, None], clean, raw)
            patterns = preprocess(raw, self.preprocessing)
            if self.at_nominal_pc:
                stated = pc
                if self.degradation.pc_error > 0:
                    error = 2 * torch.rand(b, 3, generator=g, device=g.device) - 1
                    stated = pc + self.degradation.pc_error * error
                patterns = resample_to_pattern_centre(patterns, stated, self._projector.default_pc)
        return {"patterns": patterns, "quaternions": q, "pc": pc}

    def _pick_sources(self, b: int, g: torch.Generator) -> Tensor:
        """Per pattern: 0 for ``master_pattern``, ``k ≥ 1`` for ``others[k - 1]``."""
        other = torch.rand(b, generator=g, device=g.device) < self.other_fraction
        which = torch.randint(len(self.others), (b,), generator=g, device=g.device)
        return torch.where(other, which + 1, torch.zeros_like(which))

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = self.first_batch + worker
        stop = None if self.n_batches is None else self.first_batch + self.n_batches
        while stop is None or k < stop:
            yield self.batch(k)
            k += n_workers


def write_dictionary(
    path: str | Path,
    quaternions: np.ndarray,
    master_pattern: MasterPattern,
    geometry: DetectorGeometry,
    dtype: str = "uint8",
    batch_size: int = 2048,
    show_progressbar: bool = True,
    attrs: dict | None = None,
) -> Path:
    """Write a pattern–orientation dictionary to HDF5, one batch at a time.

    Datasets: ``patterns`` ``(N, H, W)`` (raw projected intensities; ``uint8``
    rescales each pattern to 0..255) and ``euler_deg`` ``(N, 3)`` (Bunge,
    degrees, orix/kikuchipy sample frame). Attributes hold the detector, the
    master pattern's point group and SHA-256. Memory stays at one batch. The
    file appears under its final name only once complete.
    """
    import h5py
    from tqdm.auto import tqdm

    path = Path(path)
    if dtype not in ("uint8", "float32"):
        raise ValueError(f"dtype must be 'uint8' or 'float32', got {dtype!r}")
    projector = Projector(master_pattern, geometry)
    n = len(quaternions)
    rows, cols = geometry.shape
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        pats = f.create_dataset(
            "patterns", (n, rows, cols), dtype=dtype, chunks=(min(n, 256), rows, cols)
        )
        eul = f.create_dataset("euler_deg", (n, 3), dtype="float64")
        f.attrs.update(
            {
                "detector_shape": geometry.shape,
                "pc_bruker": geometry.pc,
                "sample_tilt": geometry.sample_tilt,
                "tilt": geometry.tilt,
                "azimuthal": geometry.azimuthal,
                "twist": geometry.twist,
                "point_group": master_pattern.point_group,
                "phase": master_pattern.phase_name,
                "master_pattern_sha256": master_pattern.sha256,
                **(attrs or {}),
            }
        )
        bar = tqdm(total=n, unit="pattern", disable=not show_progressbar, desc="simulate")
        for start in range(0, n, batch_size):
            q = torch.from_numpy(quaternions[start : start + batch_size])
            with torch.no_grad():
                p = projector(q.float())
            if dtype == "uint8":
                lo = p.amin((-2, -1), keepdim=True)
                hi = p.amax((-2, -1), keepdim=True)
                p = torch.round(255 * (p - lo) / (hi - lo).clamp_min(1e-6)).to(torch.uint8)
            pats[start : start + len(q)] = p.numpy()
            eul[start : start + len(q)] = np.rad2deg(quaternion_to_euler(q).numpy())
            bar.update(len(q))
        bar.close()
    tmp.replace(path)
    return path
