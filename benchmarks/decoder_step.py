"""Decoder training step: an RCDM-style reference step vs rcdm-viz's DecoderStep, images/s side by side.

(a) reference, as RCDM's public code trains: the same UNet, the frozen encoder run on every batch to get
    the representations, fp32, epsilon prediction, no condition dropout, AdamW + EMA;
(b) rcdm-viz's ``DecoderStep`` with the preset's defaults: representations read from the feature cache
    (no encoder forward), precision ``auto`` (bf16 where native, fp32 on this CPU), ``channels_last`` as
    configured; (c) the same with ``channels_last`` flipped, to show whether it helps here.
Also prints the achieved FLOP/s of (b) (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``) as a
fraction of this CPU's measured fp32 and bf16 matmul peaks. Ends with ``ratio: X`` = (b) / (a) images/s
(goal X >= 2). Rounds alternate (a), (b), (c) so that background load hits all of them alike.

On a CUDA device everything runs there: (b) then trains in bf16 (precision ``auto``) with channels_last and
diffusers' SDPA attention against the fp32 reference with the encoder in the loop, the setting the goal was
set for (a CPU without native bf16 runs (b) in fp32):

    python benchmarks/decoder_step.py [--quick] [--preset synthetic-decoder]
    python benchmarks/decoder_step.py --preset rcdm-imagenet128 --quick     # on a GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from diffusers.training_utils import EMAModel
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from rcdm_viz.config import DecoderConfig, PredictionType, load_config
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.schedule import diffusion_loss
from rcdm_viz.decoder.train import make_decoder_step
from rcdm_viz.encoders import Encoder
from rcdm_viz.seeding import generator_for
from rcdm_viz.training import make_accelerator

LAYER = "trunk"


class ReferenceStep:
    """RCDM's training step: encoder forward on the batch, then an fp32 epsilon-prediction UNet step."""

    def __init__(self, dec: DecoderConfig, encoder: Encoder, device: torch.device) -> None:
        dec = dataclasses.replace(dec, prediction_type=PredictionType.EPSILON)
        torch.manual_seed(dec.seed)
        self.encoder = encoder.eval().to(device)
        dims = {LAYER: encoder.layer_dims[LAYER]}
        self.decoder = RCDMDecoder.from_decoder_config(dec, dims, "reference").train().to(device)
        self.optimizer = torch.optim.AdamW(self.decoder.parameters(), lr=dec.lr)
        self.ema = EMAModel(self.decoder.parameters(), decay=dec.ema_decay)
        self.noise = self.decoder.noise_scheduler()

    def __call__(self, x_enc: Tensor, x0: Tensor, step: int) -> float:
        with torch.no_grad():
            reps = self.encoder(x_enc, layers=[LAYER])[LAYER]
        gen = generator_for(0, "reference", step)
        loss = diffusion_loss(self.decoder, x0, reps, LAYER, self.noise, gen, p_uncond=0.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.step(self.decoder.parameters())
        return float(loss.detach())


def sync() -> None:
    """Wait for queued CUDA work, so that wall-clock times cover it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, n: int, reps: int, device: torch.device) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` on ``device`` (best of ``reps``)."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def count_flops(fn) -> int:
    """FLOPs of one call of ``fn`` (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps per round (< 1 minute)")
    parser.add_argument("--preset", default="synthetic-decoder", help="whose encoder and decoder to measure")
    args = parser.parse_args()
    steps, rounds = (1, 2) if args.quick else (10, 3)
    cfg = load_config(args.preset)
    dec, bs = cfg.decoder, cfg.decoder.batch_size
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = Encoder.from_config(cfg.encoder, cfg.data.resolution).eval().to(device)
    x_enc = torch.rand(bs, 3, cfg.data.resolution, cfg.data.resolution, device=device)
    x0 = torch.rand(bs, 3, dec.resolution, dec.resolution, device=device) * 2 - 1
    with torch.no_grad():
        reps = encoder(x_enc, layers=[LAYER])[LAYER].half()  # as the feature cache stores them
    dims = {LAYER: reps.shape[1]}
    reference = ReferenceStep(dec, encoder, device)
    flipped = dataclasses.replace(dec, channels_last=not dec.channels_last)
    ours = {
        flag: make_decoder_step(d, dims, "bench", make_accelerator(d.precision))
        for flag, d in ((dec.channels_last, dec), (flipped.channels_last, flipped))
    }
    runs = {
        "(a) reference (encoder forward every step, fp32, eps)": lambda s: reference(x_enc, x0, s),
        f"(b) ours (cached features, channels_last={dec.channels_last})": lambda s: ours[dec.channels_last](
            x0, reps, s
        ),
        f"(c) ours, channels_last={flipped.channels_last}": lambda s: ours[flipped.channels_last](
            x0, reps, s
        ),
    }
    seconds = dict.fromkeys(runs, 0.0)
    for fn in runs.values():
        fn(0)  # warm-up
    for r in range(rounds):
        for name, fn in runs.items():
            sync()
            start = time.perf_counter()
            for s in range(steps):
                fn(1 + r * steps + s)
            sync()
            seconds[name] += time.perf_counter() - start
    rate = {name: rounds * steps * bs / secs for name, secs in seconds.items()}
    threads = f"CPU, {torch.get_num_threads()} threads"
    where = torch.cuda.get_device_name() if device.type == "cuda" else threads
    print(
        f"preset {args.preset}: batch {bs}, decoder {dec.resolution}px {tuple(dec.block_out_channels)}, "
        f"encoder {cfg.encoder.arch} at {cfg.data.resolution}px, on {where}"
    )
    for name, value in rate.items():
        print(f"{name:<58} {value:8.1f} images/s")
    ref_rate, our_rate = list(rate.values())[:2]
    enc_flops = count_flops(lambda: reference.encoder(x_enc, layers=[LAYER]))
    step_flops = count_flops(lambda: ours[dec.channels_last](x0, reps, 10_000))
    achieved = step_flops * our_rate / bs
    big = 8192 if device.type == "cuda" else 2048
    fp32 = matmul_peak(torch.float32, big, 5, device)
    bf16 = matmul_peak(torch.bfloat16, big if device.type == "cuda" else 512, 2, device)
    print(
        f"FLOPs per step: decoder {step_flops / 1e9:.2f} G (fwd+bwd), encoder forward {enc_flops / 1e9:.2f} G"
    )
    print(
        f"matmul peak: fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.2f} GFLOP/s (emulated unless native)"
    )
    print(
        f"decoder step achieves {achieved / 1e9:.1f} GFLOP/s = {achieved / fp32:.0%} of the fp32 peak, "
        f"{achieved / bf16:.1f}x the bf16 peak"
    )
    print(f"ratio: {our_rate / ref_rate:.2f}")


if __name__ == "__main__":
    main()
