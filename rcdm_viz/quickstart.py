"""The whole pipeline on synthetic scenes, from one command: encoder -> probes -> decoders -> grids.

With ``--encoder NAME`` (a registry entry, e.g. efficientnet-lite0-imagenet) the encoder is that frozen
public model, imported into the run, and the SSL training stage is skipped."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from rcdm_viz.config import Config
from rcdm_viz.decoder.train import train_decoder
from rcdm_viz.decoder.warm_start import NO_INIT
from rcdm_viz.encoders import load_encoder
from rcdm_viz.encoders.zoo import SOURCE_FILE
from rcdm_viz.evaluation.gather import decoder_scores
from rcdm_viz.evaluation.probe_run import format_table, probe_run
from rcdm_viz.evaluation.probes import LINEAR, MLP
from rcdm_viz.evaluation.report import report_run
from rcdm_viz.records import DECODER_METRICS, ProbeRow
from rcdm_viz.runs import ALL_LAYERS, ALL_SECTIONS, RunDir, read_json, read_steps, record_config
from rcdm_viz.sample_run import sample_heldout
from rcdm_viz.ssl.train import train_encoder


@contextmanager
def _stage(timings: dict[str, float], name: str, say: Callable[[str], None]):
    say(f"== {name}")
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    say(f"   {name}: {timings[name]:.0f} s")


def format_scores(run: RunDir, layers: list[str]) -> str:
    """The decoder scores of the held-out grids per layer (means over ``samples/*/scores.json``), with the
    perceptual distance they use named: the demo's last lines."""
    per_layer, info = decoder_scores(run)
    distance = ", ".join(info["distance"]) or "none"
    lines = [
        f"decoder scores (mean over {len(info['images'])} scored images; perceptual distance: {distance})",
        f"{'layer':<8}" + "".join(f"{m.key:>16}" for m in DECODER_METRICS),
    ]
    for layer in [name for name in layers if name in per_layer]:
        cells = [getattr(per_layer[layer], m.key) for m in DECODER_METRICS]
        lines.append(f"{layer:<8}" + "".join(f"{v:>16.3f}" if v is not None else f"{'-':>16}" for v in cells))
    return "\n".join(lines)


def imported_encoder(run: RunDir) -> str | None:
    """The registry name of the public encoder imported into ``run`` (encoder/source.json), or None."""
    source = run.encoder / SOURCE_FILE
    return str(read_json(source).get("encoder")) if source.is_file() and run.has_encoder() else None


def quickstart(
    cfg: Config, run: RunDir, say: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """Run every stage into ``run`` and print the wall time per stage; returns timings and outputs."""
    say = say or functools.partial(print, flush=True)
    timings: dict[str, float] = {}
    layers = list(cfg.quickstart.decoder_layers)
    imported = imported_encoder(run)
    if imported is not None:  # a frozen public encoder (`--encoder NAME`): nothing to train
        say(f"== encoder: {imported} (frozen, imported from the registry; no SSL training)")
        record_config(run, cfg, ALL_SECTIONS)
        encoder = load_encoder(run.require_encoder())
    else:
        with _stage(timings, "train encoder", say):
            encoder = train_encoder(cfg, run, progress=progress)
    encoder.select_layers(layers)  # checked before the decoders train, not after
    with _stage(timings, "probe", say):
        probes = probe_run(cfg, run, progress=progress)
    say(format_table(probes))
    # The shared decoder spends the whole budget on one UNet: each layer's row gets a better image model
    # than a per-layer decoder trained for 1/K of the steps would.
    for name in [ALL_LAYERS] if cfg.quickstart.shared_decoder else layers:
        with _stage(timings, f"train decoder {name}", say):
            start = cfg.decoder.init_from
            say(f"   its UNet starts from {'scratch (RCDM)' if start == NO_INIT else start}")
            train_decoder(cfg, run, name, progress=progress)
    with _stage(timings, "sample grids", say):
        grids = sample_heldout(cfg, run, layers, progress=False)
    say("grids:\n" + "\n".join(f"  {p}" for p in grids))
    with _stage(timings, "report", say):
        report = report_run(run)
    say(f"report: {run.report} ({', '.join(report['plots'].values())})")
    for line in retention_lines(run, cfg.views.redraw_factors, layers):
        say(line)
    say("wall time per stage:")
    for name, secs in timings.items():
        say(f"  {name:<24} {secs:7.1f} s")
    say(f"  {'total':<24} {sum(timings.values()):7.1f} s")
    say(machine_speed(run, ALL_LAYERS if cfg.quickstart.shared_decoder else layers[0]))
    say(format_scores(run, layers))
    return {"timings": timings, "probes": probes, "grids": grids}


def retention_lines(run: RunDir, factors: tuple[str, ...], layers: list[str]) -> list[str]:
    """One line per redrawn factor: its mean retention in every layer's samples over the held-out grids;
    then the shape the samples kept beside what the layer's probes read of it (a decoder that draws what a
    layer holds keeps the shape about as often as a probe reads it)."""
    per_layer, info = decoder_scores(run)
    lines = []
    report = run.read_probes()
    probes = report.layers if report is not None else {}
    shape = [f"{name} {per_layer[name].shape_kept:.2f} (probe {_acc(probes.get(name))})"
             for name in layers if name in per_layer and per_layer[name].shape_kept is not None]
    if shape:
        lines.append(f"shape kept in the samples (linear / MLP probe accuracy): {', '.join(shape)}")
    retained = {name: per_layer[name].factor_retention or {} for name in layers if name in per_layer}
    for factor in factors:
        kept = [f"{name} {retained[name][factor]:.2f}" for name in retained if factor in retained[name]]
        if kept:
            name = factor.replace("_", " ")
            n = len(info["images"])
            lines.append(f"{name} kept in the samples (mean of {n} grids): {', '.join(kept)}")
    return lines


def machine_speed(run: RunDir, decoder: str) -> str:
    """This machine's training throughput, to compare stage times across machines (docs/RESULTS.md)."""
    def rate(path) -> str:
        rates = sorted(r.images_per_s for r in read_steps(path))
        return f"{rates[len(rates) // 2]:.0f} img/s" if rates else "n/a"

    return (f"machine speed: encoder {rate(run.encoder_metrics)} (SSL views), "
            f"decoder {rate(run.decoder(decoder) / 'metrics.jsonl')} (median of the logged rates)")


def _acc(row: ProbeRow | None) -> str:
    """'49% / 61%': a layer's linear and MLP probe accuracy ('-' where missing)."""
    accs = [None if row is None else row.accuracy(metric) for metric in (LINEAR, MLP)]
    return " / ".join("-" if acc is None else f"{100 * acc:.0f}%" for acc in accs)
