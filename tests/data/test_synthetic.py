"""Synthetic scenes: determinism, splits, factor ranges, geometry against a brute-force reference, sweeps."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from rcdm_viz.data.synthetic import FACTOR_RANGES, SyntheticScenes, render, render_rate, sample_factors
from rcdm_viz.data.synthetic import dataset as syn_dataset
from rcdm_viz.data.synthetic import factors as syn_factors
from rcdm_viz.data.synthetic import renderer as syn_renderer
from rcdm_viz.data.synthetic import shapes as syn_shapes
from rcdm_viz.errors import RcdmVizError


@pytest.fixture(autouse=True)
def _one_thread():
    # The renderer runs thousands of small ops; with 2 intra-op threads on a busy 2-core machine every op
    # waits for a descheduled thread (100x slower). Behaviour does not depend on threads (tested below).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_public_constants() -> None:
    assert SyntheticScenes.FACTORS == ("object_yaw", "object_pitch", "object_roll", "object_hue", "floor_hue",
                                       "spot_theta", "spot_phi", "spot_hue")
    assert set(SyntheticScenes.CIRCULAR) == {"object_hue", "floor_hue", "spot_hue", "spot_phi"}
    shapes = SyntheticScenes.SHAPES
    assert 6 <= len(shapes) <= 8 and len(set(shapes)) == len(shapes)
    assert FACTOR_RANGES["spot_theta"] == (0.0, math.pi / 4)
    assert FACTOR_RANGES["spot_phi"] == (0.0, 2 * math.pi)


def test_splitmix64_matches_python_reference() -> None:
    rng = random.Random(0)
    values = [0, 1, 2, (1 << 63) - 1, 12345678901234567] + [rng.getrandbits(64) for _ in range(200)]
    got = syn_factors.splitmix64(torch.tensor([syn_factors._signed(v) for v in values], dtype=torch.int64))
    want = [syn_factors._signed(syn_factors.splitmix64_int(v)) for v in values]
    assert got.tolist() == want


def test_golden_values_same_on_every_machine() -> None:
    # Pins the dataset: the factors are exact (integer hashing), the pixels nearly so. A change here
    # changes every synthetic experiment, so it must be deliberate.
    labels, factors = sample_factors(torch.arange(4), seed=0, split="train")
    assert labels.tolist() == [7, 3, 1, 5]
    golden_phi = [3.2163515090942383, 2.0308215618133545, 1.4845080375671387, 5.237886428833008]
    assert torch.equal(factors["spot_phi"], torch.tensor(golden_phi, dtype=torch.float32))
    images, _, _ = SyntheticScenes(4, resolution=32, seed=0).render_batch([0, 1, 2, 3])
    golden_sums = [901.7437133789062, 1022.5904541015625, 890.6824340820312, 1340.432373046875]
    assert images.sum(dim=(1, 2, 3)).tolist() == pytest.approx(golden_sums, abs=1e-2)


def test_deterministic_alone_batched_and_across_instances(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = SyntheticScenes(40, resolution=32, seed=3, split="val")
    images, labels, factors = ds.render_batch(torch.arange(40))
    again = SyntheticScenes(40, resolution=32, seed=3, split="val")
    assert torch.equal(again.render_batch(list(range(40)))[0], images)
    assert torch.equal(ds.render_batch(torch.arange(39, -1, -1))[0], images.flip(0))
    for i in range(40):  # each rendered alone
        img, label, fac = ds[i]
        assert torch.equal(img, images[i]) and label == int(labels[i])
        assert fac == {k: float(v[i]) for k, v in factors.items()}
    assert torch.equal(ds[-1][0], images[39])
    monkeypatch.setattr(syn_renderer, "_CHUNK_ELEMENTS", 1)  # one image per chunk: same pixels
    assert torch.equal(ds.render_batch(torch.arange(40))[0], images)
    assert torch.equal(ds.labels, labels)
    assert all(torch.equal(ds.factors[k], factors[k]) for k in SyntheticScenes.FACTORS)
    assert torch.equal(render(factors, labels, 32), images)
    big = SyntheticScenes(240, resolution=32, seed=3, split="val")
    one = big.render_batch(torch.arange(240))[0]  # ~30 images a class: ops big enough to be split
    assert torch.equal(one[:40], images)
    torch.set_num_threads(2)  # threading splits must not change a bit (the fixture restores the count)
    assert torch.equal(big.render_batch(torch.arange(240))[0], one)


def test_culling_drops_no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only rays passing near the object's padded bounding ball are traced against it. With the ball made
    # huge every ray is traced (brute force): no pixel may change, and culling must skip most of the work.
    c = len(SyntheticScenes.SHAPES)
    _, factors = sample_factors(torch.arange(6 * c), seed=6, split="test")
    factors["spot_theta"][::2] = math.pi / 4  # long shadows: the hardest case for the shadow-ray test
    labels = torch.arange(6 * c) % c  # every shape
    traced: list[int] = []
    pairs = syn_renderer._pairs
    monkeypatch.setattr(syn_renderer, "_pairs", lambda mask: (traced.append(int(mask.sum())), pairs(mask))[1])
    culled = render(factors, labels, 32)
    n_culled, traced[:] = sum(traced), []
    monkeypatch.setattr(syn_renderer, "_CULL_MARGIN", 1e3)
    assert torch.equal(render(factors, labels, 32), culled)
    assert n_culled < 0.5 * sum(traced)


def test_seed_and_resolution_are_part_of_the_key() -> None:
    a = SyntheticScenes(8, seed=0).render_batch(range(8))
    b = SyntheticScenes(8, seed=1).render_batch(range(8))
    assert not torch.equal(a[2]["object_yaw"], b[2]["object_yaw"])
    hi = SyntheticScenes(8, resolution=64, seed=0).render_batch(range(8))
    assert torch.equal(hi[1], a[1]) and all(torch.equal(hi[2][k], a[2][k]) for k in a[2])
    assert torch.nn.functional.avg_pool2d(hi[0], 2).sub(a[0]).abs().mean() < 0.05  # same scenes


def test_splits_are_disjoint_streams() -> None:
    n = 500
    facs = {s: SyntheticScenes(n, split=s).factors for s in ("train", "val", "test")}
    for s, t in (("train", "val"), ("train", "test"), ("val", "test")):
        for k in SyntheticScenes.FACTORS:
            assert (facs[s][k] != facs[t][k]).float().mean() > 0.99, (s, t, k)
        assert not set(facs[s]["object_yaw"].tolist()) & set(facs[t]["object_yaw"].tolist())


def test_factor_ranges_uniform_and_all_classes_appear() -> None:
    ds = SyntheticScenes(2000, seed=5)
    for k, (lo, hi) in FACTOR_RANGES.items():
        v = ds.factors[k].double()
        span = hi - lo
        assert lo <= float(v.min()) < lo + 0.01 * span and hi - 0.01 * span < float(v.max()) <= hi, k
        assert abs(float(v.mean()) - (lo + hi) / 2) < 0.03 * span, k
        assert abs(float(v.std()) - span / math.sqrt(12)) < 0.03 * span, k  # uniform, not clumped
    edge = sample_factors(torch.arange(3), seed=5)[1]
    for k, (lo, hi) in FACTOR_RANGES.items():  # float32 rounding never leaves the range
        assert syn_factors._float32_inside(lo, hi)[0] >= lo and syn_factors._float32_inside(lo, hi)[1] <= hi
        assert bool(((edge[k].double() >= lo) & (edge[k].double() <= hi)).all())
    counts = torch.bincount(ds.labels, minlength=len(SyntheticScenes.SHAPES))
    assert counts.numel() == len(SyntheticScenes.SHAPES) and int(counts.min()) > 2000 / len(counts) * 0.7
    assert ds.labels.dtype == torch.long and all(v.dtype == torch.float32 for v in ds.factors.values())


@pytest.mark.parametrize("resolution", [32, 64, 128, 8])
def test_images_shape_dtype_range(resolution: int) -> None:
    ds = SyntheticScenes(6, resolution=resolution, seed=2)
    images, labels, factors = ds.render_batch(torch.arange(6))
    assert images.shape == (6, 3, resolution, resolution) and images.dtype == torch.float32
    assert labels.shape == (6,) and labels.dtype == torch.long
    assert set(factors) == set(SyntheticScenes.FACTORS) and all(v.shape == (6,) for v in factors.values())
    assert images.std(dim=(1, 2, 3)).min() > 0.03  # a scene, not a flat colour
    assert bool(torch.isfinite(images).all())
    img, label, fac = ds[5]
    assert img.shape == (3, resolution, resolution) and isinstance(label, int)
    assert isinstance(fac["spot_hue"], float)


def test_supersampling_is_a_box_filter_of_the_fine_render() -> None:
    labels, factors = sample_factors(torch.arange(5), seed=9)
    fine = render(factors, labels, 64)
    coarse = render(factors, labels, 32, supersample=2)
    assert torch.allclose(torch.nn.functional.avg_pool2d(fine, 2), coarse, atol=1e-6)


def test_every_factor_visibly_changes_the_image() -> None:
    # One generic pose per class; 8 values from min to max of one factor, the others fixed.
    # Thresholds calibrated at 32 px (smallest seen: object_hue on the capsule, consecutive 0.0042,
    # span 0.0127; the other factors are 3-10x above).  A factor that stops acting gives 0.
    c, names = len(SyntheticScenes.SHAPES), list(FACTOR_RANGES)
    fixed = {k: (lo + hi) / 2 for k, (lo, hi) in FACTOR_RANGES.items()}
    fixed.update(object_yaw=0.4, object_pitch=0.3, object_roll=0.2, spot_theta=math.pi / 6, spot_phi=2.0)
    m = len(names) * 8 * c  # one batch: [factor, value, class]
    factors = {k: torch.full((len(names), 8, c), v) for k, v in fixed.items()}
    for i, name in enumerate(names):
        lo, hi = FACTOR_RANGES[name]
        factors[name][i] = torch.linspace(lo, hi, 8)[:, None]
    labels = torch.arange(c).repeat(len(names) * 8)
    images = render({k: v.reshape(m) for k, v in factors.items()}, labels, 32).view(len(names), 8, c, -1)
    step = (images[:, 1:] - images[:, :-1]).abs().mean(dim=3).mean(dim=1)  # [factor, class]
    span = (images - images[:, :1]).abs().mean(dim=3).amax(dim=1)
    for i, name in enumerate(names):
        assert float(step[i].min()) > 0.003 and float(span[i].min()) > 0.008, (name, step[i], span[i])


def test_light_position_is_visible_through_the_shadow() -> None:
    # Same object, spot on opposite sides: the floor on each side is darker when the light is opposite.
    c = len(SyntheticScenes.SHAPES)
    base = {k: torch.full((c,), (lo + hi) / 2) for k, (lo, hi) in FACTOR_RANGES.items()}
    base["spot_theta"] = torch.full((c,), math.pi / 4)
    labels = torch.arange(c)
    east = render({**base, "spot_phi": torch.zeros(c)}, labels, 64).mean(dim=1)  # light at +x (image right)
    west = render({**base, "spot_phi": torch.full((c,), math.pi)}, labels, 64).mean(dim=1)
    left, right = slice(0, 24), slice(40, 64)
    assert bool((east[:, :, left].mean(dim=(1, 2)) < west[:, :, left].mean(dim=(1, 2))).all())
    assert bool((west[:, :, right].mean(dim=(1, 2)) < east[:, :, right].mean(dim=(1, 2))).all())


def test_floor_colour_is_legible_in_the_shade() -> None:
    # The far floor (top rows) lies outside the spot's pool: only the ambient light shows its colour there.
    # Opposite floor hues must differ there by more than a small decoder's colour error (~0.1 a channel),
    # and the lit pools must stay below full scale (two clipped channels lose the light's hue).
    c = len(SyntheticScenes.SHAPES)
    base = {k: torch.full((2 * c,), (lo + hi) / 2) for k, (lo, hi) in FACTOR_RANGES.items()}
    base.update(spot_theta=torch.zeros(2 * c), floor_hue=torch.tensor([0.0] * c + [0.5] * c))
    labels = torch.arange(c).repeat(2)
    far = render(base, labels, 32)[:, :, :3].mean(dim=(2, 3))  # [2c, 3]
    assert float((far[:c] - far[c:]).abs().amax(dim=1).min()) > 0.15
    labels, factors = sample_factors(torch.arange(64), seed=5)
    clipped = (render(factors, labels, 32) >= 1.0).sum(dim=1).ge(2).float().mean()
    assert float(clipped) < 0.02


def _inside(shape: syn_shapes.Shape, p: torch.Tensor) -> torch.Tensor:
    """Brute-force membership of points p [M, 3] in a shape (written independently of the ray code)."""
    x, y, z = p.unbind(-1)
    rho = torch.sqrt(x * x + y * y)
    if shape == syn_shapes.Shape.CYLINDER:
        return (rho <= syn_shapes._CYL_R) & (z.abs() <= syn_shapes._CYL_H)
    if shape == syn_shapes.Shape.CONE:
        h, r = syn_shapes._CONE_H, syn_shapes._CONE_R
        return (z.abs() <= h) & (rho <= r * (h - z) / (2 * h))
    if shape == syn_shapes.Shape.CAPSULE:
        dz = z - z.clamp(-syn_shapes._CAP_H, syn_shapes._CAP_H)
        return rho * rho + dz * dz <= syn_shapes._CAP_R**2
    poly = _POLYS[shape]
    ok = torch.ones_like(x, dtype=torch.bool)
    for n, s in poly.slabs:
        ok &= (p @ torch.tensor(n, dtype=p.dtype)).abs() <= s
    for n, h in poly.planes:
        ok &= p @ torch.tensor(n, dtype=p.dtype) <= h
    return ok


_POLYS = syn_shapes._POLYTOPES


@pytest.mark.parametrize("shape", list(syn_shapes.Shape))
def test_ray_intervals_match_brute_force_marching(shape: syn_shapes.Shape) -> None:
    g = torch.Generator().manual_seed(0)
    m, steps, t_max = 300, 4000, 6.0
    o = torch.nn.functional.normalize(torch.randn(m, 3, generator=g), dim=1) * 3.0
    d = torch.rand(m, 3, generator=g) * 1.6 - 0.8 - o
    d = d / d.norm(dim=1, keepdim=True)
    ops = syn_shapes.SHAPE_OPS[shape]
    enter, exit_ = ops.interval(tuple(o.T), tuple(d.T))
    hit = enter < exit_
    t = torch.linspace(0, t_max, steps)
    inside = _inside(shape, (o[:, None, :] + t[None, :, None] * d[:, None, :]).reshape(-1, 3)).view(m, steps)
    dt = t_max / (steps - 1)
    ref_hit = inside.sum(dim=1) > 2  # ignore grazing rays
    assert bool((hit | ~ref_hit).all()) and 0.2 < float(ref_hit.float().mean()) < 1.0
    first = t[inside.float().argmax(dim=1)]
    last = t[steps - 1 - inside.flip(1).float().argmax(dim=1)]
    sel = ref_hit
    assert torch.allclose(enter[sel], first[sel], atol=2 * dt)
    assert torch.allclose(exit_[sel], last[sel], atol=2 * dt)
    never = ~inside.any(dim=1)
    assert int((hit & never).sum()) <= 0.02 * m  # only grazing rays may hit between samples
    p = o + enter.clamp(0, t_max)[:, None] * d
    nrm = torch.stack(ops.normal(tuple(p.T)), dim=1)[sel]
    assert torch.allclose(nrm.norm(dim=1), torch.ones(int(sel.sum())), atol=1e-4)
    assert bool(((nrm * d[sel]).sum(dim=1) < 1e-4).all())  # outward: faces the incoming ray


@pytest.mark.parametrize("shape", list(syn_shapes.Shape))
def test_support_function_rests_the_object_on_the_floor(shape: syn_shapes.Shape) -> None:
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(400_000, 3, generator=g, dtype=torch.float64) * 2.6 - 1.3
    pts = pts[_inside(shape, pts)]
    assert float(pts.norm(dim=1).max()) <= syn_shapes.SHAPE_OPS[shape].radius <= syn_shapes.BOUND_RADIUS
    u = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=torch.float64), dim=1)
    h = syn_shapes.SHAPE_OPS[shape].support(u)
    brute = (u @ pts.T).amax(dim=1)
    assert bool((h >= brute - 1e-9).all()) and float((h - brute).max()) < 0.1  # sampling misses corners


def test_polytope_planes_and_vertices_agree() -> None:
    for shape, poly in _POLYS.items():
        v = torch.tensor(poly.vertices, dtype=torch.float64)
        assert bool(_inside(shape, v * (1 - 1e-9)).all()), shape
        assert not bool(_inside(shape, v * (1 + 1e-6)).any()), shape


def test_dataloader_uses_batched_rendering() -> None:
    ds = SyntheticScenes(12, seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, shuffle=False)
    images, labels, factors = next(iter(loader))
    ref = ds.render_batch(range(5))
    assert torch.equal(images, ref[0]) and torch.equal(labels, ref[1])
    assert torch.allclose(factors["spot_theta"].float(), ref[2]["spot_theta"])


def test_empty_dataset_and_empty_batch() -> None:
    assert len(SyntheticScenes(0)) == 0 and SyntheticScenes(0).labels.shape == (0,)
    images, labels, factors = SyntheticScenes(3).render_batch([])
    assert images.shape == (0, 3, 32, 32) and labels.shape == (0,) and factors["spot_hue"].shape == (0,)


def test_render_rate_times_the_second_of_two_identical_renders(monkeypatch) -> None:
    """A warm-up render, then n / (wall time of the second render of the same n scenes)."""
    rendered: list[list[int]] = []
    real = SyntheticScenes.render_batch
    monkeypatch.setattr(SyntheticScenes, "render_batch", lambda self, idx: (rendered.append(idx.tolist()),
                                                                             real(self, idx))[1])
    ticks = iter([100.0, 100.25])
    monkeypatch.setattr(syn_dataset, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    assert render_rate(16, n=8) == 8 / 0.25
    assert rendered == [list(range(8))] * 2


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [({"n": 4, "split": "holdout"}, "holdout"), ({"n": 4, "resolution": 7}, "7"), ({"n": -3}, "-3"),
     ({"n": 4, "resolution": 32.0}, "32.0"), ({"n": 4, "supersample": 0}, "0")],
)
def test_bad_arguments_raise_naming_the_value(kwargs: dict, needle: str) -> None:
    with pytest.raises(RcdmVizError, match=needle):
        SyntheticScenes(**kwargs)


def test_bad_render_inputs_raise() -> None:
    ds = SyntheticScenes(4)
    with pytest.raises(RcdmVizError, match="17"):
        ds.render_batch([0, 17])
    with pytest.raises(IndexError):
        ds[4]
    labels, factors = sample_factors(torch.arange(2))
    with pytest.raises(ValueError, match="spot_hue"):
        render({k: v for k, v in factors.items() if k != "spot_hue"}, labels, 32)
    with pytest.raises(ValueError, match="spot_phi"):
        render({**factors, "spot_phi": torch.zeros(3)}, labels, 32)
    with pytest.raises(ValueError, match="99"):
        render(factors, torch.tensor([0, 99]), 32)
    with pytest.raises(RcdmVizError, match="5"):
        render(factors, labels, 5)
    with pytest.raises(RcdmVizError, match="bogus"):
        sample_factors(torch.arange(2), split="bogus")
