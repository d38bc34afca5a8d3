"""The whole pipeline on synthetic scenes, from one command: encoder -> probes -> decoders -> grids."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rcdm_viz.config import Config
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.grids import layer_notes, load_decoders, sample_layers, write_sample_dir
from rcdm_viz.decoder.train import ALL_LAYERS, check_layer, train_decoder
from rcdm_viz.encoders import load_encoder
from rcdm_viz.evaluation.probes import format_table, probe_run
from rcdm_viz.evaluation.report import report_run
from rcdm_viz.runs import RunDir
from rcdm_viz.ssl.train import train_encoder


@contextmanager
def _stage(timings: dict[str, float], name: str, say: Callable[[str], None]):
    say(f"== {name}")
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    say(f"   {name}: {timings[name]:.0f} s")


def sample_heldout(cfg: Config, run: RunDir, layers: list[str], progress: bool = True) -> list[Path]:
    """Grids for the first ``quickstart.n_images`` validation scenes (``samples/val-XXXXX/``)."""
    encoder = load_encoder(run.require_encoder())
    decoders = load_decoders(run, layers, encoder)
    res = max(cfg.decoder.resolution, encoder.config["resolution"])
    val = load_images(cfg.data, "val", n=cfg.quickstart.n_images, resolution=res, progress=False)
    notes = layer_notes(run)
    paths = []
    for i in range(len(val)):
        image = val.batch(torch.tensor([i]))[0]
        rows = sample_layers(encoder, decoders, image, cfg.sample, progress=progress)
        paths.append(write_sample_dir(run.samples(f"val-{i:05d}"), image, rows, notes, cfg.sample))
    return paths


def quickstart(
    cfg: Config, run: RunDir, say: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """Run every stage into ``run`` and print the wall time per stage; returns timings and outputs."""
    say = say or functools.partial(print, flush=True)
    timings: dict[str, float] = {}
    layers = list(cfg.quickstart.decoder_layers)
    with _stage(timings, "train encoder", say):
        encoder = train_encoder(cfg, run, progress=progress)
    for layer in layers:  # checked before the decoders train, not after
        check_layer(encoder, layer)
    with _stage(timings, "probe", say):
        probes = probe_run(cfg, run, progress=progress)
    say(format_table(probes["layers"], probes["chance"]))
    # The shared decoder spends the whole budget on one UNet: each layer's row gets a better image model
    # than a per-layer decoder trained for 1/K of the steps would.
    for name in [ALL_LAYERS] if cfg.quickstart.shared_decoder else layers:
        with _stage(timings, f"train decoder {name}", say):
            train_decoder(cfg, run, name, progress=progress)
    with _stage(timings, "sample grids", say):
        grids = sample_heldout(cfg, run, layers, progress=False)
    say("grids:\n" + "\n".join(f"  {p}" for p in grids))
    with _stage(timings, "report", say):
        report = report_run(run)
    say(f"report: {run.report} ({', '.join(report['plots'].values())})")
    say("wall time per stage:")
    for name, secs in timings.items():
        say(f"  {name:<24} {secs:7.1f} s")
    say(f"  {'total':<24} {sum(timings.values()):7.1f} s")
    return {"timings": timings, "probes": probes, "grids": grids}
