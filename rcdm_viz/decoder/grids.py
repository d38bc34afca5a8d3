"""The grids drawn from samples: the layer grid (rows = layers, column 0 = the input, the last column each
row's variance map) and the interpolation grid; PNG encoding. Reading and fitting input images is
``rcdm_viz.data.images``."""

from __future__ import annotations

import io

import torch
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def png_bytes(img: Image.Image) -> bytes:
    """``img`` encoded as PNG."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- grids

GRID_GAP = 2  # pixels between neighbouring cells
GRID_INPUT_GAP = 8  # wider gap after the input column, separating it from the samples
GRID_PAD = 4  # padding around text
_WHITE, _TEXT, _NOTE = (255, 255, 255), (0, 0, 0), (90, 90, 90)


def tensor_to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """An image [3, H, W] in [0, 1] as an RGB PIL image, upscaled ``scale``x by nearest neighbour."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape [3, H, W], got {list(image.shape)}")
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array)
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def _check_grid_inputs(image: torch.Tensor, rows: dict[str, torch.Tensor], scale: int) -> None:
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape [3, H, W], got {list(image.shape)}")
    if not rows:
        raise ValueError("sample_grid needs at least one row, got none")
    for name, samples in rows.items():
        if samples.ndim != 4 or samples.shape[0] < 1 or tuple(samples.shape[1:]) != tuple(image.shape):
            raise ValueError(
                f"row {name!r} must have shape [n >= 1, {', '.join(map(str, image.shape))}], "
                f"got {list(samples.shape)}"
            )


VARIANCE_CMAP = "magma"  # perceptually uniform, dark = the samples agree, bright = they differ


def variance_map(samples: Tensor) -> Tensor:
    """Where a layer's samples vary (docs/DESIGN.md "Variance map"): the per-pixel standard deviation over
    the samples [n, 3, H, W], averaged over RGB -> [H, W] (zeros for a single sample)."""
    if samples.shape[0] < 2:
        return torch.zeros(samples.shape[-2:])
    return samples.float().std(dim=0, unbiased=False).mean(dim=0)


def colour_map(values: Tensor, vmax: float) -> Tensor:
    """values [H, W] >= 0 drawn on the colour scale [0, vmax] -> RGB [3, H, W] in [0, 1]."""
    rgba = colormaps[VARIANCE_CMAP]((values / max(vmax, 1e-6)).clamp(0, 1).cpu().numpy())
    return torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float()


def sample_grid(
    image: torch.Tensor,
    rows: dict[str, torch.Tensor],
    notes: dict[str, str] | None = None,
    scale: int = 2,
    variance: bool = True,
) -> Image.Image:
    """The layer grid: one row per entry of ``rows`` (layer -> samples [n, 3, H, W] in [0, 1]), in order.

    Column 0 repeats the input ``image`` [3, H, W]; the samples follow after a wider gap.  A left margin
    holds the row label (the layer name, and ``notes[layer]`` under it, e.g. "acc 91%"); a header names
    the columns.  With ``variance``, each row ends with its variance map, every row on one colour scale
    [0, the grid's largest value] (named in the header), so that rows compare at a glance.  Cells are
    upscaled ``scale``x by nearest neighbour.
    """
    _check_grid_inputs(image, rows, scale)
    notes = notes or {}
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.textbbox((0, 0), text, font=font)
        return right - left, bottom - top

    line_h = text_size("Ag")[1]
    labels = [*rows, *(notes.get(k, "") for k in rows)]
    label_w = max(text_size(s)[0] for s in labels) + 2 * GRID_PAD
    header_h = line_h + 2 * GRID_PAD
    cell_h, cell_w = image.shape[1] * scale, image.shape[2] * scale
    n_max = max(s.shape[0] for s in rows.values())
    x_samples = label_w + cell_w + GRID_INPUT_GAP
    x_std = x_samples + n_max * cell_w + (n_max - 1) * GRID_GAP + GRID_INPUT_GAP
    maps = {name: variance_map(samples) for name, samples in rows.items()} if variance else {}
    vmax = max((float(m.max()) for m in maps.values()), default=0.0)
    std_title = f"std 0-{vmax:.2f}"
    width = x_std + max(cell_w, text_size(std_title)[0]) if variance else x_std - GRID_INPUT_GAP
    height = header_h + len(rows) * cell_h + (len(rows) - 1) * GRID_GAP
    grid = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, GRID_PAD), "input", fill=_TEXT, font=font)
    draw.text((x_samples, GRID_PAD), "samples", fill=_TEXT, font=font)
    if variance:
        draw.text((x_std, GRID_PAD), std_title, fill=_TEXT, font=font)
    shown = tensor_to_pil(image, scale)
    for r, (name, samples) in enumerate(rows.items()):
        y = header_h + r * (cell_h + GRID_GAP)
        draw.text((GRID_PAD, y + GRID_PAD), name, fill=_TEXT, font=font)
        if notes.get(name):
            draw.text((GRID_PAD, y + 2 * GRID_PAD + line_h), notes[name], fill=_NOTE, font=font)
        grid.paste(shown, (label_w, y))
        for j, one in enumerate(samples):
            grid.paste(tensor_to_pil(one, scale), (x_samples + j * (cell_w + GRID_GAP), y))
        if variance:
            grid.paste(tensor_to_pil(colour_map(maps[name], vmax), scale), (x_std, y))
    return grid


def interpolation_grid(
    image_a: torch.Tensor, image_b: torch.Tensor, rows: dict[str, torch.Tensor], scale: int = 2
) -> Image.Image:
    """The interpolation grid: for each layer (rows ``layer`` -> [n, K, 3, H, W] in [0, 1]) n rows of K
    decoded interpolations, between the inputs ``image_a`` (first column) and ``image_b`` (last column)."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    for name, samples in rows.items():
        if samples.ndim != 5 or tuple(samples.shape[2:]) != tuple(image_a.shape):
            raise ValueError(
                f"row {name!r} must have shape [n, K, {image_a.shape[0]}, H, W], got {list(samples.shape)}"
            )
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(measure.textbbox((0, 0), f"{name} #00", font=font)[2] for name in rows) + 2 * GRID_PAD
    header_h = measure.textbbox((0, 0), "Ag", font=font)[3] + 2 * GRID_PAD
    cell = image_a.shape[-1] * scale
    k = next(iter(rows.values())).shape[1]
    x_mid = label_w + cell + GRID_INPUT_GAP
    x_b = x_mid + k * (cell + GRID_GAP) - GRID_GAP + GRID_INPUT_GAP
    n_rows = sum(s.shape[0] for s in rows.values())
    grid = Image.new("RGB", (x_b + cell, header_h + n_rows * (cell + GRID_GAP) - GRID_GAP), _WHITE)
    draw = ImageDraw.Draw(grid)
    for x, text in ((label_w, "A"), (x_mid, f"interpolation A -> B ({k} steps)"), (x_b, "B")):
        draw.text((x, GRID_PAD), text, fill=_TEXT, font=font)
    shown_a, shown_b = tensor_to_pil(image_a, scale), tensor_to_pil(image_b, scale)
    y = header_h
    for name, samples in rows.items():
        for j, row in enumerate(samples):
            draw.text((GRID_PAD, y + GRID_PAD), f"{name} #{j}", fill=_TEXT, font=font)
            grid.paste(shown_a, (label_w, y))
            grid.paste(shown_b, (x_b, y))
            for c, one in enumerate(row):
                grid.paste(tensor_to_pil(one, scale), (x_mid + c * (cell + GRID_GAP), y))
            y += cell + GRID_GAP
    return grid
