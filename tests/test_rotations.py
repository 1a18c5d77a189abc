import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from orix.quaternion import Orientation, Rotation

from ebsdnet.rotations import (
    LAUE_GROUPS,
    disorientation_deg,
    euler_to_quaternion,
    matrix_to_quaternion,
    matrix_to_sixd,
    misorientation_angle,
    orix_point_group,
    point_group_operators,
    quaternion_multiply,
    quaternion_to_euler,
    quaternion_to_matrix,
    reduce_to_fundamental_zone,
    sixd_to_matrix,
    standardise_quaternion,
)


@pytest.fixture(scope="module")
def rotations():
    return Rotation.random(10_000)  # orix draws from numpy's global state


@pytest.fixture(scope="module")
def q64(rotations):
    return standardise_quaternion(torch.tensor(rotations.data))


def test_quaternion_matrix_round_trip_matches_orix(rotations, q64):
    m = quaternion_to_matrix(q64)
    assert np.allclose(m.numpy(), rotations.to_matrix(), atol=1e-10)
    assert torch.allclose(matrix_to_quaternion(m), q64, atol=1e-10)
    q32 = q64.float()
    assert torch.allclose(matrix_to_quaternion(quaternion_to_matrix(q32)), q32, atol=1e-5)


def test_euler_round_trip_matches_orix(rotations, q64):
    euler = quaternion_to_euler(q64)
    diff = euler.numpy() - rotations.to_euler()
    assert np.abs(np.angle(np.exp(1j * diff))).max() < 1e-8
    assert torch.allclose(euler_to_quaternion(euler), q64, atol=1e-10)
    expected = Rotation.from_euler(euler.numpy())
    assert np.allclose(standardise_quaternion(torch.tensor(expected.data)), q64, atol=1e-10)
    q32 = q64.float()
    assert torch.allclose(euler_to_quaternion(quaternion_to_euler(q32)), q32, atol=1e-5)


def test_euler_degenerate_cases():
    # Phi = 0 and Phi = π: the in-plane angle goes to phi1.
    for euler in ([0.3, 0.0, 0.0], [0.3, math.pi, 0.0]):
        q = euler_to_quaternion(torch.tensor([euler], dtype=torch.float64))
        back = euler_to_quaternion(quaternion_to_euler(q))
        assert torch.allclose(back, q, atol=1e-10)


def test_sixd_round_trip(q64):
    m = quaternion_to_matrix(q64)
    assert torch.allclose(sixd_to_matrix(matrix_to_sixd(m)), m, atol=1e-10)
    # Any non-degenerate 6-vector gives a proper rotation.
    m2 = sixd_to_matrix(torch.randn(100, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64).expand(100, 3, 3)
    assert torch.allclose(m2 @ m2.transpose(-1, -2), eye, atol=1e-10)
    assert torch.allclose(torch.linalg.det(m2), torch.ones(100, dtype=torch.float64))


@pytest.mark.parametrize("group", ["m-3m", "6/mmm", "4/mmm", "-3m", "mmm"])
def test_disorientation_matches_orix(group):
    sym = orix_point_group(group)
    np.random.seed(7)
    o1 = Orientation.random(10_000, symmetry=sym)
    o2 = Orientation.random(10_000, symmetry=sym)
    expected = o1.angle_with(o2, degrees=True)
    ours = disorientation_deg(torch.tensor(o1.data), torch.tensor(o2.data), group).numpy()
    assert np.abs(ours - expected).max() < 1e-3


@pytest.mark.parametrize("group", LAUE_GROUPS)
def test_operators_are_a_group_from_orix(group):
    ops = point_group_operators(group, dtype=torch.float64)
    sizes = {"-1": 1, "2/m": 2, "mmm": 4, "4/m": 4, "4/mmm": 8, "-3": 3, "-3m": 6,
             "6/m": 6, "6/mmm": 12, "m-3": 12, "m-3m": 24}  # fmt: skip
    assert len(ops) == sizes[group]
    # Closed under multiplication: every product is again an operator (up to sign).
    prod = quaternion_multiply(ops[:, None], ops[None, :]).reshape(-1, 4)
    assert ((prod @ ops.T).abs().amax(-1) > 1 - 1e-9).all()


def test_symmetry_equivalents_have_zero_disorientation(q64):
    ops = point_group_operators("m-3m", dtype=torch.float64)
    equivalent = quaternion_multiply(ops[torch.arange(len(q64)) % 24], q64)
    assert disorientation_deg(q64, equivalent).max() < 1e-3
    reduced = reduce_to_fundamental_zone(q64, ops)
    assert disorientation_deg(q64, reduced).max() < 1e-3
    # In the fundamental zone, w is the largest over the equivalents: angle ≤ 62.8° for cubic.
    assert torch.rad2deg(2 * torch.acos(reduced[:, 0])).max() < 62.81


def test_gradients_pass_gradcheck():
    torch.manual_seed(0)
    q = standardise_quaternion(torch.randn(5, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(quaternion_to_matrix, (q,))
    m = quaternion_to_matrix(q.detach()).requires_grad_()
    # A rotation matrix perturbed off SO(3) still maps to a quaternion; check the map is smooth.
    assert torch.autograd.gradcheck(matrix_to_quaternion, (m,))
    d6 = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(sixd_to_matrix, (d6,))
    # Euler angles away from Phi = 0, π and from the 0/2π wrap.
    e = torch.tensor([[0.5, 1.0, 2.0], [2.5, 0.7, 1.2]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(euler_to_quaternion, (e,))
    qe = euler_to_quaternion(e.detach()).requires_grad_()
    assert torch.autograd.gradcheck(quaternion_to_euler, (qe,))
    ops = point_group_operators("m-3m", dtype=torch.float64)
    q1 = standardise_quaternion(torch.randn(5, 4, dtype=torch.float64)).requires_grad_()
    q2 = standardise_quaternion(torch.randn(5, 4, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: misorientation_angle(a, b, ops), (q1, q2))


def test_unknown_point_group_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown point group"):
        point_group_operators("m3m-typo")


# Property tests: any unit quaternion, any Laue group.
_unit_quaternions = st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=4, max_size=4).filter(
    lambda v: sum(x * x for x in v) > 1e-3
)


def _q(values) -> torch.Tensor:
    q = torch.tensor(values, dtype=torch.float64)
    return standardise_quaternion(q / q.norm())[None]


@settings(max_examples=200, deadline=None)
@given(_unit_quaternions)
def test_conversions_round_trip_for_any_rotation(values):
    q = _q(values)
    assert disorientation_deg(matrix_to_quaternion(quaternion_to_matrix(q)), q, "1") < 1e-6
    # Euler angles lose digits near Φ = 0 (φ1 and φ2 merge): a looser bound there.
    assert disorientation_deg(euler_to_quaternion(quaternion_to_euler(q)), q, "1") < 1e-4
    assert disorientation_deg(matrix_to_quaternion(sixd_to_matrix(matrix_to_sixd(
        quaternion_to_matrix(q)))), q, "1") < 1e-6  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(_unit_quaternions, _unit_quaternions, st.sampled_from(LAUE_GROUPS))
def test_symmetry_reduction_properties(a_values, b_values, group):
    a, b = _q(a_values), _q(b_values)
    ops = point_group_operators(group, dtype=torch.float64)
    reduced = reduce_to_fundamental_zone(a, ops)
    assert disorientation_deg(reduced, a, group) < 1e-6  # an equivalent of the input
    # Reducing again finds no closer equivalent (on a zone boundary another one as close).
    assert torch.allclose(reduce_to_fundamental_zone(reduced, ops)[..., 0], reduced[..., 0])
    d_ab, d_ba = disorientation_deg(a, b, group), disorientation_deg(b, a, group)
    assert torch.allclose(d_ab, d_ba, atol=1e-6)
    moved = quaternion_multiply(ops[len(ops) // 2][None], b)  # a symmetry equivalent of b
    assert torch.allclose(disorientation_deg(a, moved, group), d_ab, atol=1e-6)
    assert 0 <= float(d_ab) <= 180
