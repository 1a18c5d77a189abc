"""Bad input and faults: one-line errors (exit 2), no output, nothing half-written."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ebsdnet.cli import main
from ebsdnet.indexing import IndexingError, index
from ebsdnet.pattern_flags import (
    FLAG_BLANK,
    FLAG_LOW_NCC,
    FLAG_NON_FINITE,
    FLAG_SATURATED,
    not_indexed_summary,
)
from ebsdnet.synthetic import simulate_map


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "map.h5"
    simulate_map((2, 3), n_grains=2, dose=300.0, seed=5).save(path)
    return path


def _index_cli(src, out, *extra) -> int:
    return main(["-q", "index", str(src), "-o", str(out), *extra])


def _save_with_detector(path, **detector):
    import kikuchipy as kp

    data = simulate_map((2, 2), n_grains=1).data
    kp.signals.EBSD(data, detector=kp.detectors.EBSDDetector(shape=(60, 60), **detector)).save(
        path
    )
    return path


def test_a_file_without_pattern_centre_needs_pc(tmp_path, capsys):
    src = _save_with_detector(tmp_path / "nopc.h5")  # kikuchipy's default PC
    assert _index_cli(src, tmp_path / "a.ang") == 2
    assert "no pattern centre" in capsys.readouterr().err
    assert not (tmp_path / "a.ang").exists()
    assert _index_cli(src, tmp_path / "a.ang", "--pc", "0.425", "0.213", "0.501") == 0


def test_an_unphysical_pattern_centre_in_the_file_is_refused(tmp_path, capsys):
    src = _save_with_detector(tmp_path / "badpc.h5", pc=(0.4, 1.6, 0.5))
    assert _index_cli(src, tmp_path / "a.ang") == 2
    assert "outside the physical range" in capsys.readouterr().err
    assert not (tmp_path / "a.ang").exists()


def test_a_file_of_another_phase_is_refused():
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    signal = simulate_map((2, 2), n_grains=1)
    signal.xmap = CrystalMap(
        rotations=Rotation.identity(4),
        x=np.arange(4.0) % 2,
        y=np.arange(4.0) // 2,
        phase_list=PhaseList(Phase("ti", point_group="6/mmm")),
    )
    with pytest.raises(IndexingError, match=r"'ti' \(6/mmm\)"):
        index(signal, show_progressbar=False)


def test_an_unwritable_output_folder_is_refused(good_file, tmp_path, monkeypatch, capsys):
    import ebsdnet.cli

    monkeypatch.setattr(ebsdnet.cli.os, "access", lambda *_: False)
    assert _index_cli(good_file, tmp_path / "a.ang") == 2
    assert "not writable" in capsys.readouterr().err


def test_a_truncated_file_fails_cleanly(good_file, tmp_path):
    data = good_file.read_bytes()
    src = tmp_path / "cut.h5"
    src.write_bytes(data[: len(data) // 2])
    cmd = [sys.executable, "-m", "ebsdnet.cli", "-q", "index", str(src)]
    proc = subprocess.run([*cmd, "-o", str(tmp_path / "a.ang")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*.ang"))


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=40))
def test_mutated_files_give_a_map_or_the_clear_error(good_file, tmp_path, flips):
    data = bytearray(good_file.read_bytes())
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    src = tmp_path / "mutated.h5"
    out = tmp_path / "mutated.ang"
    src.write_bytes(bytes(data))
    out.unlink(missing_ok=True)
    code = _index_cli(src, out, "--no-refine")
    assert code in (0, 2)
    assert out.exists() == (code == 0)


def test_a_killed_run_leaves_no_map_and_resumes_to_the_same_one(tmp_path):
    import torch
    from orix import io

    from ebsdnet.rotations import disorientation_deg

    src = tmp_path / "big.h5"
    simulate_map((60, 60), n_grains=12, dose=100.0, seed=6).save(src)
    out = tmp_path / "big.ang"
    cmd = [sys.executable, "-m", "ebsdnet.cli", "-q", "index", str(src), "--batch-size", "256"]
    proc = subprocess.Popen(
        [*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    batches = tmp_path / ".big.ang.batches"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(batches.glob("batch*.npz"))) >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    finished = len(list(batches.glob("batch*.npz")))
    assert 2 <= finished < 15  # 3,600 patterns in batches of 256
    assert _index_cli(src, out, "--batch-size", "256") == 2  # neither --resume nor --force
    assert _index_cli(src, out, "--batch-size", "128", "--resume") == 2  # other settings
    assert _index_cli(src, out, "--batch-size", "256", "--resume") == 0
    assert not batches.exists()
    straight = tmp_path / "straight.ang"
    assert _index_cli(src, straight, "--batch-size", "256") == 0
    a, b = io.load(out), io.load(straight)
    diff = disorientation_deg(torch.tensor(a.rotations.data), torch.tensor(b.rotations.data))
    assert diff.max() < 0.01  # .ang keeps 5 decimals of radians
    assert np.allclose(a.prop["ci"], b.prop["ci"], atol=1e-3)


def test_an_unsupported_file_is_refused(tmp_path, capsys):
    src = tmp_path / "notes.txt"
    src.write_text("not a pattern file\n")
    assert _index_cli(src, tmp_path / "a.ang") == 2
    assert "cannot read patterns" in capsys.readouterr().err
    assert not (tmp_path / "a.ang").exists()


def test_an_existing_map_is_kept_without_force(good_file, tmp_path, capsys):
    out = tmp_path / "a.ang"
    out.write_text("precious\n")
    assert _index_cli(good_file, out) == 2
    assert "pass --force" in capsys.readouterr().err
    assert out.read_text() == "precious\n"


def test_an_empty_map_is_refused():
    import kikuchipy as kp

    empty = kp.signals.EBSD(
        np.zeros((0, 60, 60), dtype=np.uint8),
        detector=kp.detectors.EBSDDetector(shape=(60, 60), pc=(0.425, 0.213, 0.501)),
    )
    with pytest.raises(IndexingError, match="no patterns"):
        index(empty, show_progressbar=False)


def test_a_missing_file_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "ebsdnet.cli", "-q", "index", str(tmp_path / "nope.h5")]
    proc = subprocess.run([*cmd, "-o", str(tmp_path / "a.ang")], capture_output=True, text=True)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "a.ang").exists()


def test_a_tampered_model_and_another_master_pattern_are_refused(good_file, tmp_path, capsys):
    import shutil
    from dataclasses import replace

    import kikuchipy as kp

    from ebsdnet.cards import card_path
    from ebsdnet.projector import MasterPattern

    card = card_path("ni-60")
    for suffix in (".json", ".safetensors"):
        shutil.copy(card.with_suffix(suffix), tmp_path / f"m{suffix}")
    weights = bytearray((tmp_path / "m.safetensors").read_bytes())
    weights[-10] ^= 0xFF
    (tmp_path / "m.safetensors").write_bytes(bytes(weights))
    assert _index_cli(good_file, tmp_path / "a.ang", "--model", str(tmp_path / "m")) == 2
    assert "checksum" in capsys.readouterr().err
    assert not (tmp_path / "a.ang").exists()

    nickel = MasterPattern.nickel()
    other = replace(nickel, texture=nickel.texture.flip(-1), sha256="another")
    with pytest.raises(IndexingError, match="master pattern"):
        index(kp.load(good_file), master_pattern=other, show_progressbar=False)


def test_a_map_of_blank_patterns_is_one_line_and_no_file(good_file, tmp_path):
    import kikuchipy as kp

    blank = kp.load(good_file)
    blank.data[:] = 0  # an area off the sample, say: no pattern anywhere
    blank.save(tmp_path / "blank.h5")
    out, ipf = tmp_path / "map.ang", tmp_path / "ipf.png"
    cmd = [sys.executable, "-m", "ebsdnet.cli", "-q", "index", str(tmp_path / "blank.h5")]
    proc = subprocess.run(
        [*cmd, "-o", str(out), "--ipf", str(ipf)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ebsdnet: error: no map written: 6 of 6 patterns not indexed: 6 blank/constant "
        "(beam off, an area off the sample, or a file shorter than its scan?)"
    ]
    assert not out.exists() and not ipf.exists() and not list(tmp_path.glob(".*"))


def test_a_batch_of_blank_patterns_leaves_the_other_batches_alone(good_file):
    import kikuchipy as kp

    signal = kp.load(good_file)
    good = index(signal, batch_size=3, show_progressbar=False)
    signal.data[0] = 7  # the first row of three: the whole first batch
    xmap = index(signal, batch_size=3, show_progressbar=False)
    assert list(xmap.phase_id) == [-1, -1, -1, 0, 0, 0]
    assert np.array_equal(xmap.rotations.data[3:], good.rotations.data[3:])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "batch size must be at least 1"),
        (["--min-ncc", "2"], "min_ncc must lie in 0–1"),
        (["--device", "nope"], "unknown device"),
    ],
)
def test_bad_indexing_options_are_one_line(good_file, tmp_path, capsys, args, message):
    out = tmp_path / "map.ang"
    assert _index_cli(good_file, out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".*"))


@pytest.fixture(scope="module")
def clean_run(good_file):
    """The 2×3 map (with its static background) and its map as indexed intact."""
    import kikuchipy as kp

    signal = kp.load(good_file)
    return signal, index(signal, show_progressbar=False)


def _one_pixel(value):
    def damage(pattern):
        pattern = pattern.copy()
        pattern[30, 30] = value
        return pattern

    return damage


# Each kind of damage done to the map's middle pattern of its first row, and its flag.
DAMAGE = {
    "nan": (_one_pixel(np.nan), FLAG_NON_FINITE),
    "inf": (_one_pixel(np.inf), FLAG_NON_FINITE),
    "constant": (lambda p: np.full_like(p, 7.0), FLAG_BLANK),
    "all-zero": (np.zeros_like, FLAG_BLANK),
    # Clipped at its 30th percentile: 70% of the pixels at the highest value.
    "saturated": (lambda p: np.minimum(p, np.percentile(p, 30)), FLAG_SATURATED),
}


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_bad_pattern_is_flagged_and_its_neighbours_are_indexed_as_without_it(clean_run, kind):
    import kikuchipy as kp

    signal, clean = clean_run
    damage, expected = DAMAGE[kind]
    data = signal.data.astype(np.float32)
    data[0, 1] = damage(data[0, 1])
    broken = kp.signals.EBSD(
        data, detector=signal.detector, static_background=signal.static_background
    )
    xmap = index(broken, show_progressbar=False)
    assert list(xmap.prop["flag"]) == [0, expected, 0, 0, 0, 0]
    assert xmap.phase_id[1] == -1 and xmap.prop["ncc"][1] == 0
    others = np.arange(6) != 1
    assert np.array_equal(xmap.rotations.data[others], clean.rotations.data[others])
    assert np.array_equal(xmap.prop["ncc"][others], clean.prop["ncc"][others])


def test_a_nan_pattern_leaves_the_scan_mean_background_of_the_others_alone():
    """The report: one NaN pattern among kikuchipy's nine real Ni patterns, in a file
    without a static background, left all nine not indexed (the scan's mean pattern,
    their background, was NaN)."""
    import kikuchipy as kp
    import torch

    from ebsdnet.rotations import disorientation_deg

    s = kp.data.nickel_ebsd_small()
    data = s.data.astype(np.float32)
    clean = index(kp.signals.EBSD(data.copy(), detector=s.detector), show_progressbar=False)
    data[1, 1] = np.nan
    signal = kp.signals.EBSD(data, detector=s.detector)
    xmap = index(signal, show_progressbar=False)
    assert list(xmap.prop["flag"]) == [0, 0, 0, 0, FLAG_NON_FINITE, 0, 0, 0, 0]
    others = np.arange(9) != 4
    diff = disorientation_deg(
        torch.tensor(xmap.rotations.data[others]), torch.tensor(clean.rotations.data[others])
    )
    # Not bit-equal: the mean of the other eight is their background now. Measured
    # 0.002–0.132°.
    assert diff.max() < 1.0 and (xmap.phase_id[others] == 0).all()
    assert np.isnan(signal.data[1, 1]).all()  # the caller's patterns are left as they were


def test_a_mostly_empty_map_warns_with_the_count_and_the_likely_cause(clean_run, caplog):
    import kikuchipy as kp

    signal, _ = clean_run
    data = signal.data.copy()
    data.reshape(6, 60, 60)[:4] = 0
    mostly_blank = kp.signals.EBSD(
        data, detector=signal.detector, static_background=signal.static_background
    )
    with caplog.at_level("WARNING", logger="ebsdnet.indexing"):
        xmap = index(mostly_blank, show_progressbar=False)
    assert list(xmap.prop["flag"]) == [2, 2, 2, 2, 0, 0]
    assert "4 of 6 patterns not indexed: 4 blank/constant (beam off" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ebsdnet.indexing"):
        index(signal, show_progressbar=False)  # intact: nothing to say
    assert not caplog.text
    text = not_indexed_summary(np.array([4, 4, 1, 0]), min_ncc=0.1)
    assert text == (
        "3 of 4 patterns not indexed: 1 NaN/inf, 2 NCC below min_ncc 0.1 "
        "(wrong phase, pattern centre or detector tilt?)"
    )


def test_patterns_below_min_ncc_are_flagged_so(clean_run):
    signal, clean = clean_run
    xmap = index(signal, min_ncc=float(clean.prop["ncc"].max()) + 1e-3, show_progressbar=False)
    assert (xmap.prop["flag"] == FLAG_LOW_NCC).all() and not xmap.is_indexed.any()


def test_a_map_with_some_bad_patterns_is_written_with_exit_0(good_file, tmp_path, capsys):
    import kikuchipy as kp
    from orix import io

    signal = kp.load(good_file)
    signal.data.reshape(6, 60, 60)[[0, 5]] = 0
    signal.save(tmp_path / "two_blank.h5")
    out = tmp_path / "map.h5"
    assert _index_cli(tmp_path / "two_blank.h5", out) == 0
    assert "indexed 4 of 6 patterns" in capsys.readouterr().out
    assert list(io.load(out).prop["flag"]) == [2, 0, 0, 0, 0, 2]
