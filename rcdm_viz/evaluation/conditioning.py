"""How much of each layer's representation does a trained decoder use? Its loss, conditioned three ways.

For validation images x0 and one fixed draw of (t, noise) per image, the decoder's training loss (the MSE of
its prediction target: eps, v or x0) is measured with the image's own representation of a layer ("true"),
with another image's representation of the same layer ("shuffled": the same marginal, no information about
x0) and with the null embedding ("null", classifier-free guidance's unconditional model). The drop from
shuffled (or null) to true is what the decoder reads from the layer about this image; two layers with the same
"true" loss give the decoder the same information, whatever their probes say, and their grid rows look alike.
Grouped by noise level: at low t the noisy image itself determines the output, the conditioning matters at
high t (Ho et al. 2020; RCDM's samples keep what the representation fixes at high noise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rcdm_viz.data.images import fit
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.schedule import prediction_target

DEFAULT_BANDS: tuple[tuple[int, int], ...] = ((0, 200), (200, 500), (500, 800), (800, 1000))


def _mse(pred: Tensor, target: Tensor) -> float:
    return float((pred - target).pow(2).mean())


_Noised = dict[str, tuple[Tensor, Tensor, Tensor]]  # band "lo-hi" -> (x_t, t, target)


def _noised(decoder: RCDMDecoder, images: Tensor, bands: Sequence[tuple[int, int]], seed: int) -> _Noised:
    """One fixed draw per image and band: x_t [N, 3, r, r], t [N] in [lo, hi), and the decoder's target.

    images [N, 3, h, w] in [0, 1] are fitted to the decoder's resolution r; the seed fixes noise and t,
    so every decoder at one resolution sees the same draw."""
    x0 = fit(images, decoder.config.resolution) * 2 - 1
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(x0.shape, generator=gen)
    scheduler = decoder.noise_scheduler()
    out = {}
    for lo, hi in bands:
        t = torch.randint(lo, hi, (len(x0),), generator=gen)
        out[f"{lo}-{hi}"] = scheduler.add_noise(x0, noise, t), t, prediction_target(scheduler, x0, noise, t)
    return out


def _layer_losses(
    decoder: RCDMDecoder, noised: _Noised, reps: Tensor, layer: str, null: dict[str, float]
) -> dict[str, dict[str, float]]:
    """Per band, the true and shuffled losses of one layer (reps [N, D]) beside the decoder's null loss."""
    return {
        band: {
            "true": _mse(decoder(x_t, t, reps, layer), target),
            "shuffled": _mse(decoder(x_t, t, reps.roll(1, dims=0), layer), target),
            "null": null[band],
        }
        for band, (x_t, t, target) in noised.items()
    }


@torch.no_grad()
def conditional_losses(
    decoders: dict[str, RCDMDecoder],
    images: Tensor,
    reps: dict[str, Tensor],
    bands: Sequence[tuple[int, int]] = DEFAULT_BANDS,
    seed: int = 0,
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean loss per layer, per noise band "lo-hi" (t in [lo, hi)), per condition (true, shuffled, null).

    decoders: layer -> its decoder (a shared decoder may serve several); images: float [N, 3, h, w] in
    [0, 1], N >= 2 (fitted to each decoder's resolution); reps: layer -> [N, D_layer] of the same images.
    "shuffled" gives image i the representation of image i - 1. Every layer and condition sees the same t
    and noise (seeded by ``seed``).
    """
    if images.ndim != 4 or images.shape[0] < 2:
        raise ValueError(f"conditional losses need images [N >= 2, 3, H, W], got {list(images.shape)}")
    missing = [layer for layer in reps if layer not in decoders]
    if missing:
        raise ValueError(f"no decoder for layers {missing}")
    for layer, decoder in decoders.items():
        steps = decoder.noise_scheduler().config.num_train_timesteps
        bad = [(lo, hi) for lo, hi in bands if not 0 <= lo < hi <= steps]
        if bad:
            raise ValueError(f"noise bands must satisfy 0 <= lo < hi <= {steps} ({layer}), got {bad}")
    # A shared decoder serves several layers: its noised inputs and its null loss (which does not depend on
    # the layer) are computed once.
    per_decoder: dict[int, tuple[_Noised, dict[str, float]]] = {}
    out = {}
    for layer, r in reps.items():
        decoder = decoders[layer].eval()
        if id(decoder) not in per_decoder:
            noised = _noised(decoder, images, bands, seed)
            null = {band: _mse(decoder(x_t, t, None, layer), target) for band, (x_t, t, target) in
                    noised.items()}
            per_decoder[id(decoder)] = noised, null
        noised, null = per_decoder[id(decoder)]
        out[layer] = _layer_losses(decoder, noised, r, layer, null)
    return out


def format_losses(losses: dict[str, dict[str, dict[str, float]]]) -> str:
    """A plain-text table: one line per layer and band with the three losses and true / null."""
    lines = [f"{'layer':10} {'t':>9} {'true':>8} {'shuffled':>9} {'null':>8} {'true/null':>10}"]
    for layer, by_band in losses.items():
        for band, v in by_band.items():
            ratio = v["true"] / v["null"] if v["null"] > 0 else float("nan")
            losses_ = f"{v['true']:8.4f} {v['shuffled']:9.4f} {v['null']:8.4f}"
            lines.append(f"{layer:10} {band:>9} {losses_} {ratio:10.3f}")
    return "\n".join(lines)
