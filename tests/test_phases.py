"""A phase given by its structure: CIF → master pattern → index, for cubic and hexagonal
phases, and the one-line refusals of bad phases."""

import numpy as np
import pytest
import torch

from conftest import DATA, HALF_SIZE


def test_a_cif_gives_a_master_pattern_kikuchipy_reads_back(phase_files):
    import kikuchipy as kp

    mp = kp.load(phase_files["ti_alpha"], projection="lambert", hemisphere="both")
    assert mp.data.shape == (2, 2 * HALF_SIZE + 1, 2 * HALF_SIZE + 1)
    assert mp.phase.point_group.name == "6/mmm"
    assert mp.phase.space_group.number == 194
    assert np.isclose(mp.phase.structure.lattice.abcABG()[2], 0.46855)  # EMsoft's nm
    assert float(mp.data.std()) > 0  # not a constant texture


def test_the_phase_comes_back_as_the_cif_holds_it(phase_files):
    from ebsdnet.phases import load_master_pattern, read_cif

    mp = load_master_pattern(phase_files["ti_alpha"])
    cif = read_cif(DATA / "ti_alpha.cif")
    assert mp.phase_name == "ti_alpha" and mp.point_group == "6/mmm"
    # Two Ti atoms in the hexagonal cell (diffsims' sanitise_phase made 12 or 24).
    assert len(mp.phase.structure) == len(cif.structure) == 2
    assert np.allclose(mp.phase.structure.xyz_cartn, cif.structure.xyz_cartn)


def test_hcp_structure_factors_follow_the_hcp_rules():
    """|F| of hcp (atoms at 1/3 2/3 1/4): 0001 absent, 0002 = 2f, 10-11 = √3 f, 10-12 = f."""
    from diffsims.crystallography import ReciprocalLatticeVector

    from ebsdnet.phases import read_cif

    phase = read_cif(DATA / "ti_alpha.cif")
    ref = ReciprocalLatticeVector(phase, hkl=[[0, 0, 1], [0, 0, 2], [1, 0, 1], [1, 0, 2]])
    ref.calculate_structure_factor()
    f = np.abs(ref.structure_factor)
    assert f[0] < 1e-6
    assert f[1] > f[2] > f[3] > 0


def test_a_second_request_takes_the_cached_file(phase_files):
    from ebsdnet.phases import master_pattern_from_cif

    path = phase_files["ferrite"]
    stamp = path.stat().st_mtime_ns
    assert master_pattern_from_cif(DATA / "ferrite.cif", half_size=HALF_SIZE) == path
    assert path.stat().st_mtime_ns == stamp
    other = master_pattern_from_cif(DATA / "ferrite.cif", energy_kv=15, half_size=HALF_SIZE)
    assert other != path  # another energy is another master pattern


def _map(path, geometry, dose, seed):
    from ebsdnet.phases import load_master_pattern
    from ebsdnet.synthetic import simulate_map

    mp = load_master_pattern(path)
    return mp, simulate_map((6, 6), 3, geometry, dose=dose, master_pattern=mp, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "shape", "dose", "limit"),
    [("ferrite", (40, 40), None, 0.1), ("ti_alpha", (40, 48), 300, 0.3)],
)
def test_index_a_phase_without_a_model(phase_files, name, shape, dose, limit):
    """bcc and hcp, square and non-square detectors: the phase's dictionary, then refinement."""
    from ebsdnet.indexing import index
    from ebsdnet.projector import DetectorGeometry
    from ebsdnet.rotations import disorientation_deg

    geometry = DetectorGeometry(shape=shape, pc=(0.45, 0.25, 0.55), tilt=3.0)
    mp, signal = _map(phase_files[name], geometry, dose, seed=5)
    xmap = index(signal, phase=phase_files[name], show_progressbar=False)
    truth = torch.from_numpy(signal.xmap.rotations.data)
    error = disorientation_deg(torch.from_numpy(xmap.rotations.data), truth, mp.point_group)
    assert (xmap.phase_id == 0).all()
    assert float(error.mean()) < limit and float(error.max()) < 3 * limit
    assert xmap.phases[0].name == name
    assert xmap.phases[0].point_group.name == mp.point_group


@pytest.mark.slow
def test_cli_indexes_with_a_cif_and_writes_the_phase(phase_files, tmp_path):
    from orix import io

    from ebsdnet.cli import main
    from ebsdnet.projector import DetectorGeometry

    geometry = DetectorGeometry(shape=(40, 40), pc=(0.45, 0.25, 0.55))
    _, signal = _map(phase_files["ferrite"], geometry, None, seed=7)
    signal.save(tmp_path / "scan.h5")
    out = tmp_path / "scan.ang"
    args = ["-q", "index", str(tmp_path / "scan.h5"), "-o", str(out)]
    assert main([*args, "--phase", str(phase_files["ferrite"]), "--plots", str(tmp_path)]) == 0
    phases = [phase for i, phase in io.load(out).phases if i >= 0]
    assert [(p.name, p.point_group.laue.name) for p in phases] == [("ferrite", "m-3m")]
    assert (tmp_path / "phase_map.png").is_file()


def test_a_model_of_another_laue_group_is_refused(phase_files, tmp_path, capsys):
    from ebsdnet.cli import main
    from ebsdnet.projector import DetectorGeometry

    geometry = DetectorGeometry(shape=(60, 60), pc=(0.425, 0.213, 0.501))
    _, signal = _map(phase_files["ti_alpha"], geometry, None, seed=1)
    signal.save(tmp_path / "scan.h5")
    out = tmp_path / "scan.ang"
    args = ["index", str(tmp_path / "scan.h5"), "-o", str(out), "--model", "ni-60"]
    assert main([*args, "--phase", str(phase_files["ti_alpha"])]) == 2
    message = capsys.readouterr().err.strip()
    assert "m-3m" in message and "6/mmm" in message and len(message.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("this is not a CIF\n_cell_length_a\n", "cannot read CIF"),
        (
            "data_x\n_cell_length_a 3\n_cell_length_b 3\n_cell_length_c 3\n"
            "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
            "_symmetry_space_group_name_H-M 'F m -3 m'\n",
            "holds no atoms",
        ),
        (
            (DATA / "ferrite.cif")
            .read_text()
            .replace("2.8665\n_cell_length_c", "3.1\n_cell_length_c", 1),
            "contradicts",
        ),
    ],
    ids=["unreadable", "no-atoms", "cell-contradicts-space-group"],
)
def test_bad_cifs_are_refused_in_one_line(tmp_path, capsys, text, expected):
    from ebsdnet.cli import main

    cif = tmp_path / "bad.cif"
    cif.write_text(text)
    out = tmp_path / "bad_mp.h5"
    assert main(["master-pattern", str(cif), "-o", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert expected in message and len(message.splitlines()) == 1
    assert not out.exists()


def test_a_master_pattern_of_another_energy_is_refused(phase_files):
    from ebsdnet.phases import PhaseError, master_pattern

    with pytest.raises(PhaseError, match="not the 15 kV"):
        master_pattern(phase_files["ferrite"], energy_kv=15)


def test_a_file_phase_of_another_symmetry_is_refused(phase_files):
    """The scan says ferrite (m-3m); indexing it as α-Ti (6/mmm) is refused."""
    from ebsdnet.indexing import IndexingError, index
    from ebsdnet.projector import DetectorGeometry

    _, signal = _map(phase_files["ferrite"], DetectorGeometry(shape=(40, 40)), None, seed=2)
    with pytest.raises(IndexingError, match="6/mmm"):
        index(signal, phase=phase_files["ti_alpha"], show_progressbar=False)


@pytest.mark.parametrize("point_group", ["mmm", "4/mmm", "-3m", "6/mmm", "m-3m", "2/m", "-1"])
def test_every_laue_group_has_a_bounded_dictionary_covering_its_zone(point_group):
    """The coarse dictionary's grid covers the group's fundamental zone (no random
    orientation is further than the grid allows from an entry, modulo symmetry) and
    stays under its memory bound."""
    from orix.quaternion import Rotation

    from ebsdnet.indexing import (
        DICTIONARY_MAX_BYTES,
        dictionary_resolution,
        match_shape,
    )
    from ebsdnet.rotations import disorientation_deg
    from ebsdnet.stream import sample_fundamental_zone

    resolution = dictionary_resolution(point_group, (60, 60))
    rows, cols = match_shape((60, 60))
    coarse = 2 * resolution  # a coarser grid of the same kind: the test stays quick
    entries = torch.from_numpy(sample_fundamental_zone(coarse, point_group)).float()
    expected = 730_632 * (3 / resolution) ** 3 / _order(point_group)
    assert expected * rows * cols * 2 <= DICTIONARY_MAX_BYTES * 1.01
    np.random.seed(3)
    probe = torch.from_numpy(Rotation.random(200).data).float()
    nearest = torch.stack(
        [disorientation_deg(p.expand(len(entries), 4), entries, point_group).min() for p in probe]
    )
    # No hole in the zone: the cubochoric grid's covering radius stays near its nominal
    # spacing (measured up to 1.05× in mmm); a hole at a zone boundary would show as ≥ 2×.
    assert float(nearest.max()) < 1.25 * coarse


def _order(point_group: str) -> int:
    from ebsdnet.rotations import orix_point_group

    return orix_point_group(point_group).laue_proper_subgroup.size


def test_train_for_a_hexagonal_phase_records_it_in_the_card(phase_files, tmp_path):
    """train --phase: the symmetry-aware loss and validation use 6/mmm, the card records
    the phase, and index refuses that model for a cubic phase."""
    import json

    from ebsdnet.cli import main
    from ebsdnet.indexing import IndexingError, index
    from ebsdnet.projector import DetectorGeometry

    args = ["-q", "train", "-o", str(tmp_path / "run"), "--phase", str(phase_files["ti_alpha"])]
    args += ["--steps", "4", "--val-every", "4", "--val-size", "32", "--batch-size", "16"]
    assert main([*args, "--width", "8", "--shape", "40", "40"]) == 0
    card = json.loads((tmp_path / "run" / "model.json").read_text())
    assert card["phase"] == "ti_alpha" and card["point_group"] == "6/mmm"
    assert card["shape"] == [40, 40]
    _, signal = _map(phase_files["ferrite"], DetectorGeometry(shape=(40, 40)), None, seed=2)
    with pytest.raises(IndexingError, match="6/mmm"):
        index(signal, model=tmp_path / "run" / "model", phase=phase_files["ferrite"])
