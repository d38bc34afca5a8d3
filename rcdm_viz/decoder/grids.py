"""Per-image layer grids: encode an image, sample each layer's decoder, write ``samples/<image-id>/``."""

from __future__ import annotations

import io
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
from rcdm_viz.decoder.sampling import sample, sample_grid, tensor_to_pil
from rcdm_viz.decoder.train import check_layer
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


def load_decoders(run: RunDir, layers: Sequence[str], encoder: Encoder) -> dict[str, RCDMDecoder]:
    """The run's decoder for each layer, checked against the encoder they must match."""
    decoders = {}
    for layer in layers:
        path = run.decoder(layer)
        if not (path / "config.json").is_file():
            raise RcdmVizError(
                f"no decoder for layer '{layer}' in '{run.root}'; "
                f"run `rcdm-viz train-decoder --layer {layer}` first"
            )
        decoder = load_decoder(path)
        want, have = encoder.layer_dims[layer], decoder.config.layer_dims.get(layer)
        if have != want:
            raise RcdmVizError(
                f"decoder '{path}' expects {have}-d representations of '{layer}' but the encoder gives {want}"
            )
        decoders[layer] = decoder
    return decoders


def layer_notes(run: RunDir) -> dict[str, str]:
    """Per-layer notes for the grid's row labels (probe accuracy when probes exist)."""
    if not run.probes.is_file():
        return {}
    probes = read_json(run.probes).get("layers", {})
    return {
        name: f"acc {100 * row['linear_acc']:.0f}%" for name, row in probes.items() if "linear_acc" in row
    }


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
    return {
        layer: sample(
            dec,
            reps[layer],
            n=cfg.n,
            steps=cfg.steps,
            sampler=cfg.sampler.value,
            guidance=cfg.guidance,
            seed=cfg.seed,
            layer=layer,
            batch_size=cfg.batch_size,
            progress=progress,
        )[0]
        for layer, dec in decoders.items()
    }


def write_sample_dir(
    out_dir: Path, image: Tensor, rows: dict[str, Tensor], notes: dict[str, str], cfg: SampleConfig
) -> Path:
    """Write grid.png, one strip per layer and meta.json into ``out_dir``; returns the grid's path."""
    res = next(iter(rows.values())).shape[-1]
    shown = fit(image, res)
    grid = sample_grid(shown, rows, notes=notes, scale=max(1, 128 // res))
    atomic_write_bytes(out_dir / "grid.png", _png(grid))
    atomic_write_bytes(out_dir / "input.png", _png(tensor_to_pil(shown)))
    for layer, samples in rows.items():
        atomic_write_bytes(
            out_dir / f"{layer}.png", _png(tensor_to_pil(make_grid(samples, nrow=len(samples), padding=1)))
        )
    meta = {
        "layers": list(rows),
        "n": cfg.n,
        "sampler": cfg.sampler.value,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "seed": cfg.seed,
        "resolution": res,
    }
    write_json(out_dir / "meta.json", meta)
    return out_dir / "grid.png"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
