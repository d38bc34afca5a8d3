"""Reading run directories for the browser: finding runs, summaries, curves, stored samples, the layer table.

A run may be half-written or hold a corrupt file: readers then return what they could read plus a list of
problems in words, never raise for what a run on disk looks like.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from rcdm_viz.browse.roots import (
    confined,
    refused,
    resolve_run,
    safe_join,
)
from rcdm_viz.config import Config, config_from_dict, unreadable_reason
from rcdm_viz.errors import UNREADABLE_IMAGE, RcdmVizError, short
from rcdm_viz.evaluation.gather import flat_rows, gather_run
from rcdm_viz.layers import TRUNK, LayerVocabulary
from rcdm_viz.records import ImageScores, SampleMeta
from rcdm_viz.runs import RunDir, aside_path, read_metrics

# A stored grid is at most a few thousand pixels a side; a larger image is shown as a notice, not decoded.
MAX_SHOWN_PIXELS = 40_000_000
_NOT_STRIPS = ("grid", "input")  # PNGs of a sample directory that are not a layer's samples
# Keys of a metrics.jsonl record that are bookkeeping, not curves to plot against the step.
CURVE_SKIP = ("step", "epoch")


# ----------------------------------------------------------------------------------- small readers


def _read_json(run: RunDir, path: Path, problems: list[str]) -> Any:
    """JSON at ``path``, or None (noting why in ``problems`` unless the file is simply absent); a file
    outside the runs root is never read, and errors never quote the file."""
    if refused(run, path, problems) or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except RecursionError:
        problems.append(f"cannot read {path.name}: nested too deeply")
        return None
    except (OSError, ValueError) as exc:  # ValueError: undecodable text, malformed JSON, over-long numbers
        problems.append(f"cannot read {path.name}: {short(exc, 200)}")
        return None


def open_png(path: Path, run: RunDir | None = None) -> tuple[Image.Image | None, str | None]:
    """(image, None) for a readable image file, else (None, a one-line reason): corrupt PNGs never raise.
    With ``run``, a file leading outside its runs root is refused."""
    if run is not None and confined(run, path) is None and path.exists():
        return None, f"{path.name} points outside the runs root: not read"
    if not path.is_file():
        return None, f"{path.name} is missing"
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_SHOWN_PIXELS:  # checked on the header, before any pixel is held
                return None, f"{path.name} is {img.width}x{img.height}, too large to show"
            img.load()
            return img.convert("RGB"), None
    except UNREADABLE_IMAGE as exc:
        return None, f"{path.name} is not a readable image ({short(exc, 200)})"


def upscale(img: Image.Image, min_side: int) -> Image.Image:
    """``img`` enlarged by an integer factor (nearest neighbour) so its smaller side reaches ``min_side``;
    the browser's own smooth scaling would blur 16-64 px samples."""
    factor = max(1, math.ceil(min_side / max(1, min(img.size))))
    if factor == 1:
        return img
    return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)


# ------------------------------------------------------------------------------------- run summary


@dataclass
class DecoderInfo:
    """One directory under decoders/: its name, the layers it decodes, and whether training finished."""

    name: str
    layers: list[str]
    complete: bool
    metrics_records: int


@dataclass
class RunSummary:
    """What a run holds so far; ``problems`` lists, in words, what is missing or unreadable."""

    name: str
    run: RunDir
    config: dict[str, Any]
    encoder: dict[str, Any] | None
    layers: dict[str, int]
    decoders: list[DecoderInfo]
    samples: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def has_encoder(self) -> bool:
        return self.run.has_encoder()

    def decodable_layers(self) -> list[str]:
        """Layers some finished decoder covers (its own or the shared one), in the encoder's order."""
        covered = {layer for d in self.decoders if d.complete for layer in d.layers}
        order = list(self.layers)
        return sorted(covered, key=lambda name: (order.index(name) if name in order else len(order), name))


def encoder_layers(encoder_config: dict[str, Any]) -> dict[str, int]:
    """Layer -> dimension of an encoder from its bundle's config.json (trunk, head1..headK), no weights."""
    from rcdm_viz.encoders import parse_head  # deferred: run views load without torch

    head_dims = parse_head(str(encoder_config["head"])).dims
    vocabulary = LayerVocabulary.from_head_dims(head_dims)
    return {TRUNK: int(encoder_config["width"]), **dict(zip(vocabulary.heads, head_dims, strict=True))}


def _current_log(run: RunDir, bundle: Path, step_name: str) -> Path:
    """A training's metrics: the log of a training in progress (checkpoints/<step>/metrics.jsonl) while
    it is newer than the saved model's, else the saved model's."""
    live = run.training_metrics(step_name)
    if live.is_file() and (not bundle.is_file() or live.stat().st_mtime_ns > bundle.stat().st_mtime_ns):
        return live
    return bundle


def _decoder_names(run: RunDir) -> list[str]:
    """Decoders saved under decoders/ or being trained (checkpoints/decoder-<name>/metrics.jsonl)."""
    names = set(run.decoder_layers())  # a decoder set aside by a killed swap included: it still serves
    if (run.root / "decoders").is_dir():
        saved = (p for p in (run.root / "decoders").iterdir() if not p.name.startswith("."))
        names |= {p.name for p in saved if p.is_dir()}
    if (run.root / "checkpoints").is_dir():
        training = (run.root / "checkpoints").glob("decoder-*/metrics.jsonl")
        names |= {p.parent.name.removeprefix("decoder-") for p in training}
    return sorted(names)


def _decoder_infos(run: RunDir, problems: list[str]) -> list[DecoderInfo]:
    infos = []
    for name in _decoder_names(run):
        path = run.decoder(name)
        path = path if path.exists() or not aside_path(path).is_dir() else aside_path(path)
        if refused(run, path, problems):
            continue
        config = _read_json(run, path / "config.json", problems)
        complete = isinstance(config, dict) and any(path.glob("*.safetensors"))
        layers = sorted(config.get("layer_dims", {})) if isinstance(config, dict) else [name]
        metrics = _current_log(run, path / "metrics.jsonl", f"decoder-{name}")
        records = 0 if refused(run, metrics, problems) else len(read_metrics(metrics))
        infos.append(DecoderInfo(name, layers, complete, records))
        if not complete:
            problems.append(f"decoder '{name}' is not finished yet ({records} metrics records so far)")
    return infos


def list_samples(run: RunDir) -> list[str]:
    """Image ids under samples/ that hold a grid.png or a meta.json, sorted."""
    root = run.root / "samples"
    if not root.is_dir():
        return []
    marked = ("grid.png", "meta.json")
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and confined(run, p)
        and any((p / m).exists() for m in marked)
    )


def read_config(run: RunDir, problems: list[str]) -> dict[str, Any]:
    """The run's config.yaml as a dict ({} when absent or unreadable, noted in ``problems``)."""
    if refused(run, run.config, problems):
        return {}
    if not run.config.is_file():
        problems.append("config.yaml is missing")
        return {}
    try:
        data = yaml.safe_load(run.config.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problems.append(f"cannot read config.yaml: {unreadable_reason(exc)}")
        return {}
    if not isinstance(data, dict):
        problems.append("config.yaml does not hold a mapping")
        return {}
    return data


def summarize_run(root: Path, name: str) -> RunSummary:
    """Everything the run page shows about run ``name`` (a bad name raises; a half-written run does not)."""
    run = resolve_run(root, name)
    problems: list[str] = []
    config = read_config(run, problems)
    encoder = None
    layers: dict[str, int] = {}
    if run.has_encoder():
        encoder = _read_json(run, run.encoder / "config.json", problems)
        try:
            layers = encoder_layers(encoder) if isinstance(encoder, dict) else {}
        except (KeyError, TypeError, ValueError, RcdmVizError) as exc:
            problems.append(f"cannot tell the encoder's layers from encoder/config.json: {exc}")
    else:
        training = run.training_metrics("encoder").is_file() or run.encoder_metrics.is_file()
        state = "training in progress" if training else "not trained"
        problems.append(f"no encoder yet ({state}): encoder/model.safetensors is missing")
    decoders = _decoder_infos(run, problems)
    return RunSummary(name, run, config, encoder, layers, decoders, list_samples(run), problems)


# Config fields shown in the run's one-line summary (the full config.yaml is shown beside it).
SUMMARY_FIELDS = (
    "data.source",
    "data.resolution",
    "data.n_train",
    "encoder.arch",
    "encoder.width",
    "encoder.head",
    "ssl.method",
    "ssl.epochs",
    "ssl.batch_size",
    "decoder.resolution",
    "decoder.steps",
    "sample.sampler",
    "sample.steps",
)


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """``SUMMARY_FIELDS`` present in a run's config.yaml dict, as "section.key" -> value."""
    out = {}
    for key in SUMMARY_FIELDS:
        section, name = key.split(".")
        value = config.get(section, {})
        if isinstance(value, dict) and name in value:
            out[key] = value[name]
    return out


def run_config(summary: RunSummary) -> Config:
    """The run's resolved Config (defaults where config.yaml is silent or unreadable)."""
    try:
        return config_from_dict(summary.config)
    except RcdmVizError:
        return Config()


def training_curves(run: RunDir) -> dict[str, list[dict[str, Any]]]:
    """metrics.jsonl records per training: "encoder" and "decoder <name>" (torn last lines skipped); a
    training in progress shows its own log, not the previous model's."""
    logs = {"encoder": _current_log(run, run.encoder_metrics, "encoder")}
    for name in _decoder_names(run):
        logs[f"decoder {name}"] = _current_log(run, run.decoder(name) / "metrics.jsonl", f"decoder-{name}")
    ignored: list[str] = []
    curves = {
        name: read_metrics(path)
        for name, path in logs.items()
        if path.is_file() and not refused(run, path, ignored)
    }
    return {name: records for name, records in curves.items() if records}


def curve_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """Numeric keys of metrics records worth plotting against the step (loss first)."""
    keys: dict[str, None] = {}
    for rec in records:
        for key, value in rec.items():
            if key not in CURVE_SKIP and isinstance(value, int | float) and not isinstance(value, bool):
                keys[key] = None
    return sorted(keys, key=lambda k: (k != "loss", k))


# ------------------------------------------------------------------------------------------ samples


@dataclass
class SampleView:
    """One samples/<id>/ directory: the stored grid, the input, one strip of samples per layer."""

    image_id: str
    grid: Image.Image | None
    input: Image.Image | None
    strips: dict[str, Image.Image]
    meta: dict[str, Any]
    scores: dict[str, dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def is_interpolation(self) -> bool:
        """An interpolation grid (rows = layer x sample, columns = image A -> image B), not a layer grid."""
        return "alpha" in self.meta

    def samples(self, layer: str) -> list[Image.Image]:
        """The individual samples of ``layer`` cut out of its strip (make_grid, padding 1, one row)."""
        strip, res = self.strips.get(layer), self.meta.get("resolution")
        if strip is None or not isinstance(res, int) or res < 1:
            return []
        if strip.size == (res, res):  # one sample: make_grid returns it without padding
            return [strip]
        count = (strip.width - 1) // (res + 1)
        return [strip.crop((1 + j * (res + 1), 1, 1 + j * (res + 1) + res, 1 + res)) for j in range(count)]


def layer_rows(obj: Any) -> dict[str, dict[str, Any]]:
    """Per-layer rows out of the shapes report files take: {"layers": {layer: {...}}}, {layer: {...}}, or a
    list of {"layer": name, ...}; anything else gives {}."""
    if isinstance(obj, dict) and isinstance(obj.get("layers"), dict | list):
        obj = obj["layers"]
    if isinstance(obj, list):
        return {str(r["layer"]): {k: v for k, v in r.items() if k != "layer"} for r in obj
                if isinstance(r, dict) and "layer" in r}
    if isinstance(obj, dict):
        return {str(k): v for k, v in obj.items() if isinstance(v, dict)}
    return {}


def _checked(raw: Any, record: Any, name: str, problems: list[str]) -> Any:
    """``record.from_json(raw)`` (a typed record checks every field), or None with one notice naming the
    file when a field has the wrong type; None when the file was missing or unreadable (``raw`` None)."""
    if raw is None:
        return None
    try:
        return record.from_json(raw)
    except ValueError as err:
        problems.append(f"{name} ignored: {err}")
        return None


def load_sample(run: RunDir, image_id: str) -> SampleView:
    """Read samples/<image_id>/ (a bad id raises; missing or corrupt files are listed in ``problems``)."""
    folder = safe_join(run.root / "samples", image_id)
    if not folder.is_dir():
        raise RcdmVizError(f"no sample '{image_id}' in run '{run.root.name}'")
    problems: list[str] = []
    checked = _checked(_read_json(run, folder / "meta.json", problems), SampleMeta, "meta.json", problems)
    meta = checked.to_json() if checked is not None else {}
    grid, err = open_png(folder / "grid.png", run)
    problems += [err] if err else []
    shown, strips = None, {}
    if "alpha" not in meta:  # interpolation directories (`sample --interpolate`) hold only grid.png
        shown, err = open_png(folder / "input.png", run)
        problems += [err] if err else []
        names = meta.get("layers")
        if not isinstance(names, list):
            names = sorted(p.stem for p in folder.glob("*.png") if p.stem not in _NOT_STRIPS)
        for layer in names:
            try:
                img, err = open_png(safe_join(folder, f"{layer}.png"), run)
            except RcdmVizError as exc:
                img, err = None, str(exc)
            if img is None:
                problems.append(f"samples of layer '{layer}': {err}")
            else:
                strips[str(layer)] = img
    stored = _checked(_read_json(run, folder / "scores.json", problems), ImageScores, "scores.json", problems)
    rows = stored.layers if stored is not None else {}
    scores = {layer: _flat(row.to_json()) for layer, row in rows.items()}
    return SampleView(image_id, grid, shown, strips, meta, scores, problems)


def compose_grid(view: SampleView, layers: Sequence[str], notes: dict[str, str] | None = None) -> Image.Image:
    """The layer grid of ``view`` restricted to ``layers`` (rows = layers, column 0 = the input), drawn by
    ``sample_grid`` like the stored grid.png; needs the stored input and strips."""
    import torch  # deferred: run views load without torch
    from torchvision.transforms.functional import pil_to_tensor  # deferred: run views load without torch

    from rcdm_viz.decoder.grids import sample_grid  # deferred: run views load without torch

    if view.input is None:
        raise RcdmVizError(f"sample '{view.image_id}' has no readable input.png")
    rows = {}
    for layer in layers:
        cells = view.samples(layer)
        if cells:
            rows[layer] = torch.stack([pil_to_tensor(c).float() / 255 for c in cells])
    if not rows:
        raise RcdmVizError(f"sample '{view.image_id}' has no readable samples for layers {list(layers)}")
    res = next(iter(rows.values())).shape[-1]
    shown = pil_to_tensor(view.input.resize((res, res), Image.Resampling.BICUBIC)).float() / 255
    return sample_grid(shown, rows, notes=notes, scale=max(1, 128 // res))


# ------------------------------------------------------------------------------------- layer table


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A per-layer row flattened as layers.csv is (``evaluation.gather.flat_rows``: ``group/name``)."""
    flat = flat_rows({"layers": {"": row}})[0]
    flat.pop("layer")
    return flat


def layer_table(run: RunDir, order: Iterable[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per layer: report/layers.json, or without it the same table gathered now from
    encoder/probes.json and samples/*/scores.json (``evaluation.gather.gather_run``); and notes saying
    which sources are missing or unreadable."""
    notes: list[str] = []
    scores = (run.root / "samples").glob("*/scores.json")
    sources = [run.config, run.probes, run.encoder / "config.json", run.report / "layers.json", *scores]
    if any([refused(run, path, notes) for path in sources]):  # gather_run would read them
        return [], notes
    if not run.probes.is_file():
        notes.append("encoder/probes.json is missing: run `rcdm-viz probe`")
    report = _read_json(run, run.report / "layers.json", notes)
    if report is None:
        notes.append("report/layers.json is missing (run `rcdm-viz report`): the table is gathered now")
        try:
            report = gather_run(run)
        except (RcdmVizError, AttributeError, KeyError, TypeError, ValueError) as exc:
            notes.append(f"nothing to tabulate: {exc}")
    rows = layer_rows(report)
    rank = {name: i for i, name in enumerate(order)}
    layers = sorted(rows, key=lambda name: (rank.get(name, len(rank)), name))
    table = []
    for layer in layers:
        table.append({"layer": layer, **_flat(rows[layer])})
    return table, notes


def report_plots(run: RunDir) -> list[Path]:
    """The report's plots (report/*.png), sorted by name."""
    if not run.report.is_dir():
        return []
    return sorted(p for p in run.report.glob("*.png") if p.is_file() and confined(run, p))
