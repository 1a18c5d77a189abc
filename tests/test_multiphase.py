"""Several phases in one map: each point's phase, the margin to the runner-up, the phase_files."""

import numpy as np
import pytest
import torch


def _duplex(phase_files, names, seed=4, dose=None, shape=(6, 6), grains=6):
    from ebsdnet.phases import load_master_pattern
    from ebsdnet.projector import DetectorGeometry
    from ebsdnet.synthetic import simulate_map

    masters = [load_master_pattern(phase_files[name]) for name in names]
    geometry = DetectorGeometry(shape=(40, 40), pc=(0.45, 0.25, 0.55))
    signal = simulate_map(shape, grains, geometry, dose=dose, master_pattern=masters, seed=seed)
    return masters, signal


def _errors(xmap, signal, masters):
    from ebsdnet.rotations import disorientation_deg

    truth_phase = signal.xmap.phase_id
    right = xmap.phase_id == truth_phase
    errors = np.full(xmap.size, np.nan)
    for k, mp in enumerate(masters):
        points = right & (truth_phase == k)
        if points.any():
            errors[points] = disorientation_deg(
                torch.from_numpy(xmap.rotations.data[points]),
                torch.from_numpy(signal.xmap.rotations.data[points]),
                mp.point_group,
            ).numpy()
    return right, errors


@pytest.mark.slow
def test_two_phases_of_different_structure(phase_files):
    from ebsdnet.indexing import index

    names = ["ferrite", "austenite"]
    masters, signal = _duplex(phase_files, names, dose=300)
    xmap = index(signal, phases=[phase_files[n] for n in names], show_progressbar=False)
    right, errors = _errors(xmap, signal, masters)
    assert right.all()
    assert np.nanmean(errors) < 0.3
    assert [p.name for i, p in xmap.phases if i >= 0] == names
    # bcc against fcc: every point's runner-up correlates far worse.
    assert float(np.min(xmap.prop["phase_margin"])) > 0.05


@pytest.mark.slow
def test_same_structure_different_lattice_parameters_shows_a_small_margin(phase_files):
    """Austenite (a = 3.595 Å) and Ni (3.524 Å): both fcc, 2% apart. The margin is small,
    and the points whose margin is below AMBIGUOUS_MARGIN carry the ambiguous flag."""
    from ebsdnet.indexing import AMBIGUOUS_MARGIN, index
    from ebsdnet.pattern_flags import FLAG_AMBIGUOUS_PHASE

    names = ["austenite", "ni"]
    _masters, signal = _duplex(phase_files, names)
    xmap = index(signal, phases=[phase_files[n] for n in names], show_progressbar=False)
    margin = xmap.prop["phase_margin"]
    assert float(np.median(margin)) < 0.05
    ambiguous = margin < AMBIGUOUS_MARGIN
    assert (xmap.prop["flag"][ambiguous] == FLAG_AMBIGUOUS_PHASE).all()
    assert (xmap.phase_id >= 0).all()  # still indexed, with its best phase


@pytest.mark.slow
def test_three_phases_and_their_files(phase_files, tmp_path):
    from orix import io

    from ebsdnet.cli import main

    names = ["ferrite", "austenite", "ti_alpha"]
    _masters, signal = _duplex(phase_files, names, shape=(6, 8), grains=9, seed=6)
    signal.save(tmp_path / "scan.h5")
    for suffix in (".ang", ".ctf", ".h5"):
        out = tmp_path / f"map{suffix}"
        args = ["-q", "index", str(tmp_path / "scan.h5"), "-o", str(out), "--force"]
        for n in names:
            args += ["--phase", str(phase_files[n])]
        assert main(args) == 0
        back = io.load(out)
        phases = {p.name: p.point_group.laue.name for i, p in back.phases if i >= 0}
        assert phases == {"ferrite": "m-3m", "austenite": "m-3m", "ti_alpha": "6/mmm"}
        # Each point's phase, by name, is the truth's.
        ids = {i: p.name for i, p in back.phases}
        found = np.array([ids[i] for i in back.phase_id])
        truth = np.array([names[i] for i in signal.xmap.phase_id])
        assert (found == truth).mean() >= 0.97, suffix


def test_duplicate_phase_names_are_refused(phase_files, tmp_path, capsys):
    from ebsdnet.cli import main
    from ebsdnet.indexing import IndexingError, index

    _, signal = _duplex(phase_files, ["ferrite"], shape=(2, 2), grains=1)
    with pytest.raises(IndexingError, match="named 'ferrite'"):
        index(
            signal, phases=[phase_files["ferrite"], phase_files["ferrite"]], show_progressbar=False
        )
    with pytest.raises(IndexingError, match="empty"):
        index(signal, phases=[], show_progressbar=False)
    signal.save(tmp_path / "scan.h5")
    out = tmp_path / "map.h5"
    args = ["index", str(tmp_path / "scan.h5"), "-o", str(out)]
    assert (
        main(
            [*args, "--phase", str(phase_files["ferrite"]), "--phase", str(phase_files["ferrite"])]
        )
        == 2
    )
    assert "named 'ferrite'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_several_phases_resume_and_run_on_a_cluster_as_in_one_process(phase_files, tmp_path):
    """A multi-phase map is the same from a resumed run (finished batches on disk) and from
    a two-worker dask cluster as from one uninterrupted process."""
    from distributed import LocalCluster

    from ebsdnet.indexing import index

    names = ["ferrite", "austenite"]
    _, signal = _duplex(phase_files, names, shape=(4, 6), grains=4, seed=8)
    phases = [phase_files[n] for n in names]
    single = index(signal, phases=phases, batch_size=8, show_progressbar=False)
    folder = tmp_path / "batches"
    index(signal, phases=phases, batch_size=8, progress_folder=folder, show_progressbar=False)
    (folder / "batch000000000008.npz").unlink()  # as if killed before that batch
    resumed = index(
        signal, phases=phases, batch_size=8, progress_folder=folder, show_progressbar=False
    )
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster:
        spread = index(
            signal, phases=phases, batch_size=8, scheduler=cluster.scheduler_address,
            show_progressbar=False,
        )  # fmt: skip
    for other in (resumed, spread):
        assert np.array_equal(single.phase_id, other.phase_id)
        assert np.allclose(single.prop["phase_margin"], other.prop["phase_margin"], atol=1e-4)
        assert np.allclose(single.rotations.data, other.rotations.data, atol=1e-4) or np.allclose(
            np.abs((single.rotations.data * other.rotations.data).sum(1)), 1, atol=1e-6
        )
