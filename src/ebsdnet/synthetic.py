"""Simulated polycrystal maps with known truth, for tests, the demo and benchmarks.

``simulate_map`` draws a Voronoi polycrystal (random grain orientations, a
small orientation gradient inside each grain), projects its patterns, puts
them on one fixed detector background, adds shot noise at a chosen dose, and
returns a kikuchipy ``EBSD`` signal whose ``xmap`` holds the true orientations
and whose ``static_background`` is the detector background (as real files
carry it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
from ebsdnet.rotations import (
    axis_angle_to_quaternion,
    quaternion_multiply,
    standardise_quaternion,
)
from ebsdnet.stream import random_quaternions

__all__ = ["detector_patterns", "polycrystal_orientations", "simulate_map", "static_background"]


def polycrystal_orientations(
    shape: tuple[int, int], n_grains: int, seed: int = 0, gradient_deg: float = 1.0
) -> tuple[torch.Tensor, np.ndarray]:
    """Quaternions ``(rows·cols, 4)`` of a Voronoi polycrystal and the grain of each pixel.

    Inside a grain the orientation turns by up to ``gradient_deg`` across the
    map, about an axis of its own (a smooth intragranular gradient).
    """
    g = torch.Generator().manual_seed(seed)
    rows, cols = shape
    centres = torch.rand(n_grains, 2, generator=g) * torch.tensor([rows, cols])
    yy, xx = torch.meshgrid(
        torch.arange(rows, dtype=torch.float32),
        torch.arange(cols, dtype=torch.float32),
        indexing="ij",
    )
    pos = torch.stack((yy.ravel(), xx.ravel()), dim=-1)  # (P, 2)
    grain = torch.cdist(pos, centres).argmin(-1)  # (P,)
    base = random_quaternions(n_grains, g)
    axes = torch.nn.functional.normalize(torch.randn(n_grains, 3, generator=g), dim=-1)
    # Angle grows linearly with the distance from the grain centre.
    dist = (pos - centres[grain]).norm(dim=-1) / max(rows, cols)
    turn = axis_angle_to_quaternion(axes[grain] * (math.radians(gradient_deg) * dist)[:, None])
    q = standardise_quaternion(quaternion_multiply(turn, base[grain]))
    return q, grain.numpy()


def _detector_background(shape: tuple[int, int]) -> torch.Tensor:
    """A fixed, smooth detector background: brighter centre, darker corners."""
    rows, cols = shape
    yy = torch.linspace(-1, 1, rows)[:, None]
    xx = torch.linspace(-1, 1, cols)[None, :]
    return 0.45 + 0.55 * torch.exp(-((xx - 0.1) ** 2 + (yy + 0.2) ** 2) / 1.2)


def detector_patterns(
    q: torch.Tensor,
    geometry: DetectorGeometry,
    master_pattern: MasterPattern,
    contrast: float = 0.5,
    dose: float | None = None,
    seed: int = 0,
    scale: float | None = None,
) -> tuple[np.ndarray, float]:
    """Patterns of orientations ``q`` as a detector records them: ``(N, h, w)`` uint8.

    Bands of the given ``contrast`` on the fixed detector background, Poisson
    noise at ``dose`` counts per pixel (``None``: none, seeded by ``seed``),
    times ``scale`` grey levels per unit intensity (default: the brightest pixel
    at 250). Returns the patterns and the scale, so that a map made block by
    block can keep one.
    """
    with torch.no_grad():
        projector = Projector(master_pattern, geometry)
        clean = torch.cat([projector(c) for c in q.split(1024)])
    lo = clean.amin((-2, -1), keepdim=True)
    hi = clean.amax((-2, -1), keepdim=True)
    bands = (clean - lo) / (hi - lo).clamp_min(1e-6)
    signal = _detector_background(geometry.shape) * (1 - contrast + contrast * bands)
    if dose is not None:
        g = torch.Generator().manual_seed(seed)
        signal = torch.poisson(signal * dose, generator=g) / dose
    scale = 250 / float(signal.max()) if scale is None else scale
    return (signal * scale).round().clamp(0, 255).to(torch.uint8).numpy(), scale


def static_background(shape: tuple[int, int], contrast: float, scale: float) -> np.ndarray:
    """The uint8 static background of patterns from :func:`detector_patterns`.

    The detector background at the bands' mean level (half the contrast), in
    the patterns' grey ``scale`` — what a real file's static background holds.
    """
    background = _detector_background(shape) * (1 - contrast / 2) * scale
    return background.round().to(torch.uint8).numpy()


def simulate_map(
    shape: tuple[int, int] = (10, 10),
    n_grains: int = 6,
    geometry: DetectorGeometry = DetectorGeometry(),
    dose: float | None = None,
    contrast: float = 0.5,
    seed: int = 0,
    master_pattern: MasterPattern | list[MasterPattern] | None = None,
    file_pc: tuple[float, float, float] | None = None,
    gradient_deg: float = 1.0,
):
    """A simulated polycrystal map as a kikuchipy ``EBSD`` signal (uint8) with truth.

    Parameters
    ----------
    shape
        Map ``(rows, cols)``.
    geometry
        The detector the patterns are made with (its ``pc`` is the true PC).
    dose
        Mean counts per pixel for Poisson noise; ``None`` for noise-free.
    master_pattern
        The phase's (default: kikuchipy's Ni), or a list of phases: grain ``g``
        is then of phase ``g mod len(list)``, and ``xmap`` holds every phase.
    file_pc
        The PC written into the signal's detector, when it should differ from
        the true one (a roughly known PC).

    Returns
    -------
    kikuchipy.signals.EBSD
        ``xmap`` holds the true orientations, ``static_background`` the detector
        background, ``detector`` the geometry (with ``file_pc`` when given).
    """
    import kikuchipy as kp
    from orix.crystal_map import CrystalMap, PhaseList
    from orix.quaternion import Rotation

    if master_pattern is None:
        master_pattern = MasterPattern.nickel()
    phases = list(master_pattern) if isinstance(master_pattern, list) else [master_pattern]
    q, grain = polycrystal_orientations(shape, n_grains, seed, gradient_deg)
    phase_id = grain % len(phases)
    data = np.zeros((len(q), *geometry.shape), dtype=np.uint8)
    scale = None
    for k, mp in enumerate(phases):
        points = np.flatnonzero(phase_id == k)
        if len(points):
            data[points], scale = detector_patterns(
                q[points], geometry, mp, contrast, dose, seed + 1 + k, scale
            )
    rows, cols = shape
    data = data.reshape(rows, cols, *geometry.shape)
    detector = geometry.to_kikuchipy(pc=file_pc)
    yy, xx = np.mgrid[0:rows, 0:cols]
    known = all(mp.phase is not None for mp in phases)
    xmap = CrystalMap(
        rotations=Rotation(q.double().numpy()),
        phase_id=phase_id,
        x=xx.ravel().astype(float),
        y=yy.ravel().astype(float),
        phase_list=PhaseList([mp.phase for mp in phases]) if known else None,
    )
    static = static_background(geometry.shape, contrast, scale)
    return kp.signals.EBSD(data, detector=detector, xmap=xmap, static_background=static)
