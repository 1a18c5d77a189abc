import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from orix.quaternion import Rotation

from ebsdnet.cli import main
from ebsdnet.metrics import normalised_cross_correlation


def test_simulate_writes_patterns_that_kikuchipy_agrees_with(small_dictionary, master_pattern):
    from kikuchipy.detectors import EBSDDetector

    with h5py.File(small_dictionary) as f:
        patterns = f["patterns"][:]
        euler = f["euler_deg"][:]
        attrs = dict(f.attrs)
    assert patterns.dtype == np.uint8 and patterns.shape[1:] == (60, 60)
    assert len(patterns) == len(euler) > 100
    assert attrs["point_group"] == "m-3m" and len(attrs["master_pattern_sha256"]) == 64
    det = EBSDDetector(shape=(60, 60), pc=attrs["pc_bruker"], sample_tilt=attrs["sample_tilt"])
    rot = Rotation.from_euler(euler, degrees=True)
    kp_master_pattern = master_pattern.to_kikuchipy()  # the texture `simulate` reads
    expected = kp_master_pattern.get_patterns(rot, det, compute=True, show_progressbar=False)
    ncc = normalised_cross_correlation(torch.from_numpy(patterns), torch.from_numpy(expected.data))
    assert ncc.min() >= 0.999
    assert not list(small_dictionary.parent.glob("*.partial"))


def test_simulate_refuses_to_overwrite(small_dictionary, capsys):
    before = small_dictionary.stat().st_mtime_ns
    assert main(["-q", "simulate", "-o", str(small_dictionary), "--resolution", "8"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert small_dictionary.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pc", "0.4", "1.3", "0.5"], "pattern centre"),
        (["--resolution", "0.01"], "resolution"),
        (["--master-pattern", "/nonexistent/mp.h5"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "d.h5"
    proc = subprocess.run(
        [sys.executable, "-m", "ebsdnet.cli", "simulate", "-o", str(out), *args],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_the_demo_prints_the_2016_table_and_writes_its_figures(tmp_path, capsys):
    """`make demo` runs this (quick: a 3° dictionary, 2,000 patterns; 25–50 s here)."""
    assert main(["-q", "demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 1-NN dictionary |" in out and "| CNN (ni-60) |" in out
    assert "CNN + refinement (+ dictionary fallback)" in out
    figures = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(figures) >= 6 and all((tmp_path / name).stat().st_size > 1000 for name in figures)
