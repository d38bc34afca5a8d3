"""Samplers (determinism, per-sample seeds, guidance) and the layer grid."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from rcdm_viz.config import SamplerName as Sampler
from rcdm_viz.decoder.grids import GRID_GAP, colour_map, tensor_to_pil, variance_map
from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.decoder.sampling import SAMPLERS, make_sampler, sample, sample_grid, sample_seed
from rcdm_viz.decoder.schedule import make_noise_scheduler
from rcdm_viz.errors import RcdmVizError

RES, DIM, STEPS = 16, 8, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads (and suffer on a busy machine); restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_decoder(layer_dims: dict[str, int] | None = None) -> RCDMDecoder:
    """A tiny decoder whose conditioning is non-trivial (as after training)."""
    torch.manual_seed(0)
    dec = RCDMDecoder(
        layer_dims or {"trunk": DIM},
        resolution=RES,
        block_out_channels=(32, 32),
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for mlp in dec.rep_mlps.values():
            mlp[-1].weight.copy_(torch.randn(mlp[-1].weight.shape, generator=gen))
        dec.null_embedding.copy_(torch.randn(dec.null_embedding.shape, generator=gen))
    return dec


@pytest.fixture(scope="module")
def decoder() -> RCDMDecoder:
    return make_decoder()


@pytest.fixture(scope="module")
def reps() -> torch.Tensor:
    return torch.randn(2, DIM, generator=torch.Generator().manual_seed(2)) * 3


@torch.no_grad()
def reference_ddim(decoder, rep, n, seed, guidance=None):
    """Plain DDIM written out with diffusers' scheduler: one pass per model output, no batching tricks."""
    sched = DDIMScheduler.from_config(make_noise_scheduler().config, timestep_spacing="trailing")
    sched.set_timesteps(STEPS)
    gens = [torch.Generator().manual_seed(sample_seed(seed, j)) for j in range(n)]
    x = torch.cat([torch.randn(1, 3, RES, RES, generator=g) for g in gens])
    r = rep.expand(n, -1)
    for t in sched.timesteps:
        tt = t.expand(n)
        out = decoder(x, tt, r, "trunk")
        if guidance is not None:
            out_u = decoder(x, tt, None, "trunk")
            out = out_u + guidance * (out - out_u)
        x = sched.step(out, t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def test_guidance_one_is_plain_conditional_sampling_exactly(decoder, reps):
    got = sample(decoder, reps[:1], n=3, steps=STEPS, sampler="ddim", guidance=1.0, seed=7)
    assert torch.equal(got[0], reference_ddim(decoder, reps[0], 3, seed=7))


def test_guidance_matches_reference_and_changes_samples(decoder, reps):
    guided = sample(decoder, reps[:1], n=2, steps=STEPS, sampler="ddim", guidance=3.0, seed=7)
    ref = reference_ddim(decoder, reps[0], 2, seed=7, guidance=3.0)
    torch.testing.assert_close(guided[0], ref, rtol=0, atol=1e-4)
    plain = sample(decoder, reps[:1], n=2, steps=STEPS, sampler="ddim", guidance=1.0, seed=7)
    assert (guided - plain).abs().max() > 1e-2
    # scale 0 is unconditional sampling: the representation no longer matters
    u = sample(decoder, reps, n=1, steps=STEPS, sampler="ddim", guidance=0.0, seed=7)
    torch.testing.assert_close(u[0], u[1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampler", [s.value for s in Sampler])
def test_sampler_determinism_and_per_sample_seeds(decoder, reps, sampler):
    a = sample(decoder, reps, n=4, steps=STEPS, sampler=sampler, seed=3, batch_size=3)
    assert a.shape == (2, 4, 3, RES, RES) and a.dtype == torch.float32 and a.device.type == "cpu"
    assert torch.equal(a, sample(decoder, reps, n=4, steps=STEPS, sampler=sampler, seed=3, batch_size=3))
    # sample j depends on (seed, j) only: not on n, batch size or the other images in the call
    b = sample(decoder, reps, n=2, steps=STEPS, sampler=sampler, seed=3, batch_size=64)
    torch.testing.assert_close(b, a[:, :2], rtol=0, atol=1e-4)
    c = sample(decoder, reps[1:], n=3, steps=STEPS, sampler=Sampler(sampler), seed=3, batch_size=1)
    torch.testing.assert_close(c[0], a[1, :3], rtol=0, atol=1e-4)
    other = sample(decoder, reps, n=4, steps=STEPS, sampler=sampler, seed=4, batch_size=3)
    assert (other - a).abs().amax(dim=(2, 3, 4)).min() > 1e-2  # every sample changes with the seed
    assert (a[:, 0] - a[:, 1]).abs().max() > 1e-2  # and samples of one image differ


def test_rows_of_layers_share_noise():
    """A shared decoder whose two layers have identical conditioning gives identical rows."""
    dec = make_decoder({"a": DIM, "b": DIM})
    with torch.no_grad():
        dec.rep_mlps["b"].load_state_dict(dec.rep_mlps["a"].state_dict())
    r = torch.randn(1, DIM, generator=torch.Generator().manual_seed(0))
    rows = [sample(dec, r, n=2, steps=2, sampler="ddpm", layer=layer, seed=5) for layer in ("a", "b")]
    assert torch.equal(rows[0], rows[1])


def test_decoder_mode_restored_and_autocast_runs(decoder, reps):
    decoder.train()
    try:
        bf16 = sample(decoder, reps[:1], n=1, steps=2, sampler="ddim", seed=0, autocast_dtype=torch.bfloat16)
        assert decoder.training
    finally:
        decoder.eval()
    fp32 = sample(decoder, reps[:1], n=1, steps=2, sampler="ddim", seed=0)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    assert (bf16 - fp32).abs().mean() < 0.05


def test_bad_arguments_name_the_value(decoder, reps):
    with pytest.raises(RcdmVizError, match=r"'euler'.*ddpm, ddim, dpm\+\+"):
        sample(decoder, reps, n=1, sampler="euler")
    with pytest.raises(RcdmVizError, match="steps.*got 0"):
        sample(decoder, reps, n=1, steps=0)
    with pytest.raises(RcdmVizError, match="'head7'"):
        sample(decoder, reps, n=1, layer="head7")
    with pytest.raises(RcdmVizError, match=r"5.*8"):
        sample(decoder, reps[:, :5], n=1)
    with pytest.raises(ValueError, match=r"n \(samples per image\).*0"):
        sample(decoder, reps, n=0)
    with pytest.raises(RcdmVizError, match=r"\['a', 'b'\]"):
        sample(make_decoder({"a": DIM, "b": DIM}), reps, n=1)


def test_make_sampler_builds_from_training_config():
    config = make_noise_scheduler().config
    ddpm, ddim, dpm = (make_sampler(s, config) for s in ("ddpm", Sampler.DDIM, "dpm++"))
    assert isinstance(ddpm, DDPMScheduler) and isinstance(ddim, DDIMScheduler)
    assert isinstance(dpm, DPMSolverMultistepScheduler)
    assert ddim.config.clip_sample and ddim.config.num_train_timesteps == 1000
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.thresholding
    assert dpm.config.sample_max_value == 1.0
    ddpm.set_timesteps(100)
    assert ddpm.timesteps[0] == 999 and len(ddpm.timesteps) == 100


def solid(rgb: tuple[float, float, float], n: int | None = None) -> torch.Tensor:
    img = torch.tensor(rgb).view(3, 1, 1).expand(3, RES, RES)
    return img if n is None else img.expand(n, 3, RES, RES)


def count(image, rgb: tuple[int, int, int]) -> int:
    return sum(1 for px in image.getdata() if px == rgb)


def test_sample_grid_layout():
    scale, cell = 2, RES * 2
    image = solid((1.0, 0.0, 0.0))
    rows = {"trunk": solid((0.0, 0.0, 1.0), 3), "head1": solid((0.0, 0.0, 1.0), 3)}
    grid = sample_grid(image, rows, notes={"trunk": "acc 0.91"}, scale=scale)
    assert grid.mode == "RGB"
    # every cell drawn, upscaled, nothing overlapping: 2 input cells, 2 x 3 sample cells
    assert count(grid, (255, 0, 0)) == 2 * cell * cell
    assert count(grid, (0, 0, 255)) == 2 * 3 * cell * cell
    assert grid.width > 4 * cell + 2 * GRID_GAP and grid.height > 2 * cell + GRID_GAP
    wider = sample_grid(image, {k: solid((0.0, 0.0, 1.0), 5) for k in rows}, notes={"trunk": "acc 0.91"})
    assert wider.width - grid.width == 2 * (cell + GRID_GAP) and wider.height == grid.height
    taller = sample_grid(image, {**rows, "head2": rows["head1"]}, notes={"trunk": "acc 0.91"})
    assert taller.height - grid.height == cell + GRID_GAP and taller.width == grid.width
    with pytest.raises(ValueError, match="'head1'"):
        sample_grid(image, {"head1": torch.zeros(2, 3, RES + 1, RES)})


def test_variance_map_is_the_per_pixel_std_over_samples():
    samples = torch.stack([solid((0.2, 0.2, 0.2)), solid((0.4, 0.4, 0.4))])
    assert torch.allclose(variance_map(samples), torch.full((RES, RES), 0.1))
    assert torch.equal(variance_map(samples[:1]), torch.zeros(RES, RES))  # one sample: nothing varies


def test_grid_rows_end_with_variance_maps_on_one_scale():
    scale, cell = 2, RES * 2
    image = solid((1.0, 0.0, 0.0))
    varying = torch.stack([solid((0.0, 0.0, 1.0)), solid((0.0, 0.5, 1.0))])
    rows = {"trunk": solid((0.0, 0.0, 1.0), 2), "head3": varying}
    grid = sample_grid(image, rows, scale=scale)
    # one colour scale for the grid: the agreeing row at its bottom, the varying row at its top
    low = tuple(tensor_to_pil(colour_map(torch.zeros(1, 1), 1.0)).getpixel((0, 0)))
    high = tuple(tensor_to_pil(colour_map(torch.ones(1, 1), 1.0)).getpixel((0, 0)))
    assert count(grid, low) == cell * cell and count(grid, high) == cell * cell
    plain = sample_grid(image, rows, scale=scale, variance=False)
    assert grid.width - plain.width >= cell + GRID_GAP and grid.height == plain.height
    assert count(plain, low) == 0


@torch.no_grad()
def adm_respaced_ddpm(decoder, rep, n, seed, steps):
    """RCDM's sampler written out as ADM does it (guided-diffusion ``respace.py`` + ``p_sample``): keep the
    timesteps round(i (T-1)/(steps-1)), recompute betas_i = 1 - abar_{t_i} / abar_{t_{i-1}}, sample the
    posterior q(x_{i-1} | x_i, x0) of that shorter chain (fixed small variance, x0 clipped to [-1, 1]),
    feeding the model the original timestep; no noise on the last step."""
    abar_full = make_noise_scheduler().alphas_cumprod.double()
    frac = (1000 - 1) / (steps - 1)
    use = sorted({round(i * frac) for i in range(steps)})
    abar = abar_full[use]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    betas = 1 - abar / abar_prev
    var = betas * (1 - abar_prev) / (1 - abar)
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    gens = [torch.Generator().manual_seed(sample_seed(seed, j)) for j in range(n)]
    x = torch.cat([torch.randn(1, 3, RES, RES, generator=g) for g in gens]).double()
    for i in reversed(range(len(use))):
        eps = decoder(x.float(), torch.full((n,), use[i]), rep.expand(n, -1), "trunk").double()
        x0 = ((x - (1 - abar[i]).sqrt() * eps) / abar[i].sqrt()).clamp(-1, 1)
        mean = coef_x0[i] * x0 + coef_xt[i] * x
        if i > 0:
            noise = torch.cat([torch.randn(1, 3, RES, RES, generator=g) for g in gens]).double()
            x = mean + var[i].sqrt() * noise
        else:
            x = mean
    return ((x.float() + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("steps", [100, 7])
def test_ddpm_respacing_reproduces_adm(decoder, reps, steps):
    got = sample(decoder, reps[:1], n=2, steps=steps, sampler="ddpm", seed=11)
    ref = adm_respaced_ddpm(decoder, reps[0], 2, seed=11, steps=steps)
    torch.testing.assert_close(got[0], ref, rtol=0, atol=2e-4)
    sched = make_sampler("ddpm", make_noise_scheduler().config)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == sorted({round(i * 999 / (steps - 1)) for i in range(steps)})[::-1]


def test_every_sampler_has_a_factory_and_a_missing_one_is_an_error(monkeypatch):
    config = make_noise_scheduler().config
    kinds = {
        Sampler.DDPM: DDPMScheduler, Sampler.DDIM: DDIMScheduler, Sampler.DPMPP: DPMSolverMultistepScheduler
    }
    assert set(SAMPLERS) == set(Sampler) == set(kinds)
    for name in Sampler:
        assert type(make_sampler(name.value, config)) is kinds[name]
    monkeypatch.delitem(SAMPLERS, Sampler.DDIM)
    with pytest.raises(ValueError, match="ddim"):
        make_sampler("ddim", config)
    with pytest.raises(RcdmVizError, match="unknown sampler 'euler'"):
        make_sampler("euler", config)
