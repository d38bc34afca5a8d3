"""Decoder scores, factor retention, and the report files (per run and across runs)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from rcdm_viz.cli import main
from rcdm_viz.config import Distance, ScoresConfig
from rcdm_viz.data.sources import load_images
from rcdm_viz.encoders import load_encoder
from rcdm_viz.evaluation.oracle import OracleQuality, train_oracle
from rcdm_viz.evaluation.probe_run import probe_run
from rcdm_viz.evaluation.scores import Gallery, encode, resolve_distance, score_image
from rcdm_viz.records import ImageScores
from rcdm_viz.runs import RunDir, read_json
from rcdm_viz.sample_run import layer_notes
from tests.conftest import tiny_config

SMALL_SCORES = ["--set", "scores.oracle_n_train=256", "--set", "scores.oracle_steps=30", "--set",
                "scores.gallery=24"]


@pytest.fixture(scope="module")
def scenes():
    cfg = tiny_config("data.n_val=64")
    train = load_images(cfg.data, "train", n=256, progress=False)
    val = load_images(cfg.data, "val", progress=False)
    test = load_images(cfg.data, "test", n=64, progress=False)
    oracle, quality = train_oracle(train, val, ScoresConfig(oracle_steps=60, oracle_batch_size=64))
    return val, test, oracle, quality.r2


def _gallery(encoder, val, oracle) -> Gallery:
    images = val.batch(torch.arange(16, 64))
    feats = encode(encoder, images, ["trunk"])
    return Gallery(images, feats, oracle, oracle.predict(images), OracleQuality({}, 0.0))


def test_perfect_decoder_keeps_every_factor_and_a_random_one_none(tiny_run, scenes):
    _, run = tiny_run
    val, test, oracle, _ = scenes
    encoder = load_encoder(run.encoder)
    gallery = _gallery(encoder, val, oracle)
    perfect, random = [], []
    for i in range(16):
        x = val.batch(torch.tensor([i]))[0]
        copies = {"trunk": x.expand(4, -1, -1, -1).clone()}
        perfect.append(score_image(encoder, x, copies, gallery, Distance.SSIM).layers["trunk"].to_json())
        others = {"trunk": test.batch(torch.arange(4 * i, 4 * i + 4))}
        random.append(score_image(encoder, x, others, gallery, Distance.SSIM).layers["trunk"].to_json())
    for row in perfect:
        assert all(v == pytest.approx(1.0, abs=1e-5) for v in row["factor_retention"].values())
        assert row["consistency"] == pytest.approx(1.0, abs=1e-5) and row["retrieval_top1"] == 1.0
        assert row["fidelity"] == pytest.approx(0.0, abs=1e-4)
        assert row["diversity"] == pytest.approx(0.0, abs=1e-4)
        assert row["shape_kept"] == 1.0 and row["grain"] == pytest.approx(1.0)
    oracle_r2 = scenes[3]
    means = {f: sum(r["factor_retention"][f] for r in random) / len(random) for f in oracle_r2}
    # ~0 up to the noise of 16 inputs x 4 samples, tightest on the factors the brief oracle reads well.
    assert abs(sum(means.values()) / len(means)) < 0.15, means
    assert all(abs(means[f]) < 0.3 for f, r2 in oracle_r2.items() if r2 > 0.5), (means, oracle_r2)
    mean_consistency = sum(r["consistency"] for r in random) / len(random)
    assert abs(mean_consistency) < 0.3
    assert sum(r["diversity"] for r in random) > 0


def test_distance_is_named_and_never_swapped_silently(monkeypatch, tmp_path):
    monkeypatch.setenv("RCDM_VIZ_WEIGHTS", str(tmp_path))  # no LPIPS weights here
    assert resolve_distance(Distance.AUTO, 32) is Distance.SSIM
    assert resolve_distance(Distance.AUTO, 256) is Distance.MS_SSIM
    with pytest.raises(Exception, match="LPIPS weights"):
        resolve_distance(Distance.LPIPS_ALEX, 32)
    (tmp_path / "lpips-alexnet-v0.1.safetensors").write_bytes(b"")  # found (verified only when used)
    (tmp_path / "lpips-alexnet-v0.1.safetensors.sha256").write_bytes(b"")
    assert resolve_distance(Distance.AUTO, 32) is Distance.LPIPS_ALEX


def test_sample_scores_report_and_notes(tiny_run, tmp_path, capsys):
    cfg, run = tiny_run
    probe_run(cfg, run, progress=False)
    img = tmp_path / "scene.png"
    val = load_images(cfg.data, "val", n=1, progress=False)
    Image.fromarray(val.images[0].permute(1, 2, 0).numpy()).save(img)
    args = ["sample", str(img), "--run", str(run.root), "--layers", "trunk", "--n", "2", "--scores",
            "--no-progress", *SMALL_SCORES]
    assert main(args) == 0
    scores = read_json(run.samples("scene") / "scores.json")
    assert scores["distance"] in ("1-ssim", "lpips-alex")
    assert scores["gallery"] == 23  # the input itself (val image 0) is left out of the gallery
    trunk = scores["layers"]["trunk"]
    assert {"fidelity", "diversity", "consistency", "retrieval_top1", "factor_retention"} <= set(trunk)
    notes = layer_notes(run)
    trunk_note = notes["trunk"]
    assert trunk_note.startswith("acc ") and "cons " in trunk_note and "hue kept" not in trunk_note
    # the factors the SSL views redrew are named with their retention in this image's samples
    notes = layer_notes(run, ImageScores.from_json(scores).layers, ["floor_hue", "spot_hue"])
    kept = trunk["factor_retention"]
    assert f"floor hue kept {kept['floor_hue']:.2f}\nspot hue kept {kept['spot_hue']:.2f}" in notes["trunk"]

    assert main(["report", "--run", str(run.root), "--no-progress"]) == 0
    for name in ("layers.csv", "layers.json", "probe_accuracy.png", "factor_r2.png", "invariance.png",
                 "decoder_scores.png"):
        assert (run.report / name).is_file(), name
    table = json.loads((run.report / "layers.json").read_text())
    assert table["layers"]["trunk"]["decoder"]["n_images"] >= 1
    header = (run.report / "layers.csv").read_text().splitlines()[0]
    assert "linear_acc" in header and "invariance/hue" in header and "decoder/consistency" in header


def test_report_across_runs(tiny_run, tmp_path):
    cfg, run = tiny_run
    probe_run(cfg, run, progress=False)
    runs = []
    for width in (32, 64):  # the same probes under two widths: enough to exercise the cross-run plots
        other = RunDir(tmp_path / f"w{width}")
        shutil.copytree(run.encoder, other.encoder)
        enc = json.loads((other.encoder / "config.json").read_text())
        (other.encoder / "config.json").write_text(json.dumps({**enc, "width": width}))
        runs.append(str(other.root))
    out = tmp_path / "compare"
    assert main(["report", "--runs", *runs, "--out", str(out), "--no-progress"]) == 0
    for name in ("runs.csv", "runs.md", "runs.json", "accuracy_vs_width.png", "sparsity_vs_width.png",
                 "binary_vs_continuous.png", "linear_vs_mlp.png", "accuracy_by_layer.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["report", "--run", "{tmp}/empty"], "nothing to report"),
        (["report", "--runs", "{tmp}/missing"], "missing"),
    ],
)
def test_report_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    (tmp_path / "empty").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rcdm-viz: error:") and fragment in err


def test_width_plots_use_only_the_width_series():
    """Runs of another experiment at one width (e.g. GR positives) are not joined into E/N's width curve."""
    from rcdm_viz.evaluation.gather import by_width

    def run(name: str, width: int, method: str, head: str) -> dict:
        return {"run": name, "width": width, "method": method, "head": head,
                "layers": {"trunk": {"linear_acc": 0.2}}}

    series = [run(f"w{d}", d, "simclr", "1024-1024-1024") for d in (8192, 512, 2048)]
    others = [run("class", 512, "simclr_class", "512-512-512"), run("aug", 512, "simclr", "512-512-512")]
    assert [s["run"] for s in by_width(series + others)] == ["w512", "w2048", "w8192"]
    assert by_width([]) == []


def test_width_series_averages_seeds_and_gives_their_range():
    """Several seeds per width: one point per width at the mean, error bars reaching the extreme runs."""
    from rcdm_viz.evaluation.gather import width_series

    pairs = ((2048, 0.30), (512, 0.20), (2048, 0.26), (512, 0.22), (512, 0.24))
    runs = [{"width": w, "acc": a} for w, a in pairs]
    widths, means, (below, above) = width_series(runs, lambda s: s["acc"])
    assert widths == [512, 2048]
    assert means == pytest.approx([0.22, 0.28])
    assert below == pytest.approx([0.02, 0.02]) and above == pytest.approx([0.02, 0.02])
