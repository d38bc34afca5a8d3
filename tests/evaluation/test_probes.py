"""Probes: separable data is read perfectly, shuffled labels give chance, the run writes probes.json."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from rcdm_viz.cli import main
from rcdm_viz.config import ProbeConfig, ProbeSolver
from rcdm_viz.data.views import Augmentation
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation.probe_run import probe_run
from rcdm_viz.evaluation.probes import (
    factor_probe,
    factor_targets,
    knn_accuracy,
    linear_probe,
    mlp_probe,
    rankme,
    ridge_path,
    select_ridge,
    sparsity,
)
from rcdm_viz.features import binarize
from rcdm_viz.records import ProbeReport
from rcdm_viz.runs import RunDir, read_json


def _blobs(n: int, classes: int = 4, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 4
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, dim, generator=gen), y


@pytest.mark.parametrize("solver", list(ProbeSolver))
def test_linear_probe_separable_is_perfect_and_shuffled_is_chance(solver):
    x, y = _blobs(600)
    cfg = ProbeConfig(solver=solver, lr=1e-2, epochs=30, batch_size=128)
    assert linear_probe(x[:400], y[:400], x[400:], y[400:], cfg) >= 0.99
    # Random features carry nothing about the labels: the probe must not do better than chance (25%).
    noise = torch.randn(1200, 64, generator=torch.Generator().manual_seed(1))
    y_shuffled = y[torch.randperm(600, generator=torch.Generator().manual_seed(2))].repeat(2)
    acc = linear_probe(noise[:800], y_shuffled[:800], noise[800:], y_shuffled[800:], cfg)
    assert acc < 0.36


def test_mlp_and_knn_read_a_nonlinear_problem_the_linear_probe_cannot():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 2, generator=gen) * 2 - 1
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR quadrants: no linear read-out beats ~50%
    cfg = ProbeConfig(mlp_hidden=64, mlp_epochs=40, mlp_lr=1e-2)
    assert linear_probe(x[:900], y[:900], x[900:], y[900:], cfg) < 0.7
    assert mlp_probe(x[:900], y[:900], x[900:], y[900:], cfg) > 0.9
    assert knn_accuracy(x[:900], y[:900], x[900:], y[900:]) > 0.9


def test_sparsity_binarize_and_rankme():
    x = torch.tensor([[0.0, 2.0, -1.0, 0.0]])
    assert sparsity(x) == 0.5
    assert binarize(x).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    gen = torch.Generator().manual_seed(0)
    assert rankme(torch.randn(400, 1, generator=gen) @ torch.randn(1, 32, generator=gen)) < 1.01
    assert 28 < rankme(torch.randn(2000, 32, generator=gen)) <= 32


def test_factor_probe_r2_linear_and_circular():
    gen = torch.Generator().manual_seed(0)
    n = 800
    lin = torch.rand(n, generator=gen)
    turn = torch.rand(n, generator=gen) * 2 * math.pi
    targets = factor_targets({"a": lin, "phi": turn, "noise": torch.rand(n, generator=gen)},
                             {"a": (0, 1), "phi": (0, 2 * math.pi), "noise": (0, 1)}, circular=("phi",))
    assert targets["phi"].shape == (n, 2) and targets["a"].shape == (n, 1)
    feats = torch.stack([lin, turn.sin(), turn.cos(), torch.randn(n, generator=gen)], dim=1)
    tr = {k: v[:600] for k, v in targets.items()}
    te = {k: v[600:] for k, v in targets.items()}
    r2 = factor_probe(feats[:600], tr, feats[600:], te, ridges=[1e-4])
    assert r2["a"] > 0.99 and r2["phi"] > 0.99 and r2["noise"] < 0.05


def test_probe_run_writes_every_probe_for_every_layer(tiny_run):
    cfg, run = tiny_run
    result = probe_run(cfg, run, progress=False)
    on_disk = read_json(run.probes)
    layers = ["stage1", "stage2", "stage3", "trunk", "head1", "head2", "head3"]
    assert list(on_disk["layers"]) == layers
    trunk = on_disk["layers"]["trunk"]
    for key in ("linear_acc", "mlp_acc", "knn_acc", "binary_acc", "sparsity", "rankme", "factor_r2"):
        assert key in trunk, key
    assert set(trunk["factor_r2"]) >= {"object_hue", "spot_phi", "floor_hue"}
    assert set(on_disk["invariance"]["trunk"]) == {a.value for a in Augmentation}
    assert (run.features / "probe-train" / "trunk.safetensors").is_file()
    again = probe_run(cfg, run, progress=False)  # from the cache: identical numbers
    assert again.layers == result.layers and ProbeReport.from_json(on_disk) == result
    assert run.read_probes() == result


def test_a_probe_added_to_the_registry_reaches_the_file_and_every_table(tiny_run, monkeypatch, tmp_path):
    """Adding a probe is one entry in evaluation.probes.PROBES: probes.json, the CLI's table, the report's
    Markdown table and its per-layer plot pick it up from the file."""
    from rcdm_viz.evaluation import probes
    from rcdm_viz.evaluation.gather import gather_run, markdown_table, probe_metrics
    from rcdm_viz.evaluation.probe_run import format_table
    from rcdm_viz.records import Metric

    top2 = probes.Probe(Metric("top2_acc", "top2", "top-2"), lambda split, cfg: 0.75)
    monkeypatch.setattr(probes, "PROBES", (*probes.PROBES, top2))
    cfg, shared = tiny_run
    shutil.copytree(shared.root, tmp_path / "run")  # the session's run keeps its probes.json
    run = RunDir(tmp_path / "run")
    report = probe_run(cfg, run, progress=False)
    assert report.metrics[-1] == top2.metric and report.layers["trunk"].accuracy(top2.metric) == 0.75
    monkeypatch.undo()  # the readers know the probe from the file alone
    assert read_json(run.probes)["layers"]["head2"]["top2_acc"] == 0.75
    assert run.read_probes() == report
    table = format_table(run.read_probes())
    assert "top2" in table.splitlines()[0] and "75.0%" in table.splitlines()[1]
    summary = gather_run(run)
    assert probe_metrics([summary])[-1] == top2.metric
    header, _, trunk, *_ = markdown_table([summary]).splitlines()
    assert "| top-2 |" in header and "| 75.0% |" in trunk


def test_probe_errors(tiny_run, tmp_path):
    cfg, run = tiny_run
    with pytest.raises(RcdmVizError, match="head9"):
        probe_run(cfg, run, progress=False, layers="head9")
    with pytest.raises(ValueError, match="non-empty"):
        linear_probe(torch.zeros(0, 3), torch.zeros(0).long(), torch.zeros(2, 3), torch.zeros(2).long())
    with pytest.raises(RcdmVizError, match="no encoder"):
        probe_run(cfg, RunDir(tmp_path / "empty"), progress=False)


@pytest.mark.parametrize(
    "extra, fragment",
    [(["--layers", "head9"], "head9"), (["--set", "data.n_val=0"], "bad value 0 for 'data.n_val'")],
)
def test_probe_cli_bad_input_is_one_line(tiny_run, capsys, extra, fragment):
    _, run = tiny_run
    assert main(["probe", "--run", str(run.root), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("rcdm-viz: error:") and fragment in err


def test_ridge_path_matches_direct_solve_primal_and_dual():
    gen = torch.Generator().manual_seed(1)
    for n, d in ((50, 8), (8, 50)):
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        y = torch.randn(n, 2, generator=gen, dtype=torch.float64)
        for ridge, w in zip((1e-3, 1.0), ridge_path(x, y, (1e-3, 1.0)), strict=True):
            direct = torch.linalg.solve(x.T @ x + ridge * n * torch.eye(d, dtype=x.dtype), x.T @ y)
            torch.testing.assert_close(w.double(), direct, rtol=1e-4, atol=1e-5)


def test_factor_probe_chooses_more_penalty_when_wide_features_would_overfit():
    """D ~ N: a near-zero penalty interpolates the training noise (R² << 0 on validation, the double-descent
    peak); the penalty chosen on held-out training images recovers the informative directions."""
    gen = torch.Generator().manual_seed(2)
    n, d = 300, 200
    factor = torch.rand(n, generator=gen)
    feats = torch.randn(n, d, generator=gen)
    feats[:, :8] += 6 * factor[:, None]
    targets = factor[:, None] + 0.1 * torch.randn(n, 1, generator=gen)
    tr, te = {"a": targets[:200]}, {"a": targets[200:]}
    grid = (1e-6, 1e-2, 1.0, 100.0)
    tiny = factor_probe(feats[:200], tr, feats[200:], te, ridges=[1e-6])["a"]
    chosen = select_ridge(_standardized(feats[:200]), tr, grid, holdout=0.2)["a"]
    recorded: dict[str, float] = {}
    tuned = factor_probe(feats[:200], tr, feats[200:], te, ridges=grid, chosen=recorded)["a"]
    assert tiny < -1 and chosen == 1.0 and tuned > 0.7
    assert recorded == {"a": 1.0}  # what probe_layer writes to probes.json as factor_ridge


def test_a_unit_dead_on_the_training_split_does_not_wreck_the_probes():
    """A ReLU unit never active on the training images but active on one validation image: with its std
    (0) as the scale that image became a 1e4-sigma input (seen: factor R² -2 at a head layer)."""
    gen = torch.Generator().manual_seed(3)
    n = 400
    factor = torch.rand(n, generator=gen)
    feats = torch.relu(torch.randn(n, 32, generator=gen) + 2 * factor[:, None])
    labels = (factor > 0.5).long()
    feats[:300, 5] = 0.0  # dead on the training split
    feats[300, 5] = 0.5  # ... once active on validation
    feats[:300, 6] = 0.0  # active on a single training image (a std of ~1e-4 of the layer's)
    feats[0, 6] = 1e-3
    feats[301, 6] = 0.5
    tr, te = {"a": factor[:300, None]}, {"a": factor[300:, None]}
    r2 = factor_probe(feats[:300], tr, feats[300:], te, ridges=(1e-4, 1e-2, 1.0))["a"]
    acc = linear_probe(feats[:300], labels[:300], feats[300:], labels[300:])
    clean = torch.cat([feats[:, :5], feats[:, 7:]], dim=1)
    r2_clean = factor_probe(clean[:300], tr, clean[300:], te, ridges=(1e-4, 1e-2, 1.0))["a"]
    acc_clean = linear_probe(clean[:300], labels[:300], clean[300:], labels[300:])
    assert r2 > 0.7 and abs(r2 - r2_clean) < 0.05
    assert acc > 0.7 and abs(acc - acc_clean) <= 0.03


def test_probe_config_rejects_bad_ridge():
    with pytest.raises(RcdmVizError, match="probe.ridge"):
        ProbeConfig(ridge=())
    with pytest.raises(RcdmVizError, match="probe.ridge_holdout"):
        ProbeConfig(ridge_holdout=1.0)


def _standardized(x):
    return (x - x.mean(0)) / x.std(0)
