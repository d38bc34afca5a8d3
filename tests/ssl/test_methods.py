"""Every registered SSL method trains end to end; pairings, BYOL's target, the supervised loss, LARS."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rcdm_viz.config import Method, SSLConfig, load_config
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, read_metrics
from rcdm_viz.ssl.methods import METHODS, Embedded, Pairing, byol_momentum, get_method
from rcdm_viz.ssl.optim import LARS, param_groups
from rcdm_viz.ssl.pairing import class_partners, nearest_neighbours
from rcdm_viz.ssl.train import TargetNetwork, train_encoder
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def reference_encoder(tmp_path_factory) -> str:
    run = RunDir(tmp_path_factory.mktemp("ref") / "run")
    train_encoder(tiny_config("ssl.epochs=1", "ssl.online_probes=false"), run, progress=False)
    return str(run.encoder)


@pytest.mark.parametrize("method", list(Method))
def test_every_method_trains_with_its_preset(method, reference_encoder, tmp_path):
    """The preset of each method loads; a tiny run gives finite losses and per-layer probe accuracies."""
    preset = load_config(method.value)
    assert preset.ssl.method == method
    cfg = tiny_config(f"ssl.method={method.value}", f"ssl.reference_encoder={reference_encoder}")
    run = RunDir(tmp_path / "run")
    train_encoder(cfg, run, progress=False)
    records = read_metrics(run.encoder_metrics)
    assert len(records) == 2 * 128 // 32
    assert all(math.isfinite(r["loss"]) for r in records)
    probes = {f"probe/{layer}" for layer in ("trunk", "head1", "head2", "head3")}
    assert all({k for k in r if k.startswith("probe/")} == probes for r in records)
    assert all(math.isfinite(r[k]) for r in records for k in probes)
    assert run.has_encoder()


def test_methods_declare_their_needs():
    assert get_method("byol").target_network and not get_method("simclr").target_network
    assert get_method("simclr_class").pairing is Pairing.CLASS and get_method("simclr_class").needs_labels
    assert get_method("simclr_neighbour").pairing is Pairing.NEIGHBOUR
    assert get_method("supervised").needs_labels
    assert set(METHODS) == set(Method)
    with pytest.raises(RcdmVizError, match="'dino'"):
        get_method("dino")


def test_unknown_method_in_config_names_value():
    with pytest.raises(RcdmVizError, match="'dino'"):
        load_config(None, ["ssl.method=dino"])


def test_class_partners_are_other_images_of_the_same_class():
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])  # class 3 has a single image
    idx = torch.arange(8).repeat(50)
    partners = class_partners(labels, idx, torch.Generator().manual_seed(0))
    assert torch.equal(labels[partners], labels[idx])
    alone = idx == 7
    assert torch.equal(partners[alone], idx[alone])  # a lone image pairs with itself
    assert not (partners[~alone] == idx[~alone]).any()
    # Every other image of class 0 is drawn for anchor 0; the draw is a pure function of the generator.
    assert set(partners[idx == 0].tolist()) == {2, 5}
    again = class_partners(labels, idx, torch.Generator().manual_seed(0))
    assert torch.equal(partners, again)


def test_nearest_neighbours_match_brute_force():
    feats = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
    got = nearest_neighbours(feats, chunk=8)
    cos = F.cosine_similarity(feats[:, None], feats[None], dim=2)
    cos.fill_diagonal_(-2)
    assert torch.equal(got, cos.argmax(1))
    assert not (got == torch.arange(37)).any()


def test_neighbour_method_without_reference_is_a_clear_error(tmp_path):
    with pytest.raises(RcdmVizError, match="reference_encoder"):
        train_encoder(tiny_config("ssl.method=simclr_neighbour"), RunDir(tmp_path / "r"), progress=False)


def test_byol_momentum_cosine_schedule():
    assert byol_momentum(0.996, 0, 100) == pytest.approx(0.996)
    assert byol_momentum(0.996, 50, 100) == pytest.approx(0.998)
    assert byol_momentum(0.996, 100, 100) == pytest.approx(1.0)


def test_target_network_is_an_ema_of_the_online_encoder():
    from rcdm_viz.encoders import build_encoder

    online = build_encoder("resnet18", width=8, head="8-4", base_width=4, small_input=True, resolution=8)
    target = TargetNetwork(online)
    before = [p.clone() for p in target.encoder.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target.update(online, 0.9)
    for b, t, o in zip(before, target.encoder.parameters(), online.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * o, atol=1e-6)
        assert not t.requires_grad


def test_byol_loss_is_symmetrised_through_the_predictor():
    spec = get_method("byol")
    cfg = SSLConfig(byol_predictor_hidden=16)
    extras = spec.extras(6, cfg, 0)
    g = torch.Generator().manual_seed(0)
    z1, z2, t1, t2 = (torch.randn(8, 6, generator=g) for _ in range(4))
    loss, _ = spec.loss(Embedded(z1, z2, torch.zeros(8, dtype=torch.long), t1, t2), extras, cfg)
    p1, p2 = extras["predictor"](torch.cat([z1, z2])).chunk(2)
    want = (2 - 2 * F.cosine_similarity(p1, t2)).mean() + (2 - 2 * F.cosine_similarity(p2, t1)).mean()
    assert torch.allclose(loss, want, atol=1e-6)


def test_supervised_loss_is_cross_entropy_of_both_views():
    spec = get_method("supervised")
    extras = spec.extras(6, SSLConfig(), 4)
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    y = torch.randint(0, 4, (8,), generator=g)
    loss, logs = spec.loss(Embedded(z1, z2, y), extras, SSLConfig())
    w, b = extras["classifier"].weight, extras["classifier"].bias
    want = (F.cross_entropy(z1 @ w.T + b, y) + F.cross_entropy(z2 @ w.T + b, y)) / 2
    assert torch.allclose(loss, want, atol=1e-6)
    both, labels = torch.cat([z1, z2]), torch.cat([y, y])
    assert logs["train_accuracy"] == float(((both @ w.T + b).argmax(1) == labels).float().mean())
    with pytest.raises(ValueError, match="classes"):
        spec.extras(6, SSLConfig(), 1)


def _lars_reference(params, grads, steps, lr, wd, momentum, eta):
    """Literal LARS (You et al. 2017, VICReg's implementation) on weights; biases get plain momentum SGD."""
    params = [p.clone() for p in params]
    bufs = [torch.zeros_like(p) for p in params]
    for _ in range(steps):
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            if p.ndim > 1:
                u = g + wd * p
                ratio = eta * p.norm() / u.norm()
                u = ratio * u
            else:
                u = g
            bufs[i] = momentum * bufs[i] + u
            params[i] = p - lr * bufs[i]
    return params


def test_lars_matches_reference_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    grads = [torch.randn_like(p) for p in model.parameters()]
    start = [p.detach().clone() for p in model.parameters()]
    opt = LARS(param_groups(model, weight_decay=0.01), lr=0.3, momentum=0.9, eta=0.02)
    for _ in range(3):
        for p, g in zip(model.parameters(), grads, strict=True):
            p.grad = g.clone()
        opt.step()
    want = _lars_reference(start, grads, 3, lr=0.3, wd=0.01, momentum=0.9, eta=0.02)
    for p, w in zip(model.parameters(), want, strict=True):
        assert torch.allclose(p.detach(), w, rtol=1e-12, atol=1e-14)
    # Bias: no decay, no trust ratio -> plain heavy-ball SGD.
    assert param_groups(model, 0.01)[1]["weight_decay"] == 0.0


def test_lars_keeps_zero_weights_moving():
    """A zero-norm weight takes the trust ratio 1 instead of stalling (as the official implementation)."""
    w = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    w.grad = torch.ones(2, 2, dtype=torch.float64)
    LARS([w], lr=0.1, momentum=0.0).step()
    assert torch.allclose(w.detach(), torch.full((2, 2), -0.1, dtype=torch.float64))
