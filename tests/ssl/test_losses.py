"""SSL losses against literal reference implementations, behaviour, errors, and 2-process equivalence."""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from rcdm_viz.ssl.losses import (
    barlow_twins_loss,
    byol_loss,
    gather_with_grad,
    simclr_loss,
    vicreg_loss,
    vicreg_terms,
)
from tests._spawn import free_port, spawn_ranks

N, K = 8, 6


def _pair(seed: int = 0, n: int = N, k: int = K) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated float64 views whose per-dim scales straddle VICReg's std hinge at 1."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 2.0, k, dtype=torch.float64)
    base = torch.randn(n, k, generator=g, dtype=torch.float64)
    z1 = (base + 0.5 * torch.randn(n, k, generator=g, dtype=torch.float64)) * scale
    z2 = (base + 0.5 * torch.randn(n, k, generator=g, dtype=torch.float64)) * scale + 0.1
    return z1, z2


# ---------------------------------------------------------------- literal references


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum() / (a.norm() * b.norm())


def ref_simclr(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Python loop over the 2N anchors: -log softmax of the positive among the other 2N - 1."""
    z = torch.cat([z1, z2])
    m, n = z.shape[0], z1.shape[0]
    total = z.new_zeros(())
    for i in range(m):
        positive = (i + n) % m
        logits = [_cos(z[i], z[j]) / t for j in range(m) if j != i]
        denom = torch.stack(logits).exp().sum()
        total = total - (_cos(z[i], z[positive]) / t - denom.log())
    return total / m


def ref_vicreg(z1, z2, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    n, k = z1.shape
    invariance = ((z1 - z2) ** 2).sum() / (n * k)

    def var_term(z):
        mu = z.sum(0) / n
        hinge = [F.relu(1 - torch.sqrt(((z[:, j] - mu[j]) ** 2).sum() / (n - 1) + 1e-4)) for j in range(k)]
        return torch.stack(hinge).sum() / k

    def cov_term(z):
        mu = z.sum(0) / n
        s = z.new_zeros(())
        for a in range(k):
            for b in range(k):
                if a != b:
                    s = s + (((z[:, a] - mu[a]) * (z[:, b] - mu[b])).sum() / (n - 1)) ** 2
        return s / k

    variance = (var_term(z1) + var_term(z2)) / 2
    covariance = cov_term(z1) + cov_term(z2)
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    terms["loss"] = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return terms


def ref_barlow(z1, z2, lambd=0.0051):
    n, k = z1.shape

    def standardise(z):
        mu = z.sum(0) / n
        var = ((z - mu) ** 2).sum(0) / n
        return (z - mu) / torch.sqrt(var + 1e-5)

    a, b = standardise(z1), standardise(z2)
    loss = z1.new_zeros(())
    for i in range(k):
        for j in range(k):
            c_ij = (a[:, i] * b[:, j]).sum() / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambd * c_ij**2)
    return loss


def ref_byol(p, z):
    return torch.stack([2 - 2 * _cos(p[i], z[i]) for i in range(p.shape[0])]).mean()


# ---------------------------------------------------------------- equivalence


def _value_and_grads(fn, z1, z2):
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


@pytest.mark.parametrize(
    ("fn", "ref"),
    [
        (lambda a, b: simclr_loss(a, b, temperature=0.15), lambda a, b: ref_simclr(a, b, 0.15)),
        (lambda a, b: simclr_loss(a, b, temperature=0.5), lambda a, b: ref_simclr(a, b, 0.5)),
        (vicreg_loss, lambda a, b: ref_vicreg(a, b)["loss"]),
        (lambda a, b: vicreg_loss(a, b, 2.0, 3.0, 4.0), lambda a, b: ref_vicreg(a, b, 2.0, 3.0, 4.0)["loss"]),
        (barlow_twins_loss, ref_barlow),
        (lambda a, b: barlow_twins_loss(a, b, lambd=0.3), lambda a, b: ref_barlow(a, b, 0.3)),
    ],
    ids=["simclr-0.15", "simclr-0.5", "vicreg", "vicreg-coeffs", "barlow", "barlow-lambd"],
)
def test_loss_matches_reference_value_and_gradient(fn, ref):
    z1, z2 = _pair()
    got, g1, g2 = _value_and_grads(fn, z1, z2)
    want, r1, r2 = _value_and_grads(ref, z1, z2)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (got, want)
    assert torch.allclose(g1, r1, rtol=1e-9, atol=1e-12)
    assert torch.allclose(g2, r2, rtol=1e-9, atol=1e-12)


def test_vicreg_terms_match_reference():
    z1, z2 = _pair(1)
    got = vicreg_terms(z1, z2)
    want = ref_vicreg(z1, z2)
    assert set(got) == {"invariance", "variance", "covariance", "loss"}
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-10, atol=1e-12), name
    # The fixture straddles the hinge, so the variance term is neither 0 nor saturated.
    assert 0 < got["variance"] < 1


def test_byol_matches_reference_and_stops_target_gradient():
    p, z = _pair(2)
    p.requires_grad_()
    z.requires_grad_()
    loss = byol_loss(p, z)
    assert torch.allclose(loss, ref_byol(p, z), rtol=1e-10, atol=1e-12)
    loss.backward()
    assert z.grad is None
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_simclr_lower_for_aligned_views():
    z1, _ = _pair(3, n=32, k=16)
    noise = torch.randn(z1.shape, generator=torch.Generator().manual_seed(4), dtype=z1.dtype)
    aligned = simclr_loss(z1, z1 + 0.01 * noise)
    unrelated = simclr_loss(z1, noise)
    assert aligned < unrelated
    # Uniform logits give log(2N - 1); unrelated views sit near it, aligned views far below.
    assert aligned < 0.5 * math.log(2 * 32 - 1)


def test_losses_keep_dtype():
    z1, z2 = (t.float() for t in _pair())
    for fn in (simclr_loss, vicreg_loss, barlow_twins_loss, byol_loss):
        assert fn(z1, z2).dtype == torch.float32


@pytest.mark.parametrize("fn", [simclr_loss, vicreg_loss, barlow_twins_loss, byol_loss])
def test_shape_mismatch_names_shapes(fn):
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(8, 5\)"):
        fn(torch.zeros(8, 6), torch.zeros(8, 5))
    with pytest.raises(ValueError, match=r"\(8,\)"):
        fn(torch.zeros(8), torch.zeros(8))


@pytest.mark.parametrize("fn", [vicreg_loss, barlow_twins_loss])
def test_single_sample_batch_rejected(fn):
    with pytest.raises(ValueError, match=r"at least 2.*\(1, 4\)"):
        fn(torch.zeros(1, 4), torch.zeros(1, 4))


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        simclr_loss(torch.zeros(4, 3), torch.zeros(4, 3), temperature=0.0)


def test_gather_is_identity_without_distributed():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


# ---------------------------------------------------------------- two processes vs one

LOSSES = {
    "simclr": lambda a, b: simclr_loss(a, b, temperature=0.15),
    "vicreg": vicreg_loss,
    "barlow": barlow_twins_loss,
    "byol": byol_loss,
}
WORLD = 2


def _ddp_param_grads(z_fn, params_seed: int, x1, x2, ddp: bool):
    """Gradient of SimCLR w.r.t. a tiny linear encoder's weight (wrapped in DDP when ``ddp``)."""
    torch.manual_seed(params_seed)
    model = torch.nn.Linear(x1.shape[1], 4).double()
    net = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    z1, z2 = net(torch.cat([x1, x2])).chunk(2)  # one forward, as a training step does
    z_fn(z1, z2).backward()
    return model.weight.grad.clone()


def _worker(rank: int, port: int, data_path: str, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    # A timeout turns a mismatched collective into an error instead of a hung test run.
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        data = torch.load(data_path)
        out = {}
        for name, fn in LOSSES.items():
            z1, z2 = (data[key].chunk(WORLD)[rank] for key in ("z1", "z2"))
            out[name] = _value_and_grads(fn, z1, z2)
        x1, x2 = (data[key].chunk(WORLD)[rank] for key in ("x1", "x2"))
        out["ddp_weight_grad"] = _ddp_param_grads(LOSSES["simclr"], 0, x1, x2, ddp=True)
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer still talks to it (an abort, seen once in CI)
    finally:
        dist.destroy_process_group()


def test_two_processes_match_one(tmp_path):
    z1, z2 = _pair(5, n=8, k=5)
    x1, x2 = _pair(6, n=8, k=3)
    data_path = tmp_path / "data.pt"
    torch.save({"z1": z1, "z2": z2, "x1": x1, "x2": x2}, data_path)
    spawn_ranks(_worker, (free_port(), str(data_path), str(tmp_path)), WORLD, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    rows = torch.arange(z1.shape[0]).chunk(WORLD)

    for name, fn in LOSSES.items():
        loss, g1, g2 = _value_and_grads(fn, z1, z2)
        for r, res in enumerate(ranks):
            r_loss, r_g1, r_g2 = res[name]
            assert torch.allclose(r_loss, loss, rtol=1e-12, atol=1e-14), (name, r)
            # all_gather's backward sums every rank's copy of the (identical) global loss: W x the
            # single-process gradient, which DDP's averaging over W ranks brings back to 1 x.
            assert torch.allclose(r_g1, WORLD * g1[rows[r]], rtol=1e-10, atol=1e-13), (name, r)
            if name == "byol":
                assert r_g2 is None and g2 is None
            else:
                assert torch.allclose(r_g2, WORLD * g2[rows[r]], rtol=1e-10, atol=1e-13), (name, r)

    # End to end: DDP parameter gradients equal the single-process full-batch gradient.
    want = _ddp_param_grads(LOSSES["simclr"], 0, x1, x2, ddp=False)
    for res in ranks:
        assert torch.allclose(res["ddp_weight_grad"], want, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------- a published implementation


def test_losses_match_lightly():
    """lightly's NT-Xent, VICReg and negative-cosine losses (its Barlow Twins standardises with the
    unbiased std, unlike the official code, so it is not compared)."""
    lightly_loss = pytest.importorskip("lightly.loss")
    z1, z2 = _pair(7, n=16, k=8)
    assert torch.allclose(simclr_loss(z1, z2, 0.15), lightly_loss.NTXentLoss(temperature=0.15)(z1, z2))
    assert torch.allclose(vicreg_loss(z1, z2), lightly_loss.VICRegLoss()(z1, z2))
    assert torch.allclose(byol_loss(z1, z2), 2 + 2 * lightly_loss.NegativeCosineSimilarity()(z1, z2))
