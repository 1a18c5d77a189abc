"""Rotations in torch: conversions, crystal symmetry and disorientation.

Quaternions are ``(..., 4)`` tensors, scalar first ``(w, x, y, z)``, with the
same meaning as orix's :class:`~orix.quaternion.Rotation` data: the rotation
that kikuchipy applies to a detector direction (sample frame) to find the
crystal direction it sees. Euler angles are Bunge ``(phi1, Phi, phi2)`` in
radians, as in ``Rotation.from_euler(..., direction="lab2crystal")``.

Every function is batched over leading dimensions and differentiable except at
the usual branch points (rotation angle 0 or 180°, gimbal lock for Euler
angles). Point-group operators come from orix, never from hand-typed tables.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "LAUE_GROUPS",
    "axis_angle_to_quaternion",
    "disorientation_deg",
    "euler_to_quaternion",
    "matrix_to_quaternion",
    "matrix_to_sixd",
    "misorientation_angle",
    "orix_point_group",
    "point_group_operators",
    "quaternion_conjugate",
    "quaternion_multiply",
    "quaternion_to_euler",
    "quaternion_to_matrix",
    "reduce_to_fundamental_zone",
    "sixd_to_matrix",
    "standardise_quaternion",
]

# The 11 Laue groups, by orix name; their proper parts are what rotate a crystal.
LAUE_GROUPS = ("-1", "2/m", "mmm", "4/m", "4/mmm", "-3", "-3m", "6/m", "6/mmm", "m-3", "m-3m")


def quaternion_multiply(p: Tensor, q: Tensor) -> Tensor:
    """Hamilton product ``p * q`` (apply ``q`` first, then ``p``)."""
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        (
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ),
        dim=-1,
    )


def quaternion_conjugate(q: Tensor) -> Tensor:
    """Inverse of a unit quaternion."""
    return q * q.new_tensor([1.0, -1.0, -1.0, -1.0])


def standardise_quaternion(q: Tensor) -> Tensor:
    """Normalise and flip to the hemisphere ``w >= 0`` (``q`` and ``-q`` are one rotation)."""
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)`` to rotation matrices ``(..., 3, 3)``.

    ``R @ v`` rotates ``v`` as kikuchipy's projector does.
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = (
        (1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)),
        (2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)),
        (2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)),
    )
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def matrix_to_quaternion(m: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` to unit quaternions with ``w >= 0``.

    Shepperd's method: of the four candidate formulas, each row uses the one
    whose pivot is largest, which keeps it accurate near 180° rotations.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * component^2 for w, x, y, z; clamped so sqrt has a finite gradient.
    pivots = torch.stack(
        (
            1 + m00 + m11 + m22,
            1 + m00 - m11 - m22,
            1 - m00 + m11 - m22,
            1 - m00 - m11 + m22,
        ),
        dim=-1,
    )
    root = torch.sqrt(pivots.clamp_min(1e-12))  # (..., 4) = 2 * |component|
    candidates = torch.stack(
        (
            torch.stack((root[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01), -1)
            / (2 * root[..., 0:1]),
            torch.stack((m21 - m12, root[..., 1] ** 2, m01 + m10, m02 + m20), -1)
            / (2 * root[..., 1:2]),
            torch.stack((m02 - m20, m01 + m10, root[..., 2] ** 2, m12 + m21), -1)
            / (2 * root[..., 2:3]),
            torch.stack((m10 - m01, m02 + m20, m12 + m21, root[..., 3] ** 2), -1)
            / (2 * root[..., 3:4]),
        ),
        dim=-2,
    )  # (..., 4 candidates, 4)
    best = pivots.argmax(dim=-1, keepdim=True)[..., None].expand(*pivots.shape[:-1], 1, 4)
    q = candidates.gather(-2, best).squeeze(-2)
    return standardise_quaternion(q)


def euler_to_quaternion(euler: Tensor) -> Tensor:
    """Bunge Euler angles ``(..., 3)`` in radians to quaternions (orix convention)."""
    phi1, big_phi, phi2 = euler.unbind(-1)
    sigma = 0.5 * (phi1 + phi2)
    delta = 0.5 * (phi1 - phi2)
    c = torch.cos(0.5 * big_phi)
    s = torch.sin(0.5 * big_phi)
    q = torch.stack(
        (
            c * torch.cos(sigma),
            -s * torch.cos(delta),
            -s * torch.sin(delta),
            -c * torch.sin(sigma),
        ),
        dim=-1,
    )
    return standardise_quaternion(q)


def quaternion_to_euler(q: Tensor) -> Tensor:
    """Quaternions ``(..., 4)`` to Bunge Euler angles in radians, each in ``[0, 2π)``.

    Follows Rowenhorst et al. (2015), as orix does; at ``Phi = 0`` or ``π`` the
    whole in-plane angle goes to ``phi1``.
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    q03 = w * w + z * z
    q12 = x * x + y * y
    chi = torch.sqrt((q03 * q12).clamp_min(0))
    safe_chi = chi.clamp_min(1e-12)
    phi1 = torch.atan2((x * z - w * y) / safe_chi, (-w * x - y * z) / safe_chi)
    big_phi = torch.atan2(2 * chi, q03 - q12)
    phi2 = torch.atan2((w * y + x * z) / safe_chi, (y * z - w * x) / safe_chi)
    # Degenerate cases: the rotation axis lies along z (Phi = 0) or in the xy plane (Phi = π).
    flat = chi < 1e-7
    phi1_flat = torch.where(
        q12 < q03, torch.atan2(-2 * w * z, w * w - z * z), torch.atan2(2 * x * y, x * x - y * y)
    )
    phi1 = torch.where(flat, phi1_flat, phi1)
    phi2 = torch.where(flat, torch.zeros_like(phi2), phi2)
    big_phi = torch.where(
        flat,
        torch.where(q12 < q03, torch.zeros_like(big_phi), torch.full_like(big_phi, math.pi)),
        big_phi,
    )
    return torch.remainder(torch.stack((phi1, big_phi, phi2), dim=-1), 2 * math.pi)


def axis_angle_to_quaternion(v: Tensor) -> Tensor:
    """Axis-angle vectors ``(..., 3)`` (direction × angle in radians) to quaternions.

    Finite, with a finite gradient, at the zero rotation.
    """
    angle = v.norm(dim=-1, keepdim=True)
    half = 0.5 * angle
    # sin(θ/2)/θ → 1/2 as θ → 0.
    scale = torch.where(
        angle > 1e-12, torch.sin(half) / angle.clamp_min(1e-12), 0.5 * torch.ones_like(angle)
    )
    return torch.cat((torch.cos(half), v * scale), dim=-1)


def sixd_to_matrix(d6: Tensor) -> Tensor:
    """Continuous 6D representation (Zhou et al. 2019) to rotation matrices.

    ``d6`` holds the first two columns of the matrix, ``(..., 6)``; Gram-Schmidt
    turns any non-degenerate pair into a rotation.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def matrix_to_sixd(m: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` to the 6D representation (first two columns)."""
    return torch.cat((m[..., :, 0], m[..., :, 1]), dim=-1)


def orix_point_group(point_group: str):
    """orix's ``Symmetry`` for a point-group name (``"m-3m"``, ``"432"``, ``"6/mmm"``, …)."""
    from orix.quaternion import symmetry

    names = {g.name: g for g in symmetry._groups}
    if point_group not in names:
        raise ValueError(
            f"unknown point group {point_group!r}; expected one of orix's names, "
            f"e.g. {', '.join(LAUE_GROUPS)}"
        )
    return names[point_group]


def laue_group(point_group: str) -> str:
    """The Laue group of a point group (orix's name): what EBSD patterns can tell apart.

    >>> laue_group("-43m"), laue_group("622")
    ('m-3m', '6/mmm')
    """
    return orix_point_group(point_group).laue.name


def same_laue_group(a: str, b: str) -> bool:
    """Whether two point groups share a Laue group (equal names need no orix)."""
    return a == b or laue_group(a) == laue_group(b)


@lru_cache(maxsize=64)
def _operators_numpy(point_group: str) -> np.ndarray:
    proper = orix_point_group(point_group).laue_proper_subgroup
    return np.ascontiguousarray(proper.data, dtype=np.float64)


def point_group_operators(
    point_group: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> Tensor:
    """Proper rotations of a point group's Laue class, as quaternions ``(K, 4)``.

    Parameters
    ----------
    point_group
        orix point-group name, e.g. ``"m-3m"``, ``"432"``, ``"6/mmm"``. Any group
        of a Laue class gives the same operators: EBSD patterns cannot tell
        a group from its centrosymmetric Laue group.

    Examples
    --------
    >>> point_group_operators("m-3m").shape
    torch.Size([24, 4])
    """
    return torch.as_tensor(_operators_numpy(point_group), dtype=dtype, device=device)


def misorientation_angle(q1: Tensor, q2: Tensor, operators: Tensor) -> Tensor:
    """Smallest rotation angle (radians) between ``q1`` and ``q2`` under crystal symmetry.

    With crystal symmetry acting from the left (``g * q`` is equivalent to
    ``q``), the angle between ``g1 q1`` and ``g2 q2`` is that of
    ``g q2 q1^-1`` for ``g = g1^-1 g2``, so one pass over the ``K`` operators
    suffices. The scalar part of ``g * m`` is ``<g, conj(m)>``, so choosing the
    best operator is one matrix product.

    Parameters
    ----------
    q1, q2
        Broadcastable quaternions ``(..., 4)``.
    operators
        ``(K, 4)`` from :func:`point_group_operators`.
    """
    m = quaternion_multiply(q2, quaternion_conjugate(q1))
    m = m / m.norm(dim=-1, keepdim=True)
    ops = operators.to(m)
    best = (quaternion_conjugate(m) @ ops.T).abs().argmax(dim=-1)  # (...,)
    d = quaternion_multiply(ops[best], m)
    # atan2 of the vector and scalar parts keeps small angles exact (arccos(w) loses them).
    vec = torch.sqrt((d[..., 1:] ** 2).sum(-1) + 1e-30)
    return 2 * torch.atan2(vec, d[..., 0].abs())


def disorientation_deg(q1: Tensor, q2: Tensor, point_group: str = "m-3m") -> Tensor:
    """Symmetry-reduced disorientation angle in degrees.

    Examples
    --------
    >>> q = torch.tensor([[1.0, 0, 0, 0]])
    >>> r = torch.tensor([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])  # 90° about z
    >>> float(disorientation_deg(q, r, "m-3m")) < 0.1
    True
    """
    ops = point_group_operators(point_group, dtype=q1.dtype, device=q1.device)
    return torch.rad2deg(misorientation_angle(q1, q2, ops))


def reduce_to_fundamental_zone(q: Tensor, operators: Tensor) -> Tensor:
    """Equivalent quaternion ``g * q`` closest to the identity (largest ``|w|``).

    This is the Rodrigues fundamental zone's representative, the label
    convention of the 2016 study's dictionary. Returned with ``w >= 0``.
    """
    # w of g * q = <g, conj(q)>
    w = quaternion_conjugate(q) @ operators.to(q).T  # (..., K)
    best = w.abs().argmax(dim=-1)
    g = operators.to(q)[best]
    return standardise_quaternion(quaternion_multiply(g, q))
