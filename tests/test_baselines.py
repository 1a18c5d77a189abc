import pytest
import torch

from ebsdnet.baselines import build_dictionary
from ebsdnet.preprocess import preprocess
from ebsdnet.projector import DetectorGeometry, Projector
from ebsdnet.rotations import disorientation_deg


@pytest.mark.parametrize("binning", [1, 2])
def test_dictionary_finds_its_own_entries_and_ranks_them(master_pattern, binning):
    dictionary = build_dictionary(8.0, master_pattern, DetectorGeometry(), binning=binning)
    assert dictionary.patterns.shape[1] == 3600 // binning**2
    q = dictionary.quaternions[::40]
    with torch.no_grad():
        patterns = preprocess(Projector(master_pattern, DetectorGeometry())(q))
    best, score = dictionary.match(patterns)
    assert score.min() > 0.99
    assert disorientation_deg(best, q).max() < 1e-3
    top, scores = dictionary.top(patterns, 3)
    assert top.shape == (len(q), 3, 4)
    assert torch.equal(top[:, 0], best)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
