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
from ebsdnet.rotations import orix_point_group, quaternion_to_euler

__all__ = [
    "DegradationConfig",
    "PatternStream",
    "degrade",
    "random_quaternions",
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
    """

    dose: tuple[float, float] | None = (8.0, 3000.0)
    contrast: tuple[float, float] = (0.25, 0.6)
    blur: tuple[float, float] = (0.0, 1.0)
    background_strength: tuple[float, float] = (0.0, 0.6)
    falloff: tuple[float, float] | None = None
    pc_jitter: float = 0.03
    bad_pixel_fraction: float = 0.001
    clean_fraction: float = 0.0

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
        parts.append(f"PC jitter ±{self.pc_jitter:g}" if self.pc_jitter else "nominal PC")
        if self.bad_pixel_fraction > 0:
            parts.append(f"hot and dead pixels {100 * self.bad_pixel_fraction:g}%")
        if self.clean_fraction > 0:
            parts.append(f"{100 * self.clean_fraction:g}% left noise-free")
        return ", ".join(parts)


def _span(lo_hi: tuple[float, float]) -> str:
    lo, hi = lo_hi
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


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


def degrade(clean: Tensor, config: DegradationConfig, generator: torch.Generator) -> Tensor:
    """Turn clean simulated patterns ``(B, H, W)`` into detector-like raw counts.

    Band contrast (optionally fading towards the edges) on a smooth
    background, point-spread blur, Poisson shot noise
    at a random dose, then hot and dead pixels. The output is float32 raw
    intensity, to be passed through :func:`~ebsdnet.preprocess.preprocess`.
    """
    b = clean.shape[0]
    g = generator
    lo = clean.amin((-2, -1), keepdim=True)
    hi = clean.amax((-2, -1), keepdim=True)
    bands = (clean - lo) / (hi - lo).clamp_min(1e-6)  # (B, H, W) in [0, 1]
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
    if config.dose is not None:
        log_dose = _uniform((math.log(config.dose[0]), math.log(config.dose[1])), b, g)
        dose = torch.exp(log_dose)[:, None, None]
        signal = torch.poisson(signal.clamp_min(0) * dose, generator=g) / dose
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
    ) -> None:
        super().__init__()
        self.master_pattern = master_pattern or MasterPattern.nickel()
        self.geometry = geometry
        self.batch_size = batch_size
        self.degradation = degradation
        self.preprocessing = preprocessing
        self.seed = seed
        self.n_batches = n_batches
        self.first_batch = first_batch
        self.at_nominal_pc = at_nominal_pc
        self.device = torch.device(device)
        self._projector: Projector | None = None

    def batch(self, k: int) -> dict[str, Tensor]:
        """Batch number ``k``: the same tensors every time for the same seed."""
        if self._projector is None:  # built lazily: one per worker process
            self._projector = Projector(self.master_pattern, self.geometry).to(self.device)
        g = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + k)
        b = self.batch_size
        q = random_quaternions(b, g)
        jitter = self.degradation.pc_jitter
        shift = 2 * torch.rand(b, 3, generator=g, device=g.device) - 1
        pc = self._projector.default_pc + jitter * shift
        with torch.no_grad():
            clean = self._projector(q, pc)
            raw = degrade(clean, self.degradation, g)
            keep = torch.rand(b, generator=g, device=g.device) < self.degradation.clean_fraction
            raw = torch.where(keep[:, None, None], clean, raw)
            patterns = preprocess(raw, self.preprocessing)
            if self.at_nominal_pc:
                patterns = resample_to_pattern_centre(patterns, pc, self._projector.default_pc)
        return {"patterns": patterns, "quaternions": q, "pc": pc}

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
