import numpy as np
import pytest
import torch
from orix.quaternion import Rotation

from ebsdnet.metrics import normalised_cross_correlation
from ebsdnet.projector import (
    DetectorGeometry,
    Projector,
    _atan_unit,
    _lambert_to_sphere,
    lambert_coordinates,
    resample_to_pattern_centre,
)
from ebsdnet.rotations import (
    axis_angle_to_quaternion,
    point_group_operators,
    quaternion_multiply,
)

# (shape, pc, camera tilt, binning): usual PC, a far-off PC, a rectangular detector.
CASES = [
    ((60, 60), (0.425, 0.213, 0.501), 0.0, 1),
    ((60, 60), (0.5, 0.3, 0.7), 0.0, 1),
    ((60, 60), (0.35, 0.45, 0.6), 8.0, 2),
    ((100, 120), (0.425, 0.213, 0.501), 0.0, 1),
    ((100, 120), (0.5, 0.3, 0.7), 5.0, 4),
    ((100, 120), (0.35, 0.45, 0.6), 0.0, 2),
]


@pytest.mark.parametrize(("shape", "pc", "tilt", "binning"), CASES)
def test_projector_reproduces_kikuchipy(
    kp_master_pattern, raw_master_pattern, shape, pc, tilt, binning
):
    from kikuchipy.detectors import EBSDDetector

    det = EBSDDetector(shape=shape, pc=pc, sample_tilt=70.0, tilt=tilt, binning=binning)
    np.random.seed(sum(shape) + int(100 * pc[0]))
    rot = Rotation.random(1000)
    expected = kp_master_pattern.get_patterns(rot, det, compute=True, show_progressbar=False)
    projector = Projector(raw_master_pattern, DetectorGeometry.from_kikuchipy(det))
    with torch.no_grad():
        ours = projector(torch.tensor(rot.data, dtype=torch.float32))
    assert ours.shape == (1000, *shape)
    ncc = normalised_cross_correlation(ours, torch.from_numpy(expected.data))
    assert ncc.min() >= 0.999


def test_per_pattern_pc_matches_kikuchipy_varying_pc(kp_master_pattern, raw_master_pattern):
    geometry = DetectorGeometry()
    rng = np.random.default_rng(3)
    pcs = np.array(geometry.pc) + rng.uniform(-0.05, 0.05, (50, 3))
    det = geometry.to_kikuchipy(pc=pcs)
    np.random.seed(4)
    rot = Rotation.random(50)
    expected = kp_master_pattern.get_patterns(rot, det, compute=True, show_progressbar=False)
    with torch.no_grad():
        ours = Projector(raw_master_pattern, geometry)(
            torch.tensor(rot.data, dtype=torch.float32), torch.tensor(pcs, dtype=torch.float32)
        )
    assert normalised_cross_correlation(ours, torch.from_numpy(expected.data)).min() >= 0.999


def _equivalent_ncc(master_pattern) -> torch.Tensor:
    """Mean NCC ``(23,)`` of 200 orientations' patterns with their 23 equivalents'."""
    projector = Projector(master_pattern, DetectorGeometry())
    np.random.seed(5)
    q = torch.tensor(Rotation.random(200).data, dtype=torch.float32)
    ops = point_group_operators(master_pattern.point_group)
    assert master_pattern.point_group == "m-3m" and len(ops) == 24
    with torch.no_grad():
        base = projector(q)
        return torch.stack([
            normalised_cross_correlation(base, projector(quaternion_multiply(g.expand_as(q), q)))
            .mean() for g in ops[1:]
        ])  # fmt: skip


def test_symmetrised_master_pattern_gives_equivalent_rotations_the_same_pattern(
    master_pattern, raw_master_pattern
):
    # The file's grid is invariant under the square's symmetries only: the three-fold
    # equivalents read between its points.
    raw = _equivalent_ncc(raw_master_pattern)
    assert raw.max() > 0.99999 and raw.min() < 0.997
    assert _equivalent_ncc(master_pattern).min() > 0.9995
    assert master_pattern.texture.shape == (2 * 801, 801)
    assert master_pattern.sha256 == raw_master_pattern.sha256  # the source's identity
    ncc = normalised_cross_correlation(
        Projector(master_pattern, DetectorGeometry())(torch.tensor([[1.0, 0, 0, 0]])),
        Projector(raw_master_pattern, DetectorGeometry())(torch.tensor([[1.0, 0, 0, 0]])),
    )
    assert ncc > 0.99  # the same master pattern, symmetrised: not another one


def test_lambert_to_sphere_inverts_lambert_coordinates():
    grid = torch.linspace(-1, 1, 81, dtype=torch.float64)
    big_y, big_x = torch.meshgrid(grid, grid, indexing="ij")
    for upper in (True, False):
        v = _lambert_to_sphere(big_x, big_y, upper)
        assert torch.allclose(v.norm(dim=-1), torch.ones(()).double())
        assert bool((v[..., 2] >= 0).all() if upper else (v[..., 2] <= 0).all())
        xy = lambert_coordinates(v)
        assert torch.allclose(xy[..., 0], big_x, atol=1e-12)
        assert torch.allclose(xy[..., 1], big_y, atol=1e-12)


def test_to_kikuchipy_hands_kikuchipy_the_same_texture(master_pattern):
    from kikuchipy.detectors import EBSDDetector

    det = EBSDDetector(shape=(60, 60), pc=(0.425, 0.213, 0.501), sample_tilt=70.0)
    np.random.seed(6)
    rot = Rotation.random(100)
    expected = master_pattern.to_kikuchipy().get_patterns(
        rot, det, compute=True, show_progressbar=False
    )
    with torch.no_grad():
        ours = Projector(master_pattern, DetectorGeometry.from_kikuchipy(det))(
            torch.tensor(rot.data, dtype=torch.float32)
        )
    assert normalised_cross_correlation(ours, torch.from_numpy(expected.data)).min() >= 0.999


def test_polynomial_atan_matches_torch():
    r = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    assert (_atan_unit(r) - torch.atan(r)).abs().max() < 3e-7


def test_lambert_coordinates_cover_the_square():
    v = torch.nn.functional.normalize(torch.randn(10_000, 3, dtype=torch.float64), dim=-1)
    xy = lambert_coordinates(v)
    assert xy.abs().max() <= 1 + 1e-12
    # Equal-area: uniform directions fill the square uniformly (each quadrant ~1/4).
    quadrant = (xy[:, 0] > 0).long() * 2 + (xy[:, 1] > 0).long()
    share = torch.bincount(quadrant, minlength=4) / len(v)
    assert (share - 0.25).abs().max() < 0.02


def test_gradients_agree_with_finite_differences(master_pattern):
    projector = Projector(master_pattern, DetectorGeometry()).double()
    torch.manual_seed(0)
    q0 = torch.nn.functional.normalize(torch.randn(4, 4, dtype=torch.float64), dim=-1)
    weights = torch.randn(4, 60, 60, dtype=torch.float64)
    pc0 = torch.tensor([[0.42, 0.22, 0.5]], dtype=torch.float64).repeat(4, 1)

    def score(delta, pc):
        q = quaternion_multiply(axis_angle_to_quaternion(delta), q0)
        return (projector(q, pc) * weights).sum((-2, -1))  # (4,)

    delta = torch.full((4, 3), 1e-12, dtype=torch.float64, requires_grad=True)
    pc = pc0.clone().requires_grad_()
    s = score(delta, pc)
    g_rot, g_pc = torch.autograd.grad(s.sum(), (delta, pc))
    eps = 1e-6
    for i in range(3):
        step = torch.zeros(4, 3, dtype=torch.float64)
        step[:, i] = eps
        with torch.no_grad():
            fd_rot = (score(step, pc0) - score(-step, pc0)) / (2 * eps)
            no_turn = torch.zeros_like(step)
            fd_pc = (score(no_turn, pc0 + step) - score(no_turn, pc0 - step)) / (2 * eps)
        # Bilinear interpolation is piecewise linear: a few pixels cross cell edges
        # inside the finite-difference step, hence 1% rather than machine precision.
        assert torch.allclose(g_rot[:, i], fd_rot, rtol=1e-2, atol=1e-2 * fd_rot.abs().max())
        assert torch.allclose(g_pc[:, i], fd_pc, rtol=1e-2, atol=1e-2 * fd_pc.abs().max())


def test_rotation_jacobian_matches_finite_differences(master_pattern):
    projector = Projector(master_pattern, DetectorGeometry())
    q = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    patterns, jac = projector.with_jacobian(q)
    assert jac.shape == (8, 60, 60, 3)
    with torch.no_grad():
        assert torch.allclose(patterns, projector(q))
        h = 1e-4
        for axis in range(3):
            d = torch.zeros(8, 3)
            d[:, axis] = h
            moved = projector(quaternion_multiply(axis_angle_to_quaternion(d), q))
            fd = ((moved - patterns) / h).flatten(1)
            cos = torch.nn.functional.cosine_similarity(fd, jac[..., axis].flatten(1), dim=1)
            assert cos.min() > 0.99


def test_pattern_centre_jacobian_matches_finite_differences(master_pattern):
    """``pc_columns``: the derivatives w.r.t. the PC's components, from the same backward
    pass as the rotation's; per-pattern PCs and one shared PC give the same columns."""
    projector = Projector(master_pattern, DetectorGeometry())
    q = torch.nn.functional.normalize(
        torch.randn(8, 4, generator=torch.Generator().manual_seed(3)), dim=-1
    )
    pcs = projector.default_pc + 0.01 * torch.randn(
        8, 3, generator=torch.Generator().manual_seed(4)
    )
    patterns, jac = projector.with_jacobian(q, pcs, pc_columns=True)
    assert jac.shape == (8, 60, 60, 6)
    _, rotation_only = projector.with_jacobian(q, pcs)
    assert torch.equal(jac[..., :3], rotation_only)
    with torch.no_grad():
        assert torch.allclose(patterns, projector(q, pcs))
        h = 1e-4
        for axis in range(3):
            d = torch.zeros(3)
            d[axis] = h
            fd = ((projector(q, pcs + d) - projector(q, pcs - d)) / (2 * h)).flatten(1)
            analytic = jac[..., 3 + axis].flatten(1)
            assert torch.nn.functional.cosine_similarity(fd, analytic, dim=1).min() > 0.99
            assert torch.allclose(analytic.norm(dim=1), fd.norm(dim=1), rtol=0.02)
    one = projector.default_pc
    _, shared = projector.with_jacobian(q, one, pc_columns=True)
    _, repeated = projector.with_jacobian(q, one.expand(8, 3).clone(), pc_columns=True)
    assert torch.allclose(shared, repeated, atol=1e-6)


def test_binned_projector_sees_the_block_centres(master_pattern):
    projector = Projector(master_pattern, DetectorGeometry())
    coarse = projector.binned(2)
    assert coarse.shape == (30, 30) and projector.binned(2) is coarse
    q = torch.tensor([[0.9, 0.1, 0.3, 0.2]])
    with torch.no_grad():
        full = projector(q)
        pooled = torch.nn.functional.avg_pool2d(full[:, None], 2)[:, 0]
        shifted = torch.nn.functional.avg_pool2d(full.roll(1, dims=-1)[:, None], 2)[:, 0]
        # Point samples at the block centres vs block means: close, and closer than
        # blocks one fine pixel off.
        aligned = normalised_cross_correlation(coarse(q), pooled)
        assert aligned.min() > 0.85
        assert (aligned > normalised_cross_correlation(coarse(q), shifted)).all()


@pytest.mark.parametrize("shape", [(60, 60), (100, 120)])
def test_resampling_to_another_pattern_centre_matches_its_projection(master_pattern, shape):
    rows, cols = shape
    projector = Projector(master_pattern, DetectorGeometry(shape=shape))
    q = torch.from_numpy(Rotation.random(16).data).float()
    target = torch.tensor([0.425, 0.213, 0.501])
    at_target = projector(q, target)
    inner = (slice(None), slice(6, -6), slice(6, -6))  # what both detectors see

    def ncc(a, b):
        return normalised_cross_correlation(a[inner], b[inner])

    # A PC one pixel right and one up: the same image shifted by whole pixels.
    pc = target + torch.tensor([1 / cols, -1 / rows, 0.0])
    resampled = resample_to_pattern_centre(projector(q, pc), pc, target)
    assert ncc(resampled, at_target).min() > 0.9999
    # Sub-pixel moves and another distance, one PC per pattern: bilinear reading of
    # sharp bands loses a little, not resampling loses most.
    pcs = target + 0.02 * (2 * torch.rand(16, 3, generator=torch.Generator().manual_seed(1)) - 1)
    recorded = projector(q, pcs)
    resampled = resample_to_pattern_centre(recorded, pcs, target)
    better, unmoved = ncc(resampled, at_target), ncc(recorded, at_target)
    assert better.min() > 0.85 and (better > unmoved).all()
    assert better.mean() > unmoved.mean() + 0.3
    assert resample_to_pattern_centre(at_target, target, target) is at_target


def test_the_written_out_bilinear_look_up_is_grid_samples():
    """Compiled projections use ``_bilinear``; eager ones ``grid_sample``: same values and
    position gradients, borders included."""
    from ebsdnet.projector import _bilinear

    g = torch.Generator().manual_seed(0)
    texture = torch.rand(14, 7, generator=g, dtype=torch.float64)
    col = (torch.rand(500, generator=g, dtype=torch.float64) * 8 - 0.5).requires_grad_()
    row = (torch.rand(500, generator=g, dtype=torch.float64) * 15 - 0.5).requires_grad_()
    ours = _bilinear(texture, col, row)
    grid = torch.stack((col / 6 * 2 - 1, row / 13 * 2 - 1), -1)[None, None]
    theirs = torch.nn.functional.grid_sample(
        texture[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True
    )[0, 0, 0]
    torch.testing.assert_close(ours, theirs)
    inside = (col > 0) & (col < 6) & (row > 0) & (row < 13)
    grads = [torch.autograd.grad(v.sum(), (col, row)) for v in (ours, theirs)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a[inside], b[inside])


def test_symmetrising_under_the_identity_only_upsamples_through_the_grid_points():
    from ebsdnet.projector import MasterPattern

    n = 21
    texture = torch.rand(2 * n, n, generator=torch.Generator().manual_seed(7))
    mp = MasterPattern(texture=texture, point_group="1")
    fine = mp.symmetrised(2)
    assert fine.texture.shape == (2 * (2 * n - 1), 2 * n - 1)
    m = 2 * n - 1
    for half in range(2):  # every second point is a grid point of the file (border aside:
        coarse = texture[half * n : (half + 1) * n]  # the equator belongs to both halves)
        on_grid = fine.texture[half * m : (half + 1) * m][::2, ::2]
        assert torch.allclose(on_grid[1:-1, 1:-1], coarse[1:-1, 1:-1], atol=1e-5)
