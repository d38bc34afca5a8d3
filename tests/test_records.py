"""Typed run records: what is written reads back equal, older files read, wrong types name the field."""

from __future__ import annotations

import pytest

from rcdm_viz.records import SampleMeta


def test_a_sample_meta_round_trips_and_drops_what_it_lacks():
    meta = SampleMeta(layers=("trunk", "head3"), n=4, sampler="ddim", steps=50, guidance=3.0, seed=0,
                      resolution=32)
    written = meta.to_json()
    assert written["format"] == 1 and written["layers"] == ["trunk", "head3"] and "alpha" not in written
    assert SampleMeta.from_json(written) == meta and not meta.is_interpolation
    interp = SampleMeta(layers=("trunk",), columns=3, alpha=(0.0, 0.5, 1.0))
    assert SampleMeta.from_json(interp.to_json()) == interp and interp.is_interpolation


def test_a_meta_written_before_the_format_key_still_reads():
    old = {"layers": ["trunk"], "n": 2, "sampler": "ddim", "steps": 3, "guidance": 1, "seed": 0}
    meta = SampleMeta.from_json(old)
    assert meta.guidance == 1.0 and meta.resolution is None


@pytest.mark.parametrize(("bad", "named"), [
    ({"layers": "trunk"}, "'layers'"), ({"layers": ["trunk"], "n": 2.5}, "'n'"),
    ({"layers": ["trunk"], "seed": False}, "'seed'"), ({"layers": ["trunk"], "format": 2}, "format"),
    ({"n": 2}, "'layers'"), ("text", "mapping"),
])
def test_a_wrong_field_is_a_value_error_naming_it(bad, named):
    with pytest.raises(ValueError, match=named):
        SampleMeta.from_json(bad)


def _probe_report_json() -> dict:
    row = {"dim": 8, "linear_acc": 0.5, "mlp_acc": 0.6, "knn_acc": 0.4, "binary_acc": 0.45, "sparsity": 0.1,
           "rankme": 3.5, "factor_r2": {"floor_hue": 0.9}, "factor_ridge": {"floor_hue": 1.0}}
    layers = {"trunk": row, "head1": {**row, "factor_r2": None}}
    return {"layers": layers, "invariance": {"trunk": {"crop": 0.7}},
            "chance": 0.125, "n_train": 128, "n_val": 64, "n_invariance": 32, "encoder": "abc", "width": 32,
            "probe": {"epochs": 30}}


def test_a_probe_report_written_by_the_landed_version_reads_and_round_trips():
    from rcdm_viz.evaluation.probes import LINEAR, MLP, PROBES
    from rcdm_viz.records import ProbeReport

    old = _probe_report_json()
    del old["layers"]["head1"]["factor_r2"]
    report = ProbeReport.from_json(old)
    assert report.layers["trunk"].accuracy(LINEAR) == 0.5 and report.layers["trunk"].accuracy(MLP) == 0.6
    assert report.layers["head1"].factor_r2 is None
    # a file without its metrics: the accuracies are the keys ending in _acc, in the file's order
    assert [m.key for m in report.metrics] == ["linear_acc", "mlp_acc", "knn_acc", "binary_acc"]
    assert {m.key for m in report.metrics} == {p.metric.key for p in PROBES}
    written = report.to_json()
    assert written["format"] == 1 and ProbeReport.from_json(written) == report
    assert written["metrics"][0] == ["linear_acc", "linear", "linear"]
    # the same file, plus its format and its metrics
    assert {k: v for k, v in written.items() if k not in ("format", "metrics")} == old


@pytest.mark.parametrize(("damage", "named"), [
    (lambda d: d["layers"]["trunk"].update(linear_acc="high"), "'linear_acc'"),
    (lambda d: d["layers"]["trunk"].pop("sparsity"), "'sparsity'"),
    (lambda d: d["layers"]["trunk"].update(factor_r2={"a": "x"}), "'factor_r2'"),
    (lambda d: d.update(layers=[1]), "'layers'"),
    (lambda d: d.update(format=3), "format"),
    (lambda d: d.update(metrics=[["linear_acc", "linear"]]), "metric"),
])
def test_a_damaged_probe_report_names_the_field(damage, named):
    from rcdm_viz.records import ProbeReport

    data = _probe_report_json()
    del data["layers"]["head1"]["factor_r2"]
    damage(data)
    with pytest.raises(ValueError, match=named):
        ProbeReport.from_json(data)


def test_image_scores_round_trip_and_refuse_a_wrong_type():
    from rcdm_viz.records import ImageScores, LayerScores

    row = LayerScores(fidelity=0.1, diversity=0.2, consistency=0.5, retrieval_top1=1.0, shape_kept=0.25,
                      grain=1.4, factor_retention={"floor_hue": 0.8})
    scores = ImageScores(distance="lpips-alex", n=8, gallery=255, layers={"trunk": row},
                         oracle_val_r2={"floor_hue": 0.9}, oracle_val_shape_accuracy=0.86)
    written = scores.to_json()
    assert list(written["layers"]["trunk"]) == ["fidelity", "diversity", "consistency", "retrieval_top1",
                                                "shape_kept", "grain", "factor_retention"]
    assert ImageScores.from_json(written) == scores
    written["layers"]["trunk"]["grain"] = "coarse"
    with pytest.raises(ValueError, match="'grain'"):
        ImageScores.from_json(written)


def test_every_record_key_is_spelled_in_one_module():
    """The keys of the run's files appear as string literals in rcdm_viz/records.py and nowhere else in the
    package, but for the probe accuracies, which live with their probes in rcdm_viz/evaluation/probes.py:
    adding a metric is one change in one module."""
    import ast
    from pathlib import Path

    import rcdm_viz
    from rcdm_viz import records
    from rcdm_viz.evaluation import probes

    keys = {m.key for m in (*records.DECODER_METRICS, records.RETENTION_MEAN)}
    keys |= {records.FACTOR_R2, records.FACTOR_RETENTION, "oracle_val_r2", "oracle_val_shape_accuracy"}
    home = dict.fromkeys(keys, "records.py") | {p.metric.key: "evaluation/probes.py" for p in probes.PROBES}
    package = Path(rcdm_viz.__file__).parent
    found = []
    for path in package.rglob("*.py"):
        module = path.relative_to(package).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in home and home[node.value] != module:
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == []


def test_step_records_round_trip_and_read_steps_skips_other_lines(tmp_path):
    from rcdm_viz.records import StepRecord
    from rcdm_viz.runs import MetricsLog, read_steps

    ssl = StepRecord(step=8, epoch=0.25, lr=0.3, images_per_s=950.0, processes=1, loss=5.5,
                     terms={"invariance": 1.0})
    written = ssl.to_json()
    assert list(written) == ["step", "epoch", "lr", "images_per_s", "processes", "loss", "invariance"]
    assert StepRecord.from_json(written) == ssl
    decoder_line = {"step": 25, "loss": 0.2, "lr": 1e-3, "images_per_s": 110.0, "processes": 2}  # landed
    assert StepRecord.from_json(decoder_line).epoch is None
    with pytest.raises(ValueError, match="'loss'"):
        StepRecord.from_json({**decoder_line, "loss": "low"})
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.log(step=0, warm_start={"source": "scene-prior"})  # a decoder's first line: not a step
    log.log(**written)
    log.log(**decoder_line)
    assert [r.step for r in read_steps(log.path)] == [8, 25]
