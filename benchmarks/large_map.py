"""Index a 1,000×1,000-pattern map (60×60 uint8, 3.6 GB) and record its peak memory.

    python benchmarks/large_map.py [--size 1000] [--dose 100] [--write] [--keep]

The map is written as kikuchipy h5ebsd block by block (a lazy signal whose
100×100 blocks are simulated when written: one 100×100 Ni polycrystal's
orientations tiled over the map, fresh Poisson noise in every block, so no two
patterns are the same). ``ebsdnet index`` then runs on it under
``/usr/bin/time -v`` with its defaults (refinement; ``torch.compile`` from
50,000 patterns); the report gives its peak resident memory, wall time,
patterns/s over the whole command (loading, compiling and writing the map
included) and the error against the truth. The files are deleted afterwards
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _report import machine, publish

BLOCK = 100
CONTRAST = 0.5


def write_map(path: Path, size: int, dose: float, seed: int = 7) -> np.ndarray:
    """Write the map; return its true quaternions ``(size², 4)`` (row-major)."""
    import dask
    import dask.array as da
    import kikuchipy as kp

    from ebsdnet.projector import DetectorGeometry, MasterPattern
    from ebsdnet.synthetic import detector_patterns, polycrystal_orientations, static_background

    if size % BLOCK:
        raise SystemExit(f"--size must be a multiple of {BLOCK}")
    geometry = DetectorGeometry()
    mp = MasterPattern.nickel()
    q_block, _ = polycrystal_orientations((BLOCK, BLOCK), n_grains=125, seed=seed)
    _, scale = detector_patterns(q_block[:256], geometry, mp, CONTRAST, dose, seed)
    scale *= 0.9  # headroom: other blocks' brightest pixels

    def block(i: int, j: int) -> np.ndarray:
        data, _ = detector_patterns(q_block, geometry, mp, CONTRAST, dose, seed + 1 + i * 997 + j)
        return data.reshape(BLOCK, BLOCK, *geometry.shape)

    shape = (BLOCK, BLOCK, *geometry.shape)
    tiles = size // BLOCK
    rows = [
        [da.from_delayed(dask.delayed(block)(i, j), shape, np.uint8) for j in range(tiles)]
        for i in range(tiles)
    ]
    data = da.block([[[[t]] for t in row] for row in rows])
    signal = kp.signals.LazyEBSD(
        data,
        detector=geometry.to_kikuchipy(),
        static_background=static_background(geometry.shape, CONTRAST, scale),
    )
    signal.save(path, overwrite=True)
    truth = q_block.reshape(BLOCK, BLOCK, 4).repeat(tiles, tiles, 1)
    return truth.reshape(-1, 4).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1000, help="map side (default 1000)")
    parser.add_argument("--dose", type=float, default=100.0)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep the map and the result")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time at /usr/bin/time (Debian package 'time')")
    folder = Path(tempfile.mkdtemp(prefix="ebsdnet-large-"))
    patterns, result = folder / "map.h5", folder / "indexed.h5"
    try:
        t0 = time.perf_counter()
        truth = write_map(patterns, args.size, args.dose)
        written_s = time.perf_counter() - t0
        gb = patterns.stat().st_size / 1e9
        print(f"wrote {patterns} ({gb:.2f} GB) in {written_s:.0f} s", flush=True)
        command = [sys.executable, "-m", "ebsdnet.cli", "index", str(patterns), "-o", str(result)]
        proc = subprocess.run(
            ["/usr/bin/time", "-v", *command],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        peak_mb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1])
        peak_mb /= 1024
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)[1]
        seconds = sum(float(x) * 60**i for i, x in enumerate(reversed(wall.split(":"))))
        from orix import io

        from ebsdnet.rotations import disorientation_deg

        xmap = io.load(result)
        found = torch.from_numpy(np.asarray(xmap.rotations.data))
        err = disorientation_deg(found, torch.from_numpy(truth), "m-3m")
        n = args.size**2
        flags = "" if args.size == 1000 else f" --size {args.size}"
        lines = [
            "## `ebsdnet index` on a 1,000×1,000-pattern map: bounded memory",
            "",
            f"Measured by `python benchmarks/large_map.py{flags} --write` on: {machine()}.",
            f"A {args.size:,}×{args.size:,} map of 60×60 uint8 Ni patterns ({gb:.2f} GB h5ebsd, "
            f"dose {args.dose:g}; one 100×100 polycrystal's orientations tiled, fresh noise in "
            "every block), indexed by `ebsdnet index map.h5 -o indexed.h5` with its defaults "
            "(CNN + refinement, compiled) under `/usr/bin/time -v`. Patterns/s is over the "
            "whole command: loading, compiling, reading, indexing and writing the map.",
            "",
            "| patterns | file | wall time | patterns/s | peak memory | mean error "
            "| > 3° | not indexed |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {n:,} | {gb:.2f} GB | {wall} | {n / seconds:,.0f} | {peak_mb:,.0f} MB "
            f"| {float(err.mean()):.3f}° | {100 * float((err > 3).float().mean()):.2f}% "
            f"| {100 * float((xmap.phase_id == -1).mean()):.2f}% |",
        ]
        publish("large-map", lines, args.write)
    finally:
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
