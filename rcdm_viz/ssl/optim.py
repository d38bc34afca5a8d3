"""Optimisers of encoder training: LARS (E/N) and AdamW (GR), with linear warm-up and cosine decay.

Biases and normalisation parameters (every parameter with ndim <= 1) get neither weight decay nor the LARS
trust ratio, as in the official VICReg / Barlow Twins / SimCLR recipes.
"""

from __future__ import annotations

import torch
from diffusers.optimization import get_cosine_schedule_with_warmup
from torch import Tensor, nn

from rcdm_viz.config import Optimizer, SSLConfig


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al. 2017), as in the official VICReg / Barlow Twins code.

    Per parameter p with gradient g, for groups with ``lars=True``:
        u = g + wd * p;   q = eta * ||p|| / ||u|| (1 when either norm is 0);   u <- q * u
        m <- momentum * m + u;   p <- p - lr * m
    Groups with ``lars=False`` skip the trust ratio (and are given weight_decay 0 by ``param_groups``).
    """

    def __init__(
        self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "eta": eta, "lars": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch.optim API)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                if group["lars"]:
                    update = update * _trust_ratio(p, update, group["eta"])
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(update)
                p.add_(mu, alpha=-group["lr"])
        return loss


def _trust_ratio(p: Tensor, update: Tensor, eta: float) -> Tensor:
    """eta * ||p|| / ||update||, or 1 when either norm is zero (a 0-dim tensor, no host sync)."""
    p_norm, u_norm = torch.norm(p), torch.norm(update)
    one = torch.ones_like(p_norm)
    return torch.where(p_norm > 0, torch.where(u_norm > 0, eta * p_norm / u_norm, one), one)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights (decayed, LARS-adapted) and biases/norm parameters (neither), the usual SSL split."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "lars": True},
        {"params": plain, "weight_decay": 0.0, "lars": False},
    ]


def make_optimizer(
    model: nn.Module, ssl: SSLConfig, steps: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """``ssl.optimizer`` with peak lr = ssl.lr * batch / 256, linear warm-up then cosine decay to 0.

    E/N trains with LARS, base lr 0.5, batch 512; GR with AdamW, batch 2048.
    """
    if not ssl.lr > 0:
        raise ValueError(f"ssl.lr must be > 0, got {ssl.lr}")
    lr = ssl.lr * ssl.batch_size / 256
    groups = param_groups(model, ssl.weight_decay)
    if Optimizer(ssl.optimizer) is Optimizer.LARS:
        optimizer: torch.optim.Optimizer = LARS(groups, lr=lr, momentum=ssl.lars_momentum, eta=ssl.lars_eta)
    else:
        for g in groups:
            g.pop("lars")
        optimizer = torch.optim.AdamW(groups, lr=lr)
    warmup = min(steps // 2, round(ssl.warmup_epochs * steps_per_epoch))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, steps)
