"""Resident memory of shared-decoder training vs the size of the feature cache.

For each N, a child process writes a synthetic feature cache of N × (trunk 2048 + three 8192-d heads)
float16 values (the safetensors files of ``rcdm_viz.features``) and a uint8 image cache (the ``rcdm-viz
cache`` layout, 16 px) into a temporary directory, then trains the shared decoder (a tiny UNet) on them
for a few hundred steps, reading both per batch. A sampling thread records the peak RssAnon of the child
(anonymous memory: page-cache pages of the memory maps are RssFile and do not count). The files are
deleted afterwards, also on failure. Ends with ``ratio: X`` = peak at the large N ÷ peak at the small N
(goal X <= 1.2, and the large peak under 2 GB).

    python benchmarks/scale.py [--quick] [--tmp DIR]     # full: N = 100,000 (~5.3 GB on disk) and 10,000
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

DIMS = {"trunk": 2048, "head1": 8192, "head2": 8192, "head3": 8192}
RES = 16


def rss_anon_bytes() -> int:
    """RssAnon of this process from /proc/self/status (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


class PeakSampler(threading.Thread):
    """Polls RssAnon every few milliseconds and keeps the maximum."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = rss_anon_bytes(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.005):
            self.peak = max(self.peak, rss_anon_bytes())


def write_data(root: Path, n: int) -> None:
    """The feature files (one block of random rows, repeated: the values do not matter, the bytes do)
    and the uint8 image cache, written block by block so that writing holds one block."""
    import torch

    from rcdm_viz.features import FeatureWriter

    meta = {"encoder": "synthetic", "images": "synthetic", "n": str(n), "storage": "float16"}
    block = 512
    for name, dim in DIMS.items():
        writer = FeatureWriter(root / "features" / f"{name}.safetensors", n, dim, meta)
        rows = torch.randn(block, dim, generator=torch.Generator().manual_seed(dim))
        for start in range(0, n, block):
            writer.add(rows[: min(block, n - start)])
        writer.close()
    cache = root / "images"
    cache.mkdir()
    images = np.lib.format.open_memmap(cache / "train.npy", mode="w+", dtype=np.uint8, shape=(n, 3, RES, RES))
    rng = np.random.default_rng(0)
    for start in range(0, n, 8192):
        stop = min(n, start + 8192)
        images[start:stop] = rng.integers(0, 256, (stop - start, 3, RES, RES), dtype=np.uint8)
    images.flush()
    del images
    np.save(cache / "train-labels.npy", np.zeros(n, dtype=np.int64))
    meta_json = {"format": "rcdm_viz.cache/1", "resolution": RES, "source": "synthetic",
                 "splits": {"train": n}, "skipped": {"train": []}, "classes": ["x"]}
    (cache / "meta.json").write_text(json.dumps(meta_json))


def train(root: Path, steps: int) -> float:
    """Shared-decoder steps reading features and images per batch; returns images/s."""
    import torch

    from rcdm_viz.config import load_config
    from rcdm_viz.data.cache import open_cache
    from rcdm_viz.data.sources import ImageSet
    from rcdm_viz.decoder.train import make_decoder_step, training_batch
    from rcdm_viz.features import open_table
    from rcdm_viz.training import make_accelerator

    torch.set_num_threads(1)
    cfg = load_config(None, [
        f"decoder.resolution={RES}", "decoder.block_out_channels=[16,16]", "decoder.layers_per_block=1",
        "decoder.attention_resolutions=[8]", "decoder.norm_num_groups=8", "decoder.batch_size=32",
        f"decoder.steps={steps}", "decoder.warmup_steps=0", "decoder.precision=fp32",
    ]).decoder
    images_u8, labels, _ = open_cache(root / "images", "train")
    images = ImageSet(images_u8, labels)
    feats = {name: open_table(root / "features" / f"{name}.safetensors") for name in DIMS}
    step_fn = make_decoder_step(cfg, DIMS, "synthetic", make_accelerator(cfg.precision))
    tick = time.perf_counter()
    for step in range(steps):
        x0, reps, which = training_batch(step_fn, images, feats, step)
        step_fn(x0, reps, step, which)
    return steps * cfg.batch_size / (time.perf_counter() - tick)


def child(n: int, steps: int, tmp: str | None) -> None:
    sampler = PeakSampler()
    sampler.start()
    root = Path(tempfile.mkdtemp(prefix="rcdm-viz-scale-", dir=tmp))
    try:
        write_data(root, n)
        disk = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        rate = train(root, steps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    sampler.done.set()
    sampler.join()
    print(json.dumps({"n": n, "peak_rss_anon": sampler.peak, "disk": disk, "images_per_s": rate}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 20,000 and 2,000, fewer steps (< 1 minute)")
    parser.add_argument("--tmp", default=None, help="where the temporary caches go (default: the system's)")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.tmp)
        return
    sizes, steps = ((20_000, 2_000), 100) if args.quick else ((100_000, 10_000), 300)
    peaks = {}
    for n in sizes:  # one process per N: each peak is its own, not the larger run's leftovers
        cmd = [sys.executable, __file__, "--child", str(n), "--steps", str(steps)]
        cmd += ["--tmp", args.tmp] if args.tmp else []
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out = json.loads(done.stdout.splitlines()[-1])
        peaks[n] = out["peak_rss_anon"]
        print(f"N = {n:>7,}: cache {out['disk'] / 2**30:5.2f} GiB on disk, {steps} steps at "
              f"{out['images_per_s']:6.0f} img/s, peak RssAnon {peaks[n] / 2**20:7.1f} MiB")
    print(f"ratio: {peaks[sizes[0]] / peaks[sizes[1]]:.2f}")


if __name__ == "__main__":
    main()
