"""Config: defaults, presets, overrides, strictness; run-directory helpers."""

from __future__ import annotations

import json

import pytest
import yaml

from rcdm_viz.config import (
    Config,
    Method,
    Precision,
    SamplerName,
    available_presets,
    config_from_dict,
    load_config,
    to_dict,
)
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import MetricsLog, RunDir, atomic_write_text, read_metrics, record_config


def test_defaults_follow_the_papers():
    cfg = Config()
    assert cfg.encoder.arch == "resnet50" and cfg.encoder.width == 2048
    assert cfg.encoder.head == "8192-8192-8192"  # E/N & VICReg projector
    assert cfg.ssl.temperature == 0.15  # E/N SimCLR temperature
    assert (cfg.ssl.sim_coeff, cfg.ssl.std_coeff, cfg.ssl.cov_coeff) == (25.0, 25.0, 1.0)
    assert (
        cfg.decoder.num_train_timesteps == 1000 and cfg.decoder.lr == 1e-4 and cfg.decoder.ema_decay == 0.9999
    )
    assert cfg.decoder.attention_resolutions == (32, 16, 8) and cfg.decoder.block_out_channels[0] == 256
    assert (cfg.probe.lr, cfg.probe.weight_decay) == (1e-4, 0.04)


def test_preset_holds_only_differences_and_overrides_apply():
    cfg = load_config(
        "quickstart", ["ssl.epochs=3", "decoder.block_out_channels=[32,64]", "ssl.method=vicreg"]
    )
    assert cfg.data.resolution == 32 and cfg.encoder.arch == "resnet18"
    assert cfg.ssl.epochs == 3 and cfg.ssl.method is Method.VICREG
    assert cfg.decoder.block_out_channels == (32, 64)
    assert cfg.ssl.temperature == 0.5 and cfg.views.redraw_factors == ("floor_hue",)  # the preset's
    assert cfg.ssl.lars_eta == 0.001  # untouched default
    assert "quickstart" in available_presets()


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("ssl.epochz=3", "ssl.epochz"),
        ("nosuch.section=1", "nosuch"),
        ("ssl.epochs=three", "ssl.epochs"),
        ("ssl.method=moco", "moco"),
        ("decoder.precision=fp8", "fp8"),
        ("encoder.small_input=maybe", "encoder.small_input"),
        ("justtext", "justtext"),
        ("decoder.lr=fast", "decoder.lr"),
    ],
)
def test_bad_keys_and_values_are_named(override, fragment):
    with pytest.raises(RcdmVizError, match=fragment.replace(".", r"\.")):
        load_config(None, [override])


def test_exponent_floats_parse_from_the_command_line():
    """PyYAML reads 1e-4 (no dot) as a string; float fields still take it, alone or in a list."""
    cfg = load_config(None, ["decoder.lr=1e-4", "probe.ridge=[1e-4, 10]", "probe.ridge_holdout=2.5e-1"])
    assert cfg.decoder.lr == 1e-4 and cfg.probe.ridge == (1e-4, 10.0) and cfg.probe.ridge_holdout == 0.25


def test_unknown_preset_is_named():
    with pytest.raises(RcdmVizError, match="no-such-preset"):
        load_config("no-such-preset")


def test_yaml_round_trip_is_exact(tmp_path):
    cfg = load_config("quickstart", ["sample.sampler=dpm++", "decoder.precision=fp32"])
    text = yaml.safe_dump(to_dict(cfg))
    again = config_from_dict(yaml.safe_load(text))
    assert again == cfg
    assert again.sample.sampler is SamplerName.DPMPP and again.decoder.precision is Precision.FP32


def test_record_config_merges_sections(tmp_path):
    run = RunDir(tmp_path / "run")
    record_config(run, load_config(None, ["ssl.epochs=7"]), ("ssl",))
    record_config(run, load_config(None, ["decoder.steps=9"]), ("decoder",))
    saved = yaml.safe_load(run.config.read_text())
    assert saved["ssl"]["epochs"] == 7 and saved["decoder"]["steps"] == 9
    assert set(saved) == {"ssl", "decoder", "presets"}
    record_config(run, load_config(["simclr", "quickstart"]), ("decoder",))
    assert yaml.safe_load(run.config.read_text())["presets"] == ["simclr", "quickstart"]


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b.txt"
    atomic_write_text(target, "x")
    atomic_write_text(target, "y")
    assert target.read_text() == "y"
    assert [p.name for p in target.parent.iterdir()] == ["b.txt"]


def test_metrics_log_truncates_and_skips_torn_lines(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    for step in (1, 2, 3):
        log.log(step=step, loss=1.0 / step)
    log.truncate_after(2)
    with (tmp_path / "m.jsonl").open("a") as fh:
        fh.write('{"step": 4, "lo')  # a write in progress
    records = read_metrics(tmp_path / "m.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert json.loads((tmp_path / "m.jsonl").read_text().splitlines()[0])["step"] == 1


def test_require_encoder_names_the_run(tmp_path):
    with pytest.raises(RcdmVizError, match="has no encoder"):
        RunDir(tmp_path / "empty").require_encoder()


def test_parse_enum_accepts_members_and_values_and_names_the_choices():
    from rcdm_viz.config import Method, SamplerName, parse_enum

    for member in SamplerName:
        assert parse_enum(SamplerName, member, "sampler") is member
        assert parse_enum(SamplerName, member.value, "sampler") is member
    assert parse_enum(SamplerName, " DDIM ", "sampler", normalize=True) is SamplerName.DDIM
    with pytest.raises(RcdmVizError, match=r"^unknown sampler ' DDIM '; choose one of: ddpm, ddim, dpm\+\+$"):
        parse_enum(SamplerName, " DDIM ", "sampler")
    with pytest.raises(RcdmVizError, match=r"unknown SSL method 'byol'; choose one of: simclr$"):
        parse_enum(Method, "byol", "SSL method", choices=[Method.SIMCLR])
