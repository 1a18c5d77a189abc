"""``index --adapt``: self-training on the scan's own confidently indexed points."""

import json

import numpy as np
import pytest
import torch

from ebsdnet.adapt import MIN_LABELS, pseudo_labels
from ebsdnet.cards import load_model
from ebsdnet.cli import main
from ebsdnet.indexing import ADAPT_MIN_GAIN, index
from ebsdnet.rotations import disorientation_deg
from ebsdnet.synthetic import simulate_map


@pytest.fixture(scope="module")
def noisy_map():
    return simulate_map((6, 6), n_grains=5, dose=30.0, seed=11)


def _errors(xmap, signal) -> np.ndarray:
    q = torch.tensor(xmap.rotations.data).reshape(xmap.size, -1, 4)[:, 0].float()
    truth = torch.tensor(signal.xmap.rotations.data).float()
    return disorientation_deg(q, truth, "m-3m").numpy()


def test_pseudo_labels_are_the_confidently_indexed_points():
    ncc = np.array([0.5, 0.1, 0.4, 0.3, 0.9, 0.2])
    flag = np.array([0, 0, 0, 0, 4, 0])  # the 0.9 is not indexed: never a label
    assert pseudo_labels(ncc, flag).tolist() == [0, 2, 3]  # ≥ the median 0.3 of the indexed
    assert len(pseudo_labels(ncc, np.full(6, 4))) == 0


def test_adapting_never_makes_the_map_worse_and_saves_the_model(noisy_map, tmp_path):
    first = index(noisy_map, show_progressbar=False)
    saved = tmp_path / "adapted"
    adapted = index(noisy_map, adapt=0.05, save_model=saved, show_progressbar=False)
    before, after = first.prop["ncc"], adapted.prop["ncc"]
    assert (after >= before).all()
    taken = after > before  # points that took the adapted pass's answer
    assert (after[taken] > before[taken] + ADAPT_MIN_GAIN).all()
    e1, e2 = _errors(first, noisy_map), _errors(adapted, noisy_map)
    assert np.allclose(e1[~taken], e2[~taken], atol=1e-4)  # the rest are the first answers
    assert e2.mean() <= e1.mean() + 1e-4
    assert ((adapted.phase_id >= 0) >= (first.phase_id >= 0)).all()
    card = json.loads(saved.with_suffix(".json").read_text())
    shipped = load_model("ni-60")[1]
    assert card["adapted"]["labels"] >= MIN_LABELS and card["adapted"]["steps"] >= 1
    assert card["adapted"]["from_weights_sha256"] == shipped["weights_sha256"]
    assert card["weights_sha256"] != shipped["weights_sha256"] and card["name"] == "adapted"
    model, _ = load_model(str(saved.with_suffix(".json")))  # verified against its card
    assert model is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--save-model", "m"], "--adapt"),
        (["--adapt", "-1"], "at least 0"),
    ],
)
def test_bad_adapt_options_are_one_line_and_write_nothing(
    noisy_map, tmp_path, capsys, extra, message
):
    src = tmp_path / "scan.h5"
    noisy_map.save(src)
    out = tmp_path / "map.ang"
    args = ["-q", "index", str(src), "-o", str(out)]
    if "--save-model" in extra:
        extra = ["--save-model", str(tmp_path / "m")]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not out.exists() and not (tmp_path / "m.json").exists()


def test_adapting_needs_a_cnn(noisy_map, phase_files):
    from ebsdnet.indexing import IndexingError

    with pytest.raises(IndexingError, match="fine-tunes a CNN"):
        index(noisy_map, phase=str(phase_files["ni"]), adapt=0.05, show_progressbar=False)
