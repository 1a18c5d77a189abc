"""Projector speed beside kikuchipy's ``get_patterns``, same orientations, same run.

    python benchmarks/projector.py [--n 4000] [--write]

Patterns per second at 60×60 on kikuchipy's shipped Ni master pattern (symmetrised,
as ebsdnet loads it, and handed to kikuchipy as such):
kikuchipy (numba, warmed up), ebsdnet eager forward, forward+backward (the
gradient w.r.t. rotations that refinement needs), and ``torch.compile``d
forward. With ``--write`` the table replaces its section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from _report import machine, publish
from ebsdnet.metrics import normalised_cross_correlation
from ebsdnet.projector import DetectorGeometry, MasterPattern, Projector
from ebsdnet.stream import random_quaternions


def best_rate(fn, n: int, repeats: int = 5) -> float:
    """Patterns/s of the fastest of ``repeats`` runs (after the caller's warm-up)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()

    from orix.quaternion import Rotation

    n = args.n
    geometry = DetectorGeometry()
    # Both read the texture ebsdnet uses: kikuchipy's Ni master pattern, symmetrised.
    mp = MasterPattern.nickel()
    mp_kp = mp.to_kikuchipy()
    projector = Projector(mp, geometry)
    q = random_quaternions(n, torch.Generator().manual_seed(0))
    rot = Rotation(q.double().numpy())
    det = geometry.to_kikuchipy()

    def kikuchipy_run():
        return mp_kp.get_patterns(rot, det, compute=True, show_progressbar=False).data

    chunks = q.split(args.batch_size)

    def forward():
        with torch.no_grad():
            return torch.cat([projector(c) for c in chunks])

    def forward_backward():
        for c in chunks:
            projector(c.clone().requires_grad_()).square().sum().backward()

    compiled = torch.compile(projector, dynamic=False)

    def compiled_forward():
        with torch.no_grad():
            return torch.cat([compiled(c) for c in chunks])

    t0 = time.perf_counter()
    compiled_forward()
    compile_s = time.perf_counter() - t0
    for fn in (kikuchipy_run, forward, forward_backward):
        fn()  # warm-up: numba caches, torch allocator
    rows = [
        ("kikuchipy `get_patterns` (numba)", best_rate(kikuchipy_run, n)),
        ("ebsdnet projector, eager, forward", best_rate(forward, n)),
        ("ebsdnet projector, eager, forward + backward", best_rate(forward_backward, n)),
        (f"ebsdnet projector, `torch.compile` forward (compile {compile_s:.0f} s once)",
         best_rate(compiled_forward, n)),
    ]  # fmt: skip
    ncc = normalised_cross_correlation(forward(), torch.from_numpy(kikuchipy_run()))
    kp_rate = rows[0][1]
    lines = [
        "## Projector: patterns/s at 60×60 (Ni, kikuchipy's shipped master pattern, symmetrised)",
        "",
        f"Measured by `python benchmarks/projector.py --write` on: {machine()}.",
        f"{n:,} random orientations in batches of {args.batch_size} (kikuchipy: its own "
        f"chunks), best of 5 runs after a warm-up; lowest NCC between "
        f"ebsdnet's and kikuchipy's patterns: {float(ncc.min()):.6f}.",
        "",
        "| projector | patterns/s | × kikuchipy |",
        "|---|---:|---:|",
        *[f"| {name} | {rate:,.0f} | {rate / kp_rate:.2f} |" for name, rate in rows],
    ]
    publish("projector", lines, args.write)


if __name__ == "__main__":
    main()
