"""rcdm-viz browser: runs, layer grids, layer tables, run comparison and live sampling.

Start with ``rcdm-viz app [--runs DIR]`` or ``RCDM_VIZ_RUNS=DIR streamlit run rcdm_viz/app/streamlit_app.py``.
The page only renders: every read of a run directory goes through ``rcdm_viz.browse``, which never leaves
the runs root. URL query parameters (?run=...&view=...&image=...) are matched against the listed runs and
images, never used as paths.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st
import yaml

from rcdm_viz import browse
from rcdm_viz.config import SamplerName
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import STAGES

VIEWS = ("Run", "Grids", "Layers", "Compare", "Live sample")
# Probed layers before the trunk (docs/DESIGN.md, "Definitions").
EARLY_LAYERS = STAGES
GRID_CAPTION = "rows = layers, column 0 = the input"
LIVE_CACHE_ENTRIES = 64  # live grids kept in memory (one PNG each)
MODEL_CACHE_ENTRIES = 2  # runs whose models stay loaded (two, to compare runs): full-size decoders are big
ZOOM_SIDE = 192  # pixels: zoomed samples are enlarged (nearest neighbour) to at least this side


# ------------------------------------------------------------------------------------------- caches


@st.cache_resource(show_spinner="loading the encoder and decoders…", max_entries=MODEL_CACHE_ENTRIES)
def _models(root: str, name: str, fingerprint: str, layers: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    """A run's encoder and decoders, kept across reruns; ``fingerprint`` changes when one is retrained."""
    return browse.load_models(browse.resolve_run(browse.runs_root(root), name), layers)


@st.cache_resource
def _live_store() -> tuple[OrderedDict[tuple, dict[str, Any]], threading.Lock]:
    """Live grids by (run, model fingerprint, image hash, layers, n, seed, steps, sampler, guidance), shared
    by all sessions (hence the lock).

    A plain store rather than ``st.cache_data`` because the progress bar lives outside the sampling call,
    which ``st.cache_data`` cannot replay.
    """
    return OrderedDict(), threading.Lock()


@st.cache_data(max_entries=32, show_spinner=False)
def _scene_png(root: str, name: str, index: int) -> bytes:
    """PNG of test scene ``index`` of the run's synthetic data, at the resolution its models need."""
    return browse.scene_png(browse.summarize_run(browse.runs_root(root), name), index)


@st.cache_data(max_entries=4, show_spinner=False)
def _decoded(data: bytes, name: str) -> Any:
    """An upload decoded once (bounded and downscaled by ``decode_image``), not again on every rerun."""
    return browse.decode_image(data, name)


def live_sample(
    summary: browse.RunSummary,
    root: str,
    image_bytes: bytes,
    layers: tuple[str, ...],
    settings: dict[str, Any],
    on_layer: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Sample ``layers`` of the run for the image, or return the stored result of the same request."""
    fingerprint = browse.model_fingerprint(summary.run)
    image_hash = hashlib.sha256(image_bytes).hexdigest()
    key = (root, summary.name, fingerprint, image_hash, layers, *sorted(settings.items()))
    store, lock = _live_store()
    with lock:
        if key in store:
            store.move_to_end(key)
            return {**store[key], "cached": True}
    image = _decoded(image_bytes, "upload")
    cfg = browse.sample_settings(browse.run_config(summary).sample, **settings)
    encoder, decoders = _models(root, summary.name, fingerprint, layers)
    start = time.perf_counter()
    rows = browse.sample_live(encoder, decoders, image, cfg, on_layer)
    seconds = time.perf_counter() - start
    grid = browse.live_grid_png(image, rows, browse.row_notes(summary.run))
    result = {"grid": grid, "seconds": seconds, "layers": list(rows)}
    with lock:
        store[key] = result
        while len(store) > LIVE_CACHE_ENTRIES:
            store.popitem(last=False)
    return {**result, "cached": False}


# ------------------------------------------------------------------------------------------ helpers


def _pick(label: str, options: list[str], wanted: str | None, key: str | None = None) -> str:
    """A selectbox starting on ``wanted`` when it is one of ``options`` (e.g. from the URL)."""
    index = options.index(wanted) if wanted in options else 0
    return st.selectbox(label, options, index=index, key=key)


def _problems(problems: list[str]) -> None:
    for text in problems:
        st.warning(text)


def _layer_order(summary: browse.RunSummary) -> list[str]:
    return [*EARLY_LAYERS, *summary.layers]


def _settings_caption(meta: dict[str, Any]) -> str:
    keys = ("sampler", "steps", "guidance", "seed", "n")
    return ", ".join(f"{k} {meta[k]}" for k in keys if k in meta) or "sampling settings unknown"


def _scores_table(scores: dict[str, dict[str, Any]], layers: list[str]) -> None:
    rows = {layer: scores[layer] for layer in layers if layer in scores}
    if rows:  # one column per layer: a narrow table beside the grid, long score names as rows
        st.dataframe(pd.DataFrame(rows), width="stretch")
    else:
        st.info("No decoder scores for this image yet (samples/<id>/scores.json is missing).")


def _grid_image(view: browse.SampleView, layers: list[str], notes: dict[str, str]) -> None:
    """The grid of the chosen layers, or the stored grid.png when the strips cannot be recomposed."""
    try:
        st.image(browse.compose_grid(view, layers, notes), caption=GRID_CAPTION)
    except RcdmVizError as exc:
        if view.grid is None:
            st.error(f"Cannot show this grid: {exc}; grid.png is missing or unreadable too.")
        else:
            st.caption(f"Showing the stored grid.png (all layers): {exc}")
            st.image(view.grid, caption=GRID_CAPTION)


# -------------------------------------------------------------------------------------------- views


def view_run(summary: browse.RunSummary) -> None:
    st.header(f"Run `{summary.name}`")
    _problems(summary.problems)
    left, right = st.columns(2)
    with left:
        st.subheader("Config")
        fields = browse.config_summary(summary.config)
        if fields:
            st.table(pd.DataFrame({"value": [str(v) for v in fields.values()]}, index=list(fields)))
        with st.expander("config.yaml"):
            st.code(yaml.safe_dump(summary.config, sort_keys=False) or "(empty)", language="yaml")
    with right:
        st.subheader("Encoder layers")
        if summary.layers:
            st.table(pd.DataFrame({"dim": list(summary.layers.values())}, index=list(summary.layers)))
        else:
            st.info("No encoder yet.")
        st.subheader("Decoders")
        if summary.decoders:
            rows = [
                {
                    "decoder": d.name,
                    "layers": ", ".join(d.layers),
                    "status": "trained" if d.complete else "training",
                    "metrics records": d.metrics_records,
                }
                for d in summary.decoders
            ]
            st.table(pd.DataFrame(rows).set_index("decoder"))
        else:
            st.info("No decoders yet: run `rcdm-viz train-decoder --layer NAME`.")
        st.caption(f"{len(summary.samples)} sampled image(s) under samples/")
    st.subheader("Training curves")
    curves = browse.training_curves(summary.run)
    if not curves:
        st.info("No metrics.jsonl records yet.")
    for name, records in curves.items():
        columns = browse.curve_columns(records)
        if not columns:
            continue
        frame = pd.DataFrame(records)
        metric = st.selectbox(f"{name}: metric", columns, key=f"curve-{name}")
        x = "step" if "step" in frame else None
        data = frame[[x, metric]].set_index(x) if x else frame[[metric]]
        st.line_chart(data, height=220)
        st.caption(f"{name}: {len(records)} records, last step {records[-1].get('step', '?')}")


def view_grids(summary: browse.RunSummary) -> None:
    st.header(f"Grids of `{summary.name}`")
    if not summary.samples:
        st.info(f"No grids yet: run `rcdm-viz sample IMAGE --run {summary.run.root}`.")
        return
    image_id = _pick("Image", summary.samples, st.query_params.get("image"))
    st.query_params["image"] = image_id
    view = browse.load_sample(summary.run, image_id)
    _problems(view.problems)
    if view.is_interpolation and view.grid is not None:
        st.image(view.grid, caption="interpolation: rows = layer x sample, columns = image A → image B")
        st.caption(_settings_caption(view.meta))
        return
    available = [layer for layer in view.meta.get("layers", view.strips) if layer in view.strips]
    layers = st.multiselect("Layers", available, default=available)
    if not layers:
        st.info("Choose at least one layer.")
        return
    grid_col, score_col = st.columns([3, 2])
    with grid_col:
        _grid_image(view, layers, browse.row_notes(summary.run, view.scores))
        st.caption(_settings_caption(view.meta))
    with score_col:
        st.subheader("Decoder scores")
        _scores_table(view.scores, layers)
    st.subheader("Zoom")
    layer = st.selectbox("Layer", layers, key="zoom-layer")
    cells = view.samples(layer)
    images = ([view.input] if view.input is not None else []) + cells
    captions = (["input"] if view.input is not None else []) + [f"{layer} #{j}" for j in range(len(cells))]
    if not cells:
        st.warning(f"No readable samples for layer '{layer}'.")
    for start in range(0, len(images), 6):
        cols = st.columns(6)
        for col, img, cap in zip(cols, images[start : start + 6], captions[start : start + 6], strict=False):
            col.image(browse.upscale(img, ZOOM_SIDE), caption=cap)


def view_layers(summary: browse.RunSummary) -> None:
    st.header(f"Layers of `{summary.name}`")
    rows, notes = browse.layer_table(summary.run, order=_layer_order(summary))
    for note in notes:
        st.info(note)
    if rows:
        frame = pd.DataFrame(rows).set_index("layer")
        st.dataframe(frame, width="stretch")
        numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and c != "dim"]
        if numeric:
            # the first probe accuracy probes.json names (the linear probe) when there is one
            column = st.selectbox("Plot per layer (shallow to deep)", numeric, index=0, key="layer-plot")
            st.bar_chart(frame[column].dropna(), height=220, sort=False, y_label=column)
    else:
        st.info("Nothing measured for this run yet.")
    st.subheader("Report plots")
    plots = browse.report_plots(summary.run)
    if not plots:
        st.info("No report plots yet (report/*.png): run `rcdm-viz report`.")
    cols = st.columns(2)
    for i, path in enumerate(plots):
        img, err = browse.open_png(path)
        with cols[i % 2]:
            if img is None:
                st.warning(err)
            else:
                st.image(img, caption=path.name)


def _live_controls(base: Any, key: str) -> dict[str, Any]:
    """Sampler, steps, guidance, samples per layer and seed, starting from the run's sample config."""
    samplers = [s.value for s in SamplerName]
    c1, c2, c3, c4, c5 = st.columns(5)
    return {
        "sampler": c1.selectbox("Sampler", samplers, samplers.index(base.sampler.value), key=f"{key}-s"),
        "steps": int(c2.number_input("Steps", 1, 1000, int(base.steps), key=f"{key}-t")),
        "guidance": float(c3.number_input("Guidance", 0.0, 20.0, float(base.guidance), 0.5, key=f"{key}-g")),
        "n": int(c4.number_input("Samples per layer", 1, 64, int(base.n), key=f"{key}-n")),
        "seed": int(c5.number_input("Seed", 0, 2**31 - 1, int(base.seed), key=f"{key}-seed")),
    }


def _run_live(summary: browse.RunSummary, root: str, image: bytes, layers: list[str], settings: dict) -> None:
    """Sample with a progress bar (or instantly from the cache) and show the grid, or a clear error."""
    bar = st.progress(0.0, text=f"sampling {len(layers)} layer(s) of {summary.name}…")

    def on_layer(done: int, total: int, layer: str) -> None:
        bar.progress(done / total, text=f"{layer} sampled ({done}/{total})")

    try:
        result = live_sample(summary, root, image, tuple(layers), settings, on_layer)
    except RcdmVizError as exc:
        bar.empty()
        st.error(str(exc))
        return
    bar.empty()
    st.image(result["grid"], caption=f"{summary.name}: {GRID_CAPTION}")
    how = "from the cache" if result["cached"] else f"sampled in {result['seconds']:.1f} s"
    st.caption(f"{how}; {_settings_caption(settings)}")


def _image_source(summary: browse.RunSummary, root: str) -> bytes | None:
    """The image to sample: a synthetic test scene of the run's data, or an upload (None until chosen)."""
    source = st.radio("Image", ["Synthetic scene", "Upload"], horizontal=True, key="live-source")
    if source == "Upload":
        upload = st.file_uploader("Image file", type=["png", "jpg", "jpeg", "webp", "bmp", "gif"])
        if upload is None:
            st.info("Upload an image to sample it.")
            return None
        data = upload.getvalue()
        try:
            _decoded(data, upload.name)
        except RcdmVizError as exc:
            st.error(str(exc))
            return None
        return data
    index = int(st.number_input("Scene (test split)", 0, 100_000, 0))
    return _scene_png(root, summary.name, index)


def view_live(summary: browse.RunSummary, root: str) -> None:
    st.header(f"Sample live with `{summary.name}`")
    if not summary.has_encoder:
        st.error(f"Run '{summary.name}' has no encoder yet, so nothing can be sampled.")
        return
    decodable = summary.decodable_layers()
    if not decodable:
        st.error(f"Run '{summary.name}' has no trained decoder yet: run `rcdm-viz train-decoder`.")
        return
    image = _image_source(summary, root)
    layers = st.multiselect("Layers", decodable, default=decodable)
    settings = _live_controls(browse.run_config(summary).sample, "live")
    if image is None or not layers:
        return
    if st.button("Sample", type="primary"):
        st.session_state["live-requested"] = True
    if st.session_state.get("live-requested"):
        _run_live(summary, root, image, layers, settings)


def view_compare(root_path: Any, names: list[str], current: str) -> None:
    st.header("Compare two runs")
    if len(names) < 2:
        st.info("Comparing needs two runs under the runs root.")
        return
    left, right = st.columns(2)
    with left:
        name_a = _pick("Run A", names, current, key="cmp-a")
    with right:
        others = [n for n in names if n != name_a]
        name_b = _pick("Run B", others, st.query_params.get("vs"), key="cmp-b")
    st.query_params["vs"] = name_b
    a, b = (browse.summarize_run(root_path, n) for n in (name_a, name_b))
    fields = {**browse.config_summary(a.config), **browse.config_summary(b.config)}
    table = pd.DataFrame(
        {
            name_a: [str(browse.config_summary(a.config).get(k, "")) for k in fields],
            name_b: [str(browse.config_summary(b.config).get(k, "")) for k in fields],
        },
        index=list(fields),
    )
    st.table(table)
    common = [i for i in a.samples if i in b.samples]
    if not common:
        st.info("The two runs have no sampled image in common (samples/<id>/).")
    else:
        image_id = _pick("Image", common, st.query_params.get("image"), key="cmp-image")
        views = [browse.load_sample(s.run, image_id) for s in (a, b)]
        layers_b = set(views[1].strips)
        shared = [layer for layer in views[0].strips if layer in layers_b]
        layers = st.multiselect("Layers", shared, default=shared, key="cmp-layers")
        settings = [_settings_caption(v.meta) for v in views]
        if settings[0] != settings[1]:
            st.warning(f"The stored grids differ in sampling settings: A {settings[0]}; B {settings[1]}.")
        cols = st.columns(2)
        for col, summary, view in zip(cols, (a, b), views, strict=True):
            with col:
                st.subheader(summary.name)
                _problems(view.problems)
                if layers:
                    _grid_image(view, layers, browse.row_notes(summary.run, view.scores))
                st.caption(_settings_caption(view.meta))
                _scores_table(view.scores, layers)
    _compare_live(a, b, str(root_path))


def _compare_live(a: browse.RunSummary, b: browse.RunSummary, root: str) -> None:
    """Both runs sampled now on the same image with the same layers, seed and settings."""
    st.subheader("Sample both now (same image, layers and seeds)")
    missing = [s.name for s in (a, b) if not s.has_encoder]
    if missing:
        st.info(f"No encoder yet in: {', '.join(missing)}.")
        return
    shared = [layer for layer in a.decodable_layers() if layer in b.decodable_layers()]
    if not shared:
        st.info("The two runs have no decoded layer in common.")
        return
    layers = st.multiselect("Layers to sample", shared, default=shared[:1], key="cmp-live-layers")
    index = int(st.number_input("Scene (test split)", 0, 100_000, 0, key="cmp-scene"))
    settings = _live_controls(browse.run_config(a).sample, "cmp")
    if layers and st.button("Sample both", key="cmp-go"):
        image = _scene_png(root, a.name, index)
        cols = st.columns(2)
        for col, summary in zip(cols, (a, b), strict=True):
            with col:
                _run_live(summary, root, image, layers, settings)


# --------------------------------------------------------------------------------------------- main


def _pick_view(wanted: str | None) -> str:
    return st.radio("View", VIEWS, index=VIEWS.index(wanted) if wanted in VIEWS else 0)


def main() -> None:
    st.set_page_config(page_title="rcdm-viz", layout="wide")
    root_path = browse.runs_root()
    root = str(root_path)
    st.sidebar.title("rcdm-viz")
    st.sidebar.caption(f"runs root: `{root}`")
    try:
        names = browse.list_runs(root_path)
    except RcdmVizError as exc:
        st.error(f"{exc}. Start the app with `rcdm-viz app --runs DIR`.")
        return
    if not names:
        hint = (
            f"{root} is itself a run: start the app on the folder that holds it ({root_path.parent})."
            if browse.is_run_dir(root_path)
            else "create one with `rcdm-viz quickstart` (into runs/quickstart)."
        )
        st.warning(f"No runs under {root} yet: {hint}")
        return
    wanted = st.query_params.get("run")
    if wanted is not None and wanted not in names:
        st.sidebar.error(f"'{wanted}' (from the URL) is not a run under the runs root.")
    with st.sidebar:
        name = _pick("Run", names, wanted)
        view = _pick_view(st.query_params.get("view"))
    st.query_params["run"] = name
    st.query_params["view"] = view
    try:
        summary = browse.summarize_run(root_path, name)
        if view == "Run":
            view_run(summary)
        elif view == "Grids":
            view_grids(summary)
        elif view == "Layers":
            view_layers(summary)
        elif view == "Compare":
            view_compare(root_path, names, name)
        else:
            view_live(summary, root)
    except RcdmVizError as exc:
        st.error(str(exc))


main()
