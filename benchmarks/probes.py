"""Probe features: all layers in one pass vs a single layer.

Times ``extract_features`` for every probe layer (stage1..3, trunk, head1..K) in ONE pass over the images,
and for the trunk alone (the single layer the papers probe), on the same encoder and images, side by side
in one process; best of ``--repeats``. Ends with ``ratio: X`` = all layers / one layer (goal <= 1.2: the
extra layers cost little because they share the one forward pass).

    python benchmarks/probes.py [--quick] [--preset quickstart] [--n 2048] [--width 512]
"""

from __future__ import annotations

import argparse
import time

import torch

from rcdm_viz.config import load_config
from rcdm_viz.data.sources import load_images
from rcdm_viz.encoders import Encoder
from rcdm_viz.features import extract_features


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of ``fn()`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 images, 2 repeats")
    parser.add_argument("--preset", default="quickstart", help="encoder/data preset (default: %(default)s)")
    parser.add_argument("--n", type=int, default=2048, help="images (default: %(default)s)")
    parser.add_argument("--width", type=int, help="trunk width D (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (default: %(default)s)")
    args = parser.parse_args()
    n, repeats = (256, 2) if args.quick else (args.n, args.repeats)
    overrides = [f"encoder.width={args.width}"] if args.width else []
    cfg = load_config(args.preset, overrides)
    torch.manual_seed(0)
    encoder = Encoder.from_config(cfg.encoder, cfg.data.resolution).eval()
    images = load_images(cfg.data, "val", n=n, progress=False)
    layers = encoder.all_layer_names
    t_all = best_time(lambda: extract_features(encoder, images, layers), repeats)
    t_one = best_time(lambda: extract_features(encoder, images, ["trunk"]), repeats)
    print(f"encoder: {cfg.encoder.arch} D={cfg.encoder.width} head={cfg.encoder.head}, "
          f"{n} images at {cfg.data.resolution} px, torch threads {torch.get_num_threads()}")
    print(f"all {len(layers)} layers ({', '.join(layers)}), one pass: {t_all:.3f} s ({n / t_all:.0f} img/s)")
    print(f"trunk only: {t_one:.3f} s ({n / t_one:.0f} img/s)")
    print(f"ratio: {t_all / t_one:.3f}")


if __name__ == "__main__":
    main()
