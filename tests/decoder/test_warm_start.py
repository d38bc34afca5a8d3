"""Warm starts (decoder.init_from) and the unconditional prior they start from."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from rcdm_viz.config import load_config
from rcdm_viz.decoder import priors
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.sampling import sample
from rcdm_viz.decoder.train import train_decoder
from rcdm_viz.decoder.warm_start import build_warm_decoder, resolve_init
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, read_metrics
from rcdm_viz.training import checkpoint_dirs
from tests.conftest import tiny_config
from tests.decoder.test_train import TINY_DEC, one_and_two_processes, run_with_encoder


def _prior(tmp_path, **arch) -> RCDMDecoder:
    """A saved 'trained' prior: random weights everywhere, a non-zero null embedding."""
    torch.manual_seed(3)
    prior = RCDMDecoder({}, **{**TINY_DEC, "attention_resolutions": (8,), **arch}).eval()
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.05 * torch.randn_like(p))
    prior.save_pretrained(tmp_path / "prior")
    return prior


def _dec_cfg(*extra: str):
    return tiny_config("decoder.prediction_type=epsilon", *extra).decoder


def test_a_warm_start_samples_what_the_prior_samples_at_step_0(tmp_path):
    prior = _prior(tmp_path)
    source = resolve_init(str(tmp_path / "prior"))
    expected = sample(prior, None, n=3, steps=4, seed=7)[0]
    reps = torch.randn(2, 5)
    for dims in ({"trunk": 5}, {"trunk": 5, "head1": 5}):  # a per-layer and a shared decoder
        warm = build_warm_decoder(_dec_cfg(), dims, "enc", source).eval()
        assert warm.config.warm_start == {"source": str(tmp_path / "prior"), "sha256": source.sha256}
        for layer in dims:
            drawn = sample(warm, reps, n=3, steps=4, seed=7, layer=layer)
            for row in drawn:  # every representation gives the prior's samples until training starts
                # 1e-4: two float paths to the same embedding, summed in a CPU-dependent order (AVX2 vs
                # AVX512 kernels differ by 2e-5 here); a cold start differs by > 1e-2 (below)
                torch.testing.assert_close(row, expected, rtol=0, atol=1e-4)
    # from scratch, the conditioning starts at zero rather than at the null embedding: different samples
    cold = RCDMDecoder.from_decoder_config(_dec_cfg(), {"trunk": 5}, "enc").eval()
    assert (sample(cold, reps[:1], n=3, steps=4, seed=7)[0] - expected).abs().max() > 1e-2


def test_a_mismatched_architecture_is_one_line_naming_the_field(tmp_path):
    _prior(tmp_path)
    source = resolve_init(str(tmp_path / "prior"))
    with pytest.raises(RcdmVizError, match=r"decoder.block_out_channels is \[16, 32\] here but \[16, 16\]"):
        build_warm_decoder(_dec_cfg("decoder.block_out_channels=[16,32]"), {"trunk": 5}, None, source)
    with pytest.raises(RcdmVizError, match="decoder.prediction_type is \"v_prediction\" here"):
        v_pred = tiny_config("decoder.prediction_type=v_prediction").decoder
        build_warm_decoder(v_pred, {"t": 5}, None, source)
    for bad, message in [("nowhere", "neither a shipped prior"), (str(tmp_path), "no decoder, run or UNet")]:
        with pytest.raises(RcdmVizError, match=message):
            resolve_init(bad)
    assert resolve_init("none") is None


def test_a_plain_unet_gives_the_decoder_its_shape(tmp_path):
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, block_out_channels=(16, 32), norm_num_groups=8, layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "pipe" / "unet")  # a pipeline directory: its unet/ is found
    source = resolve_init(str(tmp_path / "pipe"))
    assert source.plain_unet
    warm = build_warm_decoder(_dec_cfg(), {"trunk": 4}, None, source)
    assert warm.time_embed_dim == 64 and list(warm.unet.config.block_out_channels) == [16, 32]
    torch.testing.assert_close(warm.unet.conv_in.weight, unet.conv_in.weight)
    warm.save_pretrained(tmp_path / "saved")
    again = load_decoder(tmp_path / "saved")  # the UNet's shape travels in config.json
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    torch.testing.assert_close(again(x, t, torch.randn(2, 4), "trunk"), warm.eval()(x, t, None, "trunk"))
    with pytest.raises(RcdmVizError, match="decoder.resolution is 32 here but 16"):
        build_warm_decoder(_dec_cfg("decoder.resolution=32"), {"trunk": 4}, None, source)


def test_prior_training_then_a_bit_exact_warm_resume(tiny_run, tmp_path):
    prior_run = RunDir(tmp_path / "prior-run")
    cfg = tiny_config("decoder.sample_every=2", "decoder.progress_images=1", "decoder.progress_steps=2",
                      "decoder.steps=3")
    prior = train_decoder(cfg, prior_run, "prior", progress=False)  # no encoder needed
    assert prior.is_prior and (prior_run.decoder("prior") / "progress" / "step-0000002.png").is_file()
    losses = [r["loss"] for r in read_metrics(prior_run.decoder("prior") / "metrics.jsonl")]
    assert len(losses) == 3 and all(v > 0 for v in losses)
    warm = tiny_config("decoder.checkpoint_every=3", "decoder.sample_every=0",
                       f"decoder.init_from={prior_run.root}")
    straight = run_with_encoder(tiny_run, tmp_path, "straight")
    train_decoder(warm, straight, "all", progress=False)
    resumed = run_with_encoder(tiny_run, tmp_path, "resumed")
    train_decoder(warm, resumed, "all", progress=False)
    assert [p.name for p in checkpoint_dirs(resumed.checkpoints("decoder-all"))] == ["step-000000003"]
    shutil.rmtree(resumed.decoder("all"))
    train_decoder(warm, resumed, "all", resume=True, progress=False)
    a = load_file(straight.decoder("all") / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.decoder("all") / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    record = json.loads((resumed.decoder("all") / "config.json").read_text())["warm_start"]
    assert record["source"] == str(prior_run.root)
    assert read_metrics(resumed.decoder("all") / "metrics.jsonl")[0]["warm_start"] == record
    # a resume from another start is refused, naming what differs
    other = tiny_config("decoder.checkpoint_every=3", "decoder.sample_every=0")
    with pytest.raises(RcdmVizError, match="init"):
        train_decoder(other, resumed, "all", resume=True, progress=False)


def test_a_shipped_prior_is_checked_on_every_load(tmp_path, monkeypatch):
    _prior(tmp_path)
    weights = tmp_path / "prior" / priors.WEIGHTS_FILE
    entry = priors.ShippedPrior("test-prior", priors.file_sha256(weights), "cmd", "0" * 40, "a test")
    monkeypatch.setitem(priors.PRIORS, "test-prior", entry)
    monkeypatch.setattr(priors, "prior_dir", lambda name: tmp_path / "prior")
    assert resolve_init("test-prior").sha256 == entry.sha256
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit
    weights.write_bytes(bytes(data))
    with pytest.raises(RcdmVizError, match="damaged or replaced"):
        resolve_init("test-prior")


def test_a_warm_start_on_two_processes_trains_like_one(tiny_run, tmp_path):
    """`accelerate launch` (2 gloo processes) from a prior == one process with the global batch."""
    _prior(tmp_path)
    sets = ["decoder.steps=2", "decoder.sample_every=0",
            f"decoder.init_from={tmp_path / 'prior'}"]
    one, two = one_and_two_processes(tiny_run, tmp_path, sets)
    want, got = (read_metrics(r.decoder("all") / "metrics.jsonl") for r in (one, two))
    start = resolve_init(str(tmp_path / "prior")).record()
    assert got[0] == want[0] == {"step": 0, "warm_start": start}
    assert [r["processes"] for r in got[1:]] == [2, 2]
    for a, b in zip(want[1:], got[1:], strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    a, b = (load_file(r.decoder("all") / priors.WEIGHTS_FILE) for r in (one, two))
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", sorted(priors.PRIORS))
def test_the_shipped_priors_match_their_records(name):
    root, digest = priors.verified_prior(name)
    decoder = load_decoder(root)
    assert decoder.is_prior and digest == priors.PRIORS[name].sha256
    preset = load_config("quickstart")
    assert build_warm_decoder(preset.decoder, {"trunk": 4}, None, resolve_init(name)).config.warm_start
