"""Does the scene prior draw scenes with an object? Its unconditional samples against real scenes.

The factor oracle (the one ``--scores`` uses, trained here on the quickstart's data config) reads the
object's class (its shape) from 64 unconditional samples of a prior and from 64 real scenes of the
validation split, in the same process. A sample "shows an object" when the oracle gives one class a
probability >= 0.9; real scenes set the ceiling the oracle reaches on this data. Also printed: the grain
(mean absolute Laplacian of the samples over that of the real scenes; 1 = as smooth, > 1 = grainy), the
classes the samples are read as, and a sheet of the samples beside the real scenes (``--out``).

The prior is a shipped one (default ``scene-prior``), a decoder directory (``decoders/prior`` of a run),
or a training checkpoint (``checkpoints/decoder-prior/step-*``: its EMA weights), so the same script reads
a learning curve.

Ends with ``ratio: X`` = the samples' confident fraction / the real scenes' (goal: samples >= 0.8).

    python benchmarks/prior_quality.py [--quick] [--prior NAME|DIR] [--out sheet.png] [--cache DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from rcdm_viz.config import Config, load_config
from rcdm_viz.data.sources import load_images
from rcdm_viz.data.synthetic import SHAPES
from rcdm_viz.decoder.grids import tensor_to_pil
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.priors import PRIORS, verified_prior
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.evaluation.oracle import load_or_train_oracle
from rcdm_viz.evaluation.scores import mean_abs_laplacian
from rcdm_viz.runs import RunDir

CONFIDENT = 0.9


def load_prior(source: str, cfg: Config) -> RCDMDecoder:
    """A shipped prior's name, a decoder directory, or a checkpoint directory (EMA weights)."""
    if source in PRIORS:
        return load_decoder(verified_prior(source)[0])
    path = Path(source)
    if (path / "config.json").is_file():
        return load_decoder(path)
    ema = torch.load(path / "custom_checkpoint_0.pkl", weights_only=True)  # the EMA state: tensors only
    decoder = RCDMDecoder.from_decoder_config(cfg.decoder, {}, None)
    for p, shadow in zip(decoder.parameters(), ema["shadow_params"], strict=True):
        p.data.copy_(shadow)
    return decoder.eval()


def readings(oracle, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(fraction read with a class probability >= CONFIDENT, the argmax classes) of images [N, 3, H, W]."""
    _, probs = oracle.read(images)
    top, classes = probs.max(dim=1)
    return float((top >= CONFIDENT).float().mean()), classes


def sheet(samples: torch.Tensor, real: torch.Tensor, path: Path) -> None:
    """8 rows of samples over 2 rows of real scenes, 8 per row, written as a PNG (3x scale)."""
    rows = torch.cat([samples[:64], real[:16]])
    k = rows.shape[0] // 8
    grid = rows[: 8 * k].view(k, 8, *rows.shape[1:]).permute(2, 0, 3, 1, 4).flatten(3, 4).flatten(1, 2)
    tensor_to_pil(grid, scale=3).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 samples, 20 DDIM steps, a smaller oracle")
    ap.add_argument("--prior", default="scene-prior", help="shipped prior, decoder dir or checkpoint dir")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30, help="DDIM steps")
    ap.add_argument("--out", type=Path, help="write a sheet of the samples and real scenes here")
    ap.add_argument("--cache", type=Path, help="a directory that keeps the trained oracle between calls")
    args = ap.parse_args()
    n, steps = (16, 20) if args.quick else (args.n, args.steps)
    extra = ["scores.oracle_steps=300"] if args.quick else []
    cfg = load_config("scene-prior", extra)
    print(f"machine: {torch.get_num_threads()} threads; prior {args.prior}; {n} samples, {steps} DDIM steps")
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(args.cache or Path(tmp))
        oracle, quality = load_or_train_oracle(cfg, run, cfg.data.resolution)
        print(f"oracle: validation shape accuracy {quality.shape_accuracy:.3f}")
        real = load_images(cfg.data, "val", n=n, progress=False).batch(torch.arange(n))
        prior = load_prior(args.prior, cfg)
        start = time.perf_counter()
        drawn = sample(prior, None, n=n, steps=steps, seed=0)[0]
        took = time.perf_counter() - start
    ours, classes = readings(oracle, drawn)
    base, _ = readings(oracle, real)
    grain = float(mean_abs_laplacian(drawn).mean() / mean_abs_laplacian(real).mean())
    counts = torch.bincount(classes, minlength=len(SHAPES)).tolist()
    print(f"sampling: {n / took:.1f} img/s")
    print(f"real scenes read with p >= {CONFIDENT}: {base:.3f}")
    print(f"samples read with p >= {CONFIDENT}: {ours:.3f} (goal 0.8)")
    print("samples' classes: " + ", ".join(f"{s} {c}" for s, c in zip(SHAPES, counts, strict=True)))
    print(f"grain (samples / real): {grain:.2f}x (goal <= 1.3)")
    if args.out:
        sheet(drawn, real, args.out)
        print(f"sheet: {args.out} (8 rows of samples, then 2 rows of real scenes)")
    print(f"ratio: {ours / max(base, 1e-9):.3f}")


if __name__ == "__main__":
    main()
