"""GlobalBatchNorm: statistics over every process's batch (simulated here by a second, identical rank)."""

from __future__ import annotations

import torch
from torch import nn

from rcdm_viz.ssl import batchnorm
from rcdm_viz.ssl.batchnorm import GlobalBatchNorm, convert_global_batchnorm


def test_one_process_is_plain_batchnorm_in_train_and_eval_mode():
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    glob = convert_global_batchnorm(nn.Sequential(plain)).train()
    ref = nn.BatchNorm2d(3).train()
    torch.testing.assert_close(glob(x), ref(x))
    torch.testing.assert_close(glob[0].running_var, ref.running_var)
    glob.eval()
    ref.eval()
    torch.testing.assert_close(glob(x), ref(x))


def test_two_ranks_with_the_same_batch_normalise_like_one_and_count_2n_for_the_running_var(monkeypatch):
    """All-gathering a batch with an identical copy leaves mean and biased variance unchanged, but the
    running variance is unbiased over 2N values: var * 2N / (2N - 1), not N / (N - 1)."""
    monkeypatch.setattr(batchnorm, "_world_size", lambda: 2)
    monkeypatch.setattr(batchnorm, "gather_with_grad", lambda t: torch.cat([t, t]))
    torch.manual_seed(0)
    x = torch.randn(6, 4) * 2 + 0.5
    glob, ref = GlobalBatchNorm(4, momentum=1.0), nn.BatchNorm1d(4, momentum=1.0)
    torch.testing.assert_close(glob(x), ref(x))
    n = 6
    torch.testing.assert_close(glob.running_mean, x.mean(0))
    torch.testing.assert_close(glob.running_var, x.var(0, unbiased=False) * 2 * n / (2 * n - 1))
    assert not torch.allclose(glob.running_var, ref.running_var)  # ref divides by N - 1


def test_conversion_replaces_nested_batchnorms_and_keeps_their_state():
    conv = nn.Sequential(nn.Conv2d(1, 2, 1), nn.BatchNorm2d(2))
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), conv)
    model[1].running_mean.fill_(0.5)
    model[1].weight.data.fill_(2.0)
    model.eval()
    converted = convert_global_batchnorm(model)
    kinds = [type(m) for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert kinds == [GlobalBatchNorm, GlobalBatchNorm]
    assert float(converted[1].running_mean[0]) == 0.5 and float(converted[1].weight.detach()[0]) == 2.0
    assert not converted[1].training
