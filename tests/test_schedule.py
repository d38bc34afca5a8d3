"""Training timesteps: uniform by default (RCDM), skewed toward high noise by decoder.timestep_bias."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.decoder.schedule import sample_timesteps
from rcdm_viz.errors import RcdmVizError


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
    with pytest.raises(RcdmVizError, match="timestep_bias must be >= 0, got -1"):
        sample_timesteps(4, 1000, -1.0, torch.Generator())
