"""The renderer of the synthetic scenes: a vectorised ray caster in torch (see the package docstring)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor

from rcdm_viz.data.synthetic.factors import FACTORS
from rcdm_viz.data.synthetic.shapes import BOUND_RADIUS, SHAPE_OPS, Shape, ShapeOps, Vec
from rcdm_viz.errors import RcdmVizError

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
_AMBIENT = 0.42  # the unlit floor at up to 0.3 of full brightness: its colour reads outside the pool
_LIGHT_GAIN = 0.95  # (ambient + gain) x floor value <= 1: the pool stays below full scale
_OBJECT_SV = (0.85, 0.95)  # saturated object colour
_PAINT_MIX = 0.55  # the object's local x < 0 half is mixed this much with white: rotation stays visible
_FLOOR_SV = (0.6, 0.72)  # less saturated than the object, saturated enough to read in the shade
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
    # Object centres lie on the segment (0, 0, [0, BOUND_RADIUS]); keep the rectangle of rays passing
    # within the bounding radius of it (a rectangle: per-image culling then tests fewer rays).
    z = torch.linspace(0.0, BOUND_RADIUS, 64, dtype=torch.float64)
    centres = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=1)
    centres = centres - torch.tensor(origin, dtype=torch.float64)
    dist2 = (centres**2).sum(1)[None, :] - (d @ centres.T) ** 2  # squared ray-to-centre distances
    near = (dist2.amin(dim=1) <= (BOUND_RADIUS + 0.05) ** 2).view(size, size)
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
    radii = torch.tensor([SHAPE_OPS[s].radius for s in Shape], dtype=torch.float64, device=cz.device)
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
            cz[sel] = SHAPE_OPS[shape].support(down_local[sel])
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
_Classes = list[tuple[ShapeOps, int, int]]


def _spans(img: Tensor, classes: _Classes) -> Iterator[tuple[ShapeOps, int, int]]:
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


def check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise RcdmVizError(f"resolution must be an integer >= 8, got {resolution!r}")


def resolve_supersample(resolution: int, supersample: int | None) -> int:
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
    check_resolution(resolution)
    supersample = resolve_supersample(resolution, supersample)
    missing = [k for k in FACTORS if k not in factors]
    if missing:
        raise ValueError(f"render: missing factors {missing}; expected all of {list(FACTORS)}")
    labels = torch.as_tensor(labels).long().flatten()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(Shape)):
        bad = labels[(labels < 0) | (labels >= len(Shape))][0]
        raise ValueError(f"render: label {int(bad)} is not a shape index in [0, {len(Shape)})")
    device = labels.device
    values = {k: torch.as_tensor(factors[k], device=device).flatten() for k in FACTORS}
    wrong = {k: v.numel() for k, v in values.items() if v.numel() != labels.numel()}
    if wrong:
        raise ValueError(f"render: factor lengths {wrong} differ from the {labels.numel()} labels")
    size = resolution * supersample
    cam = _camera(size, str(device))
    prm = _scene_params(values, labels, cam.origin)
    img = torch.empty((labels.numel(), 3, resolution, resolution), dtype=torch.float32, device=device)
    chunk = max(1, _CHUNK_ELEMENTS // (size * size))
    order = torch.sort(labels, stable=True).indices  # images grouped by shape: one chunk may hold several
    for start in range(0, order.numel(), chunk):
        sub = order[start : start + chunk]
        ends = torch.bincount(labels[sub], minlength=len(Shape)).cumsum(0).tolist()
        classes = [(SHAPE_OPS[shape], a, b) for shape, a, b in zip(Shape, [0, *ends], ends, strict=False)]
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
