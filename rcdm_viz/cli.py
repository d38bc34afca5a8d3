"""``rcdm-viz`` command line: parse, resolve the config, call one public function per subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from rcdm_viz.config import Config, config_from_dict, load_config
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir


def _common(p: argparse.ArgumentParser, default_run: str = "runs/default") -> None:
    p.add_argument("--run", default=default_run, help="run directory (default: %(default)s)")
    p.add_argument("--preset", "--config", dest="preset", help="preset name in configs/ or a YAML file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set ssl.epochs=10 (repeatable)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rcdm-viz", description="What does each layer of an SSL encoder keep?"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quickstart", help="whole pipeline on synthetic scenes into runs/quickstart")
    _common(q, "runs/quickstart")
    q.set_defaults(preset="quickstart")
    t = sub.add_parser("train-encoder", help="train an SSL encoder")
    _common(t)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p = sub.add_parser("probe", help="linear probes on every layer of the run's encoder")
    _common(p)
    d = sub.add_parser("train-decoder", help="train the RCDM decoder of one layer")
    _common(d)
    d.add_argument("--layer", required=True, help="layer name (e.g. trunk, head2)")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    s = sub.add_parser("sample", help="per-layer sample grids for images")
    _common(s)
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--layers", default="all", help="'all' or a comma list, e.g. trunk,head2")
    s.add_argument("--n", type=int, help="samples per layer")
    s.add_argument("--seed", type=int, help="sampling seed")
    s.add_argument("--steps", type=int, help="sampling steps")
    s.add_argument("--sampler", help="ddpm, ddim or dpm++")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    return parser


def resolve_config(args: argparse.Namespace, run: RunDir, uses_run_config: bool) -> Config:
    """Defaults <- the run's config.yaml (for steps after training) <- preset <- --set."""
    base = None
    if uses_run_config and run.config.is_file():
        base = config_from_dict(yaml.safe_load(run.config.read_text()) or {})
    return load_config(args.preset, args.overrides, base=base)


def _sample_overrides(args: argparse.Namespace) -> list[str]:
    flags = {
        "n": args.n,
        "seed": args.seed,
        "steps": args.steps,
        "sampler": args.sampler,
        "guidance": args.guidance,
    }
    return [f"sample.{k}={v}" for k, v in flags.items() if v is not None]


def run_command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the exit code."""
    run = RunDir(Path(args.run))
    progress = not args.no_progress
    if args.command == "sample":
        args.overrides = _sample_overrides(args) + args.overrides
    cfg = resolve_config(args, run, uses_run_config=args.command not in ("quickstart", "train-encoder"))
    if args.command == "quickstart":
        from rcdm_viz.quickstart import quickstart

        quickstart(cfg, run, progress=progress)
    elif args.command == "train-encoder":
        from rcdm_viz.ssl.train import train_encoder

        train_encoder(cfg, run, resume=args.resume, progress=progress)
        print(f"encoder saved to {run.encoder}")
    elif args.command == "probe":
        from rcdm_viz.evaluation.probes import format_table, probe_run

        result = probe_run(cfg, run, progress=progress)
        print(format_table(result["layers"], result["chance"]))
    elif args.command == "train-decoder":
        from rcdm_viz.decoder.train import train_decoder

        train_decoder(cfg, run, args.layer, resume=args.resume, progress=progress)
        print(f"decoder saved to {run.decoder(args.layer)}")
    elif args.command == "sample":
        _sample(cfg, run, args.images, args.layers, progress)
    return 0


def _sample(cfg: Config, run: RunDir, images: list[str], layers: str, progress: bool) -> None:
    from rcdm_viz.decoder.grids import (
        image_id,
        layer_notes,
        load_decoders,
        read_image,
        resolve_layers,
        sample_layers,
        write_sample_dir,
    )
    from rcdm_viz.encoders import load_encoder

    inputs = [(path, read_image(path)) for path in images]  # all unreadable files fail before sampling
    encoder = load_encoder(run.require_encoder())
    decoders = load_decoders(run, resolve_layers(layers, encoder), encoder)
    notes = layer_notes(run)
    for path, image in inputs:
        rows = sample_layers(encoder, decoders, image, cfg.sample, progress=progress)
        print(write_sample_dir(run.samples(image_id(path)), image, rows, notes, cfg.sample))


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except RcdmVizError as exc:
        print(f"rcdm-viz: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rcdm-viz: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
