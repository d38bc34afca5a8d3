"""Shapes of the synthetic scenes: analytic convex solids (the classification label is the shape), each
with what the renderer needs: ray interval, surface normal, support function (rest height), radius."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

Vec = tuple[Tensor, Tensor, Tensor]  # x, y, z components, each broadcastable to [n, P]

# ---------------------------------------------------------------------------------------------------------
# Shapes: analytic convex solids in a local frame centred on the origin (bounding radius <= 1.2)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Polytope:
    """A convex polytope: slabs |n.x| <= s, half-spaces n.x <= h, and its vertices (for the support)."""

    slabs: tuple[tuple[tuple[float, float, float], float], ...]
    planes: tuple[tuple[tuple[float, float, float], float], ...]
    vertices: tuple[tuple[float, float, float], ...]


def _dot(n: tuple[float, float, float], v: Vec) -> Tensor:
    """n . v with a constant n, skipping zero coefficients (fewer full-size ops)."""
    out: Tensor | None = None
    for c, comp in zip(n, v, strict=True):
        if c == 0.0:
            continue
        term = comp if c == 1.0 else (-comp if c == -1.0 else comp * c)
        out = term if out is None else out + term
    assert out is not None  # a normal is never zero (internal invariant)
    return out


def _poly_interval(poly: _Polytope, o: Vec, d: Vec) -> tuple[Tensor, Tensor]:
    """Entry and exit parameters of the rays o + t d through a convex polytope (empty if enter >= exit)."""
    enter: Tensor | float = -math.inf
    exit_: Tensor | float = math.inf
    for n, s in poly.slabs:  # Kay-Kajiya slabs
        w, u = _dot(n, o), _dot(n, d)
        ta, tb = (-s - w) / u, (s - w) / u
        enter = torch.maximum(torch.minimum(ta, tb), enter) if isinstance(enter, Tensor) else ta.minimum(tb)
        exit_ = torch.minimum(torch.maximum(ta, tb), exit_) if isinstance(exit_, Tensor) else ta.maximum(tb)
    for n, h in poly.planes:  # half-spaces: entering where the ray points against the outward normal
        u = _dot(n, d)
        t = (h - _dot(n, o)) / u
        front = u < 0
        e, x = torch.where(front, t, -math.inf), torch.where(front, math.inf, t)
        enter = e if not isinstance(enter, Tensor) else torch.maximum(enter, e)
        exit_ = x if not isinstance(exit_, Tensor) else torch.minimum(exit_, x)
    assert isinstance(enter, Tensor) and isinstance(exit_, Tensor)
    return enter, exit_


def _poly_normal(poly: _Polytope, p: Vec) -> Vec:
    """Outward unit normal of the face a surface point p lies on (the face with the largest residual)."""
    faces = []
    for n, s in poly.slabs:
        faces += [(n, s), ((-n[0], -n[1], -n[2]), s)]
    faces += list(poly.planes)
    units = []
    best: Tensor | None = None
    face = torch.zeros_like(p[0], dtype=torch.int64)
    for k, (n, h) in enumerate(faces):
        norm = math.sqrt(n[0] ** 2 + n[1] ** 2 + n[2] ** 2)
        units.append([c / norm for c in n])
        r = _dot(n, p) - h  # residual scaled by |n|: compare in common units below
        r = r * (1.0 / norm) if norm != 1.0 else r
        if best is None:
            best = r
        else:
            face = torch.where(r > best, k, face)
            best = torch.maximum(best, r)
    table = torch.tensor(units, dtype=p[0].dtype, device=p[0].device).T.contiguous()  # [3, faces]
    return tuple(table.index_select(1, face.view(-1)).view(3, *face.shape))  # type: ignore[return-value]


def _poly_support(poly: _Polytope, u: Tensor) -> Tensor:
    """Support function max_v v.u over the vertices; u: float64 [N,3] -> [N]."""
    # Explicit products and sums (no matmul): the same rounding for any batch size.
    best = None
    for v in poly.vertices:
        s = u[:, 0] * v[0] + u[:, 1] * v[1] + u[:, 2] * v[2]
        best = s if best is None else torch.maximum(best, s)
    assert best is not None
    return best


def _box(a: float, b: float, c: float) -> _Polytope:
    """Box with half-sizes a, b, c along x, y, z."""
    verts = tuple((x, y, z) for x in (-a, a) for y in (-b, b) for z in (-c, c))
    return _Polytope(slabs=(((1.0, 0.0, 0.0), a), ((0.0, 1.0, 0.0), b), ((0.0, 0.0, 1.0), c)), planes=(),
                     vertices=verts)


def _octahedron() -> _Polytope:
    s = 1.08
    slabs = tuple(((1.0, b, c), s) for b in (1.0, -1.0) for c in (1.0, -1.0))
    verts = ((s, 0, 0), (-s, 0, 0), (0, s, 0), (0, -s, 0), (0, 0, s), (0, 0, -s))
    return _Polytope(slabs=slabs, planes=(), vertices=verts)


def _prism() -> _Polytope:
    r, half = 0.6, 1.02  # circumradius of the triangular section, half-length along z (a long bar)
    angles = [math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
    planes = tuple(((-math.cos(a), -math.sin(a), 0.0), r / 2) for a in angles)
    verts = tuple((r * math.cos(a), r * math.sin(a), z) for a in angles for z in (-half, half))
    return _Polytope(slabs=(((0.0, 0.0, 1.0), half),), planes=planes, vertices=verts)


def _tetrahedron() -> _Polytope:
    r = 1.2  # circumradius; the inradius is r / 3
    signs = ((1.0, 1.0, 1.0), (1.0, -1.0, -1.0), (-1.0, 1.0, -1.0), (-1.0, -1.0, 1.0))
    k = r / math.sqrt(3)
    planes = tuple(((-a, -b, -c), r / 3 * math.sqrt(3)) for a, b, c in signs)
    verts = tuple((a * k, b * k, c * k) for a, b, c in signs)
    return _Polytope(slabs=(), planes=planes, vertices=verts)


def _quadratic_roots(a: Tensor, b: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Sorted roots of a t^2 + 2 b t + c (stable form, Numerical Recipes 5.6) and the discriminant."""
    disc = b * b - a * c
    sq = torch.sqrt(torch.clamp(disc, min=0.0))
    q = -(b + torch.where(b >= 0, sq, -sq))
    r1, r2 = q / a, c / q
    return torch.minimum(r1, r2), torch.maximum(r1, r2), disc


def _slab_z(o: Vec, d: Vec, half: float) -> tuple[Tensor, Tensor]:
    ta, tb = (-half - o[2]) / d[2], (half - o[2]) / d[2]
    return torch.minimum(ta, tb), torch.maximum(ta, tb)


_CYL_R, _CYL_H = 0.6, 0.82  # cylinder radius and half-height (axis z)
_CONE_R, _CONE_H = 0.75, 0.78  # cone base radius and half-height (apex at +z)
_CAP_R, _CAP_H = 0.42, 0.62  # capsule radius and half-length of its axis segment


def _cylinder_interval(o: Vec, d: Vec) -> tuple[Tensor, Tensor]:
    a = d[0] * d[0] + d[1] * d[1]
    b = o[0] * d[0] + o[1] * d[1]
    c = o[0] * o[0] + o[1] * o[1] - _CYL_R * _CYL_R
    t1, t2, disc = _quadratic_roots(a, b, c)
    z0, z1 = _slab_z(o, d, _CYL_H)
    enter, exit_ = torch.maximum(t1, z0), torch.minimum(t2, z1)
    return enter, torch.where(disc >= 0, exit_, -math.inf)


def _cylinder_normal(p: Vec) -> Vec:
    rho = torch.sqrt(p[0] * p[0] + p[1] * p[1])
    cap = (p[2].abs() - _CYL_H) > (rho - _CYL_R)
    inv = 1.0 / torch.clamp(rho, min=1e-6)
    zero = torch.zeros_like(rho)
    return (torch.where(cap, zero, p[0] * inv), torch.where(cap, zero, p[1] * inv),
            torch.where(cap, torch.where(p[2] > 0, 1.0, -1.0), zero))


def _cone_interval(o: Vec, d: Vec) -> tuple[Tensor, Tensor]:
    # Solid = {x^2 + y^2 <= k^2 (h - z)^2} within the slab |z| <= h; inside the slab only the lower nappe
    # of the double cone exists, and the solid is convex, so the result is one interval.
    k2 = (_CONE_R / (2 * _CONE_H)) ** 2
    wz = _CONE_H - o[2]  # h - z at t = 0; h - z(t) = wz - t dz
    a = d[0] * d[0] + d[1] * d[1] - k2 * d[2] * d[2]
    b = o[0] * d[0] + o[1] * d[1] + k2 * wz * d[2]
    c = o[0] * o[0] + o[1] * o[1] - k2 * wz * wz
    t1, t2, disc = _quadratic_roots(a, b, c)
    z0, z1 = _slab_z(o, d, _CONE_H)
    real = disc >= 0
    # a > 0: inside between the roots; a < 0: inside outside the roots (one side is the upper nappe).
    in_enter, in_exit = torch.maximum(z0, t1), torch.minimum(z1, t2)
    lo_ok = torch.minimum(z1, t1) > z0  # [z0, min(z1, t1)] non-empty
    out_enter = torch.where(lo_ok, z0, torch.maximum(z0, t2))
    out_exit = torch.where(lo_ok, torch.minimum(z1, t1), z1)
    pos = a > 0
    enter = torch.where(pos, in_enter, torch.where(real, out_enter, z0))
    exit_ = torch.where(pos, torch.where(real, in_exit, -math.inf), torch.where(real, out_exit, z1))
    return enter, exit_


def _cone_normal(p: Vec) -> Vec:
    k = _CONE_R / (2 * _CONE_H)
    rho = torch.sqrt(p[0] * p[0] + p[1] * p[1])
    side_res = (rho - k * (_CONE_H - p[2])) / math.sqrt(1 + k * k)
    base = (-_CONE_H - p[2]) > side_res
    inv = 1.0 / torch.clamp(rho, min=1e-6)
    c = 1.0 / math.sqrt(1 + k * k)
    zero = torch.zeros_like(rho)
    return (torch.where(base, zero, p[0] * inv * c), torch.where(base, zero, p[1] * inv * c),
            torch.where(base, -1.0, k * c + zero))


def _capsule_interval(o: Vec, d: Vec) -> tuple[Tensor, Tensor]:
    # Union of a finite cylinder and two end spheres; the capsule is convex, so the union of the
    # three intervals is the interval [min enter, max exit] over the non-empty ones.
    a = d[0] * d[0] + d[1] * d[1]
    t1, t2, disc = _quadratic_roots(a, o[0] * d[0] + o[1] * d[1], o[0] * o[0] + o[1] * o[1] - _CAP_R**2)
    z0, z1 = _slab_z(o, d, _CAP_H)
    ce, cx = torch.maximum(t1, z0), torch.where(disc >= 0, torch.minimum(t2, z1), -math.inf)
    enter, exit_ = torch.where(ce < cx, ce, math.inf), torch.where(ce < cx, cx, -math.inf)
    dd = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    for zc in (-_CAP_H, _CAP_H):
        oz = o[2] - zc
        s1, s2, sdisc = _quadratic_roots(dd, o[0] * d[0] + o[1] * d[1] + oz * d[2],
                                         o[0] * o[0] + o[1] * o[1] + oz * oz - _CAP_R**2)
        ok = sdisc >= 0
        enter = torch.where(ok, torch.minimum(enter, s1), enter)
        exit_ = torch.where(ok, torch.maximum(exit_, s2), exit_)
    return enter, exit_


def _capsule_normal(p: Vec) -> Vec:
    dz = p[2] - torch.clamp(p[2], -_CAP_H, _CAP_H)
    inv = 1.0 / torch.sqrt(p[0] * p[0] + p[1] * p[1] + dz * dz)
    return p[0] * inv, p[1] * inv, dz * inv


def _round_support(radius: float, half: float, u: Tensor) -> Tensor:
    """Support of a cylinder (disc radius at both ends of a z segment) or capsule; u float64 [N,3]."""
    return half * u[:, 2].abs() + radius * torch.sqrt(u[:, 0] ** 2 + u[:, 1] ** 2)


def _cone_support(u: Tensor) -> Tensor:
    rim = -_CONE_H * u[:, 2] + _CONE_R * torch.sqrt(u[:, 0] ** 2 + u[:, 1] ** 2)
    return torch.maximum(_CONE_H * u[:, 2], rim)


@dataclass(frozen=True)
class ShapeOps:
    """What the renderer needs from a shape: ray interval, surface normal, support function (rest height)."""

    interval: Callable[[Vec, Vec], tuple[Tensor, Tensor]]
    normal: Callable[[Vec], Vec]
    support: Callable[[Tensor], Tensor]
    radius: float  # bounding radius around the local origin


def _poly_ops(poly: _Polytope) -> ShapeOps:
    radius = max(math.sqrt(x * x + y * y + z * z) for x, y, z in poly.vertices)
    return ShapeOps(lambda o, d: _poly_interval(poly, o, d), lambda p: _poly_normal(poly, p),
                     lambda u: _poly_support(poly, u), radius)


class Shape(StrEnum):
    """The object classes (label = position in this enum)."""

    CUBE = "cube"
    CYLINDER = "cylinder"
    CONE = "cone"
    OCTAHEDRON = "octahedron"
    CAPSULE = "capsule"
    SLAB = "slab"
    PRISM = "prism"
    TETRAHEDRON = "tetrahedron"


_POLYTOPES: dict[Shape, _Polytope] = {
    Shape.CUBE: _box(0.62, 0.62, 0.62),
    Shape.OCTAHEDRON: _octahedron(),
    Shape.SLAB: _box(0.8, 0.8, 0.2),  # a thick square tile
    Shape.PRISM: _prism(),
    Shape.TETRAHEDRON: _tetrahedron(),
}
SHAPE_OPS: dict[Shape, ShapeOps] = {
    **{shape: _poly_ops(poly) for shape, poly in _POLYTOPES.items()},
    Shape.CYLINDER: ShapeOps(_cylinder_interval, _cylinder_normal,
                              lambda u: _round_support(_CYL_R, _CYL_H, u), math.hypot(_CYL_R, _CYL_H)),
    Shape.CONE: ShapeOps(_cone_interval, _cone_normal, _cone_support, math.hypot(_CONE_R, _CONE_H)),
    Shape.CAPSULE: ShapeOps(_capsule_interval, _capsule_normal,
                             lambda u: _CAP_H * u[:, 2].abs() + _CAP_R * torch.ones_like(u[:, 0]),
                             _CAP_H + _CAP_R),
}
SHAPES: tuple[str, ...] = tuple(s.value for s in Shape)
BOUND_RADIUS = max(ops.radius for ops in SHAPE_OPS.values())  # every shape fits in this ball
