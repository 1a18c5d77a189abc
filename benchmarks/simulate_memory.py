"""Peak memory and time of ``ebsdnet simulate`` for the 2016-size dictionary.

    python benchmarks/simulate_memory.py [--resolution 1.36] [--write]

1.36° gives exactly 333,227 orientations in the cubic fundamental zone, the
size of the 2016 study's dictionary. The command runs under ``/usr/bin/time -v``;
then 1,000 random entries are compared with kikuchipy's ``get_patterns`` for
the stored Euler angles. The file is deleted afterwards.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

from _report import machine, publish
from ebsdnet.metrics import normalised_cross_correlation
from ebsdnet.projector import MasterPattern


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.36)
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = parser.parse_args()
    if not Path("/usr/bin/time").exists():
        raise SystemExit("needs GNU time at /usr/bin/time (Debian package 'time')")
    folder = Path(tempfile.mkdtemp(prefix="ebsdnet-sim-"))
    path = folder / "dictionary.h5"
    try:
        proc = subprocess.run(
            [
                "/usr/bin/time",
                "-v",
                sys.executable,  # this interpreter's ebsdnet, whether or not it is on PATH
                "-m",
                "ebsdnet.cli",
                "-q",
                "simulate",
                "-o",
                str(path),
                "--resolution",
                str(args.resolution),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        peak_mb = (
            int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)[1]) / 1024
        )
        wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr)[1]
        import kikuchipy as kp
        from orix.quaternion import Rotation

        with h5py.File(path) as f:
            n = len(f["patterns"])
            size_gb = path.stat().st_size / 1e9
            idx = np.sort(np.random.default_rng(0).choice(n, 1000, replace=False))
            patterns = f["patterns"][idx]
            euler = f["euler_deg"][idx]
            attrs = dict(f.attrs)
        mp = MasterPattern.nickel().to_kikuchipy()  # the texture `ebsdnet simulate` reads
        det = kp.detectors.EBSDDetector(
            shape=tuple(attrs["detector_shape"]),
            pc=attrs["pc_bruker"],
            sample_tilt=float(attrs["sample_tilt"]),
        )
        ref = mp.get_patterns(
            Rotation.from_euler(euler, degrees=True), det, compute=True, show_progressbar=False
        ).data
        ncc = normalised_cross_correlation(torch.from_numpy(patterns), torch.from_numpy(ref))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        "## `ebsdnet simulate`: the 2016-size dictionary in bounded memory",
        "",
        f"Measured by `python benchmarks/simulate_memory.py --write` on: {machine()}.",
        "",
        "| resolution | patterns | shape | file | wall time | peak memory (`/usr/bin/time -v`) "
        "| lowest NCC vs kikuchipy (1,000 random entries) |",
        "|---|---:|---|---:|---:|---:|---:|",
        f"| {args.resolution}° | {n:,} | 60×60 uint8 | {size_gb:.2f} GB | {wall} | "
        f"{peak_mb:,.0f} MB | {float(ncc.min()):.5f} |",
    ]
    publish("simulate", lines, args.write)


if __name__ == "__main__":
    main()
