"""Encoder optimisers: the SSL parameter split, LARS's trust ratio, the learning-rate schedule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_viz.config import Optimizer, SSLConfig
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.ssl.optim import LARS, make_optimizer, param_groups


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))


def test_biases_and_norm_parameters_get_no_decay_and_no_trust_ratio():
    model = _model()
    decay, plain = param_groups(model, 0.1)
    assert [p.shape for p in decay["params"]] == [(3, 4), (2, 3)]
    assert [p.shape for p in plain["params"]] == [(3,), (3,), (3,)]  # bias, BN weight, BN bias
    assert (decay["weight_decay"], decay["lars"]) == (0.1, True)
    assert (plain["weight_decay"], plain["lars"]) == (0.0, False)


def test_lars_step_follows_the_trust_ratio_formula():
    p = nn.Parameter(torch.tensor([3.0, 4.0]))  # |p| = 5
    p.grad = torch.tensor([0.6, 0.8])
    opt = LARS([{"params": [p], "weight_decay": 0.5, "lars": True}], lr=0.1, momentum=0.9, eta=0.01)
    opt.step()
    u = torch.tensor([0.6, 0.8]) + 0.5 * torch.tensor([3.0, 4.0])  # g + wd p
    q = 0.01 * 5.0 / float(u.norm())
    torch.testing.assert_close(p.detach(), torch.tensor([3.0, 4.0]) - 0.1 * q * u)
    zero = nn.Parameter(torch.zeros(2))  # |p| = 0: ratio 1, plain SGD with momentum
    zero.grad = torch.ones(2)
    opt = LARS([{"params": [zero], "weight_decay": 0.0, "lars": True}], lr=0.1)
    opt.step()
    torch.testing.assert_close(zero.detach(), torch.full((2,), -0.1))


@pytest.mark.parametrize("kind", list(Optimizer))
def test_make_optimizer_scales_lr_with_batch_and_warms_up_then_decays(kind):
    ssl = SSLConfig(optimizer=kind, lr=0.2, batch_size=512, warmup_epochs=2.0)
    opt, sched = make_optimizer(_model(), ssl, steps=100, steps_per_epoch=10)
    assert isinstance(opt, LARS if kind is Optimizer.LARS else torch.optim.AdamW)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    peak = 0.2 * 512 / 256
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(peak / 2) and lrs[20] == pytest.approx(peak)
    assert max(lrs) == pytest.approx(peak) and lrs[-1] < peak / 100
    with pytest.raises(RcdmVizError, match="ssl.lr"):  # the config refuses it before the optimizer does
        SSLConfig(optimizer=kind, lr=0.0)
