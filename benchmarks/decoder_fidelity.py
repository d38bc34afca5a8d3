"""Does the decoder render what its representation holds? RCDM's recipe vs rcdm-viz's, same wall time.

The decoders train in this process, for the same wall-clock budget, on the same cached trunk features of
one briefly trained SSL encoder (32-px synthetic scenes, the quickstart's encoder shape). Then both sample
the same held-out scenes (DDIM, same seeds) and a factor oracle reads the samples: factor retention
(docs/DESIGN.md "Invariance scores": 1 = the sample shows the input's factor value, 0 = no closer than
another scene) per factor, at the trunk, for the factors the oracle itself reads with validation R² >= 0.9
(the hues and the light's direction; yaw and roll are too ambiguous in 32-px images to score).

- RCDM's recipe, as far as this small UNet allows: epsilon prediction, plain MSE, AdamW lr 1e-4 without
  warm-up, uniform timesteps, EMA 0.9999, plain conditional sampling (guidance 1).
- rcdm-viz's recipe from scratch: the ``decoder`` and ``sample`` sections of the quickstart preset
  (``rcdm_viz/presets/quickstart.yaml``) with ``decoder.init_from=none``.
- rcdm-viz's recipe warm-started: the quickstart preset as it is (its UNet starts from the shipped scene
  prior, ``decoder.init_from: scene-prior``; the prior's own training time is not counted here, it is
  trained once: docs/RESULTS.md, "A prior that draws the scenes").

Besides retention, each entrant's LPIPS (or 1-SSIM) fidelity (sample to input, lower is better), shape
kept and grain (samples' mean absolute Laplacian over the input's) are printed.

Ends with ``ratio: X`` = mean retention of ours (from scratch) / mean retention of RCDM's (goal X >= 1.5).

    python benchmarks/decoder_fidelity.py [--quick] [--seconds S]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from rcdm_viz.config import Config, load_config
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.train import make_decoder_step, training_batch, training_data
from rcdm_viz.decoder.warm_start import resolve_init
from rcdm_viz.encoders import Encoder
from rcdm_viz.evaluation.scores import build_gallery, score_image
from rcdm_viz.runs import RunDir
from rcdm_viz.sample_run import sample_layers
from rcdm_viz.ssl.train import train_encoder
from rcdm_viz.training import make_accelerator

LAYER = "trunk"
ORACLE_R2 = 0.9
RCDM = [  # RCDM / ADM's training choices on the same UNet
    "decoder.prediction_type=epsilon",
    "decoder.snr_gamma=0",
    "decoder.lr=1e-4",
    "decoder.warmup_steps=0",
    "decoder.ema_decay=0.9999",
    "decoder.timestep_bias=0",
    "sample.guidance=1",
]


def configs(quick: bool) -> dict[str, Config]:
    """RCDM's, ours and ours warm-started: the quickstart preset, smaller data for --quick, then each
    recipe's differences."""
    size = ["data.n_train=1024", "data.n_val=256", "ssl.epochs=2"] if quick else ["ssl.epochs=4"]
    common = [*size, "scores.oracle_steps=300" if quick else "scores.oracle_steps=1500", "sample.steps=20"]
    scratch = [*common, "decoder.init_from=none"]
    return {"rcdm": load_config("quickstart", [*scratch, *RCDM]), "ours": load_config("quickstart", scratch),
            "warm": load_config("quickstart", common)}


def train_for(cfg: Config, run: RunDir, encoder: Encoder, seconds: float) -> tuple[RCDMDecoder, int]:
    """Train the trunk decoder of ``cfg`` for ``seconds`` of wall time; returns (EMA decoder, steps)."""
    images, feats = training_data(cfg, encoder, [LAYER], run, progress=False)
    accelerator = make_accelerator(cfg.decoder.precision)
    dims = {LAYER: feats[LAYER].shape[1]}
    init = resolve_init(cfg.decoder.init_from)
    step_fn = make_decoder_step(cfg.decoder, dims, encoder.fingerprint(), accelerator, init)
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        x0, reps, _ = training_batch(step_fn, images, feats, step)
        step_fn(x0, reps, step)
        step += 1
    return step_fn.ema_decoder(), step


def retention(
    cfg: Config, run: RunDir, encoder: Encoder, decoder: RCDMDecoder, n_scenes: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(mean factor retention of the decoder's samples of ``n_scenes`` held-out scenes, for the factors the
    oracle reads reliably (validation R² >= ORACLE_R2: an unreliable reading makes retention noise); the
    mean fidelity, shape kept and grain)."""
    gallery = build_gallery(cfg, run, encoder, [LAYER], cfg.decoder.resolution)
    factors = [name for name, r2 in gallery.oracle_quality.r2.items() if r2 >= ORACLE_R2]
    val = load_images(cfg.data, "val", n=n_scenes, resolution=cfg.decoder.resolution, progress=False)
    total = dict.fromkeys(factors, 0.0)
    other = dict.fromkeys(("fidelity", "shape_kept", "grain"), 0.0)
    for i in range(n_scenes):
        image = val.batch(torch.tensor([i]))[0]
        rows = sample_layers(encoder, {LAYER: decoder}, image, cfg.sample)
        kept = score_image(encoder, image, rows, gallery, cfg.scores.distance).layers[LAYER].to_json()
        for name in factors:
            total[name] += kept["factor_retention"][name] / n_scenes
        for name in other:
            other[name] += kept.get(name, float("nan")) / n_scenes
    return total, other


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 12 s of training each (< 1 minute)")
    parser.add_argument("--seconds", type=float, default=None, help="training wall time of each decoder")
    args = parser.parse_args()
    seconds = args.seconds or (12.0 if args.quick else 150.0)
    n_scenes, n = (4, 2) if args.quick else (16, 4)
    recipes = configs(args.quick)
    print(f"machine: {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp) / "run")
        encoder = train_encoder(recipes["ours"], run, progress=False)
        results = {}
        for name, cfg in recipes.items():
            cfg = load_config(None, [f"sample.n={n}"], base=cfg)
            decoder, steps = train_for(cfg, run, encoder, seconds)
            results[name], other = retention(cfg, run, encoder, decoder, n_scenes)
            mean = sum(results[name].values()) / len(results[name])
            print(f"{name:<5} {steps:5d} steps in {seconds:.0f} s; trunk factor retention mean {mean:.3f}: "
                  + " ".join(f"{k} {v:.2f}" for k, v in results[name].items())
                  + "; " + " ".join(f"{k} {v:.3f}" for k, v in other.items()))
    means = {k: sum(v.values()) / len(v) for k, v in results.items()}
    print(f"ratio: {means['ours'] / max(means['rcdm'], 1e-3):.2f}")


if __name__ == "__main__":
    main()
