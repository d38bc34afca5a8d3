"""Training noise schedule and the diffusion loss of the decoder.

RCDM trains ADM with 1000 steps of the linear beta schedule (Ho et al. 2020: beta from 1e-4 to 0.02) and
the simple noise-prediction loss L_simple = E ||eps - eps_theta(x_t, t, c)||^2 (Ho et al. 2020, eq. 14;
ADM's ``LossType.MSE``).  We add condition dropout for classifier-free guidance (Ho & Salimans 2022) and,
on request, Min-SNR-gamma loss weighting (Hang et al. 2023), which converges several times faster.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr
from torch import nn

from rcdm_viz.config import BetaSchedule, PredictionType, parse_enum
from rcdm_viz.seeding import generator_for


def make_noise_scheduler(
    num_train_timesteps: int = 1000,
    beta_schedule: str | BetaSchedule = "linear",
    prediction_type: str | PredictionType = "epsilon",
) -> DDPMScheduler:
    """The training DDPM scheduler (RCDM: 1000 linear steps; x0 clipped to [-1, 1] when sampling)."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    schedule = parse_enum(BetaSchedule, beta_schedule, "beta_schedule")
    prediction = parse_enum(PredictionType, prediction_type, "prediction_type")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=schedule.value,
        prediction_type=prediction.value,
        clip_sample=True,
        clip_sample_range=1.0,
    )


class RowGenerators:
    """One generator per row of a batch, seeded by (seed, "diffusion", step, global row): the draws of a row
    are the same whichever process and micro-batch it lands in, so N processes (or accumulation) train
    exactly like one process with the global batch."""

    def __init__(self, seed: int, step: int, rows: torch.Tensor) -> None:
        self.gens = [generator_for(seed, "diffusion", step, int(r)) for r in rows]

    def draw(self, shape: torch.Size, num_timesteps: int, bias: float, p_uncond: float):
        """(t long [n], noise [n, ...], uncond bool [n]), each row from its own generator."""
        t = torch.cat([sample_timesteps(1, num_timesteps, bias, g) for g in self.gens])
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in self.gens])
        uncond = torch.cat([torch.rand(1, generator=g) < p_uncond for g in self.gens])
        return t, noise, uncond


def diffusion_loss(
    decoder: nn.Module,
    x0: torch.Tensor,
    reps: torch.Tensor,
    layer: str | torch.Tensor,
    scheduler: DDPMScheduler,
    generator: torch.Generator | RowGenerators,
    *,
    p_uncond: float = 0.1,
    snr_gamma: float = 0.0,
    timestep_bias: float = 0.0,
) -> torch.Tensor:
    """L_simple (``snr_gamma`` = 0) or its Min-SNR-gamma weighted form for a batch of clean images ``x0``
    [N,3,H,W] in [-1, 1] and their ``reps`` [N, D].

    ``layer`` names the layer of every row, or is a long tensor [N] of per-sample layer indices (shared
    decoder; ``reps`` then packed as ``RCDMDecoder.condition`` describes).

    t ~ ``sample_timesteps`` (uniform on {0..T-1} at ``timestep_bias`` 0), noise ~ N(0, I),
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; the target is the noise (``epsilon``), the velocity
    (``v_prediction``) or x0 (``sample``).  Each row's condition is replaced by the null embedding with
    probability ``p_uncond``.  All randomness comes from ``generator``, drawn in the fixed order t, noise,
    dropout mask, so a resumed run replays the same stream (``RowGenerators``: one stream per row).
    ``decoder`` may be an ``RCDMDecoder`` or a DDP wrapper of one.  Returns a float32 scalar.
    ``snr_gamma`` > 0 weights each row by ``min_snr_weight``.
    """
    if x0.ndim != 4 or x0.shape[1] != 3:
        raise ValueError(f"x0 must have shape [N, 3, H, W], got {list(x0.shape)}")
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    steps = scheduler.config.num_train_timesteps
    if isinstance(generator, RowGenerators):
        t, noise, uncond = generator.draw(x0.shape, steps, timestep_bias, p_uncond)
    else:
        n, gen_dev = x0.shape[0], generator.device
        # Drawn on the generator's own device so the numbers depend only on its state, not on x0's device.
        t = sample_timesteps(n, steps, timestep_bias, generator)
        noise = torch.randn(x0.shape, generator=generator, device=gen_dev)
        uncond = torch.rand(n, generator=generator, device=gen_dev) < p_uncond
    t, uncond = t.to(x0.device), uncond.to(x0.device)
    noise = noise.to(device=x0.device, dtype=x0.dtype)
    x_t = scheduler.add_noise(x0, noise, t)
    target = prediction_target(scheduler, x0, noise, t)
    pred = decoder(x_t, t, reps, layer, uncond=uncond)
    if snr_gamma <= 0:
        return F.mse_loss(pred.float(), target.float())
    per_row = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
    return (min_snr_weight(scheduler, t, snr_gamma) * per_row).mean()


def sample_timesteps(n: int, num_timesteps: int, bias: float, generator: torch.Generator) -> torch.Tensor:
    """n training timesteps (long [n], on the generator's device) with density ~ (t / T)^bias on [0, T).

    bias 0 is RCDM's uniform draw. At high noise the image is still undecided and the condition is what
    the network must read (the conditioning gap, docs/RESULTS.md, is largest there); bias > 0 spends more
    of each batch there: bias 1 draws t >= T/2 three times as often as t < T/2.
    Inverse CDF: t = T u^(1 / (1 + b)).
    """
    if bias < 0:
        raise ValueError(f"decoder.timestep_bias must be >= 0, got {bias}")
    if bias == 0:
        return torch.randint(0, num_timesteps, (n,), generator=generator, device=generator.device)
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64)
    t = (num_timesteps * u.pow(1.0 / (1.0 + bias))).long()
    return t.clamp(max=num_timesteps - 1)


def prediction_target(
    scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """What the network learns to output for x_t = add_noise(x0, noise, t), all [N, 3, H, W] (t [N]):
    the noise (epsilon), the velocity sqrt(abar) noise - sqrt(1 - abar) x0 (v), or x0 (sample)."""
    prediction = PredictionType(scheduler.config.prediction_type)
    if prediction is PredictionType.EPSILON:
        return noise
    if prediction is PredictionType.V_PREDICTION:
        return scheduler.get_velocity(x0, noise, t)
    return x0


def min_snr_weight(scheduler: DDPMScheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights [N] for timesteps ``t`` [N] (Hang et al. 2023, eq. 8 and Table 1).

    With SNR_t = abar_t / (1 - abar_t), the weight on the x0-space loss is min(SNR_t, gamma); expressed on the
    network's own target it becomes min(SNR, gamma) / SNR for epsilon, min(SNR, gamma) / (SNR + 1) for v, and
    min(SNR, gamma) for x0. It stops the many nearly noise-free timesteps from dominating the gradient.
    """
    if gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0 to weight the loss, got {gamma}")
    snr = compute_snr(scheduler, t).float()
    clipped = snr.clamp(max=gamma)
    prediction = PredictionType(scheduler.config.prediction_type)
    if prediction is PredictionType.EPSILON:
        return clipped / snr
    if prediction is PredictionType.V_PREDICTION:
        return clipped / (snr + 1)
    return clipped
