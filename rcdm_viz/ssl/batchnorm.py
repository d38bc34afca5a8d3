"""BatchNorm over the global batch of every process, on any backend (gloo on CPU included).

SimCLR, VICReg and BYOL normalise with statistics of the whole (multi-device) batch. torch's
``nn.SyncBatchNorm`` does so on GPUs only; ``GlobalBatchNorm`` does the same with two all-gathers per layer
(mean, then variance: the two-pass formula, as stable as the single-process one), through
``gather_with_grad`` so that gradients flow across processes. One process with batch 2N and two processes
with batch N then compute the same outputs, running statistics and (after DDP averaging) gradients.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from rcdm_viz.ssl.losses import gather_with_grad


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Drop-in for BatchNorm1d/2d (inputs [N, C] or [N, C, H, W]); every rank's batch must have one shape."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GlobalBatchNorm expects [N, C, ...] input, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        world = _world_size()
        if not self.training or world == 1:
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        n = world * x.numel() // x.shape[1]
        mean = gather_with_grad(x.sum(dims)[None]).sum(0) / n
        centred = x - mean.view(shape)
        var = gather_with_grad(centred.pow(2).sum(dims)[None]).sum(0) / n  # biased, as BatchNorm normalises
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / max(n - 1, 1))
        y = centred * (var.view(shape) + self.eps).rsqrt()
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """As torch's BatchNorm: EMA with ``momentum``, or the cumulative average when it is None."""
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), m)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm1d/2d in ``module`` by a GlobalBatchNorm with the same parameters/buffers."""
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        new = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.load_state_dict(module.state_dict())
        return new.train(module.training)
    for name, child in module.named_children():
        module.add_module(name, convert_global_batchnorm(child))
    return module
