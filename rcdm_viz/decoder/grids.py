"""Per-image layer grids: encode an image, sample each layer's decoder, write ``samples/<image-id>/``."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms.functional import center_crop, pil_to_tensor, resize
from torchvision.utils import make_grid

from rcdm_viz.config import SampleConfig
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.sampling import interpolation_grid, sample, sample_grid, tensor_to_pil
from rcdm_viz.decoder.train import ALL_LAYERS, check_layer
from rcdm_viz.encoders import Encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, atomic_write_bytes, read_json, write_json


def read_image(path: str | Path) -> Tensor:
    """An image file as float [3,H,W] in [0,1] (RGB), or a one-line error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise RcdmVizError(f"image '{path}' does not exist")
    try:
        with Image.open(path) as img:
            return pil_to_tensor(img.convert("RGB")).float() / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RcdmVizError(f"cannot read image '{path}': {exc}") from None


def fit(image: Tensor, resolution: int) -> Tensor:
    """Centre-crop to a square and resize to ``resolution`` (antialiased): [3,H,W] -> [3,r,r]."""
    side = min(image.shape[-2:])
    square = center_crop(image, [side, side])
    if side == resolution:
        return square
    return resize(square, [resolution, resolution], antialias=True).clamp(0, 1)


def image_id(path: str | Path) -> str:
    """A directory-safe id for an input image (its file stem)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem) or "image"


def resolve_layers(spec: str | Sequence[str], encoder: Encoder) -> list[str]:
    """``"all"`` -> the encoder's layer_names; ``"trunk,head2"`` -> checked list."""
    names = encoder.layer_names if spec == "all" else spec
    if isinstance(names, str):
        names = [s.strip() for s in names.split(",") if s.strip()]
    for name in names:
        check_layer(encoder, name)
    if not names:
        raise RcdmVizError(f"no layers selected by '{spec}'")
    return list(names)


def _check_decoder(decoder: RCDMDecoder, path: Path, layer: str, encoder: Encoder, fingerprint: str) -> None:
    """One-line errors when the decoder at ``path`` was not trained on ``encoder``'s ``layer``."""
    if layer not in decoder.layers:
        raise RcdmVizError(f"the decoder '{path}' has no layer '{layer}' (it has {decoder.layers})")
    want, have = encoder.layer_dims[layer], decoder.config.layer_dims[layer]
    if have != want:
        raise RcdmVizError(
            f"decoder '{path}' expects {have}-d representations of '{layer}' but the encoder gives {want}"
        )
    trained_on = decoder.config.encoder_fingerprint
    if trained_on is not None and trained_on != fingerprint:
        raise RcdmVizError(
            f"decoder '{path}' was trained on encoder {trained_on}, not on this run's encoder {fingerprint}; "
            "retrain it with `rcdm-viz train-decoder`"
        )


def load_decoders(run: RunDir, layers: Sequence[str], encoder: Encoder) -> dict[str, RCDMDecoder]:
    """The run's decoder for each layer (``decoders/<layer>/``, else the shared ``decoders/all/``), checked
    against the encoder they must match.  Layers served by the shared decoder share one object."""
    fingerprint = encoder.fingerprint()
    decoders: dict[str, RCDMDecoder] = {}
    shared: RCDMDecoder | None = None
    shared_path = run.decoder(ALL_LAYERS)
    for layer in layers:
        path = run.decoder(layer)
        if (path / "config.json").is_file():
            decoders[layer] = load_decoder(path)
        elif (shared_path / "config.json").is_file():
            shared = shared if shared is not None else load_decoder(shared_path)
            path, decoders[layer] = shared_path, shared
        else:
            raise RcdmVizError(
                f"no decoder for layer '{layer}' in '{run.root}'; run `rcdm-viz train-decoder --layer "
                f"{layer}` (or `--layer all`) first"
            )
        _check_decoder(decoders[layer], path, layer, encoder, fingerprint)
    return decoders


def layer_notes(run: RunDir, scores: dict | None = None) -> dict[str, str]:
    """Per-layer notes for the grid's row labels: linear-probe accuracy (``encoder/probes.json``) and
    representation consistency of the decoder's samples (from ``scores``, one image's ``scores.json``;
    else the mean over the run's ``samples/*/scores.json``), e.g. "acc 91%\ncons 0.83"."""
    notes: dict[str, list[str]] = {}
    if run.probes.is_file():
        for name, row in read_json(run.probes).get("layers", {}).items():
            if "linear_acc" in row:
                notes.setdefault(name, []).append(f"acc {100 * row['linear_acc']:.0f}%")
    if scores is None:
        from rcdm_viz.evaluation.report import decoder_scores  # deferred: pulls in matplotlib

        per_layer = decoder_scores(run)[0]
    else:
        per_layer = scores.get("layers", {})
    for name, row in per_layer.items():
        if row.get("consistency") is not None and math.isfinite(row["consistency"]):
            notes.setdefault(name, []).append(f"cons {row['consistency']:.2f}")
    return {name: "\n".join(lines) for name, lines in notes.items()}


@torch.inference_mode()
def sample_layers(
    encoder: Encoder,
    decoders: dict[str, RCDMDecoder],
    image: Tensor,
    cfg: SampleConfig,
    progress: bool = False,
) -> dict[str, Tensor]:
    """For one image [3,H,W] in [0,1]: layer -> n samples [n,3,h,w] decoded from its representation."""
    res = encoder.config["resolution"]
    reps = encoder(fit(image, res)[None], layers=list(decoders))
    return {layer: _sample_with(dec, reps[layer], layer, cfg, progress)[0] for layer, dec in decoders.items()}


def _sample_with(dec: RCDMDecoder, reps: Tensor, layer: str, cfg: SampleConfig, progress: bool) -> Tensor:
    """``sample`` with every setting taken from ``cfg``: reps [m,D] -> [m,n,3,h,w]."""
    return sample(
        dec,
        reps,
        n=cfg.n,
        steps=cfg.steps,
        sampler=cfg.sampler.value,
        guidance=cfg.guidance,
        seed=cfg.seed,
        layer=layer,
        batch_size=cfg.batch_size,
        progress=progress,
    )


@torch.inference_mode()
def interpolate_layers(
    encoder: Encoder,
    decoders: dict[str, RCDMDecoder],
    image_a: Tensor,
    image_b: Tensor,
    columns: int,
    cfg: SampleConfig,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Decode linear interpolations between two images' representations.

    Column c decodes h_c = (1 - a_c) h(A) + a_c h(B), a_c = c / (columns - 1); sample j of every column
    starts from the same noise (seeded by (seed, j)), so a row shows only what the representation changes.
    image_a, image_b: [3,H,W] in [0,1].  Returns layer -> [n, columns, 3, h, w].
    """
    if columns < 2:
        raise RcdmVizError(f"--interpolate needs at least 2 columns, got {columns}")
    res = encoder.config["resolution"]
    reps = encoder(torch.stack([fit(image_a, res), fit(image_b, res)]), layers=list(decoders))
    alpha = torch.linspace(0, 1, columns).unsqueeze(1)
    rows = {}
    for layer, dec in decoders.items():
        h = (1 - alpha) * reps[layer][0].float() + alpha * reps[layer][1].float()  # [columns, D]
        rows[layer] = _sample_with(dec, h, layer, cfg, progress).transpose(0, 1)
    return rows


def write_interpolation_dir(
    out_dir: Path, image_a: Tensor, image_b: Tensor, rows: dict[str, Tensor], cfg: SampleConfig
) -> Path:
    """Write grid.png (rows = layer x sample, columns = A, interpolations, B) and meta.json."""
    res = next(iter(rows.values())).shape[-1]
    grid = interpolation_grid(fit(image_a, res), fit(image_b, res), rows, scale=max(1, 64 // res))
    atomic_write_bytes(out_dir / "grid.png", png_bytes(grid))
    columns = next(iter(rows.values())).shape[1]
    meta = _sampling_meta(rows, cfg, res)
    meta.update(columns=columns, alpha=torch.linspace(0, 1, columns).tolist())
    write_json(out_dir / "meta.json", meta)
    return out_dir / "grid.png"


def write_sample_dir(
    out_dir: Path, image: Tensor, rows: dict[str, Tensor], notes: dict[str, str], cfg: SampleConfig
) -> Path:
    """Write grid.png, one strip per layer and meta.json into ``out_dir``; returns the grid's path."""
    res = next(iter(rows.values())).shape[-1]
    shown = fit(image, res)
    grid = sample_grid(shown, rows, notes=notes, scale=max(1, 128 // res))
    atomic_write_bytes(out_dir / "grid.png", png_bytes(grid))
    atomic_write_bytes(out_dir / "input.png", png_bytes(tensor_to_pil(shown)))
    for layer, samples in rows.items():
        atomic_write_bytes(
            out_dir / f"{layer}.png",
            png_bytes(tensor_to_pil(make_grid(samples, nrow=len(samples), padding=1))),
        )
    write_json(out_dir / "meta.json", _sampling_meta(rows, cfg, res))
    return out_dir / "grid.png"


def _sampling_meta(rows: dict[str, Tensor], cfg: SampleConfig, resolution: int) -> dict:
    """What a grid's meta.json records: its layers and every setting that decides its pixels."""
    return {
        "layers": list(rows),
        "n": cfg.n,
        "sampler": cfg.sampler.value,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "seed": cfg.seed,
        "resolution": resolution,
    }


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
