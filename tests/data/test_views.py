"""SSL views: shapes, determinism, exact identities, torchvision references, per-sample randomness."""

from __future__ import annotations

import colorsys

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from rcdm_viz.config import ViewsConfig
from rcdm_viz.data import views as V
from rcdm_viz.data.views import Augmentation, apply_augmentation, make_views, two_views
from rcdm_viz.errors import RcdmVizError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(n: int = 6, side: int = 16, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Smooth-ish random images (noise + gradients) in [0, 1]."""
    g = _gen(seed)
    ramp = torch.linspace(0, 1, side, dtype=dtype)
    x = 0.5 * torch.rand(n, 3, side, side, generator=g, dtype=dtype) + 0.5 * ramp.view(1, 1, 1, -1)
    return x.clamp(0, 1)


# ---------------------------------------------------------------- full views


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_views_shape_range_dtype_device(device, dtype):
    x = _images(dtype=dtype).to(device)
    v1, v2 = two_views(x, _gen(), ViewsConfig())
    for v in (v1, v2):
        assert v.shape == x.shape and v.dtype == dtype and v.device == x.device
        assert v.min() >= 0 and v.max() <= 1
    v = make_views(x, _gen(), ViewsConfig(size=8), view=1)
    assert v.shape == (6, 3, 8, 8)


def test_views_deterministic_per_seed():
    x = _images()
    a1, a2 = two_views(x, _gen(7), ViewsConfig())
    b1, b2 = two_views(x, _gen(7), ViewsConfig())
    c1, c2 = two_views(x, _gen(8), ViewsConfig())
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.allclose(a1, c1) and not torch.allclose(a2, c2)
    assert not torch.allclose(a1, a2)  # the two views of one call differ


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("crop_scale", (0.0, 1.0)),
        ("crop_scale", (0.5, 0.2)),
        ("flip_p", 1.5),
        ("blur_p", (1.0, -0.1)),
        ("jitter", (0.4, 0.4, 0.2, 0.7)),
        ("size", 0),
    ],
)
def test_view_config_rejects_bad_values(field, value):
    with pytest.raises(RcdmVizError, match=field):
        ViewsConfig(**{field: value})


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8\)"):
        two_views(torch.rand(2, 1, 8, 8), _gen())
    with pytest.raises(ValueError, match="uint8"):
        two_views(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), _gen())
    with pytest.raises(ValueError, match="view must be 0 or 1, got 2"):
        make_views(_images(), _gen(), ViewsConfig(), view=2)


# ---------------------------------------------------------------- apply_augmentation


@pytest.mark.parametrize("aug", list(Augmentation))
def test_apply_each_augmentation(aug):
    x = _images()
    y = apply_augmentation(aug, x, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, apply_augmentation(aug.value.upper(), x, _gen()))  # names are case-insensitive
    # Every augmentation changes every image (probability 1), blur included at this size.
    assert ((y - x).abs().flatten(1).amax(dim=1) > 1e-4).all(), aug


def test_unknown_augmentation_lists_valid_names():
    with pytest.raises(RcdmVizError, match="'zoom'.*crop, flip, brightness.*solarize"):
        apply_augmentation("zoom", _images(), _gen())


def test_per_sample_parameters_differ():
    x = _images(n=1).expand(8, -1, -1, -1).contiguous()  # 8 copies of one image
    for aug in (
        Augmentation.CROP,
        Augmentation.BRIGHTNESS,
        Augmentation.CONTRAST,
        Augmentation.SATURATION,
        Augmentation.HUE,
        Augmentation.BLUR,
    ):
        y = apply_augmentation(aug, x, _gen(3))
        distinct = {tuple(row.tolist()) for row in y.flatten(1)[:, ::7].round(decimals=5)}
        assert len(distinct) == 8, aug
    flips = V.random_flip(x, _gen(3), p=0.5)
    assert 0 < (flips != x).flatten(1).any(dim=1).sum() < 8


# ---------------------------------------------------------------- geometry


def test_flip_is_exact_mirror():
    x = _images()
    assert torch.equal(V.random_flip(x, _gen(), p=1.0), x.flip(-1))
    assert torch.equal(V.random_flip(x, _gen(), p=0.0), x)
    assert torch.equal(apply_augmentation("flip", x, _gen()), x.flip(-1))


def test_full_crop_is_identity():
    x = _images(side=20)
    y = V.random_resized_crop(x, _gen(), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(y, x, atol=1e-6)


def test_crop_matches_slicing_and_torch_resampling():
    x = _images(side=16, dtype=torch.float64)
    n = x.shape[0]
    left_half = torch.tensor([[0.0, 0.0, 8.0, 16.0]]).expand(n, 4)
    assert torch.allclose(V.resized_crop(x, left_half, (16, 8)), x[..., :8], atol=1e-12)
    full = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).expand(n, 4)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(V.resized_crop(x, full, 32), up, atol=1e-12)
    assert torch.allclose(V.resized_crop(x, full, 8), F.avg_pool2d(x, 2), atol=1e-12)


def test_crop_boxes_respect_scale_and_ratio():
    boxes = V._crop_boxes(_gen(), 2000, 32, 32, (0.2, 0.6), (3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all()
    area = w * h / 32**2
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.6 + 1e-9
    assert (w / h).min() >= 3 / 4 - 1e-9 and (w / h).max() <= 4 / 3 + 1e-9
    # Non-square images with an impossible request fall back to the centre crop, as torchvision does.
    wide = V._crop_boxes(_gen(), 4, 10, 40, (1.0, 1.0), (1.0, 1.0))
    assert torch.allclose(wide, torch.tensor([[15.0, 0.0, 25.0, 10.0]], dtype=torch.float64).expand(4, 4))


# ---------------------------------------------------------------- colour


def test_grayscale_channels_equal_and_luma():
    x = _images()
    y = apply_augmentation(Augmentation.GRAYSCALE, x, _gen())
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2])
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # ITU-R 601
    assert torch.allclose(y[:, 0], luma, atol=1e-6)
    # torchvision rounds the red weight to 0.2989.
    assert torch.allclose(y, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-4)
    mixed = V.random_grayscale(x, _gen(), p=0.5)
    gray = (mixed[:, 0] == mixed[:, 1]).flatten(1).all(dim=1)
    assert 0 < gray.sum() < len(x)


def test_colour_identities():
    x = _images()
    assert torch.equal(V.adjust_saturation(x, 1.0), x)
    assert torch.equal(V.adjust_brightness(x, 1.0), x)
    assert torch.allclose(V.adjust_contrast(x, 1.0), x, atol=1e-7)
    assert torch.allclose(V.adjust_hue(x, 0.0), x, atol=1e-5)
    assert torch.allclose(V.adjust_hue(x, torch.ones(len(x)) * 0.5), V.adjust_hue(x, -0.5), atol=1e-5)


def test_hsv_round_trip_and_colorsys():
    x = torch.rand(4, 3, 16, 16, generator=_gen(5))
    x[0, :, :4] = 0.25  # grey pixels (hue undefined -> 0)
    x[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure colours
    x[1, :, 2:4] = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1)
    x[2, :, :2] = 0.0  # black
    hsv = V.rgb_to_hsv(x)
    assert (V.hsv_to_rgb(hsv) - x).abs().max() < 1e-5
    assert hsv.min() >= 0 and hsv[:, 0].max() < 1 and hsv[:, 1:].max() <= 1
    for n, i, j in [(0, 0, 0), (1, 0, 0), (1, 3, 5), (2, 0, 0), (3, 7, 9), (3, 15, 15)]:
        ref = colorsys.rgb_to_hsv(*x[n, :, i, j].tolist())
        assert torch.allclose(hsv[n, :, i, j], torch.tensor(ref), atol=1e-6), (n, i, j)


def test_colour_ops_match_torchvision_per_sample():
    x = _images(n=5)
    g = _gen(9)
    factors = 0.5 + torch.rand(5, generator=g)
    shifts = torch.rand(5, generator=g) - 0.5
    ours_and_refs = [
        (V.adjust_brightness(x, factors), TF.adjust_brightness),
        (V.adjust_contrast(x, factors), TF.adjust_contrast),
        (V.adjust_saturation(x, factors), TF.adjust_saturation),
    ]
    for ours, ref in ours_and_refs:
        want = torch.stack([ref(x[i], float(factors[i])) for i in range(5)])
        # 1e-4: torchvision's luma uses 0.2989 for red where ITU-R 601 (ours) says 0.299.
        assert torch.allclose(ours, want, atol=1e-4), ref.__name__
    want = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(5)])
    assert torch.allclose(V.adjust_hue(x, shifts), want, atol=1e-5)


def test_jitter_colors_follows_each_samples_order():
    x = _images(n=4)
    g = _gen(11)
    params = torch.stack(
        [0.6 + 0.8 * torch.rand(4, generator=g) for _ in range(3)] + [0.2 * torch.rand(4, generator=g) - 0.1],
        dim=1,
    )
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]])
    mask = torch.tensor([True, True, True, False])
    got = V.jitter_colors(x, params, order, mask)
    refs = (V.adjust_brightness, V.adjust_contrast, V.adjust_saturation, V.adjust_hue)
    for i in range(4):
        want = x[i : i + 1]
        for op in order[i].tolist() if mask[i] else []:
            want = refs[op](want, float(params[i, op]))
        assert torch.allclose(got[i], want[0], atol=1e-6), i
    # Random vs fixed order: same draws, different composition for some samples.
    y = _images(n=16)
    rand = V.color_jitter(y, _gen(2), p=1.0, random_order=True)
    fixed = V.color_jitter(y, _gen(2), p=1.0, random_order=False)
    assert not torch.allclose(rand, fixed)


def test_solarize():
    x = _images()
    y = apply_augmentation(Augmentation.SOLARIZE, x, _gen())
    assert torch.equal(y, torch.where(x >= 0.5, 1 - x, x))


# ---------------------------------------------------------------- blur


def test_blur_matches_torchvision_per_sample():
    x = _images(n=4, side=40)
    sigmas = torch.tensor([0.3, 0.8, 1.5, 3.0])
    k = V.blur_kernel_size(40)
    assert k == 5 and V.blur_kernel_size(224) == 23 and V.blur_kernel_size(32) == 3
    want = torch.stack([TF.gaussian_blur(x[i], [k, k], [float(s)]) for i, s in enumerate(sigmas)])
    assert torch.allclose(V.gaussian_blur(x, sigmas), want, atol=1e-6)


def test_blur_sigma_scaling_with_reference_side():
    x = _images(side=32)
    plain = V.random_blur(x, _gen(4), sigma=(1.0, 1.0))
    assert torch.allclose(plain, V.gaussian_blur(x, 1.0), atol=1e-7)
    scaled = V.random_blur(x, _gen(4), sigma=(1.0, 1.0), reference_side=64)
    assert torch.allclose(scaled, V.gaussian_blur(x, 0.5), atol=1e-7)


def test_blur_keeps_constant_images_and_probability():
    x = torch.full((3, 3, 16, 16), 0.3)
    assert torch.allclose(V.gaussian_blur(x, torch.tensor([0.5, 1.0, 2.0])), x, atol=1e-6)
    y = _images()
    assert torch.equal(V.random_blur(y, _gen(), p=0.0), y)
    assert torch.allclose(V.gaussian_blur(y, 1e-3), y, atol=1e-6)
