"""The whole pipeline on synthetic scenes, from one command: encoder -> probes -> decoders -> grids."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from rcdm_viz.config import Config
from rcdm_viz.decoder.train import train_decoder
from rcdm_viz.evaluation.probes import format_table, probe_run
from rcdm_viz.evaluation.report import report_run
from rcdm_viz.runs import ALL_LAYERS, RunDir
from rcdm_viz.sample_run import sample_heldout
from rcdm_viz.ssl.train import train_encoder


@contextmanager
def _stage(timings: dict[str, float], name: str, say: Callable[[str], None]):
    say(f"== {name}")
    start = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - start
    say(f"   {name}: {timings[name]:.0f} s")


def quickstart(
    cfg: Config, run: RunDir, say: Callable[[str], None] = print, progress: bool = True
) -> dict[str, Any]:
    """Run every stage into ``run`` and print the wall time per stage; returns timings and outputs."""
    say = say or functools.partial(print, flush=True)
    timings: dict[str, float] = {}
    layers = list(cfg.quickstart.decoder_layers)
    with _stage(timings, "train encoder", say):
        encoder = train_encoder(cfg, run, progress=progress)
    encoder.select_layers(layers)  # checked before the decoders train, not after
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
