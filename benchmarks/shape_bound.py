"""How often can a warm-started decoder draw the shape it is told? The ceiling of "shape kept".

A decoder that starts from a prior (default: the shipped ``scene-prior``) is conditioned on the true class of
each training scene (one-hot: a layer that knows the shape perfectly and nothing else) and trained with the
quickstart's decoder recipe (batch, learning rate, EMA, warm-up) for ``--steps`` steps. The factor oracle
(the one ``--scores`` uses) then reads the class of its samples of held-out scenes, told each scene's class,
at guidance 1 and 3. In the same process, the same decoder at step 0 (it samples what the prior samples,
told nothing) is the baseline: the fraction of the prior's samples that happen to be the scene's class.

No layer of an encoder can keep the shape more often than this decoder draws it from the class itself, so
this is what a decoder recipe and prior allow "shape kept" to reach (docs/RESULTS.md, "Shape kept: what
caps it").

Ends with ``ratio: X`` = shape kept when told the class (guidance 3) / the oracle's accuracy on the real
scenes themselves (1 = the decoder draws the shape as readably as a real scene shows it).

    python benchmarks/shape_bound.py [--quick] [--prior NAME|DIR] [--steps 450] [--cache DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from rcdm_viz.config import load_config
from rcdm_viz.data.sources import load_images
from rcdm_viz.data.synthetic import SHAPES
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.decoder.train import make_decoder_step
from rcdm_viz.decoder.warm_start import resolve_init
from rcdm_viz.evaluation.oracle import FactorOracle, load_or_train_oracle, shape_kept
from rcdm_viz.runs import RunDir
from rcdm_viz.training import make_accelerator

LAYER = "label"


def kept(oracle: FactorOracle, samples: torch.Tensor, x_probs: torch.Tensor) -> float:
    """Mean shape kept over scenes: samples [B, n, 3, H, W] against the oracle's reading of the scenes
    [B, C]."""
    per_scene = [shape_kept(oracle.read(s)[1], x_probs[i : i + 1]) for i, s in enumerate(samples)]
    return sum(per_scene) / len(per_scene)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 steps, 4 scenes, a smaller oracle")
    ap.add_argument("--prior", default="scene-prior", help="shipped prior, run or decoder directory")
    ap.add_argument("--steps", type=int, default=450, help="decoder steps (the demo's 450)")
    ap.add_argument("--scenes", type=int, default=16, help="held-out scenes (the first of the val split)")
    ap.add_argument("--cache", type=Path, help="a directory that keeps the trained oracle between calls")
    args = ap.parse_args()
    steps, n_scenes, n, ddim = (20, 4, 4, 10) if args.quick else (args.steps, args.scenes, 8, 30)
    extra = ["scores.oracle_steps=150", "data.n_train=1024"] if args.quick else []
    cfg = load_config("quickstart", extra)
    print(f"machine: {torch.get_num_threads()} threads; prior {args.prior}; {steps} steps, "
          f"{n_scenes} scenes x {n} samples, {ddim} DDIM steps")
    with tempfile.TemporaryDirectory() as tmp:
        oracle, quality = load_or_train_oracle(cfg, RunDir(args.cache or Path(tmp)), cfg.data.resolution)
    train = load_images(cfg.data, "train", n=cfg.data.n_train, progress=False)
    val = load_images(cfg.data, "val", n=n_scenes, progress=False)
    scenes, told = val.batch(torch.arange(n_scenes)), F.one_hot(val.labels, len(SHAPES)).float()
    x_probs = oracle.read(scenes)[1]
    ceiling = float((x_probs.argmax(1) == val.labels).float().mean())
    print(f"oracle: validation shape accuracy {quality.shape_accuracy:.3f}; on these scenes {ceiling:.3f}")

    accelerator, init = make_accelerator(cfg.decoder.precision), resolve_init(args.prior)
    step_fn = make_decoder_step(cfg.decoder, {LAYER: len(SHAPES)}, None, accelerator, init=init)
    with step_fn.ema_weights() as decoder:
        base = kept(oracle, sample(decoder, told, n, steps=ddim, seed=12345), x_probs)
    gen = torch.Generator().manual_seed(cfg.decoder.seed)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train), (cfg.decoder.batch_size,), generator=gen)
        step_fn(train.batch(idx) * 2 - 1, F.one_hot(train.labels[idx], len(SHAPES)).float(), step)
    took = time.perf_counter() - start
    print(f"training: {steps * cfg.decoder.batch_size / took:.1f} img/s")
    print(f"step 0 (the prior, told nothing): shape kept {base:.3f} (chance {1 / len(SHAPES):.3f})")
    with step_fn.ema_weights() as decoder:
        for guidance in (1.0, 3.0):
            ours = kept(oracle, sample(decoder, told, n, steps=ddim, guidance=guidance, seed=12345), x_probs)
            print(f"step {steps}, told the class, guidance {guidance:g}: shape kept {ours:.3f}")
    print(f"ratio: {ours / max(ceiling, 1e-9):.3f}")


if __name__ == "__main__":
    main()
