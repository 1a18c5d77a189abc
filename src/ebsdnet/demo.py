"""``ebsdnet demo``: what the package can do today, on kikuchipy's shipped Ni data.

It projects patterns with the torch projector beside kikuchipy's own
``get_patterns`` (agreement and speed), and shows the simulated training
stream from noise-free down to the lowest dose, as PNG grids.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ebsdnet.metrics import normalised_cross_correlation
from ebsdnet.plots import pattern_grid
from ebsdnet.preprocess import preprocess
from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
from ebsdnet.stream import DegradationConfig, degrade, random_quaternions

__all__ = ["run_demo"]

log = logging.getLogger(__name__)


def _projector_check(mp: MasterPattern, geometry: DetectorGeometry, n: int) -> dict:
    """Agreement with kikuchipy and speed of both, on ``n`` random orientations."""
    import kikuchipy as kp
    from orix.quaternion import Rotation

    g = torch.Generator().manual_seed(0)
    q = random_quaternions(n, g)
    projector = Projector(mp, geometry)
    mp_kp = kp.data.nickel_ebsd_master_pattern_small(projection="lambert", hemisphere="both")
    det = geometry.to_kikuchipy()
    rot = Rotation(q.double().numpy())
    mp_kp.get_patterns(rot[:8], det, compute=True, show_progressbar=False)  # numba warm-up
    with torch.no_grad():
        projector(q[:8])
        t0 = time.perf_counter()
        ours = projector(q)
        t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = mp_kp.get_patterns(rot, det, compute=True, show_progressbar=False).data
    t_kp = time.perf_counter() - t0
    ncc = normalised_cross_correlation(ours, torch.from_numpy(ref))
    return {
        "n": n,
        "ncc_min": float(ncc.min()),
        "ours_per_s": n / t_ours,
        "kikuchipy_per_s": n / t_kp,
        "ours": ours[:6].numpy(),
        "kikuchipy": ref[:6],
    }


def run_demo(out: Path, quick: bool = True) -> None:
    """Write the demo's figures to ``out`` and print its findings."""
    out.mkdir(parents=True, exist_ok=True)
    mp = MasterPattern.nickel()
    geometry = DetectorGeometry()
    check = _projector_check(mp, geometry, n=500 if quick else 5000)
    print(
        f"projector vs kikuchipy get_patterns on {check['n']} random orientations, 60×60:\n"
        f"  lowest normalised cross-correlation {check['ncc_min']:.6f}\n"
        f"  ebsdnet (torch, {torch.get_num_threads()} threads) {check['ours_per_s']:,.0f} "
        f"patterns/s; kikuchipy (numba) {check['kikuchipy_per_s']:,.0f} patterns/s"
    )
    path = pattern_grid(
        [check["kikuchipy"], check["ours"]],
        out / "projector_vs_kikuchipy.png",
        row_labels=["kikuchipy", "ebsdnet"],
        title="Same orientations, two projectors",
    )
    print(f"  wrote {path}")

    g = torch.Generator().manual_seed(1)
    q = random_quaternions(6, g)
    with torch.no_grad():
        clean = Projector(mp, geometry)(q)
    rows, labels = [clean.numpy()], ["clean"]
    for dose in (1000.0, 100.0, 10.0):
        cfg = DegradationConfig(dose=(dose, dose), pc_jitter=0.0)
        raw = degrade(clean, cfg, torch.Generator().manual_seed(2))
        rows.append(preprocess(raw).numpy())
        labels.append(f"dose {dose:g}")
    path = pattern_grid(
        rows, out / "stream_doses.png", row_labels=labels,
        title="Training stream: one orientation per column, falling dose",
    )  # fmt: skip
    print(f"simulated training patterns at three doses: wrote {path}")
    np.save(out / "stream_quaternions.npy", q.numpy())
