"""Real commands killed (SIGKILL) at chosen instants through ``$RCDM_VIZ_KILL_AT`` (``runs.kill_point``): the
run keeps its previous complete state (or the new one, whole), and the next command of the step leaves no
temporary file behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rcdm_viz.encoders import load_encoder
from rcdm_viz.runs import KILL_AT, RunDir, read_json, read_run_config
from tests.conftest import TINY

pytestmark = pytest.mark.slow  # each case starts a command in a fresh Python


def _cli(run: Path, *argv: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(KILL_AT, None)
    if kill_at:
        env[KILL_AT] = kill_at
    sets = [a for s in TINY for a in ("--set", s)]
    cmd = [sys.executable, "-m", "rcdm_viz", *argv, "--run", str(run), "--no-progress"]
    if argv[0] == "train-encoder":
        cmd += sets
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) with its sha256, but the resumable state of the
    training in progress (``checkpoints/``), which a new training replaces by design."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "checkpoints"
    }


def _leftovers(root: Path) -> list[str]:
    """Temporary files and folders a killed write or swap leaves."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if p.name.endswith(".tmp") or ".new-" in p.name or p.name.startswith(".old-")
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run with a seed-0 encoder, a trunk decoder on it and one sample folder."""
    run = tmp_path_factory.mktemp("kills") / "run"
    assert _cli(run, "train-encoder").returncode == 0
    assert _cli(run, "train-decoder", "--layer", "trunk").returncode == 0
    Image.new("RGB", (16, 16), (200, 30, 30)).save(run.parent / "red.png")
    assert _cli(run, "sample", str(run.parent / "red.png"), "--layers", "trunk").returncode == 0
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    shutil.copy(trained.parent / "red.png", tmp_path / "red.png")
    return copy


def _decoder_still_serves(run: Path) -> None:
    encoder = load_encoder(RunDir(run).encoder)
    decoder = read_json(run / "decoders" / "trunk" / "config.json")
    assert encoder.fingerprint() == decoder["encoder_fingerprint"]


@pytest.mark.parametrize("event", ["wrote:model.safetensors", "replaced:metrics.jsonl", "aside:encoder"])
def test_a_killed_encoder_training_leaves_the_previous_encoder_whole(run, event):
    before = _tree(run)
    killed = _cli(run, "train-encoder", "--set", "ssl.seed=3", kill_at=event)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    if event != "aside:encoder":
        assert {k: v for k, v in _tree(run).items() if k in before} == before  # the old run is unchanged
    assert read_run_config(RunDir(run))["ssl"]["seed"] == 0
    _decoder_still_serves(run)  # the old encoder is still the run's encoder, its decoders keep working
    again = _cli(run, "train-encoder", "--set", "ssl.seed=3")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _leftovers(run) == []
    assert read_run_config(RunDir(run))["ssl"]["seed"] == 3


def test_a_kill_right_after_the_swap_leaves_the_new_encoder_and_its_record(run):
    killed = _cli(run, "train-encoder", "--set", "ssl.seed=3", kill_at="swapped:encoder")
    assert killed.returncode == -signal.SIGKILL
    # config.yaml was not updated yet; the bundle's own training.yaml says what trained it
    assert "seed: 0" in (run / "config.yaml").read_text()
    assert read_run_config(RunDir(run))["ssl"]["seed"] == 3
    assert (run / "encoder" / "training.yaml").is_file() and not (run / "encoder" / "probes.json").exists()
    assert _cli(run, "train-encoder", "--set", "ssl.seed=3").returncode == 0
    assert _leftovers(run) == []


def test_a_killed_sampling_leaves_the_previous_sample_folder(run):
    folder = run / "samples" / "red"
    before = _tree(folder)
    killed = _cli(run, "sample", str(run.parent / "red.png"), "--layers", "trunk", "--n", "3",
                  kill_at="wrote:meta.json")
    assert killed.returncode == -signal.SIGKILL
    assert _tree(folder) == before and _leftovers(run) != []
    assert _cli(run, "sample", str(run.parent / "red.png"), "--layers", "trunk", "--n", "3").returncode == 0
    assert read_json(folder / "meta.json")["n"] == 3 and _leftovers(run) == []
