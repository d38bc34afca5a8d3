"""SSL views: augmentations of image batches, on the batch's device, vectorised over the batch.

Images are float [N, 3, H, W] in [0, 1]. Every random choice is per sample and is drawn from an explicit
``torch.Generator`` (on the generator's own device, then moved to the batch's), so views are reproducible
and do not depend on the device the images live on. Random parameters are always drawn for the whole
batch, whether or not a sample ends up transformed, so sample i's view does not depend on the others.

The recipe is BYOL's / VICReg's (Grill et al. 2020, Bardes et al. 2022; E/N uses the same family):
random resized crop -> horizontal flip -> colour jitter (p 0.8) -> grayscale (p 0.2) -> Gaussian blur
(p 1.0 / 0.1 for the two views) -> solarize (p 0.0 / 0.2). The colour-jitter parts are applied in a
random order per sample, as torchvision's ColorJitter does per image in the official implementations
(``ViewsConfig.jitter_random_order=False`` gives the fixed order brightness, contrast, saturation, hue).
The colour operations follow torchvision's definitions (blend with black / grey mean / grayscale, hue
rotation in HSV, ITU-R 601 luma).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from rcdm_viz.config import ViewsConfig, parse_enum


class Augmentation(StrEnum):
    """The individual augmentations (names used by configs and invariance scores); a str Enum."""

    CROP = "crop"
    FLIP = "flip"
    BRIGHTNESS = "brightness"
    CONTRAST = "contrast"
    SATURATION = "saturation"
    HUE = "hue"
    GRAYSCALE = "grayscale"
    BLUR = "blur"
    SOLARIZE = "solarize"


_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 (torchvision rounds red to 0.2989)
_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 times before its centre-crop fallback
_SOLARIZE_THRESHOLD = 0.5

# ------------------------------------------------------------------ helpers


def _check_images(x: Tensor) -> None:
    """Raise ValueError unless ``x`` is a float [N, 3, H, W] batch."""
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"views: expected float images [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")


def _uniform(generator: torch.Generator, n: int, low: float, high: float, x: Tensor) -> Tensor:
    """[n] uniform draws in [low, high), drawn on the generator's device, returned on x's device/dtype."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    return (low + (high - low) * u).to(device=x.device, dtype=x.dtype)


def _coin(generator: torch.Generator, n: int, p: float, device: torch.device) -> Tensor:
    """[n] booleans, True with probability p (always drawn, so the stream does not depend on p)."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return (u < p).to(device)


def _per_sample(v: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or [N] parameter as [N, 1, 1, 1] on x's device/dtype."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    if v.dim() > 1 or (v.dim() == 1 and v.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"views: per-sample parameter of shape {tuple(v.shape)} does not fit a batch of {x.shape[0]}"
        )
    return v.expand(x.shape[0]).reshape(-1, 1, 1, 1)


def _where_samples(x: Tensor, mask: Tensor, fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Apply ``fn(x_subset, index)`` to the samples selected by the [N] bool ``mask``, others unchanged."""
    if bool(mask.all()):
        return fn(x, torch.arange(x.shape[0], device=x.device))
    if not bool(mask.any()):
        return x
    idx = mask.nonzero().squeeze(1)
    out = x.clone()
    out[idx] = fn(x[idx], idx)
    return out


def _as_size(size: int | tuple[int, int] | None, x: Tensor) -> tuple[int, int]:
    if size is None:
        return int(x.shape[-2]), int(x.shape[-1])
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


# ------------------------------------------------------------------ geometry


def _fallback_crop(h: int, w: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """torchvision's fallback crop size (width, height): the whole image, aspect clamped into ``ratio``."""
    if w / h < ratio[0]:
        return float(w), w / ratio[0]
    if w / h > ratio[1]:
        return h * ratio[1], float(h)
    return float(w), float(h)


def _crop_boxes(
    generator: torch.Generator, n: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Tensor:
    """[n, 4] float64 boxes (x0, y0, x1, y1) in pixel units, sampled like RandomResizedCrop.

    Up to 10 attempts per sample of (area fraction ~ U(scale), log aspect ~ U(log ratio)); the first that
    fits is used, else a centre crop (``_fallback_crop``). Boxes are continuous (sub-pixel) where
    torchvision's are integer.
    """
    dev, f64 = generator.device, torch.float64
    u_area = torch.rand(n, _CROP_ATTEMPTS, generator=generator, device=dev, dtype=f64)
    u_ratio = torch.rand(n, _CROP_ATTEMPTS, generator=generator, device=dev, dtype=f64)
    u_pos = torch.rand(n, 2, generator=generator, device=dev, dtype=f64)
    area = h * w * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    cw, ch = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    # Tolerance: scale (1, 1) with ratio (1, 1) on a square image must fit despite rounding in sqrt.
    fits = (cw <= w * (1 + 1e-12)) & (ch <= h * (1 + 1e-12))
    first = torch.argmax(fits.to(torch.uint8), dim=1, keepdim=True)  # first attempt that fits
    ok = fits.any(dim=1)
    fw, fh = _fallback_crop(h, w, ratio)
    cw = torch.where(ok, cw.gather(1, first)[:, 0].clamp(max=w), fw)
    ch = torch.where(ok, ch.gather(1, first)[:, 0].clamp(max=h), fh)
    x0 = torch.where(ok, u_pos[:, 0] * (w - cw), (w - cw) / 2)
    y0 = torch.where(ok, u_pos[:, 1] * (h - ch), (h - ch) / 2)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


def resized_crop(x: Tensor, boxes: Tensor, size: int | tuple[int, int] | None = None) -> Tensor:
    """Crop each sample to its box and resize bilinearly: x [N, 3, H, W], boxes [N, 4] -> [N, 3, h, w].

    Boxes are (x0, y0, x1, y1) in pixel units where pixel j spans [j, j + 1]; the box (0, 0, W, H) at the
    input size is the identity. Output size is the input size unless ``size`` is given.
    """
    _check_images(x)
    out_hw = _as_size(size, x)
    idx = torch.arange(x.shape[0], device=x.device, dtype=x.dtype).unsqueeze(1)
    rois = torch.cat([idx, boxes.to(device=x.device, dtype=x.dtype)], dim=1)
    # aligned=True puts sample points at pixel centres; sampling_ratio=-1 takes one bilinear sample per
    # output pixel when upsampling and averages ceil(bin) samples when downsampling (anti-aliasing).
    return roi_align(x, rois, out_hw, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def random_resized_crop(
    x: Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Random resized crop per sample: [N, 3, H, W] -> [N, 3, h, w] (input size unless ``size``)."""
    _check_images(x)
    boxes = _crop_boxes(generator, x.shape[0], x.shape[-2], x.shape[-1], scale, ratio)
    return resized_crop(x, boxes, size)


def random_flip(x: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability ``p``: [N, 3, H, W] -> same."""
    _check_images(x)
    flip = _coin(generator, x.shape[0], p, x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


# ------------------------------------------------------------------ colour


def _luma(x: Tensor) -> Tensor:
    """ITU-R 601 luma: [N, 3, H, W] -> [N, 1, H, W]."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def to_grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma repeated on 3 channels: [N, 3, H, W] -> [N, 3, H, W]."""
    return _luma(x).expand_as(x).contiguous()


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Scale intensities by the per-sample ``factor`` ([N] or scalar; 1 = identity), clamped to [0, 1]."""
    return (x * _per_sample(factor, x)).clamp(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend each sample with its mean grey level by ``factor`` ([N] or scalar; 1 = identity)."""
    f = _per_sample(factor, x)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend each sample with its grayscale version by ``factor`` ([N] or scalar; 1 = identity)."""
    f = _per_sample(factor, x)
    return (f * x + (1 - f) * _luma(x)).clamp(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB [N, 3, H, W] in [0, 1] -> HSV [N, 3, H, W] with hue in [0, 1) (grey pixels get hue 0)."""
    r, g, b = x.unbind(dim=1)
    minc, maxc = torch.aminmax(x, dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, 1.0)
    # Grey pixels (delta = 0) take the first branch, whose numerator g - b is then 0: hue 0.
    h = torch.where(maxc == r, g - b, torch.where(maxc == g, 2.0 * delta + b - r, 4.0 * delta + r - g))
    h = torch.remainder(h / (6.0 * torch.where(delta > 0, delta, 1.0)), 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """HSV [N, 3, H, W] (hue in [0, 1)) -> RGB [N, 3, H, W]."""
    h, s, v = x.unbind(dim=1)
    # Closed form: channel = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1 for R, G, B.
    chans = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        chans.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(chans, dim=1)


def adjust_hue(x: Tensor, shift: Tensor | float) -> Tensor:
    """Rotate hue by the per-sample ``shift`` in turns ([N] or scalar, in [-0.5, 0.5]; 0 = identity)."""
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, :1] + _per_sample(shift, x), 1.0)
    return hsv_to_rgb(torch.cat([h, hsv[:, 1:]], dim=1)).clamp(0, 1)


def _jitter_factor(generator: torch.Generator, x: Tensor, strength: float) -> Tensor:
    """[N] factors ~ U(max(0, 1 - s), 1 + s), torchvision's ColorJitter brightness/contrast/saturation."""
    return _uniform(generator, x.shape[0], max(0.0, 1.0 - strength), 1.0 + strength, x)


def random_brightness(x: Tensor, generator: torch.Generator, strength: float = 0.4) -> Tensor:
    """Brightness jitter with per-sample factor ~ U(1 - strength, 1 + strength)."""
    _check_images(x)
    return adjust_brightness(x, _jitter_factor(generator, x, strength))


def random_contrast(x: Tensor, generator: torch.Generator, strength: float = 0.4) -> Tensor:
    """Contrast jitter with per-sample factor ~ U(1 - strength, 1 + strength)."""
    _check_images(x)
    return adjust_contrast(x, _jitter_factor(generator, x, strength))


def random_saturation(x: Tensor, generator: torch.Generator, strength: float = 0.2) -> Tensor:
    """Saturation jitter with per-sample factor ~ U(1 - strength, 1 + strength)."""
    _check_images(x)
    return adjust_saturation(x, _jitter_factor(generator, x, strength))


def random_hue(x: Tensor, generator: torch.Generator, strength: float = 0.1) -> Tensor:
    """Hue jitter with per-sample shift ~ U(-strength, strength) turns."""
    _check_images(x)
    return adjust_hue(x, _uniform(generator, x.shape[0], -strength, strength, x))


def random_grayscale(x: Tensor, generator: torch.Generator, p: float = 0.2) -> Tensor:
    """Turn each sample to grayscale (3 equal channels) with probability ``p``."""
    _check_images(x)
    gray = _coin(generator, x.shape[0], p, x.device)
    return _where_samples(x, gray, lambda xs, _: to_grayscale(xs))


def solarize(x: Tensor, threshold: float = _SOLARIZE_THRESHOLD) -> Tensor:
    """Invert every pixel value >= ``threshold`` (as torchvision): [N, 3, H, W] -> same."""
    return torch.where(x >= threshold, 1.0 - x, x)


def random_solarize(x: Tensor, generator: torch.Generator, p: float = 0.2) -> Tensor:
    """Solarize each sample (threshold 0.5) with probability ``p``."""
    _check_images(x)
    return _where_samples(x, _coin(generator, x.shape[0], p, x.device), lambda xs, _: solarize(xs))


# ------------------------------------------------------------------ blur


def blur_kernel_size(side: int) -> int:
    """Odd Gaussian kernel size of about 10% of the image side (23 at 224 px, 3 at 32 px)."""
    k = max(3, round(0.1 * side))
    return k if k % 2 == 1 else k + 1


def gaussian_blur(x: Tensor, sigma: Tensor | float) -> Tensor:
    """Separable Gaussian blur with per-sample ``sigma`` in pixels ([N] or scalar), reflect padding.

    The kernel size is ``blur_kernel_size(min(H, W))``. x [N, 3, H, W] -> same.
    """
    n, c, h, w = x.shape
    k = blur_kernel_size(min(h, w))
    sig = _per_sample(sigma, x).view(n, 1).clamp_min(1e-6)
    t = torch.arange(k, dtype=x.dtype, device=x.device) - (k - 1) / 2
    kern = torch.exp(-0.5 * (t.view(1, k) / sig) ** 2)
    kern = (kern / kern.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N * C, k]
    # One grouped convolution over all N * C channels blurs every sample with its own kernel.
    y = F.pad(x.reshape(1, n * c, h, w), (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    y = F.conv2d(y, kern.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(y, kern.view(n * c, 1, k, 1), groups=n * c)
    return y.view(n, c, h, w)


def random_blur(
    x: Tensor,
    generator: torch.Generator,
    p: float = 1.0,
    sigma: tuple[float, float] = (0.1, 2.0),
    reference_side: int | None = None,
) -> Tensor:
    """Gaussian blur with probability ``p`` and per-sample sigma ~ U(sigma) pixels: [N, 3, H, W] -> same.

    As SimCLR/BYOL/VICReg: sigma in (0.1, 2.0) px, kernel ~10% of the image side. With
    ``reference_side`` set, sigma is given at that side and scaled by min(H, W) / reference_side (224 makes
    the blur remove the same fraction of detail as at ImageNet size, which at 32-64 px is almost nothing).
    """
    _check_images(x)
    n = x.shape[0]
    apply = _coin(generator, n, p, x.device)
    sig = _uniform(generator, n, sigma[0], sigma[1], x)
    if reference_side is not None:
        sig = sig * (min(x.shape[-2:]) / reference_side)
    return _where_samples(x, apply, lambda xs, idx: gaussian_blur(xs, sig[idx]))


# ------------------------------------------------------------------ colour jitter

_JITTER_OPS: tuple[Callable[[Tensor, Tensor], Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def jitter_colors(
    x: Tensor,
    params: Tensor,
    order: Tensor,
    mask: Tensor | None = None,
    active: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> Tensor:
    """Apply brightness, contrast, saturation factors and hue shift per sample, in a per-sample order.

    x [N, 3, H, W]; params [N, 4] (the three factors, then the hue shift); order [N, 4] long, a permutation
    of 0..3 per sample (0 brightness, 1 contrast, 2 saturation, 3 hue); mask [N] bool selects the samples
    to jitter (all when None); ``active`` switches parts off entirely. Each (stage, operation) pair runs
    once on the samples that chose it, so the cost is that of a fixed order.
    """
    n = x.shape[0]
    if params.shape != (n, 4) or order.shape != (n, 4):
        raise ValueError(
            f"jitter_colors: params and order must be [{n}, 4], "
            f"got {tuple(params.shape)} and {tuple(order.shape)}"
        )
    mask = torch.ones(n, dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
    order, params = order.to(x.device), params.to(device=x.device, dtype=x.dtype)
    x = x.clone()  # one copy, then each (stage, operation) updates its samples in place
    for stage in range(4):
        for op_index, op in enumerate(_JITTER_OPS):
            selected = mask & (order[:, stage] == op_index)
            if not active[op_index] or not bool(selected.any()):
                continue
            idx = selected.nonzero().squeeze(1)
            x[idx] = op(x[idx], params[idx, op_index])
    return x


def color_jitter(
    x: Tensor,
    generator: torch.Generator,
    strength: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
    p: float = 0.8,
    random_order: bool = True,
) -> Tensor:
    """torchvision-style ColorJitter(brightness, contrast, saturation, hue) applied with probability ``p``.

    Each sample draws its own four strengths and, when ``random_order``, its own order of the four
    operations (torchvision draws a new order per call, i.e. per image in the official data loaders);
    otherwise the order is brightness, contrast, saturation, hue. Parts with strength 0 are skipped.
    x [N, 3, H, W] -> same.
    """
    _check_images(x)
    n = x.shape[0]
    b, c, s, h = strength
    apply = _coin(generator, n, p, x.device)
    params = torch.stack(
        [
            _jitter_factor(generator, x, b),
            _jitter_factor(generator, x, c),
            _jitter_factor(generator, x, s),
            _uniform(generator, n, -h, h, x),
        ],
        dim=1,
    )
    # Ranks of 4 uniforms per sample are a uniform random permutation; always drawn to keep the stream.
    order = torch.argsort(torch.rand(n, 4, generator=generator, device=generator.device), dim=1)
    if not random_order:
        order = torch.arange(4, device=order.device).expand(n, 4)
    active = (b > 0, c > 0, s > 0, h > 0)
    return jitter_colors(x, params, order, apply, active)


# ------------------------------------------------------------------ one augmentation, always


def _always(aug: Augmentation) -> Callable[[Tensor, torch.Generator], Tensor]:
    """The augmentation applied to every sample at its default strength (probability 1)."""
    table: dict[Augmentation, Callable[[Tensor, torch.Generator], Tensor]] = {
        Augmentation.CROP: random_resized_crop,
        Augmentation.FLIP: functools.partial(random_flip, p=1.0),
        Augmentation.BRIGHTNESS: random_brightness,
        Augmentation.CONTRAST: random_contrast,
        Augmentation.SATURATION: random_saturation,
        Augmentation.HUE: random_hue,
        Augmentation.GRAYSCALE: lambda x, _: to_grayscale(x),
        Augmentation.BLUR: functools.partial(random_blur, p=1.0),
        Augmentation.SOLARIZE: lambda x, _: solarize(x),
    }
    return table[aug]


def parse_augmentation(name: Augmentation | str) -> Augmentation:
    """``name`` as an Augmentation, or RcdmVizError listing the valid names."""
    return parse_enum(Augmentation, name, "augmentation", normalize=True)


def apply_augmentation(name: Augmentation | str, x: Tensor, generator: torch.Generator) -> Tensor:
    """Apply exactly the augmentation ``name`` to every sample (probability 1, default strength).

    Strengths are the per-function defaults: crop scale (0.2, 1), brightness/contrast 0.4, saturation 0.2,
    hue 0.1, blur sigma (0.1, 2.0) px; flip, grayscale and solarize (threshold 0.5) are total.
    x [N, 3, H, W] -> same shape.
    """
    aug = parse_augmentation(name)
    _check_images(x)
    return _always(aug)(x, generator)


# ------------------------------------------------------------------ the SSL views


def make_views(x: Tensor, generator: torch.Generator, config: ViewsConfig, view: int) -> Tensor:
    """One SSL view of every image: x [N, 3, H, W] in [0, 1] -> [N, 3, h, w] (h = w = config.size or H, W).

    Crop -> flip -> colour jitter -> grayscale -> blur -> solarize; ``view`` (0 or 1) picks the
    asymmetric blur / solarize probabilities (``rcdm_viz.config.ViewsConfig`` holds the recipe).
    """
    cfg = config
    if view not in (0, 1):
        raise ValueError(f"make_views: view must be 0 or 1, got {view}")
    _check_images(x)
    x = random_resized_crop(x, generator, cfg.crop_scale, cfg.crop_ratio, cfg.size)
    x = random_flip(x, generator, cfg.flip_p)
    x = color_jitter(x, generator, cfg.jitter, cfg.jitter_p, cfg.jitter_random_order)
    x = random_grayscale(x, generator, cfg.gray_p)
    x = random_blur(x, generator, cfg.blur_p[view], cfg.blur_sigma, cfg.blur_reference_side)
    return random_solarize(x, generator, cfg.solarize_p[view])


def two_views(
    x: Tensor, generator: torch.Generator, config: ViewsConfig | None = None
) -> tuple[Tensor, Tensor]:
    """The two SSL views (view 0, view 1) of every image in x [N, 3, H, W]; ``None`` = ViewsConfig()."""
    cfg = ViewsConfig() if config is None else config
    return make_views(x, generator, cfg, 0), make_views(x, generator, cfg, 1)
