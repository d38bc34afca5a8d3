"""Is data ever the bottleneck? Synthetic render rate vs the encoder's training rate, side by side.

Prints the renderer's images/s at 32 and 64 px, first under glibc's default heap policy, then under the
one the ``rcdm-viz`` command applies (``rcdm_viz.allocator.retain_freed_memory``: freed memory is reused
instead of being faulted in again), the quickstart encoder's training images/s under that policy (one
image = two views, forward + backward + AdamW), and ends with ``ratio: X`` = render rate at the training
resolution / training rate, both as the command runs them (goal X >= 10).

    python benchmarks/render.py [--quick] [--preset quickstart]
"""

from __future__ import annotations

import argparse
import time

import torch

from rcdm_viz.allocator import retain_freed_memory
from rcdm_viz.config import load_config
from rcdm_viz.data.synthetic import SyntheticScenes, render_rate
from rcdm_viz.ssl.train import build_ssl_step
from rcdm_viz.training import make_accelerator


def training_rate(preset: str, steps: int) -> float:
    """Images/s of the preset's SSL training step (after one warm-up step)."""
    cfg = load_config(preset)
    acc = make_accelerator(cfg.ssl.precision)
    step, _ = build_ssl_step(cfg, acc, len(SyntheticScenes.SHAPES), 1000, 100)
    images = torch.rand(cfg.ssl.batch_size, 3, cfg.data.resolution, cfg.data.resolution)
    labels = torch.arange(cfg.ssl.batch_size) % len(SyntheticScenes.SHAPES)
    step(images, 0, labels)
    start = time.perf_counter()
    for i in range(steps):
        step(images, i + 1, labels)
    return steps * cfg.ssl.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and steps (< 1 minute)")
    parser.add_argument("--preset", default="quickstart", help="whose encoder and resolution to measure")
    args = parser.parse_args()
    n, steps = (256, 2) if args.quick else (2048, 8)
    default = {res: render_rate(res, n=n) for res in (32, 64)}  # before the policy: it cannot be undone
    if not retain_freed_memory():
        print("heap policy not applied (not glibc, or MALLOC_*_ set): both columns use the same heap")
    rates = {res: render_rate(res, n=n) for res in (32, 64)}
    for res, rate in rates.items():
        print(f"render {res}px: {rate:.0f} images/s (default heap: {default[res]:.0f})")
    train = training_rate(args.preset, steps)
    res = load_config(args.preset).data.resolution
    render = rates[res] if res in rates else render_rate(res, n=n)
    threads = torch.get_num_threads()
    print(f"encoder training ({args.preset}, {res}px, {threads} threads): {train:.1f} images/s")
    print(f"ratio: {render / train:.1f}")


if __name__ == "__main__":
    main()
