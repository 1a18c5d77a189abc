import numpy as np
import torch

from ebsdnet.plots import ipf_rgb


def test_ipf_colours_of_the_cube_axes():
    # Identity: sample z is crystal [001], red in the IPF-Z key; a 90° turn about x
    # keeps a <100> along z, so it is red too.
    q = torch.tensor([[1.0, 0, 0, 0], [np.cos(np.pi / 4), np.sin(np.pi / 4), 0, 0]])
    rgb = ipf_rgb(q, "m-3m", (1, 2))
    assert rgb.shape == (1, 2, 3)
    assert np.allclose(rgb[0, :, 0], 1.0) and np.allclose(rgb[0, :, 1:], 0.0, atol=1e-6)
