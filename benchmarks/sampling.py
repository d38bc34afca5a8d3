"""RCDM's sampler vs a fast one: ddpm with 100 respaced steps vs dpm++ with 25 steps, on the same grid.

Builds a tiny setup inside the script (a freshly initialised small encoder, a small decoder briefly trained
on its cached features of synthetic scenes), samples the same grid (held-out images x samples, same seeds)
with both samplers, and prints each one's wall time and representation consistency
(docs/DESIGN.md, "Invariance scores": the normalized cosine between h(sample) and h(x), 0 = no closer
than another image, 1 = identical). Ends with ``ratio: X`` = time(ddpm 100) / time(dpm++ 25) (goal X >= 4
with consistency within 0.02).

    python benchmarks/sampling.py [--quick] [--prediction v_prediction|epsilon]

Seen here: a decoder trained only ~100 steps with epsilon prediction is in the regime where the 25-step
solvers fall well below ancestral DDPM; v-prediction (the CPU preset's choice) reaches it sooner.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from rcdm_viz.config import Config, load_config
from rcdm_viz.data.sources import ImageSet, load_images
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.decoder.train import DecoderStep, make_decoder_step, training_batch
from rcdm_viz.encoders import Encoder
from rcdm_viz.features import extract_features
from rcdm_viz.training import make_accelerator

# A setup small enough to train in seconds on a CPU; --quick shortens it further.
TINY = [
    "data.resolution=32",
    "encoder.arch=resnet18",
    "encoder.width=64",
    "encoder.head=64-64-32",
    "encoder.base_width=8",
    "encoder.small_input=true",
    "decoder.resolution=16",
    "decoder.block_out_channels=[32,32]",
    "decoder.layers_per_block=1",
    "decoder.attention_resolutions=[8]",
    "decoder.norm_num_groups=8",
    "decoder.batch_size=32",
    "decoder.lr=0.002",
    "decoder.warmup_steps=20",
    "decoder.ema_decay=0.99",
]


@torch.inference_mode()
def representation_consistency(encoder: Encoder, layer: str, images: Tensor, samples: Tensor) -> float:
    """(E cos(h(s), h(x)) - E cos(h(x), h(x'))) / (1 - E cos(h(x), h(x'))) over x in ``images``
    [B,3,H,W] (at the encoder's resolution, in [0,1]), samples s [B,n,3,h,w] of x, other images x'."""
    b, n = samples.shape[:2]
    h_x = encoder(images, layers=[layer])[layer].float()
    flat = samples.flatten(0, 1)
    if flat.shape[-1] != images.shape[-1]:
        flat = F.interpolate(flat, size=images.shape[-2:], mode="bilinear", antialias=True).clamp(0, 1)
    h_s = encoder(flat, layers=[layer])[layer].float().view(b, n, -1)
    same = F.cosine_similarity(h_s, h_x.unsqueeze(1), dim=-1).mean()
    unit = F.normalize(h_x, dim=-1)
    sims = unit @ unit.T
    other = (sims.sum() - sims.diagonal().sum()) / (b * (b - 1))
    return float((same - other) / (1 - other))


def tiny_config(quick: bool, *extra: str) -> Config:
    """The benchmark setup; ``--quick`` trains on fewer images."""
    n_train = 256 if quick else 4096
    return load_config(None, [*TINY, f"data.n_train={n_train}", "data.n_val=64", *extra])


def setup(cfg: Config, layers: list[str] | None = None) -> tuple[Encoder, ImageSet, dict[str, Tensor]]:
    """A fresh encoder, the decoder-resolution training images and the encoder's features of them."""
    torch.manual_seed(0)
    encoder = Encoder.from_config(cfg.encoder, cfg.data.resolution).eval()
    enc_images = load_images(cfg.data, "train", progress=False)
    images = load_images(cfg.data, "train", resolution=cfg.decoder.resolution, progress=False)
    feats = extract_features(encoder, enc_images, layers or encoder.layer_names, batch_size=256)
    return encoder, images, {k: v.half() for k, v in feats.items()}


def train(cfg: Config, encoder: Encoder, images: ImageSet, feats: dict[str, Tensor], layers: list[str]):
    """Train a decoder for ``layers`` (shared when several) for ``decoder.steps``; returns (EMA decoder,
    seconds)."""
    step_fn: DecoderStep = make_decoder_step(
        cfg.decoder, {k: feats[k].shape[1] for k in layers}, encoder.fingerprint(), make_accelerator("fp32")
    )
    start = time.perf_counter()
    for s in range(cfg.decoder.steps):
        x0, reps, which = training_batch(step_fn, images, {k: feats[k] for k in layers}, s)
        step_fn(x0, reps, s, which)
    return step_fn.ema_decoder(), time.perf_counter() - start


def heldout(cfg: Config, encoder: Encoder, n: int) -> Tensor:
    """``n`` validation images [n,3,H,W] in [0,1] at the encoder's resolution."""
    val = load_images(cfg.data, "val", n=n, resolution=encoder.config["resolution"], progress=False)
    return val.batch(torch.arange(n))


def timed_sample(decoder: RCDMDecoder, reps: Tensor, layer: str, n: int, sampler: str, steps: int):
    start = time.perf_counter()
    out = sample(decoder, reps, n=n, steps=steps, sampler=sampler, seed=0, layer=layer)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter training, smaller grid (< 1 minute)")
    parser.add_argument(
        "--prediction",
        default="v_prediction",
        help="decoder.prediction_type (default: the synthetic-decoder preset's; RCDM's is epsilon)",
    )
    args = parser.parse_args()
    steps, n_images, n = (100, 4, 4) if args.quick else (1500, 8, 8)
    cfg = tiny_config(args.quick, f"decoder.steps={steps}", f"decoder.prediction_type={args.prediction}")
    layer = "trunk"
    encoder, images, feats = setup(cfg, [layer])
    decoder, secs = train(cfg, encoder, images, feats, [layer])
    print(
        f"trained a {cfg.decoder.resolution}px {args.prediction} decoder for '{layer}': "
        f"{steps} steps in {secs:.1f} s"
    )
    val = heldout(cfg, encoder, n_images)
    with torch.inference_mode():
        reps = encoder(val, layers=[layer])[layer]
    results = {}
    for sampler, k in (("ddpm", 100), ("dpm++", 25)):
        timed_sample(decoder, reps[:1], layer, 1, sampler, 2)  # warm-up
        out, secs = timed_sample(decoder, reps, layer, n, sampler, k)
        results[sampler] = secs
        cons = representation_consistency(encoder, layer, val, out)
        print(f"{sampler:>6} {k:3d} steps: {secs:6.2f} s for {n_images}x{n} samples, consistency {cons:.3f}")
    print(f"ratio: {results['ddpm'] / results['dpm++']:.2f}")


if __name__ == "__main__":
    main()
