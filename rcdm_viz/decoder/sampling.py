"""Sampling a trained decoder: the samplers (diffusers schedulers, one factory each in ``SAMPLERS``) and
``sample``. The grids they fill are drawn by ``rcdm_viz.decoder.grids`` (re-exported here).

Every sample has its own noise stream: sample j (its initial noise and every stochastic step's noise)
comes from a CPU ``torch.Generator`` seeded from (seed, j) only.  So the same call gives the same images
on any device and batch size, sample j of one image does not depend on which other images or samples share
its batch, and the rows of different layers (and different images) start from the same noise, so a grid
compares like with like.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor

from rcdm_viz.config import SamplerName as Sampler
from rcdm_viz.config import parse_enum
from rcdm_viz.decoder.grids import interpolation_grid, sample_grid, tensor_to_pil
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.progress import tqdm
from rcdm_viz.seeding import sample_seed

# The grid drawing lives in rcdm_viz.decoder.grids; re-exported here, where the public API names it.
__all__ = [
    "SAMPLERS", "interpolation_grid", "make_sampler", "sample", "sample_grid", "sample_seed", "tensor_to_pil"
]


def _as_sampler(sampler: str | Sampler) -> Sampler:
    return parse_enum(Sampler, sampler, "sampler")


def _ddpm(config: dict) -> SchedulerMixin:
    return DDPMScheduler.from_config(config, timestep_spacing="linspace")


def _ddim(config: dict) -> SchedulerMixin:
    return DDIMScheduler.from_config(config, timestep_spacing="trailing")


def _dpmpp(config: dict) -> SchedulerMixin:
    return DPMSolverMultistepScheduler.from_config(
        config,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
        timestep_spacing="trailing",
    )


# Every sampler of ``config.SamplerName``: a factory from the training DDPM scheduler's config.
SAMPLERS: dict[Sampler, Callable[[dict], SchedulerMixin]] = {
    Sampler.DDPM: _ddpm,
    Sampler.DDIM: _ddim,
    Sampler.DPMPP: _dpmpp,
}


def make_sampler(sampler: str | Sampler, train_scheduler_config: Mapping) -> SchedulerMixin:
    """A sampling scheduler built from the training DDPM scheduler's config (``SAMPLERS``).

    DDPM with N steps is ADM's respacing (``space_timesteps(T, "N")``, which RCDM samples with, N = 100):
    timesteps round(i (T-1)/(N-1)) = diffusers' "linspace" spacing, and diffusers' step then uses the
    posterior of the respaced chain (alphas_cumprod at the previous *chosen* timestep), which equals ADM's
    recomputed betas 1 - abar_t / abar_prev (the sampling tests check this numerically).  DDIM and DPM++
    use "trailing" timesteps, which also start at t = T-1 (Lin et al. 2024).
    DDIM keeps the training config's ``clip_sample=True`` (x0 clipped to [-1, 1]); DPM++ does not clip,
    so it gets dynamic thresholding capped at 1 (Saharia et al. 2022), which for images in [-1, 1] is the
    same safeguard: without either, briefly trained decoders diverge (docs/DESIGN.md, "Decoder").
    """
    kind = _as_sampler(sampler)
    factory = SAMPLERS.get(kind)
    if factory is None:
        raise ValueError(f"sampler '{kind.value}' has no scheduler factory in SAMPLERS")
    return factory(dict(train_scheduler_config))


def _generators(seed: int, js: list[int]) -> list[torch.Generator]:
    # CPU generators: the same numbers on every device (randn_tensor draws on CPU and moves them).
    return [torch.Generator("cpu").manual_seed(sample_seed(seed, j)) for j in js]


def _model_output(
    decoder: RCDMDecoder, x: torch.Tensor, t: torch.Tensor, reps: torch.Tensor | None, layer: str,
    guidance: float,
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): out = out_u + s (out_c - out_u); s = 1 is plain
    conditional sampling and s = 0 unconditional, each with a single pass."""
    m = x.shape[0]
    tt = t.to(x.device).expand(m)
    x = x.to(decoder.dtype)
    if guidance == 1.0 or reps is None:
        return decoder(x, tt, reps, layer).float()
    if guidance == 0.0:
        return decoder(x, tt, None, layer).float()
    uncond = torch.arange(2 * m, device=x.device) < m
    both = decoder(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([reps, reps]), layer, uncond=uncond)
    out_u, out_c = both.float().chunk(2)
    return out_u + guidance * (out_c - out_u)


def _denoise(
    decoder: RCDMDecoder,
    reps: torch.Tensor | None,
    layer: str,
    scheduler: SchedulerMixin,
    *,
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
    reps: torch.Tensor | None,
    *,
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
        raise ValueError(f"n (samples per image) must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if reps is None:  # unconditional: the null embedding
        return layer or ""
    if reps.ndim != 2:
        raise ValueError(f"reps must have shape [B, D], got {list(reps.shape)}")
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
    reps: torch.Tensor | None,
    n: int,
    *,
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
    ``reps=None`` draws ``n`` unconditional images (the null embedding; a prior's samples): [1, n, ...].

    ``layer`` defaults to the decoder's only layer.  ``guidance`` is the classifier-free guidance scale
    (1 = plain conditional sampling, as RCDM).  ``scheduler_config`` is the training DDPM scheduler's
    config (default: the schedule recorded in the decoder's config, ``decoder.noise_scheduler()``).  The UNet
    runs in the decoder's dtype on its device (optionally under ``torch.autocast(autocast_dtype)``), at
    most ``batch_size`` images per pass; the result is float32 on the CPU, ready to save or score.
    """
    kind = _as_sampler(sampler)
    config = scheduler_config if scheduler_config is not None else decoder.noise_scheduler().config
    layer = _check_sample_args(decoder, reps, n=n, steps=steps, batch_size=batch_size, layer=layer,
                               num_train_timesteps=config["num_train_timesteps"])
    if reps is not None:
        reps = reps.detach().to(device=decoder.device, dtype=decoder.dtype)
    n_reps = 1 if reps is None else reps.shape[0]
    items = [(b, j) for b in range(n_reps) for j in range(n)]
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    res, was_training = decoder.config.resolution, decoder.training
    out = torch.empty(len(items), 3, res, res)
    decoder.eval()
    try:
        bar = tqdm(total=len(chunks) * steps, desc="sampling", disable=not progress)
        with torch.inference_mode(), bar:
            start = 0
            for chunk in chunks:
                rows = torch.tensor([b for b, _ in chunk], device=decoder.device)
                gens = _generators(seed, [j for _, j in chunk])
                scheduler = make_sampler(kind, config)
                part = None if reps is None else reps[rows]
                out[start : start + len(chunk)] = _denoise(
                    decoder, part, layer, scheduler, steps=steps, guidance=float(guidance), generators=gens,
                    autocast_dtype=autocast_dtype, bar=bar,
                )
                start += len(chunk)
    finally:
        decoder.train(was_training)
    return out.view(n_reps, n, 3, res, res)
