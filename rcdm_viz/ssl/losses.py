"""SSL losses: pure functions on the embeddings of two views (docs/DESIGN.md, "Definitions", SSL losses).

Every loss takes two batches ``[N, K]`` (row i of each is a view of the same image) and returns a scalar.
The formulas follow the official implementations of SimCLR (NT-Xent), VICReg (Bardes et al., 2022,
facebookresearch/vicreg), Barlow Twins (Zbontar et al., 2021, facebookresearch/barlowtwins) and BYOL
(Grill et al., 2020).

Distributed training. Each loss first gathers the embeddings of every process (``gather_with_grad``), so
every rank computes the loss of the *global* batch: one process with batch 2N and two processes with batch
N give the same loss value. Gradients match too, once DDP has averaged them:

* The gather's backward sums over ranks (as ``torch.distributed.nn.functional.all_gather``'s does): the
  gradient that reaches rank r's local input is the sum, over all W ranks, of d(loss on that rank)/d(slot r).
  Every rank computes the same global loss L, so rank r's local gradient is W * dL/dz_r.
* Parameters then get W * (dz_r/dθ)^T dL/dz_r on rank r; DDP averages over ranks (divides the sum by W),
  giving sum_r (dz_r/dθ)^T dL/dz_r = dL/dθ, exactly the single-process gradient of the global batch.

``tests/ssl/test_losses.py`` checks this with two gloo processes. Consequences: every rank must call
``backward`` (the gather's backward is a collective), every rank's local batch must have the same shape,
and a caller that does *not* average gradients over ranks must divide by the world size itself.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

# Numerical constants of the official implementations.
_VICREG_STD_EPS = 1e-4  # VICReg: std = sqrt(var + 1e-4)
_BARLOW_BN_EPS = 1e-5  # Barlow Twins: BatchNorm1d(affine=False) default eps


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over ranks.

    Written on the public ``dist.all_gather`` / ``dist.all_reduce`` (any backend: gloo, NCCL) because
    ``torch.distributed.nn.functional.all_gather``, which has the same gradient, is deprecated in favour
    of a private module. Same semantics as the official VICReg ``FullGatherLayer``.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Sum over ranks of d(loss on that rank)/d(this rank's rows): the reduce-scatter of the gradient.
        grad = grad.clone(memory_format=torch.contiguous_format)  # never reduce autograd's buffer in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` [n, K] from every process, in rank order, keeping the autograd graph.

    Returns [W * n, K] when torch.distributed is initialised with world size W > 1, else ``x`` itself.
    All ranks must pass tensors of the same shape. See the module docstring for the gradient scaling.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def _check_pair(name: str, z1: Tensor, z2: Tensor, first: str = "z1", second: str = "z2") -> None:
    """Raise ValueError unless ``z1`` and ``z2`` are both [N, K] with the same shape."""
    if z1.dim() != 2 or z2.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name}: expected two embedding batches of the same shape [N, K], got "
            f"{first} {tuple(z1.shape)} and {second} {tuple(z2.shape)}"
        )


def _check_batch(name: str, z: Tensor, minimum: int, why: str) -> None:
    """Raise ValueError if the (global) batch ``z`` [N, K] has fewer than ``minimum`` rows."""
    if z.shape[0] < minimum:
        raise ValueError(
            f"{name}: needs a batch of at least {minimum} embeddings ({why}), got shape {tuple(z.shape)}"
        )


def simclr_loss(z1: Tensor, z2: Tensor, temperature: float = 0.15) -> Tensor:
    """NT-Xent (SimCLR, Chen et al. 2020) of two views ``z1``, ``z2`` [N, K] -> scalar.

    Each of the 2N embeddings is an anchor whose positive is the other view of its image and whose
    negatives are the remaining 2N - 2 embeddings; logits are cosine similarities / ``temperature``
    (E/N: 0.15). The cross-entropy is averaged over the 2N anchors.
    """
    _check_pair("simclr_loss", z1, z2)
    if not temperature > 0:
        raise ValueError(f"simclr_loss: temperature must be > 0, got {temperature}")
    z = torch.cat([gather_with_grad(z1), gather_with_grad(z2)], dim=0)
    n = z.shape[0] // 2
    z = F.normalize(z, dim=1)
    logits = z @ z.T / temperature
    # An anchor is never compared with itself: -inf drops it from the softmax (and from the gradient).
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx])  # anchor i (view 1) <-> i + n (view 2)
    return F.cross_entropy(logits, targets)


def _off_diagonal_sq_sum(m: Tensor) -> Tensor:
    """Sum of the squared off-diagonal entries of the square matrix ``m``."""
    return m.pow(2).sum() - torch.diagonal(m).pow(2).sum()


def vicreg_terms(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> dict[str, Tensor]:
    """VICReg's three unweighted terms and their weighted sum, for two views [N, K] (N >= 2 globally).

    Returns {"invariance", "variance", "covariance", "loss"} (scalars, with autograd), where
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance, as in the official
    implementation: invariance = MSE; variance = mean over dims of relu(1 - sqrt(var + 1e-4)), unbiased
    var, averaged over the two views; covariance = sum of squared off-diagonal covariances / K, summed over
    the two views.
    """
    _check_pair("vicreg_loss", z1, z2)
    x, y = gather_with_grad(z1), gather_with_grad(z2)
    _check_batch("vicreg_loss", x, 2, "the unbiased variance divides by N - 1")
    n, k = x.shape
    # The official code takes the MSE on the local batch; on the global batch it is the same in
    # expectation and makes one process and several processes agree exactly.
    invariance = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + _VICREG_STD_EPS)
    std_y = torch.sqrt(y.var(dim=0) + _VICREG_STD_EPS)
    variance = F.relu(1 - std_x).mean() / 2 + F.relu(1 - std_y).mean() / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)
    covariance = _off_diagonal_sq_sum(cov_x) / k + _off_diagonal_sq_sum(cov_y) / k
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"invariance": invariance, "variance": variance, "covariance": covariance, "loss": loss}


def vicreg_loss(
    z1: Tensor,
    z2: Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
) -> Tensor:
    """VICReg loss (Bardes et al. 2022; E/N: coefficients 25, 25, 1) of two views [N, K] -> scalar.

    See ``vicreg_terms`` for the definition of each term.
    """
    return vicreg_terms(z1, z2, sim_coeff, std_coeff, cov_coeff)["loss"]


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051) -> Tensor:
    """Barlow Twins loss (Zbontar et al. 2021) of two views [N, K] (N >= 2 globally) -> scalar.

    Each view is standardised over the batch (biased variance, eps 1e-5, i.e. BatchNorm1d without affine
    in training mode); with c = z1^T z2 / N [K, K], loss = sum_i (1 - c_ii)^2 + lambd * sum_{i!=j} c_ij^2.
    """
    _check_pair("barlow_twins_loss", z1, z2)
    x, y = gather_with_grad(z1), gather_with_grad(z2)
    _check_batch("barlow_twins_loss", x, 2, "batch standardisation of a single embedding is undefined")
    n = x.shape[0]

    def standardise(z: Tensor) -> Tensor:
        return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + _BARLOW_BN_EPS)

    c = standardise(x).T @ standardise(y) / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    return on_diag + lambd * _off_diagonal_sq_sum(c)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL regression loss (Grill et al. 2020): mean over the batch of 2 - 2 cos(p, z) -> scalar.

    ``p`` [N, K] are the online network's predictions, ``z`` [N, K] the target network's projections;
    ``z`` is detached (the target network gets no gradient). Symmetrise by calling it twice with the views
    swapped, as BYOL does.
    """
    _check_pair("byol_loss", p, z, first="p", second="z")
    p = gather_with_grad(p)
    z = gather_with_grad(z.detach())
    cos = (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(dim=1)
    return (2 - 2 * cos).mean()
