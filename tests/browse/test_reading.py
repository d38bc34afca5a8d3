"""What the browser reads: never a file outside the runs root (symlinks included), never a file's content
in an error, and the zoom view of a single sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rcdm_viz import browse
from rcdm_viz.browse.live import load_models
from rcdm_viz.browse.reading import SampleView
from rcdm_viz.browse.roots import confined
from rcdm_viz.errors import RcdmVizError

SECRET = "aws_secret_access_key: hunter2: [oops"  # invalid YAML whose line an error must not echo


@pytest.fixture()
def escaping(tmp_path) -> tuple[Path, Path]:
    """A runs root whose run 'r' links every file the app reads to a folder outside the root."""
    outside, root = tmp_path / "outside", tmp_path / "root"
    (outside / "dec").mkdir(parents=True)
    (outside / "secret.yaml").write_text(SECRET + "\n")
    (outside / "dec" / "config.json").write_text(json.dumps({"layer_dims": {"trunk": 4}}))
    (outside / "dec" / "x.safetensors").write_bytes(b"0")
    (outside / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5, "note": "hunter2"}) + "\n")
    Image.new("RGB", (4, 4)).save(outside / "plot.png")
    (outside / "meta.json").write_text(json.dumps({"resolution": 4, "layers": ["trunk"]}))
    run = root / "r"
    for sub in ("encoder", "decoders", "report", "samples/a"):
        (run / sub).mkdir(parents=True)
    (run / "config.yaml").symlink_to(outside / "secret.yaml")
    (run / "encoder" / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    (run / "decoders" / "trunk").symlink_to(outside / "dec", target_is_directory=True)
    (run / "report" / "layers.png").symlink_to(outside / "plot.png")
    (run / "samples" / "a" / "meta.json").symlink_to(outside / "meta.json")
    (run / "samples" / "a" / "grid.png").symlink_to(outside / "plot.png")
    return root, outside


def test_symlinks_out_of_the_root_are_never_read(escaping):
    root, outside = escaping
    summary = browse.summarize_run(root, "r")
    text = " | ".join(summary.problems)
    assert summary.config == {} and summary.decoders == [] and "hunter2" not in text
    assert "config.yaml points outside the runs root" in text
    assert "decoders/trunk points outside the runs root" in text
    assert browse.training_curves(summary.run) == {}
    assert browse.report_plots(summary.run) == []
    view = browse.load_sample(summary.run, "a")
    assert view.grid is None and view.meta == {}
    assert any("outside the runs root" in p for p in view.problems)
    rows, notes = browse.layer_table(summary.run)
    assert rows == [] and any("config.yaml points outside" in n for n in notes)
    img, err = browse.open_png(summary.run.root / "report" / "layers.png", summary.run)
    assert img is None and "outside the runs root" in err
    with pytest.raises(RcdmVizError, match="points outside the runs root: not loaded"):
        load_models(summary.run, ["trunk"])
    assert confined(summary.run, outside / "secret.yaml") is None


def test_a_yaml_error_names_the_line_not_its_content(tmp_path):
    run = tmp_path / "root" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("data:\n  seed: 1\n" + SECRET + "\n")
    summary = browse.summarize_run(tmp_path / "root", "r")
    problem = next(p for p in summary.problems if "config.yaml" in p)
    assert "line" in problem and "hunter2" not in problem and "aws" not in problem


def test_links_inside_the_root_are_followed(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "report").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "a" / "report" / "p.png")
    (root / "b" / "report").mkdir(parents=True)
    (root / "b" / "report" / "p.png").symlink_to(root / "a" / "report" / "p.png")
    (root / "b" / "config.yaml").write_text("{}\n")
    summary = browse.summarize_run(root, "b")
    assert [p.name for p in browse.report_plots(summary.run)] == ["p.png"]


def test_zoom_of_a_single_sample_has_its_image():
    """`sample --n 1` stores a strip without padding (make_grid of one image): it is the one sample."""
    strip = Image.new("RGB", (16, 16), (1, 2, 3))
    view = SampleView("a", None, None, {"trunk": strip}, {"resolution": 16}, {})
    assert [s.size for s in view.samples("trunk")] == [(16, 16)]
    two = Image.new("RGB", (1 + 2 * 17, 18))
    assert len(SampleView("a", None, None, {"trunk": two}, {"resolution": 16}, {}).samples("trunk")) == 2


def test_an_uploaded_bomb_is_a_message(tmp_path):
    from tests.test_bad_input import bomb_png

    data = bomb_png(tmp_path / "bomb.png").read_bytes()
    with pytest.raises(RcdmVizError, match="'bomb.png' is not an image this app can read"):
        browse.decode_image(data, "bomb.png")


def test_trainings_in_progress_show_their_own_logs(tmp_path):
    run = tmp_path / "root" / "r"
    for step in ("encoder", "decoder-trunk"):
        (run / "checkpoints" / step).mkdir(parents=True)
        lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2)]
        (run / "checkpoints" / step / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run / "config.yaml").write_text("{}\n")
    summary = browse.summarize_run(tmp_path / "root", "r")
    assert [(d.name, d.complete, d.metrics_records) for d in summary.decoders] == [("trunk", False, 2)]
    assert any("training in progress" in p for p in summary.problems)
    curves = browse.training_curves(summary.run)
    assert sorted(curves) == ["decoder trunk", "encoder"] and len(curves["encoder"]) == 2


def test_a_decoder_set_aside_by_a_killed_swap_is_still_listed(tmp_path):
    run = tmp_path / "root" / "r"
    (run / "decoders" / ".old-trunk").mkdir(parents=True)
    (run / "decoders" / ".old-trunk" / "config.json").write_text(json.dumps({"layer_dims": {"trunk": 4}}))
    (run / "decoders" / ".old-trunk" / "m.safetensors").write_bytes(b"0")
    summary = browse.summarize_run(tmp_path / "root", "r")
    assert [(d.name, d.complete) for d in summary.decoders] == [("trunk", True)]


def test_a_huge_or_odd_image_and_deep_json_are_notices(tmp_path):
    """Each bad item is one line in ``problems``; the page around it still renders."""
    from rcdm_viz.browse.reading import _read_json, open_png
    from rcdm_viz.runs import RunDir
    from tests.test_bad_input import bomb_png

    run = RunDir(tmp_path)
    img, err = open_png(bomb_png(tmp_path / "grid.png", side=8000), run)
    assert img is None and "8000x8000, too large to show" in err
    img, err = open_png(bomb_png(tmp_path / "trunk.png"), run)  # 20000x20000: PIL's own bomb refusal
    assert img is None and "trunk.png is not a readable image" in err and len(err) < 300
    (tmp_path / "meta.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "scores.json").write_text('{"layers": 1e99999999999999999999')
    problems: list[str] = []
    assert _read_json(run, tmp_path / "meta.json", problems) is None
    assert _read_json(run, tmp_path / "scores.json", problems) is None
    assert problems[0] == "cannot read meta.json: nested too deeply" and len(problems) == 2
    assert all(len(p) < 300 and "\n" not in p for p in problems)


def test_row_notes_never_read_a_probes_file_outside_the_root(tmp_path, monkeypatch):
    import rcdm_viz.sample_run
    from rcdm_viz.browse.live import row_notes
    from rcdm_viz.runs import RunDir

    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"layers": {"trunk": {"linear_acc": 0.5}}}))
    run = RunDir(tmp_path / "run")
    run.encoder.mkdir(parents=True)
    run.probes.symlink_to(secret)
    monkeypatch.setattr(rcdm_viz.sample_run, "layer_notes", lambda *a: pytest.fail("read outside the root"))
    assert row_notes(run, {}) == {}


@pytest.mark.parametrize("meta", [
    {"layers": 3}, {"layers": [{"a": 1}]}, {"layers": ["trunk"], "resolution": "16"},
    {"layers": ["trunk"], "n": True}, {"layers": ["trunk"], "alpha": ["x"]},
    {"layers": ["trunk"], "format": 9},
    [1, 2],
])
def test_a_wrong_typed_meta_json_is_one_notice_and_the_grid_still_shows(tmp_path, meta):
    from rcdm_viz.runs import RunDir

    folder = tmp_path / "samples" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (18, 18)).save(folder / "grid.png")
    Image.new("RGB", (37, 18)).save(folder / "trunk.png")
    Image.new("RGB", (16, 16)).save(folder / "input.png")
    (folder / "meta.json").write_text(json.dumps(meta))
    view = browse.load_sample(RunDir(tmp_path), "a")
    assert view.grid is not None and view.meta == {} and "trunk" in view.strips
    assert len(view.problems) == 1 and view.problems[0].startswith("meta.json ignored: ")
    assert view.samples("trunk") == []  # no resolution known: no cutting by guess


def test_metrics_lines_that_are_not_objects_are_skipped(tmp_path):
    from rcdm_viz.runs import RunDir

    (tmp_path / "encoder").mkdir()
    lines = ['{"step": 1, "loss": 0.5}', "[1, 2]", '"text"', "7", '{"step": 2, "loss": 0.4}']
    (tmp_path / "encoder" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    curves = browse.training_curves(RunDir(tmp_path))
    assert [r["step"] for r in curves["encoder"]] == [1, 2]
    assert browse.curve_columns(curves["encoder"]) == ["loss"]


def test_a_wrong_typed_scores_json_is_one_notice(tmp_path):
    from rcdm_viz.runs import RunDir

    folder = tmp_path / "samples" / "a"
    folder.mkdir(parents=True)
    for name, size in (("grid.png", (18, 18)), ("input.png", (16, 16)), ("trunk.png", (18, 18))):
        Image.new("RGB", size).save(folder / name)
    (folder / "meta.json").write_text(json.dumps({"layers": ["trunk"], "resolution": 16}))
    row = {"fidelity": "x", "consistency": 1, "retrieval_top1": 1, "grain": 1}
    (folder / "scores.json").write_text(json.dumps({"distance": "1-ssim", "n": 1, "gallery": 3,
                                                    "layers": {"trunk": row}}))
    view = browse.load_sample(RunDir(tmp_path), "a")
    assert view.scores == {}
    assert view.problems == ["scores.json ignored: field 'fidelity' is str, not int or float"]
    assert view.samples("trunk") and view.grid is not None
