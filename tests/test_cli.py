"""The command line as people expect it: version, summaries, choices, presets, output that fits a log."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rcdm_viz import __version__
from rcdm_viz.cli import build_parser, main
from rcdm_viz.config import PRESETS_DIR, RcdmVizError, available_presets, load_config, parse_override
from rcdm_viz.progress import tqdm
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_version_and_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "rcdm_viz", "--version"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"rcdm-viz {__version__}"


def test_every_subcommand_has_a_summary_in_help_and_its_own(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    summaries = {a.dest: a.help for a in sub._choices_actions}
    assert set(summaries) == set(sub.choices)
    for name, sub_parser in sub.choices.items():
        assert summaries[name] and "\n" not in summaries[name], name
        description = (sub_parser.description or "").lower()
        assert description.startswith(summaries[name][:10].lower()), name
        options = {o for a in sub_parser._actions for o in a.option_strings}
        assert {"--quiet", "--no-progress"} <= options, name


def test_sampler_choices_come_from_the_enum(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "x.png", "--sampler", "euler"])
    assert "choose from 'ddpm', 'ddim', 'dpm++'" in capsys.readouterr().err


def test_presets_lists_every_preset_with_a_one_sentence_summary(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == available_presets()
    for line in lines:
        summary = line.split(None, 1)[1]
        assert summary.endswith("."), line
    assert PRESETS_DIR.parent.name == "rcdm_viz"  # package data, not the source tree's root


def test_presets_merge_left_to_right_and_are_recorded():
    cfg = load_config(["simclr", "quickstart"])
    quick = load_config("quickstart")
    assert cfg.presets == ("simclr", "quickstart")
    assert cfg.ssl.method.value == "simclr"
    assert cfg.ssl.temperature == quick.ssl.temperature == 0.5  # the later preset wins where both set a key
    assert cfg.ssl.lr == 0.5 != quick.ssl.lr  # a key only the earlier preset sets stays
    assert load_config(["quickstart", "simclr"]).ssl.temperature == 0.15


def test_train_encoder_records_the_presets_in_the_run(tmp_path):
    run = tmp_path / "r"
    argv = ["train-encoder", "--run", str(run), "--preset", "simclr", "--preset", "quickstart",
            "--quiet", *[a for o in [*TINY, "ssl.epochs=1"] for a in ("--set", o)]]
    assert main(argv) == 0
    assert "presets:\n- simclr\n- quickstart\n" in (run / "config.yaml").read_text()


def test_library_errors_do_not_name_cli_flags():
    with pytest.raises(RcdmVizError) as err:
        parse_override("ssl.epochs")
    assert "--" not in str(err.value)


def test_progress_off_a_terminal_is_plain_lines():
    out = io.StringIO()
    for _ in tqdm(range(1000), desc="steps", file=out, mininterval=0):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 2 <= len(lines) <= 12, lines  # the first, each 10 %, never one per step
    assert lines[-1].startswith("steps: 100% 1000/1000 [")


@pytest.mark.slow
def test_quickstart_log_has_no_carriage_returns_and_stages_in_order(tmp_path):
    log = tmp_path / "log"
    extra = ["probe.mlp_epochs=0", "probe.invariance_images=8", "probe.rankme_n=64", "ssl.epochs=1"]
    sets = [a for o in [*TINY, *extra] for a in ("--set", o)]
    with log.open("w") as f:
        subprocess.run([sys.executable, "-m", "rcdm_viz", "quickstart", "--run", str(tmp_path / "qs"), *sets],
                       cwd=tmp_path, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=True, timeout=600)
    text = log.read_text()
    assert "\r" not in text
    stages = [line for line in text.splitlines() if line.startswith("== ")]
    assert stages == ["== train encoder", "== probe", "== train decoder all", "== sample grids", "== report"]
    assert any(line.startswith("encoder: 100% ") for line in text.splitlines()), text
    first_stage = text.index("== train encoder")
    assert text.index("encoder: ") > first_stage and text.index("== probe") > text.index("encoder: 100% ")
