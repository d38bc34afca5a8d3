"""Procedural synthetic scenes: one object on a floor under a spot light, every latent factor known.

After the 3D-object dataset of Guillotine Regularization (Bordes et al., appendix A.1, Table 2 and
Figure 8): the object's yaw / pitch / roll, the floor hue, the spot's position on a sphere above the
object (theta from the vertical in [0, pi/4], azimuth phi in [0, 2 pi]) and the spot hue are uniform
latent variables; we add the object hue. GR renders 3D Warehouse models with Blender; here the objects
are analytic convex shapes (the classification label is the shape), each resting on the floor, with one
half (local x < 0) painted paler so that rotations about a symmetry axis stay visible. The renderer is a
vectorised ray caster in torch: one primary ray per (sub)pixel against the object and the floor,
Lambertian shading under a spot light with a smooth cone, a shadow ray from every floor point to the
light (the cast shadow shows where the light is), and a little ambient light. Rays that a cheap,
conservative test (a padded bounding ball) shows cannot meet the object are not traced against it: a
saving only, every pixel is the same as with every ray traced.

Determinism: image i is a pure function of (seed, split, i, resolution). The factors come from a
counter-based hash (splitmix64 of (seed, split, factor stream, index)), never from a sequential RNG, so an
image is the same alone or in any batch, in any order, on any machine. Per-image quantities (rotations,
colours, light position) are computed in float64 and rounded to float32; per-pixel work uses only
correctly rounded float32 operations (+ - * / sqrt, min/max, comparisons), so SIMD and scalar code paths
and any batch split give bit-identical pixels on CPU.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import torch
from torch import Tensor
from torch.utils.data import Dataset

from rcdm_viz.errors import RcdmVizError

Vec = tuple[Tensor, Tensor, Tensor]  # x, y, z components, each broadcastable to [n, P]

# ---------------------------------------------------------------------------------------------------------
# Factors and splits
# ---------------------------------------------------------------------------------------------------------

FACTOR_RANGES: dict[str, tuple[float, float]] = {
    "object_yaw": (-math.pi / 2, math.pi / 2),
    "object_pitch": (-math.pi / 2, math.pi / 2),
    "object_roll": (-math.pi / 2, math.pi / 2),
    "object_hue": (0.0, 1.0),
    "floor_hue": (0.0, 1.0),
    "spot_theta": (0.0, math.pi / 4),
    "spot_phi": (0.0, 2 * math.pi),
    "spot_hue": (0.0, 1.0),
}
FACTORS: tuple[str, ...] = tuple(FACTOR_RANGES)
# Factors living on a circle (the ends of their range are the same scene): probes should regress sin/cos.
CIRCULAR: tuple[str, ...] = ("object_hue", "floor_hue", "spot_phi", "spot_hue")


class Split(StrEnum):
    """Dataset splits; each is an independent stream of scenes (its id enters the hash)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"

    @property
    def stream_id(self) -> int:
        return {Split.TRAIN: 1, Split.VAL: 2, Split.TEST: 3}[self]


def _parse_split(split: str | Split) -> Split:
    try:
        return Split(split)
    except ValueError:
        names = ", ".join(s.value for s in Split)
        raise RcdmVizError(f"unknown split {split!r}; expected one of {names}") from None


# ---------------------------------------------------------------------------------------------------------
# Counter-based hashing (splitmix64, Steele et al. 2014) on int64 tensors
# ---------------------------------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _signed(v: int) -> int:
    """The int64 with the same 64 bits as the unsigned integer v."""
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


def _lsr(x: Tensor, k: int) -> Tensor:
    # torch's >> on int64 is arithmetic; mask the sign-extended bits to get a logical shift.
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """splitmix64 finaliser of x + gamma, elementwise on int64 tensors (two's-complement wrap-around)."""
    z = x + _signed(_GAMMA)
    z = (z ^ _lsr(z, 30)) * _signed(_MIX1)
    z = (z ^ _lsr(z, 27)) * _signed(_MIX2)
    return z ^ _lsr(z, 31)


def splitmix64_int(x: int) -> int:
    """Reference splitmix64 on a Python integer (unsigned 64-bit result)."""
    z = (x + _GAMMA) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def hash_uniform(seed: int, split_id: int, stream: int, indices: Tensor) -> Tensor:
    """Uniform float64 in [0, 1) for each index of one (seed, split, stream); indices: int64 [N] -> [N].

    The key is a hash chain of (seed, split, stream); the index is mixed in twice so that neighbouring
    indices decorrelate. 53 high bits give the mantissa exactly.
    """
    key = splitmix64_int(splitmix64_int(splitmix64_int(seed & _MASK64) ^ split_id) ^ stream)
    h = splitmix64(splitmix64(indices.to(torch.int64) ^ _signed(key)))
    return _lsr(h, 11).to(torch.float64) * 2.0**-53


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
class _ShapeOps:
    """What the renderer needs from a shape: ray interval, surface normal, support function (rest height)."""

    interval: Callable[[Vec, Vec], tuple[Tensor, Tensor]]
    normal: Callable[[Vec], Vec]
    support: Callable[[Tensor], Tensor]
    radius: float  # bounding radius around the local origin


def _poly_ops(poly: _Polytope) -> _ShapeOps:
    radius = max(math.sqrt(x * x + y * y + z * z) for x, y, z in poly.vertices)
    return _ShapeOps(lambda o, d: _poly_interval(poly, o, d), lambda p: _poly_normal(poly, p),
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
_SHAPE_OPS: dict[Shape, _ShapeOps] = {
    **{shape: _poly_ops(poly) for shape, poly in _POLYTOPES.items()},
    Shape.CYLINDER: _ShapeOps(_cylinder_interval, _cylinder_normal,
                              lambda u: _round_support(_CYL_R, _CYL_H, u), math.hypot(_CYL_R, _CYL_H)),
    Shape.CONE: _ShapeOps(_cone_interval, _cone_normal, _cone_support, math.hypot(_CONE_R, _CONE_H)),
    Shape.CAPSULE: _ShapeOps(_capsule_interval, _capsule_normal,
                             lambda u: _CAP_H * u[:, 2].abs() + _CAP_R * torch.ones_like(u[:, 0]),
                             _CAP_H + _CAP_R),
}
SHAPES: tuple[str, ...] = tuple(s.value for s in Shape)
_BOUND_RADIUS = max(ops.radius for ops in _SHAPE_OPS.values())  # every shape fits in this ball

# ---------------------------------------------------------------------------------------------------------
# Scene constants (world frame: z up, floor z = 0, object resting on the floor at the origin)
# ---------------------------------------------------------------------------------------------------------

_CAM_TARGET = (0.0, 0.0, 0.7)
_CAM_DISTANCE = 7.0
_CAM_ELEVATION = math.radians(38.0)  # looking down at the object
_CAM_HALF_FOV_TAN = 0.28  # frame half-width at the target = 2 units: the object spans ~40 % of it
_LIGHT_TARGET = (0.0, 0.0, 0.0)  # the spot aims at the object's foot
_LIGHT_DISTANCE = 5.5  # radius of the sphere the spot moves on, centred on the light target
_SPOT_COS_INNER = math.cos(math.radians(14.0))
_SPOT_COS_OUTER = math.cos(math.radians(24.0))  # soft cone edge: the lit pool on the floor is visible
_AMBIENT = 0.28
_LIGHT_GAIN = 0.95
_OBJECT_SV = (0.85, 0.95)  # saturated object colour
_PAINT_MIX = 0.55  # the object's local x < 0 half is mixed this much with white: rotation stays visible
_FLOOR_SV = (0.4, 0.85)  # less saturated floor
_LIGHT_SV = (0.55, 1.0)
_AUTO_SUPERSAMPLE_MAX_RES = 32  # default anti-aliasing (2 x 2 rays per pixel) up to this resolution
_CHUNK_ELEMENTS = 1 << 20  # pixels x images per chunk: bounds memory (4 MB a temporary), amortises op costs
# Culling pads every bounding radius by this (world units, ~1e3 times the float32 error of the tests), so
# a ray the cheap test drops can never meet the object: skipping it leaves every pixel bit-identical.
_CULL_MARGIN = 0.05


@dataclass(frozen=True)
class _Camera:
    """Primary rays of one image size (float32, on one device): directions for all pixels, floor hits."""

    origin: tuple[float, float, float]
    size: int
    floor: Tensor  # [3, P]: floor hit of every pixel's ray (all rays look down)
    obj_pixels: Tensor  # long [Q]: flat indices of the rectangle of pixels whose rays can meet any object
    obj_dirs: Tensor  # [3, Q]: ray directions over that rectangle
    obj_axial: Tensor  # [Q]: -(o_x d_x + o_y d_y), the image-independent part of (centre - o) . d


@lru_cache(maxsize=16)
def _camera(size: int, device: str) -> _Camera:
    """Pinhole camera looking down at the object; rays through pixel centres of a size x size image."""
    tx, ty, tz = _CAM_TARGET
    ce, se = math.cos(_CAM_ELEVATION), math.sin(_CAM_ELEVATION)
    origin = (tx, ty - _CAM_DISTANCE * ce, tz + _CAM_DISTANCE * se)
    fwd = torch.tensor([0.0, ce, -se], dtype=torch.float64)
    right = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    up = torch.linalg.cross(right, fwd)
    c = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    v, u = torch.meshgrid(-c, c, indexing="ij")  # row 0 is the top of the image
    d = fwd + _CAM_HALF_FOV_TAN * (u.reshape(-1, 1) * right + v.reshape(-1, 1) * up)
    d = d / d.norm(dim=1, keepdim=True)
    floor = torch.tensor(origin, dtype=torch.float64) + (-origin[2] / d[:, 2])[:, None] * d
    # Object centres lie on the segment (0, 0, [0, _BOUND_RADIUS]); keep the rectangle of rays passing
    # within the bounding radius of it (a rectangle: per-image culling then tests fewer rays).
    z = torch.linspace(0.0, _BOUND_RADIUS, 64, dtype=torch.float64)
    centres = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=1)
    centres = centres - torch.tensor(origin, dtype=torch.float64)
    dist2 = (centres**2).sum(1)[None, :] - (d @ centres.T) ** 2  # squared ray-to-centre distances
    near = (dist2.amin(dim=1) <= (_BOUND_RADIUS + 0.05) ** 2).view(size, size)
    rows, cols = torch.nonzero(near.any(dim=1)).flatten(), torch.nonzero(near.any(dim=0)).flatten()
    rows, cols = torch.arange(int(rows[0]), int(rows[-1]) + 1), torch.arange(int(cols[0]), int(cols[-1]) + 1)
    pixels = (rows[:, None] * size + cols[None, :]).flatten()
    crop = d[pixels]
    axial = -(origin[0] * crop[:, 0] + origin[1] * crop[:, 1])
    f32 = {"dtype": torch.float32, "device": device}
    return _Camera(origin, size, floor.T.to(**f32).contiguous(), pixels.to(device),
                   crop.T.to(**f32).contiguous(), axial.to(**f32))


# ---------------------------------------------------------------------------------------------------------
# Per-image scene parameters (float64 maths, stored as float32 [N, 1] columns for broadcasting)
# ---------------------------------------------------------------------------------------------------------


def _hsv_to_rgb(h: Tensor, s: float, v: float) -> Tensor:
    """HSV -> RGB for hues h [N] in [0, 1] (float64) -> [N, 3]."""
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device)
    k = torch.remainder(n[None, :] + 6.0 * h[:, None], 6.0)
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """Local -> world rotations R = Rz(yaw) Ry(pitch) Rx(roll) (Tait-Bryan z-y'-x''); [N] -> [N, 3, 3]."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    return torch.stack([
        torch.stack([cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr], dim=1),
        torch.stack([sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr], dim=1),
        torch.stack([-sp, cp * sr, cp * cr], dim=1),
    ], dim=1)


# Rows of the per-image parameter table, ordered so that what each per-pixel stage gathers is one span
# (shadow rays: floor_local_k .. rot; camera rays: rot .. cam_local, then rot .. light_rgb).
_PARAM_ROWS: dict[str, int] = {
    "floor_local_k": 3, "light_local": 3, "rot": 9, "cam_local": 3, "light": 3, "spot": 3, "obj_rgb": 3,
    "pale_rgb": 3, "light_rgb": 3, "floor_rgb": 3, "ray_cull": 2, "shadow_cull": 4,
}
_PARAM_START = dict(zip(_PARAM_ROWS, itertools.accumulate(_PARAM_ROWS.values(), initial=0), strict=False))


@dataclass(frozen=True)
class _Params:
    """Per-image constants of a batch: one float32 table [K, n] (a row per scalar, layout _PARAM_ROWS), and
    each field as a tuple of its rows viewed as [n, 1] columns (they broadcast over [n, P] pixel tensors)."""

    table: Tensor
    rot: tuple[Tensor, ...]  # R[i][j] flattened row-major, 9 columns
    cam_local: Vec  # camera position in the object frame
    floor_local_k: Vec  # -R^T (0, 0, cz): object-frame offset of a floor point, beyond its x, y part
    light_local: Vec  # light position in the object frame
    light: Vec  # light position (world)
    spot: Vec  # unit spot axis (world)
    obj_rgb: Vec
    pale_rgb: Vec
    floor_rgb: Vec
    light_rgb: Vec
    ray_cull: tuple[Tensor, Tensor]  # (k, far): a camera ray d can hit iff (axial + k d_z)^2 >= far
    shadow_cull: tuple[Tensor, Tensor, Tensor, Tensor]  # (e_x, e_y, e_z L_z, far), see _shadow_candidates

    @staticmethod
    def of(table: Tensor) -> _Params:
        """Named [n, 1] views of the rows of a table [K, n]."""
        rows = iter(table.unsqueeze(2))
        return _Params(table, **{k: tuple(next(rows) for _ in range(m)) for k, m in _PARAM_ROWS.items()})

    def index(self, idx: Tensor) -> _Params:
        """The parameters of a subset of images (idx: long [m])."""
        return _Params.of(self.table.index_select(1, idx))

    def take(self, img: Tensor, names: Sequence[str]) -> dict[str, tuple[Tensor, ...]]:
        """Fields `names` for M (image, pixel) pairs (img: long [M]) -> name -> tuple of [M] tensors.

        One gather of the span of rows they occupy (contiguous [M] results).
        """
        lo = min(_PARAM_START[k] for k in names)
        hi = max(_PARAM_START[k] + _PARAM_ROWS[k] for k in names)
        rows = _gather_columns(self.table[lo:hi], img)
        return {k: tuple(rows[_PARAM_START[k] - lo : _PARAM_START[k] - lo + _PARAM_ROWS[k]]) for k in names}


def _gather_columns(table: Tensor, idx: Tensor) -> Tensor:
    """table[:, idx] for a table [K, n] and long idx [M] -> [K, M] (torch.gather splits this work over
    threads, unlike index_select along dim 1 or advanced indexing)."""
    return torch.gather(table, 1, idx.expand(table.shape[0], -1))


def _cull_params(labels: Tensor, cz: Tensor, light: Tensor, cam: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image constants of the culling tests (float64 [N, 2] and [N, 4]; see _object_candidates and
    _shadow_candidates): the object lies in the ball of centre c = (0, 0, cz) and padded radius r."""
    radii = torch.tensor([_SHAPE_OPS[s].radius for s in Shape], dtype=torch.float64, device=cz.device)
    r2 = (radii[labels] + _CULL_MARGIN) ** 2
    k = cz - cam[2]  # (c - o) = (-o_x, -o_y, k)
    ray = torch.stack([k, cam[0] ** 2 + cam[1] ** 2 + k * k - r2], dim=1)
    e = -light  # e = c - L
    e[:, 2] += cz
    shadow = torch.stack([e[:, 0], e[:, 1], e[:, 2] * light[:, 2], (e * e).sum(1) - r2], dim=1)
    return ray, shadow


def _scene_params(factors: dict[str, Tensor], labels: Tensor, camera_origin: Sequence[float]) -> _Params:
    """Everything per image the ray caster needs, from the factors ([N] each) and labels (long [N])."""
    f = {k: factors[k].to(torch.float64) for k in FACTORS}
    rot = _rotation(f["object_yaw"], f["object_pitch"], f["object_roll"])
    down_local = -rot[:, 2, :]  # world -z in the object frame
    cz = torch.zeros_like(f["object_yaw"])
    for shape in Shape:  # rest the object on the floor: lowest point at z = 0
        sel = labels == list(Shape).index(shape)
        if bool(sel.any()):
            cz[sel] = _SHAPE_OPS[shape].support(down_local[sel])
    centre = torch.stack([torch.zeros_like(cz), torch.zeros_like(cz), cz], dim=1)
    th, ph = f["spot_theta"], f["spot_phi"]
    axis = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], dim=1)
    light = torch.tensor(_LIGHT_TARGET, dtype=torch.float64, device=cz.device) + _LIGHT_DISTANCE * axis
    cam = torch.tensor(camera_origin, dtype=torch.float64, device=cz.device)

    def local(p: Tensor) -> Tensor:  # R^T (p - centre), p [N, 3] -> [N, 3]; explicit sums, as above
        q = p - centre
        return torch.stack([sum(rot[:, i, j] * q[:, i] for i in range(3)) for j in range(3)], dim=1)

    obj = _hsv_to_rgb(f["object_hue"], *_OBJECT_SV)
    ray_cull, shadow_cull = _cull_params(labels, cz, light, cam)

    fields = {
        "floor_local_k": -rot[:, 2, :] * cz[:, None], "light_local": local(light), "rot": rot.reshape(-1, 9),
        "cam_local": local(cam.expand_as(centre)), "light": light, "spot": -axis, "obj_rgb": obj,
        "pale_rgb": obj + _PAINT_MIX * (1.0 - obj),
        "light_rgb": _LIGHT_GAIN * _hsv_to_rgb(f["spot_hue"], *_LIGHT_SV),
        "floor_rgb": _hsv_to_rgb(f["floor_hue"], *_FLOOR_SV), "ray_cull": ray_cull,
        "shadow_cull": shadow_cull,
    }
    return _Params.of(torch.cat([fields[k] for k in _PARAM_ROWS], dim=1).T.to(torch.float32).contiguous())


# ---------------------------------------------------------------------------------------------------------
# Ray casting (float32, [n images, P pixels] tensors)
# ---------------------------------------------------------------------------------------------------------


def _spot_lambert(v: Vec, normal: Vec | None, spot: Vec) -> tuple[Tensor, Tensor]:
    """Irradiance factor at points p with unit normals: spot cone x Lambert cosine x inverse square.

    v = light - p (each [n, P] or [M]), spot: the unit spot axis; returns the irradiance and |v|^2.
    normal None means the floor: p on z = 0 with normal +z (saves the work of multiplying by zeros).
    In-place steps reuse buffers (fewer cache misses); each is the same float32 operation as its
    out-of-place form (torch computes a / x as reciprocal(x) * a, so reciprocal alone is 1 / x).
    """
    vx, vy, vz = v
    d2 = vx * vx
    d2 += vy * vy
    d2 += vz * vz
    inv = torch.sqrt(d2).reciprocal_()
    x = vx * spot[0]
    x += vy * spot[1]
    x += vz * spot[2]
    x = x.neg_().mul_(inv)  # cosine to the spot axis
    x = x.sub_(_SPOT_COS_OUTER).mul_(1.0 / (_SPOT_COS_INNER - _SPOT_COS_OUTER)).clamp_(0.0, 1.0)
    irr = x * x
    irr *= x.mul_(-2.0).add_(3.0)  # smoothstep x^2 (3 - 2 x): soft edge of the lit pool
    if normal is None:
        irr *= inv.mul_(vz)  # Lambert cosine; the light is always above the floor
    else:
        lambert = normal[0] * vx
        lambert += normal[1] * vy
        lambert += normal[2] * vz
        irr *= lambert.mul_(inv).clamp_(min=0.0)
    irr *= d2.reciprocal().mul_(_LIGHT_DISTANCE * _LIGHT_DISTANCE)  # inverse square, 1 at the target
    return irr, d2


def _to_world(rot: tuple[Tensor, ...], v: Vec) -> Vec:
    """R v for per-image rotations (rot: 9 columns, [n, 1] or [M]) and vectors v ([n, P] or [M] each)."""
    return tuple(rot[3 * i] * v[0] + rot[3 * i + 1] * v[1] + rot[3 * i + 2] * v[2] for i in range(3))  # type: ignore[return-value]


def _to_local(rot: tuple[Tensor, ...], v: Vec) -> Vec:
    """R^T v (world -> object frame)."""
    return tuple(rot[j] * v[0] + rot[3 + j] * v[1] + rot[6 + j] * v[2] for j in range(3))  # type: ignore[return-value]


def _pairs(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The True entries of mask [n, P]: image and pixel indices as contiguous long [M], and the long
    [M, 2] (image, pixel) indices."""
    ij = torch.nonzero(mask)
    return ij[:, 0].contiguous(), ij[:, 1].contiguous(), ij


# (shape, first image, end image) for each shape present in a chunk whose images are grouped by shape
_Classes = list[tuple[_ShapeOps, int, int]]


def _spans(img: Tensor, classes: _Classes) -> Iterator[tuple[_ShapeOps, int, int]]:
    """Ranges [a, b) of (image, pixel) pairs per shape, for pairs sorted by image (long [M]) of a chunk
    whose images are grouped by shape: the shape-specific maths runs on slices, the rest on all pairs."""
    last = torch.tensor([e for _, _, e in classes], dtype=img.dtype, device=img.device)  # image ends
    ends = torch.searchsorted(img, last)
    a = 0
    for (ops, _, _), b in zip(classes, ends.tolist(), strict=True):
        if b > a:
            yield ops, a, b
        a = b


def _shadow_candidates(v: Vec, d2: Tensor, prm: _Params) -> Tensor:
    """Floor pixels whose shadow ray may be blocked: the line through the floor point p and the light L
    passes within the padded radius r of the object's centre c; bool [n, P]. (Also requiring the point
    to be lit would drop almost none: the shadow falls inside the pool of light.)

    With e = c - L and q = p - L = -v, the squared distance from c to the line is |e|^2 - (e.q)^2 / |q|^2,
    so the test is (e.q)^2 >= (|e|^2 - r^2) |q|^2: a few full-size ops instead of the ray-solid interval.
    """
    ex, ey, ezlz, far = prm.shadow_cull
    eq = ex * v[0]
    eq += ey * v[1]
    eq += ezlz  # = -(e.q)
    return eq.mul_(eq) >= d2 * far


def _floor_colour(classes: _Classes, prm: _Params, cam: _Camera, out: Tensor) -> None:
    """Colour of the floor seen through every pixel into out [n, 3, P]: spot pool, Lambert, the object's
    cast shadow (shadow rays are traced only for the candidate pixels; the others cannot be blocked)."""
    v = (prm.light[0] - cam.floor[0], prm.light[1] - cam.floor[1], prm.light[2])
    irr, d2 = _spot_lambert(v, None, prm.spot)
    img, pix, ij = _pairs(_shadow_candidates(v, d2, prm))
    g = prm.take(img, ("rot", "floor_local_k", "light_local"))
    rot, px, py = g["rot"], *_gather_columns(cam.floor[:2], pix)
    # Shadow ray floor point -> light, in the object frame: o = R^T (p - c), d = R^T (L - c) - o, t in (0, 1).
    o = tuple(rot[j] * px + rot[3 + j] * py + g["floor_local_k"][j] for j in range(3))
    d = tuple(g["light_local"][j] - o[j] for j in range(3))
    blocked = torch.empty_like(img, dtype=torch.bool)
    for ops, a, b in _spans(img, classes):
        enter, exit_ = ops.interval(tuple(c[a:b] for c in o), tuple(c[a:b] for c in d))  # type: ignore[arg-type]
        torch.lt(enter, exit_, out=blocked[a:b]).logical_and_(exit_ > 0.0).logical_and_(enter < 1.0)
    flat, irr_flat = ij[:, 0] * irr.shape[1] + ij[:, 1], irr.view(-1)
    # Write back every candidate (a gather and a scatter are cheaper than selecting the blocked ones).
    irr_flat.scatter_(0, flat, irr_flat.index_select(0, flat).masked_fill_(blocked, 0.0))
    light = torch.empty_like(irr)
    for k in range(3):
        torch.mul(irr, prm.light_rgb[k], out=light)
        torch.mul(light.add_(_AMBIENT), prm.floor_rgb[k], out=out[:, k])


def _object_candidates(prm: _Params, cam: _Camera) -> Tensor:
    """Rays of the rectangle [n, Q] that pass within the padded radius of the object's centre: only these
    can hit it. The squared distance to the centre c from the ray o + t d (|d| = 1) is
    |c - o|^2 - ((c - o).d)^2, and (c - o).d = axial + k d_z."""
    k, far = prm.ray_cull
    w = k * cam.obj_dirs[2]
    w += cam.obj_axial
    return w.mul_(w) >= far


def _object_hits(classes: _Classes, prm: _Params, cam: _Camera) -> tuple[Tensor, Tensor, Tensor, Vec]:
    """Camera rays that hit the object: image and rectangle-pixel indices (long [M]), ray parameter t
    of the entry point and the ray direction in the object frame ([M] each)."""
    img, pix, _ = _pairs(_object_candidates(prm, cam))
    g = prm.take(img, ("rot", "cam_local"))
    d = _to_local(g["rot"], tuple(_gather_columns(cam.obj_dirs, pix)))  # type: ignore[arg-type]
    enter, hit = torch.empty_like(d[0]), torch.empty_like(img, dtype=torch.bool)
    for ops, a, b in _spans(img, classes):
        e, x = ops.interval(tuple(c[a:b] for c in g["cam_local"]), tuple(c[a:b] for c in d))  # type: ignore[arg-type]
        enter[a:b] = e
        torch.lt(e, x, out=hit[a:b]).logical_and_(e > 0.0)
    sel = torch.nonzero(hit).view(-1)  # shade only the rays that hit
    return (img.index_select(0, sel), pix.index_select(0, sel), enter.index_select(0, sel),
            tuple(c.index_select(0, sel) for c in d))  # type: ignore[return-value]


def _object_colour(classes: _Classes, prm: _Params, cam: _Camera, out: Tensor) -> None:
    """Colour of the object written over out [n, 3, P] where a camera ray hits it."""
    img, pix, t, d = _object_hits(classes, prm, cam)
    g = prm.take(img, ("rot", "cam_local", "light", "spot", "obj_rgb", "pale_rgb", "light_rgb"))
    p_local = tuple(g["cam_local"][k] + t * d[k] for k in range(3))
    n_local = torch.empty((3, t.numel()), dtype=t.dtype, device=t.device)
    for ops, a, b in _spans(img, classes):
        for k, nk in enumerate(ops.normal(tuple(pk[a:b] for pk in p_local))):  # type: ignore[arg-type]
            n_local[k, a:b] = nk
    normal = _to_world(g["rot"], tuple(n_local))  # type: ignore[arg-type]
    dirs = _gather_columns(cam.obj_dirs, pix)
    v = tuple(g["light"][k] - (cam.origin[k] + t * dirs[k]) for k in range(3))  # light - hit point
    irr, _ = _spot_lambert(v, normal, g["spot"])  # type: ignore[arg-type]
    painted = p_local[0] >= 0.0
    colour = torch.empty((3, t.numel()), dtype=t.dtype, device=t.device)
    for k in range(3):
        torch.where(painted, g["obj_rgb"][k], g["pale_rgb"][k], out=colour[k])  # albedo
        colour[k] *= g["light_rgb"][k] * irr + _AMBIENT
    channel = torch.arange(3, device=t.device)[:, None] * out.shape[2]
    where = channel + (img * out[0].numel() + cam.obj_pixels.index_select(0, pix))
    out.view(-1).scatter_(0, where.view(-1), colour.view(-1))  # distinct indices: deterministic


def _render_chunk(classes: _Classes, prm: _Params, cam: _Camera) -> Tensor:
    """Images of a chunk grouped by shape: [n, 3, S, S] float32 in [0, 1]."""
    s = cam.size
    out = torch.empty((prm.rot[0].shape[0], 3, s * s), dtype=torch.float32, device=prm.rot[0].device)
    _floor_colour(classes, prm, cam, out)
    _object_colour(classes, prm, cam, out)
    return out.view(-1, 3, s, s).clamp_(0.0, 1.0)


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise RcdmVizError(f"resolution must be an integer >= 8, got {resolution!r}")


def _resolve_supersample(resolution: int, supersample: int | None) -> int:
    """Rays per pixel side: None -> 2 up to 32 px (jagged edges blur shape there), else 1 (cost is s^2)."""
    if supersample is None:
        return 2 if resolution <= _AUTO_SUPERSAMPLE_MAX_RES else 1
    if isinstance(supersample, bool) or not isinstance(supersample, int) or supersample < 1:
        raise RcdmVizError(f"supersample must be an integer >= 1 (or None: automatic), got {supersample!r}")
    return supersample


def render(
    factors: dict[str, Tensor], labels: Tensor, resolution: int, supersample: int | None = None
) -> Tensor:
    """Render scenes from their factors: factors name -> float [N] (all of FACTORS), labels long [N] (shape
    index into SHAPES) -> images float32 [N, 3, resolution, resolution] in [0, 1], on the labels' device.

    Vectorised over images and pixels (one Python loop over shape classes and over memory chunks only).
    supersample s renders s x s rays per pixel and averages them (anti-aliasing, s^2 times the cost);
    None picks 2 at resolutions up to 32 px and 1 above.
    """
    _check_resolution(resolution)
    supersample = _resolve_supersample(resolution, supersample)
    missing = [k for k in FACTORS if k not in factors]
    if missing:
        raise RcdmVizError(f"render: missing factors {missing}; expected all of {list(FACTORS)}")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(Shape)):
        bad = labels[(labels < 0) | (labels >= len(Shape))][0]
        raise RcdmVizError(f"render: label {int(bad)} is not a shape index in [0, {len(Shape)})")
    device = labels.device
    values = {k: torch.as_tensor(factors[k], device=device).flatten() for k in FACTORS}
    wrong = {k: v.numel() for k, v in values.items() if v.numel() != labels.numel()}
    if wrong:
        raise RcdmVizError(f"render: factor lengths {wrong} differ from the {labels.numel()} labels")
    size = resolution * supersample
    cam = _camera(size, str(device))
    prm = _scene_params(values, labels, cam.origin)
    img = torch.empty((labels.numel(), 3, resolution, resolution), dtype=torch.float32, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    order = torch.sort(labels, stable=True).indices  # images grouped by shape: one chunk may hold several
    for start in range(0, order.numel(), chunk):
        sub = order[start : start + chunk]
        ends = torch.bincount(labels[sub], minlength=len(Shape)).cumsum(0).tolist()
        classes = [(_SHAPE_OPS[shape], a, b) for shape, a, b in zip(Shape, [0, *ends], ends, strict=False)]
        fine = _render_chunk([c for c in classes if c[2] > c[1]], prm.index(sub), cam)
        # Average while the chunk is still in cache (elementwise: the same bits as over the batch).
        img.index_copy_(0, sub, _block_mean(fine, supersample) if supersample > 1 else fine)
    return img


def _block_mean(img: Tensor, s: int) -> Tensor:
    """Mean over s x s pixel blocks: [N, C, S, S] -> [N, C, S / s, S / s].

    Explicit adds in a fixed order (the same rounding on every code path), first along rows (the s
    samples are adjacent in memory), then across the s rows of a block (contiguous rows).
    """
    n, c, size, _ = img.shape
    out = size // s
    x = img.reshape(n * c * size, out, s)
    acc = x[..., 0] + x[..., 1]
    for b in range(2, s):
        acc = acc + x[..., b]
    y = acc.view(n * c * out, s, out)
    acc = y[:, 0] + y[:, 1]
    for a in range(2, s):
        acc = acc + y[:, a]
    return (acc * (1.0 / (s * s))).view(n, c, out, out)


# ---------------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------------


def sample_factors(
    indices: Tensor | Sequence[int], seed: int = 0, split: str | Split = Split.TRAIN
) -> tuple[Tensor, dict[str, Tensor]]:
    """Labels (long [N]) and factors (name -> float32 [N]) of scenes `indices` (int64 [N]) of a split.

    Each value is its own hash stream (stream 0 = the label, 1.. = the factors in FACTORS order), so
    adding a factor or changing a range never moves the others.
    """
    sid = _parse_split(split).stream_id
    idx = torch.as_tensor(indices, dtype=torch.int64)
    labels = torch.clamp((hash_uniform(seed, sid, 0, idx) * len(Shape)).long(), max=len(Shape) - 1)
    factors = {}
    for k, name in enumerate(FACTORS, start=1):
        lo, hi = FACTOR_RANGES[name]
        value = (lo + (hi - lo) * hash_uniform(seed, sid, k, idx)).to(torch.float32)
        factors[name] = torch.clamp(value, *_float32_inside(lo, hi))
    return labels, factors


def _float32_inside(lo: float, hi: float) -> tuple[float, float]:
    """The widest float32 interval inside [lo, hi] (rounding pi / 2 to float32 overshoots it)."""
    lo32, hi32 = torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)
    if float(lo32) < lo:
        lo32 = torch.nextafter(lo32, torch.tensor(math.inf))
    if float(hi32) > hi:
        hi32 = torch.nextafter(hi32, torch.tensor(-math.inf))
    return float(lo32), float(hi32)


class SyntheticScenes(Dataset):
    """n procedurally rendered scenes (one object on a floor under a spot light; GR appendix A.1).

    Item i: (image float32 [3, H, W] in [0, 1], label int = shape index, factors dict name -> float). Image i
    is a pure function of (seed, split, i, resolution); seeds are taken modulo 2^64. split is "train", "val"
    or "test" (independent streams). supersample: rays per pixel side (None: 2 up to 32 px, else 1).
    For speed use `render_batch` (or a DataLoader, which calls `__getitems__` with a whole batch of
    indices): per-item rendering pays Python overhead (~3 ms an image).
    """

    FACTORS: tuple[str, ...] = FACTORS
    FACTOR_RANGES: dict[str, tuple[float, float]] = FACTOR_RANGES
    CIRCULAR: tuple[str, ...] = CIRCULAR
    SHAPES: tuple[str, ...] = SHAPES

    def __init__(
        self,
        n: int,
        resolution: int = 32,
        seed: int = 0,
        split: str = "train",
        supersample: int | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise RcdmVizError(f"number of scenes n must be an integer >= 0, got {n!r}")
        _check_resolution(resolution)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RcdmVizError(f"seed must be an integer, got {seed!r}")
        self.n, self.resolution, self.seed = n, resolution, seed
        self.supersample = _resolve_supersample(resolution, supersample)
        self.split = _parse_split(split)
        self._labels: Tensor | None = None
        self._factors: dict[str, Tensor] | None = None

    def __len__(self) -> int:
        return self.n

    def _all(self) -> tuple[Tensor, dict[str, Tensor]]:
        if self._labels is None or self._factors is None:
            self._labels, self._factors = sample_factors(torch.arange(self.n), self.seed, self.split)
        return self._labels, self._factors

    @property
    def labels(self) -> Tensor:
        """Shape labels of all scenes, long [n], without rendering."""
        return self._all()[0]

    @property
    def factors(self) -> dict[str, Tensor]:
        """All factors, name -> float32 [n], without rendering."""
        return self._all()[1]

    def _indices(self, indices: Tensor | Sequence[int]) -> Tensor:
        idx = torch.as_tensor(indices, dtype=torch.int64).flatten()
        bad = idx[(idx < 0) | (idx >= self.n)]
        if bad.numel():
            raise RcdmVizError(f"scene index {int(bad[0])} is out of range for {self.n} scenes")
        return idx

    def render_batch(self, indices: Tensor | Sequence[int]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Render scenes by index: -> (images float32 [N, 3, H, W], labels long [N], factors name -> [N])."""
        idx = self._indices(indices)
        labels, factors = sample_factors(idx, self.seed, self.split)
        return render(factors, labels, self.resolution, self.supersample), labels, factors

    def __getitem__(self, i: int) -> tuple[Tensor, int, dict[str, float]]:
        if not -self.n <= i < self.n:
            raise IndexError(f"scene index {i} out of range for {self.n} scenes")
        return self.__getitems__([i % self.n])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[Tensor, int, dict[str, float]]]:
        """A whole batch rendered at once (torch's DataLoader uses this when present)."""
        images, labels, factors = self.render_batch(indices)
        return [(images[j], int(labels[j]), {k: float(v[j]) for k, v in factors.items()})
                for j in range(len(labels))]


def render_rate(resolution: int, n: int = 512, seed: int = 0, supersample: int | None = None) -> float:
    """Images per second of `render_batch` for n scenes at this resolution (the steady rate of a loader:
    after one warm-up call of the same size, which grows the heap to the working set of the batch)."""
    scenes = SyntheticScenes(n, resolution=resolution, seed=seed, supersample=supersample)
    idx = torch.arange(n)
    scenes.render_batch(idx)
    start = time.perf_counter()
    scenes.render_batch(idx)
    return n / (time.perf_counter() - start)
