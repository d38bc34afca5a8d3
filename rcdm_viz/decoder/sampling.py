"""Sampling a trained decoder (diffusers schedulers) and the per-layer sample grid.

Every sample has its own noise stream: sample j (its initial noise and every stochastic step's noise)
comes from a CPU ``torch.Generator`` seeded from (seed, j) only.  So the same call gives the same images
on any device and batch size, sample j of one image does not depend on which other images or samples share
its batch, and the rows of different layers (and different images) start from the same noise, so a grid
compares like with like.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from enum import Enum

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from rcdm_viz.config import SamplerName as Sampler
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.errors import RcdmVizError


def _as_sampler(sampler: str | Enum) -> Sampler:
    try:
        return Sampler(sampler.value if isinstance(sampler, Enum) else sampler)
    except ValueError:
        names = ", ".join(s.value for s in Sampler)
        raise RcdmVizError(f"unknown sampler {sampler!r}; choose one of {names}") from None


def make_sampler(sampler: str | Sampler, train_scheduler_config: Mapping) -> SchedulerMixin:
    """A sampling scheduler built from the training DDPM scheduler's config.

    DDPM with N steps is ADM's respacing (``space_timesteps(T, "N")``, which RCDM samples with, N = 100):
    timesteps round(i (T-1)/(N-1)) = diffusers' "linspace" spacing, and diffusers' step then uses the
    posterior of the respaced chain (alphas_cumprod at the previous *chosen* timestep), which equals ADM's
    recomputed betas 1 - abar_t / abar_prev (tests/test_sampling.py checks this numerically).  DDIM and
    DPM++ use "trailing" timesteps, which also start at t = T-1 (Lin et al. 2024).
    DDIM keeps the training config's ``clip_sample=True`` (x0 clipped to [-1, 1]); DPM++ does not clip,
    so it gets dynamic thresholding capped at 1 (Saharia et al. 2022), which for images in [-1, 1] is the
    same safeguard: without either, briefly trained decoders diverge (see DESIGN.md, "Decoder").
    """
    kind = _as_sampler(sampler)
    config = dict(train_scheduler_config)
    spacing = {"timestep_spacing": "trailing"}
    if kind is Sampler.DDPM:
        return DDPMScheduler.from_config(config, timestep_spacing="linspace")
    if kind is Sampler.DDIM:
        return DDIMScheduler.from_config(config, **spacing)
    return DPMSolverMultistepScheduler.from_config(
        config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
        **spacing,
    )


def sample_seed(seed: int, j: int) -> int:
    """The 63-bit seed of sample ``j`` under the user's ``seed`` (a hash, so nearby seeds do not overlap)."""
    digest = hashlib.blake2b(f"rcdm-viz:{int(seed)}:{int(j)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _generators(seed: int, js: list[int]) -> list[torch.Generator]:
    # CPU generators: the same numbers on every device (randn_tensor draws on CPU and moves them).
    return [torch.Generator("cpu").manual_seed(sample_seed(seed, j)) for j in js]


def _model_output(
    decoder: RCDMDecoder, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor, layer: str, guidance: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): out = out_u + s (out_c - out_u); s = 1 is plain
    conditional sampling and s = 0 unconditional, each with a single pass."""
    m = x.shape[0]
    tt = t.to(x.device).expand(m)
    x = x.to(decoder.dtype)
    if guidance == 1.0:
        return decoder(x, tt, reps, layer).float()
    if guidance == 0.0:
        return decoder(x, tt, None, layer).float()
    uncond = torch.arange(2 * m, device=x.device) < m
    both = decoder(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([reps, reps]), layer, uncond=uncond)
    out_u, out_c = both.float().chunk(2)
    return out_u + guidance * (out_c - out_u)


def _denoise(
    decoder: RCDMDecoder,
    reps: torch.Tensor,
    layer: str,
    scheduler: SchedulerMixin,
    steps: int,
    guidance: float,
    generators: list[torch.Generator],
    autocast_dtype: torch.dtype | None,
    bar: tqdm,
) -> torch.Tensor:
    """Run the reverse process for one batch; returns images [m, 3, H, W] in [0, 1], float32 on CPU."""
    device, res = decoder.device, decoder.config.resolution
    scheduler.set_timesteps(steps, device=device)
    # The scheduler state stays float32 whatever the decoder's dtype; noise is drawn in float32 too so
    # that it does not depend on the dtype.
    x = randn_tensor((len(generators), 3, res, res), generator=generators, device=device, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    for t in scheduler.timesteps:
        with autocast:
            out = _model_output(decoder, scheduler.scale_model_input(x, t), t, reps, layer, guidance)
        x = scheduler.step(out, t, x, generator=generators).prev_sample
        bar.update(1)
    return ((x + 1) / 2).clamp(0, 1).cpu()


def _check_sample_args(
    decoder: RCDMDecoder,
    reps: torch.Tensor,
    n: int,
    steps: int,
    batch_size: int,
    layer: str | None,
    num_train_timesteps: int,
) -> str:
    """Validate ``sample``'s arguments; returns the layer to condition on."""
    if steps < 1 or steps > num_train_timesteps:
        raise RcdmVizError(f"steps must be between 1 and {num_train_timesteps}, got {steps}")
    if n < 1:
        raise RcdmVizError(f"n (samples per image) must be >= 1, got {n}")
    if batch_size < 1:
        raise RcdmVizError(f"batch_size must be >= 1, got {batch_size}")
    if reps.ndim != 2:
        raise RcdmVizError(f"reps must have shape [B, D], got {list(reps.shape)}")
    if layer is None:
        if len(decoder.layers) != 1:
            raise RcdmVizError(f"this decoder has layers {decoder.layers}; name one with layer=")
        layer = decoder.layers[0]
    if layer not in decoder.layers:
        raise RcdmVizError(f"unknown decoder layer {layer!r}; this decoder has layers {decoder.layers}")
    dim = decoder.config.layer_dims[layer]
    if reps.shape[1] != dim:
        raise RcdmVizError(
            f"reps for layer {layer!r} have dimension {reps.shape[1]} but the decoder expects {dim}"
        )
    return layer


def sample(
    decoder: RCDMDecoder,
    reps: torch.Tensor,
    n: int,
    steps: int = 50,
    sampler: str | Sampler = "ddim",
    guidance: float = 1.0,
    seed: int = 0,
    layer: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
    autocast_dtype: torch.dtype | None = None,
    scheduler_config: Mapping | None = None,
) -> torch.Tensor:
    """Draw ``n`` images for each representation in ``reps`` [B, D]; returns [B, n, 3, H, W] in [0, 1].

    ``layer`` defaults to the decoder's only layer.  ``guidance`` is the classifier-free guidance scale
    (1 = plain conditional sampling, as RCDM).  ``scheduler_config`` is the training DDPM scheduler's
    config (default: the schedule recorded in the decoder's config, ``decoder.noise_scheduler()``).  The UNet
    runs in the decoder's dtype on its device (optionally under ``torch.autocast(autocast_dtype)``), at
    most ``batch_size`` images per pass; the result is float32 on the CPU, ready to save or score.
    """
    kind = _as_sampler(sampler)
    config = scheduler_config if scheduler_config is not None else decoder.noise_scheduler().config
    layer = _check_sample_args(decoder, reps, n, steps, batch_size, layer, config["num_train_timesteps"])
    reps = reps.detach().to(device=decoder.device, dtype=decoder.dtype)
    items = [(b, j) for b in range(reps.shape[0]) for j in range(n)]
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    res, was_training = decoder.config.resolution, decoder.training
    out = torch.empty(len(items), 3, res, res)
    decoder.eval()
    try:
        bar = tqdm(total=len(chunks) * steps, desc="sampling", disable=not progress)
        with torch.inference_mode(), bar:
            start = 0
            for chunk in chunks:
                rows = torch.tensor([b for b, _ in chunk], device=reps.device)
                gens = _generators(seed, [j for _, j in chunk])
                scheduler = make_sampler(kind, config)
                out[start : start + len(chunk)] = _denoise(
                    decoder, reps[rows], layer, scheduler, steps, float(guidance), gens, autocast_dtype, bar
                )
                start += len(chunk)
    finally:
        decoder.train(was_training)
    return out.view(reps.shape[0], n, 3, res, res)


# ---------------------------------------------------------------------------------------------- grids

GRID_GAP = 2  # pixels between neighbouring cells
GRID_INPUT_GAP = 8  # wider gap after the input column, separating it from the samples
GRID_PAD = 4  # padding around text
_WHITE, _TEXT, _NOTE = (255, 255, 255), (0, 0, 0), (90, 90, 90)


def tensor_to_pil(image: torch.Tensor, scale: int = 1) -> Image.Image:
    """An image [3, H, W] in [0, 1] as an RGB PIL image, upscaled ``scale``x by nearest neighbour."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise RcdmVizError(f"image must have shape [3, H, W], got {list(image.shape)}")
    array = image.detach().float().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    pil = Image.fromarray(array)
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST)
    return pil


def _check_grid_inputs(image: torch.Tensor, rows: dict[str, torch.Tensor], scale: int) -> None:
    if scale < 1:
        raise RcdmVizError(f"scale must be >= 1, got {scale}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise RcdmVizError(f"image must have shape [3, H, W], got {list(image.shape)}")
    if not rows:
        raise RcdmVizError("sample_grid needs at least one row, got none")
    for name, samples in rows.items():
        if samples.ndim != 4 or samples.shape[0] < 1 or tuple(samples.shape[1:]) != tuple(image.shape):
            raise RcdmVizError(
                f"row {name!r} must have shape [n >= 1, {', '.join(map(str, image.shape))}], "
                f"got {list(samples.shape)}"
            )


def sample_grid(
    image: torch.Tensor,
    rows: dict[str, torch.Tensor],
    notes: dict[str, str] | None = None,
    scale: int = 2,
) -> Image.Image:
    """The layer grid: one row per entry of ``rows`` (layer -> samples [n, 3, H, W] in [0, 1]), in order.

    Column 0 repeats the input ``image`` [3, H, W]; the samples follow after a wider gap.  A left margin
    holds the row label (the layer name, and ``notes[layer]`` under it, e.g. "acc 0.91"); a header names
    the "input" and "samples" columns.  Cells are upscaled ``scale``x by nearest neighbour.
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
    width = x_samples + n_max * cell_w + (n_max - 1) * GRID_GAP
    height = header_h + len(rows) * cell_h + (len(rows) - 1) * GRID_GAP
    grid = Image.new("RGB", (width, height), _WHITE)
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, GRID_PAD), "input", fill=_TEXT, font=font)
    draw.text((x_samples, GRID_PAD), "samples", fill=_TEXT, font=font)
    shown = tensor_to_pil(image, scale)
    for r, (name, samples) in enumerate(rows.items()):
        y = header_h + r * (cell_h + GRID_GAP)
        draw.text((GRID_PAD, y + GRID_PAD), name, fill=_TEXT, font=font)
        if notes.get(name):
            draw.text((GRID_PAD, y + 2 * GRID_PAD + line_h), notes[name], fill=_NOTE, font=font)
        grid.paste(shown, (label_w, y))
        for j, one in enumerate(samples):
            grid.paste(tensor_to_pil(one, scale), (x_samples + j * (cell_w + GRID_GAP), y))
    return grid


def interpolation_grid(
    image_a: torch.Tensor, image_b: torch.Tensor, rows: dict[str, torch.Tensor], scale: int = 2
) -> Image.Image:
    """The interpolation grid: for each layer (rows ``layer`` -> [n, K, 3, H, W] in [0, 1]) n rows of K
    decoded interpolations, between the inputs ``image_a`` (first column) and ``image_b`` (last column)."""
    if scale < 1:
        raise RcdmVizError(f"scale must be >= 1, got {scale}")
    for name, samples in rows.items():
        if samples.ndim != 5 or tuple(samples.shape[2:]) != tuple(image_a.shape):
            raise RcdmVizError(
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
