"""The Streamlit browser (rcdm_viz/app/streamlit_app.py) under streamlit's AppTest, and rcdm_viz.browse.

A runs root is built once from the session's tiny run: two trained runs with a sampled grid each (drawn
with different seeds), a half-written run (metrics only, no encoder), a sample with corrupt PNGs, a
symlink leading out of the root, and a hidden folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from rcdm_viz import browse
from rcdm_viz.cli import main as cli_main
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = Path(__file__).resolve().parents[2] / "rcdm_viz" / "app" / "streamlit_app.py"
GRID_TEXT = "rows = layers, column 0 = the input"  # the caption under every grid the app shows
TIMEOUT = 120  # seconds per script run: generous, the machine is shared (first run imports torch)


def _sample_into(run: RunDir, cfg, image_id: str, seed: int) -> None:
    """A stored grid of validation scene 0 for every decoder of ``run`` (as `rcdm-viz sample` writes)."""
    import dataclasses

    from rcdm_viz.data.synthetic import SyntheticScenes
    from rcdm_viz.encoders import load_encoder
    from rcdm_viz.sample_run import load_decoders, sample_layers, write_sample_dir

    encoder = load_encoder(run.require_encoder())
    decoders = load_decoders(run, ["trunk"], encoder)
    image = SyntheticScenes(1, resolution=cfg.decoder.resolution, split="val")[0][0]
    settings = dataclasses.replace(cfg.sample, seed=seed)
    rows = sample_layers(encoder, decoders, image, settings)
    write_sample_dir(run.samples(image_id), image, rows, {}, settings)


def build_runs_root(base: Path, tiny_run) -> Path:
    """The runs root described in the module docstring, under ``base``; returns its path."""
    cfg, run = tiny_run
    root = base / "runs"
    skip = shutil.ignore_patterns("checkpoints", "features", "samples", "report")
    a, b = RunDir(root / "tiny-a"), RunDir(root / "tiny-b")
    shutil.copytree(run.root, a.root, ignore=skip)
    _sample_into(a, cfg, "val-00000", seed=0)
    shutil.copytree(a.root, b.root, ignore=skip)
    _sample_into(b, cfg, "val-00000", seed=1)
    trunk = {"fidelity": 0.1, "diversity": 0.25, "consistency": 0.5, "retrieval_top1": 1.0, "grain": 1.2}
    scores = {"distance": "1-ssim", "n": 2, "gallery": 23, "layers": {"trunk": trunk}}
    (a.samples("val-00000") / "scores.json").write_text(json.dumps(scores))
    # A sample directory whose grid and layer strip are corrupt (e.g. a copy cut short).
    broken = a.samples("broken")
    shutil.copytree(a.samples("val-00000"), broken)
    (broken / "grid.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (broken / "trunk.png").write_bytes(b"not a png")
    # An interpolation directory (`sample --interpolate`): only grid.png and meta.json.
    interp = a.samples("interp")
    interp.mkdir()
    shutil.copy(a.samples("val-00000") / "grid.png", interp / "grid.png")
    (interp / "meta.json").write_text(json.dumps({"layers": ["trunk"], "columns": 3, "alpha": [0, 0.5, 1]}))
    # Probes and report plots on run B (one plot readable, one corrupt).
    row = {"dim": 32, "knn_acc": 0.3, "binary_acc": 0.3, "sparsity": 0.1, "rankme": 5.0}
    probes = {"layers": {"trunk": {**row, "linear_acc": 0.5}, "head1": {**row, "linear_acc": 0.25}},
              "chance": 0.125, "n_train": 128, "n_val": 64}
    b.probes.write_text(json.dumps(probes))
    b.report.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(b.report / "accuracy.png")
    (b.report / "corrupt.png").write_bytes(b"garbage")
    # A training still in progress: config and a metrics log with a torn last line, no encoder yet.
    half = RunDir(root / "group" / "half")
    half.encoder.mkdir(parents=True)
    shutil.copy(a.config, half.config)
    half.encoder_metrics.write_text('{"step": 1, "loss": 6.5}\n{"step": 2, "loss": 6.1}\n{"step": 3, "lo')
    # A link out of the root, to a directory that looks like a run, and a hidden run: neither is listed.
    outside = base / "outside"
    (outside / "encoder").mkdir(parents=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / ".hidden" / "samples").mkdir(parents=True)
    return root


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, tiny_run) -> Path:
    return build_runs_root(tmp_path_factory.mktemp("app"), tiny_run)


def _app(monkeypatch, root: Path, **params: str):
    """Run the app once against ``root`` with the URL query parameters ``params``."""
    monkeypatch.setenv(browse.RUNS_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def _image_captions(at) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def _no_exception(at) -> None:
    assert not at.exception, _texts(at.exception)


# ------------------------------------------------------------------------------------- browse itself


def test_list_runs_skips_hidden_and_links_out(runs_root):
    assert browse.list_runs(runs_root) == ["group/half", "tiny-a", "tiny-b"]


@pytest.mark.parametrize("name", ["..", "../outside", "tiny-a/../..", "/etc", "escape", "tiny-a/\x00", ""])
def test_resolve_run_never_leaves_the_root(runs_root, name):
    with pytest.raises(RcdmVizError):
        browse.resolve_run(runs_root, name)


def test_load_sample_refuses_traversal(runs_root):
    run = browse.resolve_run(runs_root, "tiny-a")
    for bad in ("..", "../../tiny-b", "/etc/passwd", "a/b"):
        with pytest.raises(RcdmVizError):
            browse.load_sample(run, bad)


def test_half_written_run_and_corrupt_pngs_are_reported_not_raised(runs_root):
    half = browse.summarize_run(runs_root, "group/half")
    assert not half.has_encoder and half.layers == {}
    assert any("training in progress" in p for p in half.problems)
    assert [r["step"] for r in browse.training_curves(half.run)["encoder"]] == [1, 2]  # torn line skipped
    view = browse.load_sample(browse.resolve_run(runs_root, "tiny-a"), "broken")
    assert view.grid is None and "trunk" not in view.strips and view.input is not None
    assert len(view.problems) == 2


def test_compose_grid_matches_stored_samples(runs_root):
    run = browse.resolve_run(runs_root, "tiny-a")
    view = browse.load_sample(run, "val-00000")
    cells = view.samples("trunk")
    assert len(cells) == view.meta["n"] == 2 and cells[0].size == (16, 16)
    grid = browse.compose_grid(view, ["trunk"])
    assert grid.size == view.grid.size  # the same layout as the stored grid.png of that one layer


def test_decode_image_rejects_non_images():
    with pytest.raises(RcdmVizError, match="not an image"):
        browse.decode_image(b"hello, not an image", "notes.png")
    with pytest.raises(RcdmVizError, match="empty"):
        browse.decode_image(b"", "empty.png")


def test_cli_app_rejects_a_missing_runs_root(tmp_path, capsys):
    assert cli_main(["app", "--runs", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the app


@pytest.mark.parametrize("view", ["Run", "Grids", "Layers", "Compare", "Live sample"])
@pytest.mark.parametrize("run", ["tiny-a", "group/half"])
def test_every_view_renders(monkeypatch, runs_root, view, run):
    at = _app(monkeypatch, runs_root, run=run, view=view)
    _no_exception(at)
    assert at.sidebar.selectbox[0].value == run
    if run == "group/half" and view == "Live sample":
        assert "has no encoder yet" in _texts(at.error)


def test_picker_lists_the_runs(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root)
    _no_exception(at)
    assert at.sidebar.selectbox[0].options == ["group/half", "tiny-a", "tiny-b"]


def test_run_view_shows_config_layers_decoders_and_curves(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Run")
    _no_exception(at)
    tables = [t.value for t in at.table]
    assert any("encoder.width" in t.index for t in tables)  # config summary
    assert any(list(t.index) == ["trunk", "head1", "head2", "head3"] for t in tables)  # encoder layers
    assert any("trunk" in t.index and "status" in t for t in tables)  # decoders
    labels = [s.label for s in at.selectbox]
    assert "encoder: metric" in labels and "decoder trunk: metric" in labels  # one curve per training


def test_url_traversal_is_refused(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="../outside", view="Grids", image="../../../etc/passwd")
    _no_exception(at)
    assert "not a run under the runs root" in _texts(at.sidebar.error)
    assert at.sidebar.selectbox[0].value == "group/half"
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Grids", image="../../tiny-b/samples/val-00000")
    _no_exception(at)
    assert at.selectbox[0].value == "broken"  # the URL's image is not one of the run's: ignored


def test_grid_with_scores_and_zoom(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Grids", image="val-00000")
    _no_exception(at)
    assert at.multiselect[0].value == ["trunk"]
    captions = _image_captions(at)
    assert captions[0] == GRID_TEXT and captions[1:] == ["input", "trunk #0", "trunk #1"]  # grid, zoom
    scores = at.dataframe[0].value
    assert list(scores.columns) == ["trunk"] and scores.loc["diversity", "trunk"] == 0.25
    assert "seed 0" in _texts(at.caption)


def test_interpolation_grid_is_shown_whole(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Grids", image="interp")
    _no_exception(at)
    assert not at.warning and not at.error
    assert [c.split(":")[0] for c in _image_captions(at)] == ["interpolation"]


def test_corrupt_png_is_a_warning(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Grids", image="broken")
    _no_exception(at)
    warnings = _texts(at.warning)
    assert "grid.png is not a readable image" in warnings and "trunk.png" in warnings


def test_layer_table_and_report_plots(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-b", view="Layers")
    _no_exception(at)
    frame = at.dataframe[0].value
    assert list(frame.index) == ["trunk", "head1"] and frame.loc["trunk", "linear_acc"] == 0.5
    assert "report/layers.json is missing" in _texts(at.info)
    assert "corrupt.png is not a readable image" in _texts(at.warning)


def test_compare_shows_both_runs(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Compare", vs="tiny-b")
    _no_exception(at)
    assert [s.value for s in at.subheader][:2] == ["tiny-a", "tiny-b"]
    assert "seed 0" in _texts(at.warning) and "seed 1" in _texts(at.warning)  # stored grids differ
    assert _image_captions(at) == [GRID_TEXT, GRID_TEXT]
    at.button(key="cmp-go").click().run()
    _no_exception(at)
    assert _image_captions(at)[2:] == [f"tiny-a: {GRID_TEXT}", f"tiny-b: {GRID_TEXT}"]
    captions = [c for c in _texts(at.caption).splitlines() if "sampled in" in c or "from the cache" in c]
    assert len(captions) == 2 and all("seed 0" in c for c in captions)


def test_live_sample_completes_then_comes_from_the_cache(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Live sample")
    _no_exception(at)
    at.number_input(key="live-seed").set_value(7)
    at.button[0].click().run()
    _no_exception(at)
    assert not at.error
    assert "sampled in" in _texts(at.caption) and "seed 7" in _texts(at.caption)
    assert _image_captions(at) == [f"tiny-a: {GRID_TEXT}"]
    at.run()
    assert "from the cache" in _texts(at.caption)


def test_non_image_upload_is_a_message(monkeypatch, runs_root):
    at = _app(monkeypatch, runs_root, run="tiny-a", view="Live sample")
    at.radio(key="live-source").set_value("Upload").run()
    at.file_uploader[0].set_value(("notes.png", b"this is not an image", "image/png")).run()
    _no_exception(at)
    assert "is not an image this app can read" in _texts(at.error)


def test_empty_and_missing_runs_root_are_messages(monkeypatch, runs_root, tmp_path):
    at = _app(monkeypatch, tmp_path)
    _no_exception(at)
    assert "No runs under" in _texts(at.warning)
    at = _app(monkeypatch, runs_root / "tiny-a")  # a run given as the runs root
    _no_exception(at)
    assert "is itself a run" in _texts(at.warning)
    at = _app(monkeypatch, tmp_path / "missing")
    _no_exception(at)
    assert "does not exist" in _texts(at.error)
