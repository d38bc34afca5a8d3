"""RCDMDecoder (conditioning, persistence, errors) and the diffusion training loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.schedule import diffusion_loss, make_noise_scheduler, min_snr_weight
from rcdm_viz.errors import RcdmVizError

TINY = dict(resolution=16, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP's spinning workers made
    these tests ~20x slower; restore the setting for other test files."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(layer_dims: dict[str, int] | None = None, **kw) -> RCDMDecoder:
    torch.manual_seed(0)
    return RCDMDecoder(layer_dims=layer_dims or {"trunk": 8}, **{**TINY, **kw}).eval()


def perturb_conditioning(decoder: RCDMDecoder) -> RCDMDecoder:
    """Give the zero-initialised parts non-zero values, as training would."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mlp in decoder.rep_mlps.values():
            mlp[-1].weight.copy_(torch.randn(mlp[-1].weight.shape, generator=gen))
        decoder.null_embedding.copy_(torch.randn(decoder.null_embedding.shape, generator=gen))
        if decoder.layer_embedding is not None:
            decoder.layer_embedding.weight.normal_(generator=gen)
    return decoder


def inputs(n: int = 4, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    t = torch.randint(0, 1000, (n,), generator=gen)
    reps = torch.randn(n, dim, generator=gen)
    return x, t, reps


@torch.no_grad()
def test_architecture_follows_adm_choices():
    dec = RCDMDecoder({"trunk": 8}, resolution=32, block_out_channels=(32, 64, 64), norm_num_groups=8)
    unet = dec.unet.config
    # attention where the feature map is 16 or 8 px: levels 32 / 16 / 8 -> no / yes / yes
    assert unet.down_block_types == ("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert unet.up_block_types == ("AttnUpBlock2D", "AttnUpBlock2D", "ResnetUpsampleBlock2D")
    assert unet.resnet_time_scale_shift == "scale_shift" and unet.class_embed_type == "identity"
    assert dec.time_embed_dim == 128 and dec.null_embedding.shape == (128,)
    assert dec.layer_embedding is None
    out = dec(torch.zeros(2, 3, 32, 32), torch.tensor([0, 999]), torch.zeros(2, 8), "trunk")
    assert out.shape == (2, 3, 32, 32)


@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    dec = perturb_conditioning(tiny({"trunk": 8, "head1": 5}, encoder_fingerprint="abc123"))
    dec.save_pretrained(tmp_path / "dec")
    files = sorted(p.name for p in (tmp_path / "dec").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    loaded = load_decoder(tmp_path / "dec")
    assert not loaded.training
    assert loaded.config.layer_dims == {"trunk": 8, "head1": 5}
    assert loaded.layers == dec.layers == ["head1", "trunk"]
    assert loaded.config.encoder_fingerprint == "abc123"
    assert list(loaded.config.block_out_channels) == [32, 32] and loaded.config.resolution == 16
    x, t, reps = inputs()
    for layer, r in (("trunk", reps), ("head1", reps[:, :5])):
        assert torch.equal(loaded(x, t, r, layer), dec(x, t, r, layer))
    assert torch.equal(loaded(x, t, None, "trunk"), dec(x, t, None, "trunk"))


@torch.no_grad()
def test_zero_init_ignores_reps_then_perturbed_mlp_uses_them():
    dec = tiny()
    x, t, reps = inputs()
    other = torch.randn_like(reps) * 10
    base = dec(x, t, reps, "trunk")
    assert torch.equal(base, dec(x, t, other, "trunk"))
    assert torch.equal(base, dec(x, t, None, "trunk"))
    perturb_conditioning(dec)
    assert (dec(x, t, reps, "trunk") - dec(x, t, other, "trunk")).abs().max() > 1e-3


@torch.no_grad()
def test_uncond_rows_equal_null_condition():
    dec = perturb_conditioning(tiny())
    x, t, reps = inputs()
    mask = torch.tensor([True, False, True, False])
    mixed = dec(x, t, reps, "trunk", uncond=mask)
    torch.testing.assert_close(mixed[mask], dec(x, t, None, "trunk")[mask], rtol=0, atol=1e-6)
    torch.testing.assert_close(mixed[~mask], dec(x, t, reps, "trunk")[~mask], rtol=0, atol=1e-6)
    assert (mixed[0] - dec(x, t, reps, "trunk")[0]).abs().max() > 1e-3


@torch.no_grad()
def test_shared_decoder_layer_embedding_distinguishes_layers():
    dec = tiny({"a": 8, "b": 8})
    assert isinstance(dec.layer_embedding, nn.Embedding) and dec.layer_embedding.weight.abs().sum() == 0
    x, t, reps = inputs()
    assert torch.equal(dec(x, t, reps, "a"), dec(x, t, reps, "b"))  # all zero-init
    perturb_conditioning(dec)
    assert (dec(x, t, reps, "a") - dec(x, t, reps, "b")).abs().max() > 1e-3


def test_bad_inputs_name_the_value(tmp_path):
    dec = tiny({"trunk": 8, "head1": 4})
    x, t, reps = inputs()
    with pytest.raises(ValueError, match=r"'head9'.*\['head1', 'trunk'\]"):
        dec(x, t, reps, "head9")
    with pytest.raises(ValueError, match=r"7.*8|8.*7"):
        dec(x, t, reps[:, :7], "trunk")
    with pytest.raises(ValueError, match="uncond"):
        dec(x, t, reps, "trunk", uncond=torch.ones(3, dtype=torch.bool))
    missing = tmp_path / "nowhere"
    with pytest.raises(RcdmVizError, match="nowhere"):
        load_decoder(missing)
    with pytest.raises(ValueError, match="norm_num_groups 12"):
        RCDMDecoder({"trunk": 8}, **{**TINY, "norm_num_groups": 12})
    with pytest.raises(ValueError, match="resolution 18"):
        RCDMDecoder({"trunk": 8}, **{**TINY, "resolution": 18, "block_out_channels": (32, 32, 32)})
    with pytest.raises(ValueError, match="'trunk' has dimension 0"):
        RCDMDecoder({"trunk": 0}, **TINY)
    assert RCDMDecoder({}, **TINY).is_prior  # no layers: the unconditional prior


def test_scheduler_matches_rcdm_and_rejects_unknown_choices():
    sched = make_noise_scheduler()
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "linear"
    assert sched.config.clip_sample and sched.config.prediction_type == "epsilon"
    assert sched.betas[0].item() == pytest.approx(1e-4) and sched.betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(RcdmVizError, match="'x0'"):
        make_noise_scheduler(prediction_type="x0")
    with pytest.raises(RcdmVizError, match="'cubic'"):
        make_noise_scheduler(beta_schedule="cubic")


def reference_loss(dec, x0, reps, sched, seed, p_uncond, target_kind):
    """L_simple written out from Ho et al. (2020) with the documented draw order t, noise, mask."""
    gen = torch.Generator().manual_seed(seed)
    n = x0.shape[0]
    t = torch.randint(0, 1000, (n,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    mask = torch.rand(n, generator=gen) < p_uncond
    abar = sched.alphas_cumprod[t].view(n, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    target = noise if target_kind == "epsilon" else abar.sqrt() * noise - (1 - abar).sqrt() * x0
    return ((dec(x_t, t, reps, "trunk", uncond=mask) - target) ** 2).mean()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_diffusion_loss_matches_reference(prediction):
    dec = perturb_conditioning(tiny())
    sched = make_noise_scheduler(prediction_type=prediction)
    x0, _, reps = inputs(n=6)
    x0 = x0.clamp(-1, 1)
    loss = diffusion_loss(dec, x0, reps, "trunk", sched, torch.Generator().manual_seed(5), p_uncond=0.5)
    ref = reference_loss(dec, x0, reps, sched, 5, 0.5, prediction)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    again = diffusion_loss(dec, x0, reps, "trunk", sched, torch.Generator().manual_seed(5), p_uncond=0.5)
    assert torch.equal(loss, again)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@torch.no_grad()
def test_min_snr_loss_matches_reference(prediction):
    """Min-SNR-gamma (Hang et al. 2023): each row's squared error weighted by min(SNR, gamma) / SNR (eps)
    or min(SNR, gamma) / (SNR + 1) (v), SNR = abar / (1 - abar), written out here from the paper."""
    dec = perturb_conditioning(tiny())
    sched = make_noise_scheduler(prediction_type=prediction)
    x0 = inputs(n=6)[0].clamp(-1, 1)
    reps = inputs(n=6)[2]
    gen = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (6,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    mask = torch.rand(6, generator=gen) < 0.5
    abar = sched.alphas_cumprod[t]
    snr = abar / (1 - abar)
    weight = snr.clamp(max=5.0) / (snr if prediction == "epsilon" else snr + 1)
    a = abar.view(6, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    per_row = ((dec(x_t, t, reps, "trunk", uncond=mask) - target) ** 2).mean(dim=(1, 2, 3))
    loss = diffusion_loss(dec, x0, reps, "trunk", sched, torch.Generator().manual_seed(5), p_uncond=0.5,
                          snr_gamma=5.0)
    torch.testing.assert_close(loss, (weight * per_row).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(min_snr_weight(sched, t, 5.0), weight, rtol=1e-5, atol=1e-7)
    plain = diffusion_loss(dec, x0, reps, "trunk", sched, torch.Generator().manual_seed(5), p_uncond=0.5)
    assert not torch.allclose(loss, plain)
    with pytest.raises(ValueError, match="snr_gamma"):
        min_snr_weight(sched, t, 0.0)


@torch.no_grad()
def test_condition_dropout_all_or_nothing():
    dec = perturb_conditioning(tiny())
    sched = make_noise_scheduler()
    x0, _, reps = inputs(n=6)
    other = torch.randn_like(reps)

    def loss(r, p):
        return diffusion_loss(dec, x0, r, "trunk", sched, torch.Generator().manual_seed(3), p_uncond=p)

    assert torch.equal(loss(reps, 1.0), loss(other, 1.0))  # every row dropped -> reps unused
    assert loss(reps, 0.0) != loss(other, 0.0)
    with pytest.raises(ValueError, match="1.5"):
        loss(reps, 1.5)


def test_adam_steps_lower_the_loss():
    dec = tiny().train()
    sched = make_noise_scheduler()
    gen = torch.Generator().manual_seed(0)
    # 8 smooth 16-px images (upsampled 4x4 noise) and fixed representations
    x0 = torch.nn.functional.interpolate(torch.rand(8, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    x0 = x0 * 2 - 1
    reps = torch.randn(8, 8, generator=gen)
    opt = torch.optim.Adam(dec.parameters(), lr=1e-3)
    train_gen = torch.Generator().manual_seed(1)
    evals = []
    for _ in range(40):
        with torch.no_grad():  # the same t / noise every time: a fixed evaluation batch
            eval_gen = torch.Generator().manual_seed(99)
            evals.append(diffusion_loss(dec, x0, reps, "trunk", sched, eval_gen).item())
        opt.zero_grad()
        diffusion_loss(dec, x0, reps, "trunk", sched, train_gen).backward()
        opt.step()
    first, last = sum(evals[:5]) / 5, sum(evals[-5:]) / 5
    assert last < 0.7 * first, (first, last)


@torch.no_grad()
def test_a_decoder_with_non_finite_weights_is_refused_on_load(tmp_path):
    """NaN weights would sample one flat colour and exit 0: the load names the tensor instead."""
    dec = tiny({"trunk": 8})
    next(dec.parameters()).fill_(float("nan"))
    dec.save_pretrained(tmp_path / "dec")
    want = r"^the decoder at '.*dec' holds non-finite weights \(.+\); retrain it$"
    with pytest.raises(RcdmVizError, match=want):
        load_decoder(tmp_path / "dec")
