"""End-to-end behaviour on tiny models: training lowers losses, resume is exact, the CLI fails cleanly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from rcdm_viz.cli import main
from rcdm_viz.decoder.model import load_decoder
from rcdm_viz.encoders import load_encoder
from rcdm_viz.runs import RunDir, read_metrics
from rcdm_viz.ssl.train import train_encoder
from rcdm_viz.training import checkpoint_dirs
from tests.conftest import tiny_config


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_encoder_training_lowers_the_loss(tmp_path):
    cfg = tiny_config("ssl.epochs=8", "ssl.lr=0.003")
    run = RunDir(tmp_path / "run")
    train_encoder(cfg, run, progress=False)
    losses = [r["loss"] for r in read_metrics(run.encoder_metrics)]
    assert len(losses) == 8 * (128 // 32)
    assert _mean(losses[-6:]) < _mean(losses[:6]) - 0.1, losses
    assert run.has_encoder() and (run.config).is_file()


def test_encoder_resume_is_bit_exact(tmp_path):
    straight = RunDir(tmp_path / "straight")
    train_encoder(tiny_config("ssl.checkpoint_every=3"), straight, progress=False)
    resumed = RunDir(tmp_path / "resumed")
    train_encoder(tiny_config("ssl.checkpoint_every=3"), resumed, progress=False)
    # As if killed after step 5: only the step-3 checkpoint exists; resuming must replay steps 3..7 exactly.
    ckpts = [p.name for p in checkpoint_dirs(resumed.checkpoints("encoder"))]
    assert ckpts == ["step-000000003", "step-000000006"]
    shutil.rmtree(resumed.checkpoints("encoder") / "step-000000006")
    (resumed.encoder / "model.safetensors").unlink()
    train_encoder(tiny_config("ssl.checkpoint_every=3"), resumed, resume=True, progress=False)
    a = load_file(straight.encoder / "model.safetensors")
    b = load_file(resumed.encoder / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in read_metrics(resumed.encoder_metrics)]
    assert steps == sorted(set(steps)), "resumed metrics must not repeat steps"


def test_decoder_training_lowers_the_loss_and_round_trips(tiny_run, tmp_path):
    cfg, run = tiny_run
    from rcdm_viz.decoder.train import train_decoder

    longer = RunDir(tmp_path / "longer")
    longer.root.mkdir()
    (longer.root / "encoder").symlink_to(run.encoder, target_is_directory=True)
    train_decoder(tiny_config("decoder.steps=60", "decoder.lr=0.002"), longer, "trunk", progress=False)
    losses = [r["loss"] for r in read_metrics(longer.decoder("trunk") / "metrics.jsonl")]
    assert _mean(losses[-10:]) < 0.8 * _mean(losses[:10]), losses
    decoder = load_decoder(longer.decoder("trunk"))
    assert decoder.config.layer_dims == {"trunk": 32}
    assert decoder.config.encoder_fingerprint == load_encoder(run.encoder).fingerprint()
    assert (longer.features / "trunk.safetensors").is_file()


def test_sample_cli_writes_the_same_grid_twice(tiny_run, tmp_path, capsys):
    cfg, run = tiny_run
    # its own image id: a sampling replaces the image's folder whole (a scores.json another test left for
    # "scene" would go, and with it that image's notes)
    img = tmp_path / "twice.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    args = ["sample", str(img), "--run", str(run.root), "--layers", "trunk", "--n", "3", "--no-progress"]
    assert main(args) == 0
    grid = run.samples("twice") / "grid.png"
    first = grid.read_bytes()
    assert main(args) == 0
    assert grid.read_bytes() == first
    meta = json.loads((run.samples("twice") / "meta.json").read_text())
    assert meta["layers"] == ["trunk"] and meta["n"] == 3
    with Image.open(grid) as g:
        assert g.width > g.height  # one row, input + 3 samples


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["sample", "{tmp}/missing.jpg"], "missing.jpg"),
        (["sample", "{tmp}/bad.jpg"], "bad.jpg"),
        (["sample", "{tmp}/ok.png", "--layers", "head9"], "head9"),
        (["sample", "{tmp}/ok.png", "--layers", "head1"], "head1"),
        (["probe", "--run", "{tmp}/no-run"], "no-run"),
        (["train-encoder", "--preset", "no-such-preset"], "no-such-preset"),
        (["train-decoder", "--layer", "nope"], "nope"),
        (["sample", "{tmp}/ok.png", "--set", "sample.sampler=euler"], "euler"),
        (["sample", "{tmp}/ok.png", "--runs", "{tmp}", "--scores"], "--scores and --interpolate work on one"),
        (["sample", "{tmp}/ok.png", "--steps", "0"], "0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys, argv, fragment):
    _, run = tiny_run
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--run" not in argv:
        argv += ["--run", str(run.root)]
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("rcdm-viz: error:") and fragment in err


def test_probe_writes_a_table_above_chance_on_separable_features():
    from rcdm_viz.config import ProbeConfig
    from rcdm_viz.evaluation.probes import linear_probe

    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=gen) * 4
    y = torch.randint(0, 4, (400,), generator=gen)
    x = centers[y] + torch.randn(400, 16, generator=gen)
    cfg = ProbeConfig(epochs=50, lr=1e-2)
    assert linear_probe(x[:300], y[:300], x[300:], y[300:], cfg) > 0.97
    shuffled = y[torch.randperm(400, generator=gen)]
    assert linear_probe(x[:300], shuffled[:300], x[300:], shuffled[300:], cfg) < 0.45


def test_quickstart_runs_every_stage_into_one_run(tmp_path):
    """The demo end to end at tiny size: one shared decoder, a grid per held-out scene, a report."""
    from rcdm_viz.quickstart import quickstart

    cfg = tiny_config("probe.mlp_epochs=0", "probe.invariance_images=8", "probe.rankme_n=64")
    run = RunDir(tmp_path / "qs")
    lines: list[str] = []
    out = quickstart(cfg, run, say=lines.append, progress=False)
    assert (run.root / "decoders" / "all" / "config.json").is_file()
    assert not (run.root / "decoders" / "trunk").exists()  # shared, not one per layer
    assert [p.name for p in out["grids"]] == ["grid.png"]
    assert set(out["probes"].layers) >= {"trunk", "head1", "head2", "head3"}
    assert (run.report / "layers.csv").is_file()
    assert "train decoder all" in out["timings"]
    assert any(line.strip().startswith("total") for line in lines)
    # It ends with the decoder scores of the held-out scenes, naming the distance (16 px: below LPIPS' 32).
    assert lines[-1].startswith("decoder scores (mean over 1 scored images; perceptual distance: 1-ssim)")
    assert lines[-1].splitlines()[2].split()[0] == "trunk"
