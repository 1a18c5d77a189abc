"""``ebsdnet index`` with the shipped model on simulated Ni polycrystal maps.

    python benchmarks/index_map.py [--size 100] [--model ni-60] [--write]

Each map is written as a kikuchipy h5ebsd file (uint8, with a static
background), indexed by the ``ebsdnet index`` command exactly as a user would
run it, and the ``.ang`` it writes is read back with orix and compared with
the truth. Conditions: noise-free, and moderate noise (dose 100 counts/pixel).
Times are of the whole command (file reading, preprocessing, CNN, NCC, writing).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from _report import machine, publish
from ebsdnet.metrics import error_summary
from ebsdnet.rotations import disorientation_deg
from ebsdnet.synthetic import simulate_map

CONDITIONS = {"noise-free": None, "moderate noise (dose 100)": 100.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="map is size × size")
    parser.add_argument("--model", default="ni-60")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    from orix import io

    folder = Path(tempfile.mkdtemp(prefix="ebsdnet-bench-"))
    rows = []
    try:
        for i, (name, dose) in enumerate(CONDITIONS.items()):
            signal = simulate_map((args.size, args.size), n_grains=40, dose=dose, seed=10 + i)
            truth = torch.tensor(signal.xmap.rotations.data)
            src, out = folder / f"map{i}.h5", folder / f"map{i}.ang"
            signal.save(src)
            t0 = time.perf_counter()
            subprocess.run(
                ["ebsdnet", "-q", "index", str(src), "-o", str(out), "--model", args.model],
                check=True,
            )
            seconds = time.perf_counter() - t0
            found = torch.tensor(io.load(out).rotations.data)
            err = error_summary(disorientation_deg(found, truth, "m-3m"))
            rows.append((name, err, signal.axes_manager.navigation_size / seconds))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"## `ebsdnet index` (CNN only, model `{args.model}`) on simulated Ni maps",
        "",
        f"Measured by `python benchmarks/index_map.py --write` on: {machine()}.",
        f"{args.size}×{args.size} Voronoi polycrystal (40 grains, 1° gradients), 60×60 uint8 "
        "patterns with a static background, default PC; time of the whole command including "
        "start-up and file I/O.",
        "",
        "| condition | mean | median | p90 | > 3° | > 5° | > 10° | patterns/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {name} | {e['mean']:.2f}° | {e['median']:.2f}° | {e['p90']:.2f}° | "
            f"{100 * e['share_above_3']:.2f}% | {100 * e['share_above_5']:.2f}% | "
            f"{100 * e['share_above_10']:.2f}% | {rate:,.0f} |"
            for name, e, rate in rows
        ],
    ]
    publish("index_map", lines, args.write)


if __name__ == "__main__":
    main()
