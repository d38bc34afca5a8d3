"""Sizes are checked against the machine's memory before anything is allocated."""

from __future__ import annotations

import pytest

from rcdm_viz.config import load_config
from rcdm_viz.encoders import Encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.footprint import encoder_parameters, needs, require_fits
from tests.conftest import tiny_config


def test_the_encoder_is_counted_without_allocating_it():
    cfg = tiny_config()
    built = Encoder.from_config(cfg.encoder, cfg.data.resolution)
    assert encoder_parameters(cfg) == sum(p.numel() for p in built.parameters())
    huge = tiny_config("encoder.width=100000000000")
    assert encoder_parameters(huge) > 10**13  # counted on the meta device: no memory taken


def test_the_shipped_presets_fit_in_this_project_machines_memory():
    for preset in ("quickstart", "scene-prior"):
        cfg = load_config(preset, [])
        for command in ("train-encoder", "probe", "train-decoder", "sample", "quickstart"):
            require_fits(cfg, command, available=24 * 2**30)


def test_a_block_too_large_is_one_line_naming_its_fields_and_sizes():
    cfg = tiny_config("decoder.batch_size=4096")
    blocks = {need.what: need.nbytes for need in needs(cfg, "train-decoder")}
    assert blocks["one decoder batch"] == 4096 * 3 * 16 * 16 * 4
    with pytest.raises(RcdmVizError) as err:
        require_fits(cfg, "train-decoder", available=10 * 2**20)
    text = str(err.value)
    assert "decoder.batch_size=4096" in text and "12.0 MiB" in text and "10.0 MiB" in text
    assert "\n" not in text
    require_fits(cfg, "sample", available=10 * 2**20)  # sampling holds no decoder training batch
