"""Live sampling for the browser: an uploaded image or a synthetic scene, fresh samples, their grid."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Callable, Sequence
from typing import Any

from rcdm_viz.browse.reading import RunSummary, read_config, run_config
from rcdm_viz.browse.roots import confined, refused
from rcdm_viz.config import Config, SampleConfig, SamplerName, parse_enum
from rcdm_viz.errors import UNREADABLE_IMAGE, RcdmVizError
from rcdm_viz.records import LayerScores
from rcdm_viz.runs import RunDir

# ----------------------------------------------------------------------------------- live sampling


def model_fingerprint(run: RunDir) -> str:
    """A short hash of the size and mtime of the encoder bundle and every decoder's files: it changes
    whenever a model is retrained, so caches keyed on it never serve samples of an older model."""
    digest = hashlib.sha256(str(run.root).encode())
    paths = [run.encoder / "config.json", run.encoder / "model.safetensors"]
    if (run.root / "decoders").is_dir():
        paths += sorted((run.root / "decoders").glob("*/*"))
    for path in paths:
        if path.is_file() and path.suffix in (".json", ".safetensors"):
            stat = path.stat()
            digest.update(f"{path.relative_to(run.root)}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def decode_image(data: bytes, name: str = "upload") -> Any:
    """Image bytes (PNG, JPEG, ...) -> float tensor [3,H,W] in [0,1], or a one-line error naming ``name``."""
    from torchvision.transforms.functional import pil_to_tensor  # deferred: run views load without torch

    from rcdm_viz.data.folder import READ_SIDE, open_rgb  # deferred: run views load without torch

    if not data:
        raise RcdmVizError(f"'{name}' is empty")
    try:
        return pil_to_tensor(open_rgb(io.BytesIO(data), READ_SIDE)).float() / 255.0
    except UNREADABLE_IMAGE:
        raise RcdmVizError(f"'{name}' is not an image this app can read (PNG, JPEG, WebP, ...)") from None


def synthetic_scene(cfg: Config, index: int, resolution: int) -> Any:
    """Test-split scene ``index`` of the run's synthetic data (its data.seed), [3,r,r] in [0,1]."""
    from rcdm_viz.data.synthetic import SyntheticScenes  # deferred: run views load without torch

    if index < 0:
        raise RcdmVizError(f"scene index must be >= 0, got {index}")
    scenes = SyntheticScenes(index + 1, resolution=resolution, seed=cfg.data.seed, split="test")
    return scenes.render_batch([index])[0][0]


def scene_png(summary: RunSummary, index: int) -> bytes:
    """PNG bytes of test scene ``index`` of the run's synthetic data, rendered at the larger of the decoder's
    and the encoder's resolution (as quickstart's held-out grids)."""
    from torchvision.transforms.functional import to_pil_image  # deferred: run views load without torch

    from rcdm_viz.decoder.grids import png_bytes  # deferred: run views load without torch

    cfg = run_config(summary)
    encoder_res = int((summary.encoder or {}).get("resolution", cfg.data.resolution))
    resolution = max(cfg.decoder.resolution, encoder_res)
    return png_bytes(to_pil_image(synthetic_scene(cfg, index, resolution)))


def load_models(run: RunDir, layers: Sequence[str]) -> tuple[Any, dict[str, Any]]:
    """The run's encoder and a decoder for each of ``layers`` (sample_run.load_decoders picks per-layer or
    shared); a run without an encoder or a layer without a decoder is a one-line error."""
    from rcdm_viz.encoders import load_encoder  # deferred: run views load without torch
    from rcdm_viz.sample_run import load_decoders  # deferred: run views load without torch

    bundles = [run.encoder / "config.json", run.encoder / "model.safetensors"]
    if (run.root / "decoders").is_dir():
        bundles += [p for d in (run.root / "decoders").iterdir() for p in (d, *d.glob("*")) if p.exists()]
    for path in bundles:
        if path.exists() and confined(run, path) is None:
            where = path.relative_to(run.root).as_posix()
            raise RcdmVizError(f"{where} in run '{run.root.name}' points outside the runs root: not loaded")
    encoder = load_encoder(run.require_encoder())
    return encoder, load_decoders(run, encoder.select_layers(list(layers)), encoder)


def sample_live(
    encoder: Any,
    decoders: dict[str, Any],
    image: Any,
    cfg: SampleConfig,
    on_layer: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """``sample_run.sample_layers`` one layer at a time, calling ``on_layer(done, total, layer)`` after each,
    so the page can show progress; returns layer -> samples [n,3,h,w] in [0,1]."""
    from rcdm_viz.sample_run import sample_layers  # deferred: run views load without torch

    rows = {}
    for i, (layer, decoder) in enumerate(decoders.items()):
        rows.update(sample_layers(encoder, {layer: decoder}, image, cfg))
        if on_layer is not None:
            on_layer(i + 1, len(decoders), layer)
    return rows


def live_grid_png(image: Any, rows: dict[str, Any], notes: dict[str, str] | None = None) -> bytes:
    """PNG of the layer grid of freshly drawn samples (the input fitted to the samples' resolution)."""
    from rcdm_viz.data.images import fit  # deferred: run views load without torch
    from rcdm_viz.decoder.grids import png_bytes, sample_grid  # deferred: run views load without torch

    res = next(iter(rows.values())).shape[-1]
    return png_bytes(sample_grid(fit(image, res), rows, notes=notes, scale=max(1, 128 // res)))


def sample_settings(base: SampleConfig, **changes: Any) -> SampleConfig:
    """``base`` with the page's controls applied (n, steps, sampler, guidance, seed), checked."""
    if "sampler" in changes:
        changes["sampler"] = parse_enum(SamplerName, changes["sampler"], "sampler")
    out = dataclasses.replace(base, **changes)
    if out.n < 1 or out.steps < 1:
        raise RcdmVizError(f"samples per layer ({out.n}) and steps ({out.steps}) must be >= 1")
    return out


def row_notes(run: RunDir, scores: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """Grid row notes (``sample_run.layer_notes``: probe accuracy, retention of the factors the run's SSL
    views redrew, and representation consistency, from one image's per-layer ``scores`` or else the run's
    mean); {} when those files are unreadable."""
    from rcdm_viz.sample_run import layer_notes  # deferred: run views load without torch

    # layer_notes reads probes.json (and, without ``scores``, every scores.json) itself: a symlink there
    # leading out of the runs root leaves the rows without notes rather than read elsewhere
    reads = [run.probes, *((run.root / "samples").glob("*/scores.json") if scores is None else ())]
    if any(refused(run, path, []) for path in reads):
        return {}
    redrawn = (read_config(run, []).get("views") or {}).get("redraw_factors") or ()
    redrawn = [redrawn] if isinstance(redrawn, str) else redrawn
    try:
        rows = None if scores is None else {name: LayerScores.from_json(row) for name, row in scores.items()}
        return layer_notes(run, rows, tuple(map(str, redrawn)))
    except (RcdmVizError, AttributeError, KeyError, TypeError, ValueError, OSError, RecursionError):
        return {}
