"""Binarized decoder conditioning (E/N §4.3, Figure 9): packed-bit feature cache and a binarize decoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from rcdm_viz.cli import main
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.sampling import sample, tensor_to_pil
from rcdm_viz.decoder.schedule import diffusion_loss
from rcdm_viz.decoder.train import pack_reps, train_decoder, training_data
from rcdm_viz.encoders import build_encoder, load_encoder
from rcdm_viz.features import cached_features, pack_bits, unpack_bits
from rcdm_viz.runs import RunDir, read_metrics
from tests.conftest import tiny_config

TINY_DEC = dict(resolution=16, block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8)


def conditioned(layer_dims: dict[str, int], binarize: bool) -> RCDMDecoder:
    """A tiny decoder whose zero-initialised conditioning parts are given random values, as training would."""
    torch.manual_seed(0)
    dec = RCDMDecoder(layer_dims, **TINY_DEC, binarize=binarize).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dec.parameters():
            if p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=gen))
    return dec


def inputs(n: int, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_t [n,3,16,16], steps [n] and raw post-ReLU-like reps [n, dim] (about half exact zeros)."""
    gen = torch.Generator().manual_seed(0)
    reps = torch.randn(n, dim, generator=gen).relu() * 3
    return torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 1000, (n,), generator=gen), reps


@pytest.mark.parametrize("dim", [1, 8, 13, 64])
def test_pack_unpack_round_trip_is_the_sign_pattern(dim):
    x = torch.randn(7, dim, generator=torch.Generator().manual_seed(dim))
    x[0] = 0.0  # exact zeros (dead post-ReLU units) are 0 bits
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        packed = pack_bits(x.to(dtype))
        assert packed.dtype == torch.uint8 and packed.shape == (7, -(-dim // 8))
        bits = unpack_bits(packed, dim)
        assert bits.dtype == torch.float16 and torch.equal(bits, (x > 0).to(torch.float16))
    with pytest.raises(ValueError, match="cannot hold dimension"):
        unpack_bits(pack_bits(x), dim + 8)


def test_binary_cache_is_small_reused_and_invalidated_by_toggling(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder(
        "resnet18", width=256, head="32-16", base_width=8, small_input=True, resolution=16
    )
    images = load_images(tiny_config().data, "val", n=64, resolution=16, progress=False)
    root, path = tmp_path / "features", tmp_path / "features" / "trunk.safetensors"
    half = cached_features(encoder, images, ["trunk"], root, images_key="key")["trunk"][:]
    half_bytes, half_stamp = path.stat().st_size, path.stat().st_mtime_ns
    bits = cached_features(encoder, images, ["trunk"], root, images_key="key", binarize=True)["trunk"][:]
    assert path.stat().st_mtime_ns != half_stamp  # binarize switched on -> recomputed
    assert bits.shape == (64, 256) and torch.equal(bits, (half > 0).to(torch.float16))
    assert 0 < bits.mean() < 1  # a real mix of zeros and ones, not a degenerate pattern
    ratio = path.stat().st_size / half_bytes
    assert ratio < 1 / 10, ratio  # 1 bit instead of 16 per value, plus the file header
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["storage"] == "bits" and fh.metadata()["dim"] == "256"
        assert fh.get_tensor("features").dtype == torch.uint8
    stamp = path.stat().st_mtime_ns
    again = cached_features(encoder, images, ["trunk"], root, images_key="key", binarize=True)["trunk"][:]
    assert torch.equal(again, bits) and path.stat().st_mtime_ns == stamp  # read, not recomputed
    back = cached_features(encoder, images, ["trunk"], root, images_key="key")["trunk"][:]
    assert path.stat().st_mtime_ns != stamp and torch.equal(back, half)  # switched off -> float16 again


@torch.no_grad()
def test_binarize_decoder_conditions_on_the_sign_pattern_only():
    x, t, reps = inputs(4, 8)
    binary = (reps > 0).float()
    dec = conditioned({"trunk": 8}, binarize=True)
    assert torch.equal(dec(x, t, reps, "trunk"), dec(x, t, binary, "trunk"))
    plain = conditioned({"trunk": 8}, binarize=False)  # same weights, continuous input: outputs differ
    assert (plain(x, t, reps, "trunk") - plain(x, t, binary, "trunk")).abs().max() > 1e-3
    torch.testing.assert_close(plain(x, t, binary, "trunk"), dec(x, t, reps, "trunk"), rtol=0, atol=1e-5)
    # the shared decoder: packed mixed-layer rows (zero padding stays zero)
    shared = conditioned({"a": 8, "b": 5}, binarize=True)
    which = torch.tensor([0, 1, 1, 0])
    raw = pack_reps([reps, reps[:, :5]], torch.arange(4), which, shared.rep_width)
    ones = pack_reps([binary, binary[:, :5]], torch.arange(4), which, shared.rep_width)
    assert torch.equal(shared(x, t, raw, which), shared(x, t, ones, which))
    # sampling from raw representations equals sampling from their binarized version
    drawn = sample(dec, reps[:2], n=1, steps=2, seed=0)
    assert torch.equal(drawn, sample(dec, binary[:2], n=1, steps=2, seed=0))


@torch.no_grad()
def test_save_load_keeps_binarize_and_old_configs_load_as_continuous(tmp_path):
    dec = conditioned({"trunk": 8, "head1": 5}, binarize=True)
    dec.save_pretrained(tmp_path / "dec")
    loaded = load_decoder(tmp_path / "dec")
    assert loaded.config.binarize is True
    x, t, reps = inputs(4, 8)
    for layer, r in (("trunk", reps), ("head1", reps[:, :5])):
        assert torch.equal(loaded(x, t, r, layer), dec(x, t, r, layer))
    config_path = tmp_path / "dec" / "config.json"
    config = json.loads(config_path.read_text())
    del config["binarize"]  # a decoder saved before the option existed
    config_path.write_text(json.dumps(config))
    old = load_decoder(tmp_path / "dec")
    assert old.config.binarize is False
    assert (old(x, t, reps, "trunk") - dec(x, t, reps, "trunk")).abs().max() > 1e-3


def test_binarized_shared_decoder_trains_and_samples_end_to_end(tiny_run, tmp_path):
    _, base = tiny_run
    run = RunDir(tmp_path / "bin")
    run.root.mkdir()
    (run.root / "encoder").symlink_to(base.encoder, target_is_directory=True)
    over = ("decoder.binarize=true", "decoder.sample_every=0", "decoder.steps=30", "decoder.lr=0.001")
    cfg = tiny_config(*over)
    assert cfg.decoder.binarize is True
    trained = train_decoder(cfg, run, "all", progress=False)
    encoder = load_encoder(run.encoder)
    torch.manual_seed(cfg.decoder.seed)  # the initial weights of the run
    dims = {name: encoder.layer_dims[name] for name in trained.layers}
    untrained = RCDMDecoder.from_decoder_config(cfg.decoder, dims, encoder.fingerprint()).eval()
    dec_images, feats = training_data(cfg, encoder, trained.layers, run, progress=False)
    x0 = dec_images.batch(torch.arange(32)) * 2 - 1
    sched = trained.noise_scheduler()

    def fixed_loss(model: RCDMDecoder) -> float:  # training images; the same t and noise for both
        with torch.no_grad():
            gen = torch.Generator().manual_seed(99)
            reps = feats["trunk"][:32].float()
            return diffusion_loss(model, x0, reps, "trunk", sched, gen, p_uncond=0.0).item()

    assert fixed_loss(trained) < fixed_loss(untrained)
    for layer in trained.layers:  # every layer cached as packed bits
        with safe_open(str(run.features / f"{layer}.safetensors"), framework="pt") as fh:
            assert fh.metadata()["storage"] == "bits"
            assert fh.get_tensor("features").shape[1] == -(-encoder.layer_dims[layer] // 8)
    losses = [r["loss"] for r in read_metrics(run.decoder("all") / "metrics.jsonl")]
    assert len(losses) == cfg.decoder.steps and all(0 < v < 10 for v in losses)
    loaded = load_decoder(run.decoder("all"))
    assert loaded.config.binarize is True
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 900])
    images = load_images(cfg.data, "val", n=2, resolution=16, progress=False)
    with torch.no_grad():
        reps = encoder(images.batch(torch.arange(2)), layers=["trunk"])["trunk"]
        assert torch.equal(loaded(x, t, reps, "trunk"), loaded(x, t, (reps > 0).float(), "trunk"))
    img = tmp_path / "a.png"
    tensor_to_pil(images.batch(torch.arange(1))[0]).save(img)
    args = ["sample", str(img), "--run", str(run.root), "--layers", "trunk,head3", "--no-progress"]
    assert main([*args, "--steps", "2"]) == 0
    assert (run.samples("a") / "grid.png").is_file()


def test_feature_table_is_a_memory_map_read_by_rows_and_a_torn_file_is_recomputed(tmp_path):
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=16, head="8", base_width=8, small_input=True, resolution=16)
    images = load_images(tiny_config().data, "val", n=12, resolution=16, progress=False)
    root = tmp_path / "features"
    table = cached_features(encoder, images, ["trunk"], root, images_key="key", batch_size=5)["trunk"]
    assert isinstance(table.rows, np.memmap) and table.shape == (12, 16)
    full = table[:]
    idx = torch.tensor([9, 2, 2, 11, 0])  # unsorted, repeated: rows come back in the order asked
    assert torch.equal(table[idx], full[idx]) and table[idx].dtype == torch.float16
    assert torch.equal(table.float(batch=5), full.float())
    path = root / "trunk.safetensors"
    with safe_open(str(path), framework="pt") as fh:  # a valid safetensors file, read by safetensors too
        assert torch.equal(fh.get_tensor("features"), full)
    path.write_bytes(path.read_bytes()[:-7])  # torn: the data stops short
    stamp = path.stat().st_mtime_ns
    again = cached_features(encoder, images, ["trunk"], root, images_key="key")["trunk"]
    assert path.stat().st_mtime_ns != stamp and torch.equal(again[:], full)
