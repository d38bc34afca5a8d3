"""Is rcdm-viz's SSL training step as fast as a plain PyTorch loop? Side by side in one process.

The same encoder (the preset's), the same batch and the same views are trained one step at a time by
(a) a plain reference loop: forward, lightly's ``NTXentLoss`` (SimCLR), backward, AdamW, and
(b) rcdm-viz's ``SSLStep`` (accelerate, the views, the loss, the optimiser and LR schedule; online probes
only with ``--probes``). Both start from the same weights. Prints images/s of each and ends with
``ratio: X`` = ours / reference (goal >= 1.0). ``--bf16`` autocasts both in bfloat16.

``--memory`` instead measures one training step of ResNet-50 with D = 32768 (E/N's widest trunk) and the
8192-8192-8192 projector at batch 8, 64 px, on CPU: the peak resident memory over the step (ru_maxrss)
and the memory held before it (weights, optimiser state).

    python benchmarks/ssl_step.py [--quick] [--bf16] [--preset quickstart] [--probes]
    python benchmarks/ssl_step.py --memory
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch
from lightly.loss import NTXentLoss

from rcdm_viz.config import Config, load_config
from rcdm_viz.data.views import two_views
from rcdm_viz.seeding import generator_for
from rcdm_viz.ssl.optim import make_optimizer
from rcdm_viz.ssl.train import build_ssl_step
from rcdm_viz.training import make_accelerator


def _config(preset: str, bf16: bool, probes: bool, batch: int | None) -> Config:
    overrides = [f"ssl.precision={'bf16' if bf16 else 'fp32'}", f"ssl.online_probes={str(probes).lower()}"]
    overrides += ["ssl.method=simclr", "ssl.optimizer=adamw"]
    if batch:
        overrides.append(f"ssl.batch_size={batch}")
    return load_config(preset, overrides)


def _views(cfg: Config, images: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    return two_views(images, generator_for(cfg.ssl.seed, "views", step, 0), cfg.views)


def reference_rate(cfg: Config, encoder: torch.nn.Module, images: torch.Tensor, steps: int) -> float:
    """Images/s of the plain loop: views, forward, lightly NT-Xent, backward, AdamW step, LR schedule."""
    model = copy.deepcopy(encoder).train()
    optimizer, scheduler = make_optimizer(model, cfg.ssl, 1000, 100)
    criterion = NTXentLoss(temperature=cfg.ssl.temperature)
    layer = model.embedding_layer
    dtype = torch.bfloat16 if cfg.ssl.precision == "bf16" else torch.float32

    def one(step: int) -> None:
        v1, v2 = _views(cfg, images, step)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.bfloat16):
            z1, z2 = model(torch.cat([v1, v2]), layers=[layer])[layer].float().chunk(2)
        loss = criterion(z1, z2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()

    one(0)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        one(i + 1)
    return steps * images.shape[0] / (time.perf_counter() - start)


def ours_rate(step_fn, images: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    """Images/s of rcdm-viz's SSLStep on the same batch."""
    step_fn(images, 0, labels)  # warm-up
    start = time.perf_counter()
    for i in range(steps):
        step_fn(images, i + 1, labels)
    return steps * images.shape[0] / (time.perf_counter() - start)


def speed(args: argparse.Namespace) -> None:
    cfg = _config(args.preset, args.bf16, args.probes, 64 if args.quick else None)
    steps = 1 if args.quick else 8
    accelerator = make_accelerator(cfg.ssl.precision)
    step_fn, encoder = build_ssl_step(cfg, accelerator, 6, 1000, 100)
    side = cfg.data.resolution
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(cfg.ssl.batch_size, 3, side, side, generator=gen)
    labels = torch.randint(0, 6, (cfg.ssl.batch_size,), generator=gen)
    initial = copy.deepcopy(encoder)  # both loops start from these weights
    # Alternate the two so that load from other processes hits both alike.
    ref, ours = [], []
    for _ in range(2):
        ref.append(reference_rate(cfg, initial, images, steps))
        ours.append(ours_rate(step_fn, images, labels, steps))
    precision = "bf16" if args.bf16 else "fp32"
    what = (
        f"{args.preset}, {side}px, batch {cfg.ssl.batch_size}, {precision}, {torch.get_num_threads()} threads"
    )
    print(f"reference loop (lightly NTXentLoss + AdamW) [{what}]: {max(ref):.1f} images/s")
    print(f"rcdm-viz SSLStep{' + online probes' if args.probes else ''} [{what}]: {max(ours):.1f} images/s")
    print(f"ratio: {max(ours) / max(ref):.2f}")


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def memory(args: argparse.Namespace) -> None:
    """Peak RSS of one training step: ResNet-50, D = 32768, 8192-8192-8192, batch 8, 64 px, fp32, CPU."""
    overrides = [
        "encoder.arch=resnet50",
        "encoder.width=32768",
        "encoder.head=8192-8192-8192",
        "data.resolution=64",
        "ssl.batch_size=8",
        "ssl.precision=bf16" if args.bf16 else "ssl.precision=fp32",
        "ssl.optimizer=lars",
        "ssl.lr=0.5",
    ]
    cfg = load_config(None, overrides)
    accelerator = make_accelerator(cfg.ssl.precision)
    step_fn, encoder = build_ssl_step(cfg, accelerator, 1000, 100, 10)
    images = torch.rand(8, 3, 64, 64)
    labels = torch.zeros(8, dtype=torch.long)
    params = encoder.num_params()
    step_fn(images, 0, labels)  # allocates the LARS momentum buffers and probe state
    before = _rss_mib()
    start = time.perf_counter()
    step_fn(images, 1, labels)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    size = f"{params / 1e6:.1f}M parameters ({params * 4 / 2**30:.2f} GiB fp32)"
    print(f"ResNet-50 D=32768 + 8192-8192-8192: {size}")
    print(f"resident before the step (weights, grads, LARS state, probes): {before / 1024:.2f} GiB")
    print(f"peak resident during one step (batch 8, 64 px, {cfg.ssl.precision.value}): {peak / 1024:.2f} GiB")
    print(f"step time: {seconds:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 64, 1 timed step per round (< 1 minute)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast in both loops")
    parser.add_argument("--preset", default="quickstart", help="whose encoder and resolution to use")
    parser.add_argument("--probes", action="store_true", help="include rcdm-viz's online probes")
    parser.add_argument("--memory", action="store_true", help="peak memory of one ResNet-50 D=32768 step")
    args = parser.parse_args()
    memory(args) if args.memory else speed(args)


if __name__ == "__main__":
    main()
