"""Reading run directories for the browser (``rcdm_viz/app/streamlit_app.py``): all it shows comes from here.

The app renders; this module finds runs under a runs root, resolves names given in the URL or the sidebar
without ever leaving that root, and reads what a run holds so far. A run may be half-written (a training
still in progress: metrics but no encoder yet, a decoder directory with only metrics.jsonl) or hold a
corrupt file: readers then return what they could read plus a list of problems in words, never raise for
what a run on disk looks like. Errors a user causes (a bad run name, a non-image upload) raise
``RcdmVizError`` with a one-line message.

Modules: ``roots`` (the runs root: finding runs, names from URLs, every path confined to the root),
``reading`` (summaries, curves, stored samples, the layer table) and ``live`` (sampling from the app).
Every name the app uses is importable from ``rcdm_viz.browse``.
"""

from rcdm_viz.browse.live import (
    decode_image,
    live_grid_png,
    load_models,
    model_fingerprint,
    row_notes,
    sample_live,
    sample_settings,
    scene_png,
    synthetic_scene,
)
from rcdm_viz.browse.reading import (
    CURVE_SKIP,
    SUMMARY_FIELDS,
    DecoderInfo,
    RunSummary,
    SampleView,
    compose_grid,
    config_summary,
    curve_columns,
    encoder_layers,
    layer_rows,
    layer_table,
    list_samples,
    load_sample,
    open_png,
    read_config,
    report_plots,
    run_config,
    summarize_run,
    training_curves,
    upscale,
)
from rcdm_viz.browse.roots import (
    DEFAULT_RUNS,
    MAX_DEPTH,
    RUNS_ENV,
    BrowsedRun,
    confined,
    is_run_dir,
    list_runs,
    resolve_run,
    runs_root,
    safe_join,
)

__all__ = [
    "BrowsedRun",
    "confined",
    "CURVE_SKIP",
    "DEFAULT_RUNS",
    "DecoderInfo",
    "MAX_DEPTH",
    "RUNS_ENV",
    "RunSummary",
    "SUMMARY_FIELDS",
    "SampleView",
    "compose_grid",
    "config_summary",
    "curve_columns",
    "decode_image",
    "encoder_layers",
    "is_run_dir",
    "layer_rows",
    "layer_table",
    "list_runs",
    "list_samples",
    "live_grid_png",
    "load_models",
    "load_sample",
    "model_fingerprint",
    "open_png",
    "read_config",
    "report_plots",
    "resolve_run",
    "row_notes",
    "run_config",
    "runs_root",
    "safe_join",
    "sample_live",
    "sample_settings",
    "scene_png",
    "summarize_run",
    "synthetic_scene",
    "training_curves",
    "upscale",
]
