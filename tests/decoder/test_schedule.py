"""The training noise schedule: what the network learns to output, the Min-SNR weights, and the training
timesteps (uniform by default, as RCDM; skewed toward high noise by decoder.timestep_bias)."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.config import BetaSchedule, PredictionType
from rcdm_viz.decoder.schedule import (
    make_noise_scheduler,
    min_snr_weight,
    prediction_target,
    sample_timesteps,
)
from rcdm_viz.errors import RcdmVizError


def _batch(n: int = 5):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(n, 3, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(n, 3, 4, 4, generator=gen)
    return x0, noise, torch.tensor([0, 10, 250, 600, 999])[:n]


@pytest.mark.parametrize("prediction", list(PredictionType))
def test_prediction_target_is_noise_velocity_or_x0(prediction):
    sched = make_noise_scheduler(prediction_type=prediction)
    x0, noise, t = _batch()
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    want = {
        PredictionType.EPSILON: noise,
        PredictionType.V_PREDICTION: abar.sqrt() * noise - (1 - abar).sqrt() * x0,
        PredictionType.SAMPLE: x0,
    }[prediction]
    torch.testing.assert_close(prediction_target(sched, x0, noise, t), want)


@pytest.mark.parametrize("schedule", list(BetaSchedule))
def test_every_schedule_builds_with_clipping_and_decreasing_signal(schedule):
    sched = make_noise_scheduler(num_train_timesteps=50, beta_schedule=schedule)
    assert sched.config.clip_sample and sched.config.clip_sample_range == 1.0
    abar = sched.alphas_cumprod
    assert len(abar) == 50 and bool((abar[1:] < abar[:-1]).all()) and 0 < float(abar[-1]) < float(abar[0]) < 1


@pytest.mark.parametrize("prediction", list(PredictionType))
def test_min_snr_weight_caps_the_x0_space_weight_at_gamma(prediction):
    sched = make_noise_scheduler(prediction_type=prediction)
    t = torch.tensor([0, 100, 500, 999])
    abar = sched.alphas_cumprod[t].double()
    snr = abar / (1 - abar)
    capped = snr.clamp(max=5.0)
    want = {PredictionType.EPSILON: capped / snr, PredictionType.V_PREDICTION: capped / (snr + 1),
            PredictionType.SAMPLE: capped}[prediction]
    torch.testing.assert_close(min_snr_weight(sched, t, 5.0).double(), want, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="snr_gamma"):
        min_snr_weight(sched, t, 0.0)


def test_bad_schedule_settings_are_one_line_errors():
    with pytest.raises(ValueError, match="num_train_timesteps must be >= 1"):
        make_noise_scheduler(0)
    with pytest.raises(RcdmVizError, match="unknown beta_schedule 'cosine'; choose one of: linear"):
        make_noise_scheduler(beta_schedule="cosine")
    with pytest.raises(RcdmVizError, match="unknown prediction_type 'x0'"):
        make_noise_scheduler(prediction_type="x0")


def test_bias_zero_is_the_uniform_draw():
    a = sample_timesteps(64, 1000, 0.0, torch.Generator().manual_seed(3))
    b = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


@pytest.mark.parametrize(("bias", "upper_half"), [(1.0, 0.75), (3.0, 1 - 0.5**4)])
def test_bias_moves_mass_to_high_noise(bias, upper_half):
    t = sample_timesteps(100_000, 1000, bias, torch.Generator().manual_seed(0))
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    # density ~ (t / T)^b: P(t >= T/2) = 1 - 2^-(b + 1)
    assert abs(float((t >= 500).double().mean()) - upper_half) < 0.01


def test_negative_bias_is_an_error():
    with pytest.raises(ValueError, match="timestep_bias must be >= 0, got -1"):
        sample_timesteps(4, 1000, -1.0, torch.Generator())
