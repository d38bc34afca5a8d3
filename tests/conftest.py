"""Shared fixtures: a tiny run (encoder + decoder) built once per test session on CPU."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.config import Config, load_config
from rcdm_viz.runs import RunDir

TINY = [
    "data.resolution=16",
    "data.n_train=128",
    "data.n_val=64",
    "encoder.arch=resnet18",
    "encoder.width=32",
    "encoder.head=32-32-16",
    "encoder.base_width=8",
    "encoder.small_input=true",
    "ssl.batch_size=32",
    "ssl.epochs=2",
    "ssl.warmup_epochs=0.5",
    "ssl.log_every=1",
    "ssl.precision=fp32",
    "probe.epochs=30",
    "probe.lr=0.01",
    "decoder.resolution=16",
    "decoder.block_out_channels=[16,16]",
    "decoder.layers_per_block=1",
    "decoder.attention_resolutions=[8]",
    "decoder.norm_num_groups=8",
    "decoder.batch_size=16",
    "decoder.steps=6",
    "decoder.warmup_steps=0",
    "decoder.log_every=1",
    "decoder.precision=fp32",
    "decoder.init_from=none",  # the presets' shipped prior has the demo's shape, not this one
    "sample.n=2",
    "sample.steps=3",
    "quickstart.n_images=1",
]


def tiny_config(*extra: str) -> Config:
    """A config small enough that every stage runs in seconds on one CPU core."""
    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # Tiny models run fastest on one thread, and tests must not fight other processes for cores.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> tuple[Config, RunDir]:
    """A run directory holding a trained tiny encoder and a trunk decoder."""
    from rcdm_viz.decoder.train import train_decoder
    from rcdm_viz.ssl.train import train_encoder

    cfg = tiny_config()
    run = RunDir(tmp_path_factory.mktemp("tiny") / "run")
    train_encoder(cfg, run, progress=False)
    train_decoder(cfg, run, "trunk", progress=False)
    return cfg, run
