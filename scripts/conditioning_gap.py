"""What does a run's decoder read from each layer? Its loss with the true, a shuffled and the null condition.

    python scripts/conditioning_gap.py --run runs/quickstart [--n 128] [--layers trunk,head3] [--seed 0]

Prints one line per layer and noise band (rcdm_viz.evaluation.conditioning explains the measure) for the
first N validation images of the run's data, and writes it to decoders/conditioning.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from rcdm_viz.config import config_from_dict
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.train import decoder_layers
from rcdm_viz.encoders import load_encoder
from rcdm_viz.evaluation.conditioning import conditional_losses, format_losses
from rcdm_viz.evaluation.scores import encode
from rcdm_viz.runs import RunDir, write_json
from rcdm_viz.sample_run import load_decoders


def main() -> None:
    """Parse the arguments, measure, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory with an encoder and decoder(s)")
    parser.add_argument("--n", type=int, default=128, help="validation images")
    parser.add_argument("--layers", default="all", help="comma-separated layers, or all (the encoder's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of t and noise")
    args = parser.parse_args()
    run = RunDir(Path(args.run))
    cfg = config_from_dict(yaml.safe_load(run.config.read_text()) or {})
    encoder = load_encoder(run.require_encoder()).eval()
    layers = decoder_layers(encoder, "all") if args.layers == "all" else args.layers.split(",")
    decoders = load_decoders(run, layers, encoder)
    side = max(cfg.decoder.resolution, encoder.config["resolution"])
    images = load_images(cfg.data, "val", n=args.n, resolution=side, progress=False)
    x = images.batch(torch.arange(len(images)))
    losses = conditional_losses(decoders, x, encode(encoder, x, layers), seed=args.seed)
    print(format_losses(losses))
    record = {"n": args.n, "seed": args.seed, "losses": losses}
    write_json(run.root / "decoders" / "conditioning.json", record)


if __name__ == "__main__":
    main()
