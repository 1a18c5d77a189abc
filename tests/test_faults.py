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
    with pytest.raises(IndexingError, match="point group 6/mmm"):
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


@pytest.mark.parametrize("suffix", [".ang", ".ctf", ".h5"])
def test_a_map_of_blank_patterns_is_written_with_none_indexed(good_file, tmp_path, suffix, capsys):
    import kikuchipy as kp
    from orix import io

    blank = kp.load(good_file)
    blank.data[:] = 7  # an area off the sample, say: no pattern anywhere
    blank.save(tmp_path / "blank.h5")
    out, ipf = tmp_path / f"map{suffix}", tmp_path / "ipf.png"
    assert _index_cli(tmp_path / "blank.h5", out, "--ipf", str(ipf)) == 0
    assert "indexed 0 of 6 patterns" in capsys.readouterr().out
    back = io.load(out)
    assert back.size == 6 and not back.is_indexed.any()
    assert ipf.stat().st_size > 0


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
