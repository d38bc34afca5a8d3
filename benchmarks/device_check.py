"""One-command device check: SSL and decoder step throughput, then a short decoder training with a grid.

On whatever accelerator torch sees (CUDA, else the CPU), in under 8 minutes on a GPU:
1. the SSL step of ResNet-50 at 224 px (SimCLR, batch 256, bf16): images/s, peak memory, achieved TFLOP/s;
2. the ``rcdm-imagenet128`` decoder step (shared decoder over trunk 2048 + three 8192-d heads, batch 64,
   bf16, representations as the feature cache serves them): images/s, peak memory, achieved TFLOP/s;
3. ~4 minutes of shared-decoder training at 64 px on synthetic scenes from cached features of a freshly
   initialised encoder (the step count is calibrated to the budget), then held-out grids and their scores.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one step (forward + backward).
Everything goes into ``OUT/device_check.json`` plus the grids' PNGs. ``--tiny`` runs the same code paths
with tiny models on the CPU in seconds (the test suite runs it). Ends with ``ratio: X`` = the decoder step's
achieved TFLOP/s ÷ the device's measured bf16 matmul TFLOP/s (its utilisation).

    python benchmarks/device_check.py [--out DIR] [--tiny | --quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from rcdm_viz.config import Config, load_config
from rcdm_viz.data.views import two_views
from rcdm_viz.decoder.train import draw_layers, make_decoder_step, pack_reps, train_decoder
from rcdm_viz.encoders import Encoder
from rcdm_viz.runs import ALL_LAYERS, RunDir, read_json, read_steps
from rcdm_viz.sample_run import sample_heldout
from rcdm_viz.seeding import generator_for
from rcdm_viz.ssl.train import build_ssl_step
from rcdm_viz.training import make_accelerator

TINY_ENCODER = [
    "encoder.arch=resnet18",
    "encoder.width=32",
    "encoder.head=32-32-16",
    "encoder.base_width=8",
    "encoder.small_input=true",
]
TINY_DECODER = [
    "decoder.block_out_channels=[16,16]",
    "decoder.layers_per_block=1",
    "decoder.attention_resolutions=[8]",
    "decoder.norm_num_groups=8",
]


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> dict:
    """Peak accelerator memory allocated since ``reset_peak`` (CUDA), else the process's peak RSS (CPU)."""
    if torch.cuda.is_available():
        return {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "memory": "cuda allocated"}
    return {
        "peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "memory": "cpu rss",
    }


def measure(step: Callable[[int], object], batch: int, steps: int) -> dict:
    """images/s, peak memory and achieved TFLOP/s of ``step(s)`` (warm-up step first, FLOPs of one step)."""
    step(0)
    with FlopCounterMode(display=False) as counter:
        step(1)
    flops = counter.get_total_flops()
    reset_peak()
    sync()
    start = time.perf_counter()
    for s in range(steps):
        step(2 + s)
    sync()
    secs = time.perf_counter() - start
    rate = steps * batch / secs
    return {
        "batch": batch,
        "steps": steps,
        "images_per_s": rate,
        "tflop_per_step": flops / 1e12,
        "achieved_tflop_s": flops * steps / secs / 1e12,
        **peak_memory(),
    }


def matmul_tflop_s(dtype: torch.dtype, n: int) -> float:
    """The device's n x n x n matmul throughput in ``dtype`` (best of 5), TFLOP/s."""
    a = torch.randn(n, n, dtype=dtype, device=device())
    b = torch.randn(n, n, dtype=dtype, device=device())
    best = float("inf")
    for _ in range(6):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def ssl_step(tiny: bool) -> dict:
    """The SimCLR step of the encoder on random images (views drawn on the device, as training does)."""
    res, batch = (32, 8) if tiny else (224, 256)
    extra = TINY_ENCODER + ["ssl.precision=fp32"] if tiny else ["ssl.precision=bf16"]
    cfg = load_config(
        None,
        [
            f"data.resolution={res}",
            f"ssl.batch_size={batch}",
            "ssl.method=simclr",
            "ssl.online_probes=false",
            *extra,
        ],
    )
    acc = make_accelerator(cfg.ssl.precision)
    step, _ = build_ssl_step(cfg, acc, 10, 1000, 100)
    images = torch.rand(batch, 3, res, res, device=acc.device)
    labels = torch.zeros(batch, dtype=torch.long, device=acc.device)

    def one(s: int) -> None:
        v1, v2 = two_views(images, generator_for(0, "views", s, 0), cfg.views)
        step.update(v1, v2, labels, s)

    out = measure(one, batch, 2 if tiny else 20)
    return {"what": f"SSL step {cfg.encoder.arch} {res}px {cfg.ssl.precision.value}", **out}


def decoder_step(tiny: bool) -> dict:
    """The shared decoder's step on representations packed as the feature cache serves them."""
    preset, extra = (
        (
            None,
            TINY_DECODER
            + ["decoder.resolution=16", "decoder.batch_size=8", "decoder.precision=fp32", *TINY_ENCODER],
        )
        if tiny
        else ("rcdm-imagenet128", ["decoder.batch_size=64", "decoder.precision=bf16"])
    )
    cfg = load_config(preset, extra)
    dec = cfg.decoder
    dims = dict(Encoder.from_config(cfg.encoder, 32).layer_dims)
    dims = {name: dims[name] for name in ("trunk", "head1", "head2", "head3") if name in dims}
    step = make_decoder_step(dec, dims, "device-check", make_accelerator(dec.precision))
    n = dec.batch_size
    x0 = torch.rand(n, 3, dec.resolution, dec.resolution) * 2 - 1
    feats = [torch.randn(n, d).half() for d in dims.values()]
    which = draw_layers(len(dims), n, 0, 0)
    reps = pack_reps(feats, torch.arange(n), which, max(dims.values()))
    out = measure(lambda s: step(x0, reps, s, which), n, 2 if tiny else 20)
    return {"what": f"decoder step {preset or 'tiny'} {dec.resolution}px {dec.precision.value}", **out}


def training_config(tiny: bool, steps: int) -> Config:
    """64-px synthetic scenes, a mid-size UNet, the shared decoder (tiny: 16 px, a few steps)."""
    if tiny:
        common = [
            *TINY_ENCODER,
            *TINY_DECODER,
            "data.resolution=16",
            "decoder.resolution=16",
            "data.n_train=64",
            "data.n_val=16",
            "decoder.batch_size=8",
            "sample.n=2",
            "sample.steps=2",
            "scores.oracle_n_train=64",
            "scores.oracle_steps=4",
            "scores.oracle_batch_size=16",
        ]
    else:
        common = [
            "encoder.arch=resnet18",
            "encoder.width=512",
            "encoder.head=512-512-512",
            "encoder.small_input=true",
            "data.resolution=64",
            "decoder.resolution=64",
            "data.n_train=10000",
            "data.n_val=256",
            "decoder.block_out_channels=[128,256,256,256]",
            "decoder.attention_resolutions=[16,8]",
            "decoder.batch_size=128",
            "decoder.lr=3e-4",
            "decoder.prediction_type=v_prediction",
            "decoder.ema_decay=0.999",
            "sample.n=4",
            "sample.steps=25",
            "sample.sampler=ddim",
            # sampling, scores and the factor oracle run on the CPU (sample_run does not move models to
            # a GPU): kept small so that the whole check stays under 8 minutes
            "scores.oracle_n_train=4096",
            "scores.oracle_steps=500",
        ]
    precision = "fp32" if tiny else "bf16"  # one precision per process: accelerate's state is global
    return load_config(
        None,
        [
            *common,
            f"decoder.precision={precision}",
            f"decoder.steps={steps}",
            "decoder.warmup_steps=0",
            "decoder.log_every=5",
            "decoder.checkpoint_every=1000000",
            "quickstart.n_images=2",
        ],
    )


def short_training(tiny: bool, run: RunDir, budget_s: float) -> dict:
    """Decoder training from cached features for ~``budget_s`` seconds, then held-out grids and scores."""
    cfg = training_config(tiny, 2)
    Encoder.from_config(cfg.encoder, cfg.data.resolution).save(run.encoder)  # freshly initialised
    layers = ["trunk", "head1", "head2", "head3"]
    calibration = 2 if tiny else 30
    start = time.perf_counter()
    train_decoder(training_config(tiny, calibration), run, ALL_LAYERS, progress=False)  # also fills the cache
    rates = sorted(r.images_per_s for r in read_steps(run.decoder(ALL_LAYERS) / "metrics.jsonl"))
    rate = rates[len(rates) // 2]
    steps = 4 if tiny else max(10, int(budget_s * rate / cfg.decoder.batch_size))
    cfg = training_config(tiny, steps)
    reset_peak()
    tick = time.perf_counter()
    train_decoder(cfg, run, ALL_LAYERS, progress=not tiny)
    train_s = time.perf_counter() - tick
    memory = peak_memory()
    grids = sample_heldout(cfg, run, layers, progress=False)
    scores = {
        p.parent.name: read_json(p.parent / "scores.json")
        for p in grids
        if (p.parent / "scores.json").is_file()
    }
    return {
        "steps": steps,
        "batch": cfg.decoder.batch_size,
        "resolution": cfg.decoder.resolution,
        "train_s": train_s,
        "images_per_s": steps * cfg.decoder.batch_size / train_s,
        **memory,
        "setup_s": tick - start,
        "grids": [str(p) for p in grids],
        "scores": scores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="device-check", help="output directory (default: %(default)s)")
    parser.add_argument("--tiny", "--quick", action="store_true", help="tiny models, in seconds (the test)")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds of decoder training")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    report: dict = {"device": name, "torch": torch.__version__, "tiny": args.tiny}
    report["bf16_matmul_tflop_s"] = matmul_tflop_s(torch.bfloat16, 256 if args.tiny else 8192)
    report["ssl_step"] = ssl_step(args.tiny)
    print(json.dumps(report["ssl_step"]), flush=True)
    report["decoder_step"] = decoder_step(args.tiny)
    print(json.dumps(report["decoder_step"]), flush=True)
    run = RunDir(out / "run")
    shutil.rmtree(run.root, ignore_errors=True)
    report["training"] = short_training(args.tiny, run, args.budget)
    for grid in report["training"]["grids"]:
        shutil.copy2(grid, out / f"{Path(grid).parent.name}.png")
    (out / "device_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'device_check.json'}")
    print(f"ratio: {report['decoder_step']['achieved_tflop_s'] / report['bf16_matmul_tflop_s']:.2f}")


if __name__ == "__main__":
    main()
