import math

import torch

from ebsdnet.losses import periodic_euler_loss, symmetric_multi_hypothesis_loss
from ebsdnet.rotations import (
    matrix_to_sixd,
    point_group_operators,
    quaternion_multiply,
    quaternion_to_matrix,
)
from ebsdnet.stream import random_quaternions


def test_seed_loss_is_periodic():
    eps = 0.01
    loss = periodic_euler_loss(torch.tensor([0.0]), torch.tensor([2 * math.pi - eps]))
    assert abs(float(loss) - eps) < 1e-5
    assert (
        float(periodic_euler_loss(torch.tensor([0.3]), torch.tensor([0.3 + 4 * math.pi]))) < 1e-5
    )
    # Finite gradient at zero error (arccos(cos x) has none there).
    pred = torch.tensor([1.0], requires_grad=True)
    periodic_euler_loss(pred, torch.tensor([1.0])).backward()
    assert torch.isfinite(pred.grad).all()


def test_symmetry_equivalent_truth_gives_zero_loss():
    ops = point_group_operators("m-3m")
    q = random_quaternions(64, torch.Generator().manual_seed(0))
    g = ops[torch.randint(0, 24, (64,), generator=torch.Generator().manual_seed(1))]
    truth = quaternion_multiply(g, q)
    sixd = matrix_to_sixd(quaternion_to_matrix(q))[:, None]  # one hypothesis
    output = {"sixd": sixd, "logits": torch.zeros(64, 1)}
    loss, info = symmetric_multi_hypothesis_loss(output, truth, ops)
    assert float(loss) < 1e-3
    assert float(info["chosen_deg"].max()) < 0.05


def test_multi_hypothesis_loss_trains_the_best_and_its_selector():
    ops = point_group_operators("m-3m")
    q = random_quaternions(16, torch.Generator().manual_seed(2))
    wrong = random_quaternions(16, torch.Generator().manual_seed(3))
    sixd = torch.stack(
        (matrix_to_sixd(quaternion_to_matrix(wrong)), matrix_to_sixd(quaternion_to_matrix(q))), 1
    )
    logits = torch.zeros(16, 2, requires_grad=True)
    loss, _ = symmetric_multi_hypothesis_loss({"sixd": sixd, "logits": logits}, q, ops)
    loss.backward()
    # Raising the logit of the right hypothesis (index 1) lowers the loss.
    assert (logits.grad[:, 1] < 0).all() and (logits.grad[:, 0] > 0).all()
