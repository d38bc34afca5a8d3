"""Decoder training at full strength: shared decoder, exact resume, progress, feature cache, CLI errors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from rcdm_viz.cli import main
from rcdm_viz.config import SampleConfig
from rcdm_viz.data.sources import load_images
from rcdm_viz.decoder.model import RCDMDecoder, load_decoder
from rcdm_viz.decoder.train import pack_reps, train_decoder
from rcdm_viz.encoders import load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.features import cached_features
from rcdm_viz.runs import RunDir, read_metrics
from rcdm_viz.sample_run import interpolate_layers, load_decoders
from rcdm_viz.training import checkpoint_dirs
from tests._spawn import accelerate_launch
from tests.conftest import TINY, tiny_config

TINY_DEC = dict(resolution=16, block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8)


def run_with_encoder(tiny_run, tmp_path, name: str) -> RunDir:
    """A fresh run directory sharing the session's tiny encoder."""
    _, base = tiny_run
    run = RunDir(tmp_path / name)
    run.root.mkdir()
    (run.root / "encoder").symlink_to(base.encoder, target_is_directory=True)
    return run


def one_and_two_processes(tiny_run, tmp_path, sets: list[str]) -> tuple[RunDir, RunDir]:
    """The shared decoder trained with ``sets`` in one process, and by `accelerate launch` on two gloo
    processes (half the batch each); returns (one, two)."""
    one = run_with_encoder(tiny_run, tmp_path, "one")
    train_decoder(tiny_config(*sets), one, "all", progress=False)
    two = run_with_encoder(tiny_run, tmp_path, "two")
    overrides = [arg for kv in TINY + sets for arg in ("--set", kv)]
    args = ["rcdm_viz.cli", "train-decoder", "--run", str(two.root), "--layer", "all", "--no-progress"]
    done = accelerate_launch(args + overrides, 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return one, two


def perturbed(layer_dims: dict[str, int]) -> RCDMDecoder:
    torch.manual_seed(0)
    dec = RCDMDecoder(layer_dims, **TINY_DEC).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in dec.parameters():
            if p.abs().sum() == 0:  # the zero-initialised conditioning parts
                p.copy_(torch.randn(p.shape, generator=gen))
    return dec


@torch.no_grad()
def test_mixed_batch_routes_each_row_through_its_layers_mlp():
    dec = perturbed({"a": 6, "b": 4, "c": 6})
    assert dec.layers == ["a", "b", "c"] and dec.rep_width == 6
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(10, d, generator=gen) for d in (6, 4, 6)]
    idx = torch.tensor([3, 1, 4, 1, 5, 9])
    which = torch.tensor([0, 1, 2, 1, 0, 2])
    packed = pack_reps(feats, idx, which, dec.rep_width)
    assert torch.equal(packed[1, 4:], torch.zeros(2))  # layer b's rows are zero-padded
    x = torch.randn(6, 3, 16, 16, generator=gen)
    t = torch.randint(0, 1000, (6,), generator=gen)
    mixed = dec(x, t, packed, which)
    for row, layer in enumerate(which.tolist()):
        name = dec.layers[layer]
        alone = dec(x[row : row + 1], t[row : row + 1], feats[layer][idx[row : row + 1]], name)
        torch.testing.assert_close(mixed[row : row + 1], alone, rtol=0, atol=1e-5)
    # changing layer c's MLP leaves the rows of layers a and b untouched
    dec.rep_mlps["c"][-1].weight.mul_(3)
    again = dec(x, t, packed, which)
    keep = which != 2
    assert torch.equal(again[keep], mixed[keep]) and (again[~keep] - mixed[~keep]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="packed reps"):
        dec(x, t, packed[:, :4], which)


def test_shared_decoder_trains_saves_and_serves_every_layer(tiny_run, tmp_path, capsys):
    run = run_with_encoder(tiny_run, tmp_path, "shared")
    cfg = tiny_config("decoder.sample_every=3", "decoder.progress_images=1", "decoder.progress_steps=2")
    trained = train_decoder(cfg, run, "all", progress=False)
    encoder = load_encoder(run.encoder)
    assert trained.layers == sorted(encoder.layer_names)
    assert trained.config.layer_dims == {k: encoder.layer_dims[k] for k in encoder.layer_names}
    # one encoder pass cached every layer; progress samples written at steps 3 and 6
    assert sorted(p.name for p in run.features.iterdir()) == sorted(
        f"{k}.safetensors" for k in trained.layers
    )
    progress = sorted(p.name for p in (run.decoder("all") / "progress").iterdir())
    assert progress == ["step-0000003.png", "step-0000006.png"]
    with Image.open(run.decoder("all") / "progress" / progress[-1]) as img:
        assert img.height > 16 * len(trained.layers)
    loaded = load_decoder(run.decoder("all"))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 900])
    for layer in trained.layers:
        reps = torch.randn(2, encoder.layer_dims[layer])
        with torch.no_grad():
            assert torch.equal(loaded(x, t, reps, layer), trained(x, t, reps, layer))
    # sample --layers falls back to decoders/all/ for layers without their own decoder
    decoders = load_decoders(run, ["trunk", "head3"], encoder)
    assert decoders["trunk"] is decoders["head3"]
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(img)
    args = ["sample", str(img), "--run", str(run.root), "--layers", "trunk,head3", "--no-progress"]
    assert main([*args, "--sampler", "dpm++", "--steps", "2", "--guidance", "2"]) == 0
    assert (run.samples("a") / "grid.png").is_file()


def test_resume_is_bit_exact_with_ema_and_accumulation(tiny_run, tmp_path):
    over = ("decoder.checkpoint_every=3", "decoder.grad_accum_steps=2", "decoder.ema_decay=0.9")
    cfg = tiny_config(*over, "decoder.sample_every=0")
    straight = run_with_encoder(tiny_run, tmp_path, "straight")
    train_decoder(cfg, straight, "all", progress=False)
    resumed = run_with_encoder(tiny_run, tmp_path, "resumed")
    train_decoder(cfg, resumed, "all", progress=False)
    ckpts = [p.name for p in checkpoint_dirs(resumed.checkpoints("decoder-all"))]
    assert ckpts == ["step-000000003"]  # the last step saves the decoder, not a checkpoint
    shutil.rmtree(resumed.decoder("all"))
    train_decoder(cfg, resumed, "all", resume=True, progress=False)
    a = load_file(straight.decoder("all") / "diffusion_pytorch_model.safetensors")
    b = load_file(resumed.decoder("all") / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # EMA weights, bit for bit
    steps = [r["step"] for r in read_metrics(resumed.decoder("all") / "metrics.jsonl")]
    # the training's own log is kept with its checkpoints, so the resumed bundle has every record
    assert steps == [r["step"] for r in read_metrics(straight.decoder("all") / "metrics.jsonl")]
    # a run without accumulation takes different steps (the accumulated run is not a no-op)
    plain = run_with_encoder(tiny_run, tmp_path, "plain")
    train_decoder(tiny_config(over[0], over[2], "decoder.sample_every=0"), plain, "all", progress=False)
    c = load_file(plain.decoder("all") / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_feature_cache_is_reused_and_invalidated(tiny_run, tmp_path):
    _, run = tiny_run
    encoder = load_encoder(run.encoder)
    images = load_images(tiny_config().data, "val", n=8, resolution=16, progress=False)
    root = tmp_path / "features"
    first = cached_features(encoder, images, ["trunk", "head2"], root, images_key="key")
    assert all(f.dtype == torch.float16 for f in first.values())
    stamp = (root / "trunk.safetensors").stat().st_mtime_ns
    again = cached_features(encoder, images, ["trunk"], root, images_key="key")
    assert torch.equal(again["trunk"][:], first["trunk"][:])
    assert (root / "trunk.safetensors").stat().st_mtime_ns == stamp  # read, not recomputed
    with torch.no_grad():  # another encoder (changed weights) -> other fingerprint -> recomputed
        next(encoder.parameters()).mul_(2)
    changed = cached_features(encoder, images, ["trunk"], root, images_key="key")
    assert not torch.equal(changed["trunk"][:], first["trunk"][:])
    other_images = cached_features(encoder, images, ["head2"], root, images_key="other-key")
    assert (root / "head2.safetensors").stat().st_mtime_ns != stamp and other_images["head2"].shape[0] == 8


@torch.no_grad()
def test_interpolation_between_an_image_and_itself_repeats_one_column(tiny_run):
    _, run = tiny_run
    encoder = load_encoder(run.encoder)
    decoders = load_decoders(run, ["trunk"], encoder)
    image = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    cfg = SampleConfig(n=2, steps=2)
    rows = interpolate_layers(encoder, decoders, image, image, columns=3, cfg=cfg)
    assert rows["trunk"].shape == (2, 3, 3, 16, 16)
    grid = rows["trunk"]
    torch.testing.assert_close(grid[:, 0], grid[:, 2], rtol=0, atol=1e-5)  # same noise in every column
    assert (grid[0, 0] - grid[1, 0]).abs().max() > 1e-2  # but each row has its own
    with pytest.raises(RcdmVizError, match="got 1"):
        interpolate_layers(encoder, decoders, image, image, columns=1, cfg=cfg)


def test_interpolate_cli_writes_a_grid(tiny_run, tmp_path):
    _, run = tiny_run
    paths = []
    for name, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        paths.append(tmp_path / f"{name}.png")
        Image.new("RGB", (24, 24), rgb).save(paths[-1])
    base = ["sample", *map(str, paths), "--run", str(run.root), "--layers", "trunk", "--no-progress"]
    assert main([*base, "--interpolate", "4", "--n", "1"]) == 0
    with Image.open(run.samples("red-to-blue") / "grid.png") as grid:
        assert grid.width > 6 * 16
    assert main([*base[:1], str(paths[0]), *base[3:], "--interpolate", "4"]) == 2


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train-decoder", "--layer", "head9"], "'head9'"),
        (["sample", "IMG", "--layers", "trunk", "--steps", "0"], "bad value 0 for 'sample.steps'"),
        (["sample", "IMG", "--layers", "trunk", "--set", "sample.sampler=euler"], "'euler'"),
        (["sample", "IMG", "--layers", "stage9"], "'stage9'"),
    ],
)
def test_bad_input_is_one_line(tiny_run, tmp_path, capsys, argv, fragment):
    _, run = tiny_run
    img = tmp_path / "i.png"
    Image.new("RGB", (16, 16)).save(img)
    argv = [str(img) if a == "IMG" else a for a in argv]
    assert main([*argv, "--run", str(run.root), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err, err


def test_decoder_of_another_encoder_is_refused(tiny_run, tmp_path):
    run = run_with_encoder(tiny_run, tmp_path, "other")
    encoder = load_encoder(run.encoder)
    dec = RCDMDecoder({"trunk": encoder.layer_dims["trunk"]}, **TINY_DEC, encoder_fingerprint="0123abcd")
    dec.save_pretrained(run.decoder("trunk"))
    with pytest.raises(RcdmVizError, match="0123abcd"):
        load_decoders(run, ["trunk"], encoder)
    RCDMDecoder({"trunk": 7}, **TINY_DEC, encoder_fingerprint=encoder.fingerprint()).save_pretrained(
        run.decoder("trunk")
    )
    with pytest.raises(RcdmVizError, match=r"expects 7-d.*gives 32"):
        load_decoders(run, ["trunk"], encoder)


def test_accelerate_launch_on_two_processes_trains_like_one(tiny_run, tmp_path):
    """`accelerate launch` (2 gloo processes, 8 images each) == one process with the global batch of 16:
    same losses and same weights, shared decoder with gradient accumulation included."""
    sets = ["decoder.steps=3", "decoder.grad_accum_steps=2", "decoder.checkpoint_every=2"]
    one, two = one_and_two_processes(tiny_run, tmp_path, sets)
    want, got = (
        read_metrics(one.decoder("all") / "metrics.jsonl"),
        read_metrics(two.decoder("all") / "metrics.jsonl"),
    )
    assert [(r["step"], r["processes"]) for r in got] == [(1, 2), (2, 2), (3, 2)]
    for a, b in zip(want, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4), (a, b)
    name = "diffusion_pytorch_model.safetensors"
    w_one, w_two = load_file(one.decoder("all") / name), load_file(two.decoder("all") / name)
    for key, value in w_one.items():
        torch.testing.assert_close(w_two[key], value, rtol=1e-4, atol=1e-6, msg=key)


# ------------------------------------------------------------------ nothing lost (issue: data loss)


def _cli_train(run: RunDir, *extra: str, layer: str = "trunk") -> list[str]:
    from tests.conftest import TINY

    sets = [a for o in (*TINY, "decoder.sample_every=0", *extra) for a in ("--set", o)]
    return ["train-decoder", "--run", str(run.root), "--layer", layer, "--no-progress", *sets]


def test_a_kill_in_the_swap_window_leaves_a_decoder_that_still_serves(tiny_run, tmp_path, monkeypatch):
    run = run_with_encoder(tiny_run, tmp_path, "swap")
    assert main(_cli_train(run, "decoder.steps=2")) == 0
    real_rename = type(run.root).rename

    def killed_after_setting_aside(self, target):
        if self.name.startswith(".tmp-"):  # the old decoder is aside; the new one is not in yet
            raise SystemExit("killed")
        return real_rename(self, target)

    monkeypatch.setattr(type(run.root), "rename", killed_after_setting_aside)
    with pytest.raises(SystemExit):
        main(_cli_train(run, "decoder.steps=3"))
    monkeypatch.undo()
    assert not run.decoder("trunk").exists() and run.decoder_for("trunk").name == ".old-trunk"
    img = tmp_path / "a.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(img)
    assert main(["sample", str(img), "--run", str(run.root), "--layers", "trunk", "--no-progress"]) == 0
    assert main(_cli_train(run, "decoder.steps=2")) == 0  # the next save puts things right
    assert sorted(p.name for p in (run.root / "decoders").iterdir()) == ["trunk"]


def test_resume_refuses_checkpoints_of_another_configuration(tiny_run, tmp_path, capsys):
    run = run_with_encoder(tiny_run, tmp_path, "stale")
    assert main(_cli_train(run, "decoder.steps=4", "decoder.checkpoint_every=2")) == 0
    assert [p.name for p in checkpoint_dirs(run.checkpoints("decoder-trunk"))] == ["step-000000002"]
    capsys.readouterr()
    for change in ("decoder.seed=7", "decoder.block_out_channels=[8,16]"):
        assert main([*_cli_train(run, "decoder.steps=4", change), "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another configuration" in err
        assert change.split("=")[0] in err
    # a fresh training removes the earlier training's checkpoints: a later --resume cannot load them
    cfg_dir = run.checkpoints("decoder-trunk")
    assert main(_cli_train(run, "decoder.steps=1", "decoder.seed=7")) == 0
    assert checkpoint_dirs(cfg_dir) == []


def test_a_diverged_state_is_never_checkpointed(tiny_run, tmp_path, capsys):
    run = run_with_encoder(tiny_run, tmp_path, "nan")
    over = ("decoder.lr=1e9", "decoder.checkpoint_every=1", "decoder.steps=6")
    assert main(_cli_train(run, *over)) == 2
    err = capsys.readouterr().err.strip()
    assert "loss became" in err and "no checkpoint to resume from" in err and len(err.splitlines()) == 1
    assert checkpoint_dirs(run.checkpoints("decoder-trunk")) == []
    left = [p.name for p in run.checkpoints("decoder-trunk").iterdir()]
    assert not any(name.startswith((".pending-", ".tmp-")) for name in left)


def test_a_resume_may_lower_the_learning_rate(tiny_run, tmp_path, monkeypatch):
    """After a divergence the hint is: lower the learning rate and resume from the last healthy checkpoint."""
    import rcdm_viz.decoder.train as dtrain

    run = run_with_encoder(tiny_run, tmp_path, "lower")
    over = ("decoder.steps=4", "decoder.checkpoint_every=2")
    def killed(*args, **kwargs):  # after the step-2 checkpoint, before the save
        raise SystemExit("killed")

    with monkeypatch.context() as mp:
        mp.setattr(dtrain, "_save_atomic", killed)
        with pytest.raises(SystemExit):
            main(_cli_train(run, *over))
    assert main([*_cli_train(run, *over, "decoder.lr=1e-6"), "--resume"]) == 0
    lrs = {r["step"]: r["lr"] for r in read_metrics(run.decoder("trunk") / "metrics.jsonl")}
    assert lrs[2] == pytest.approx(1e-4) and lrs[3] == lrs[4] == pytest.approx(1e-6)


def test_one_training_per_run_and_layer_and_the_error_names_the_holder(tiny_run, tmp_path, capsys):
    from rcdm_viz.runs import step_lock

    run = run_with_encoder(tiny_run, tmp_path, "locked")
    with step_lock(run, "decoder-trunk"):
        assert main(_cli_train(run, "decoder.steps=1")) == 2
    err = capsys.readouterr().err.strip()
    assert "already running" in err and "pid " in err and len(err.splitlines()) == 1
    assert main(_cli_train(run, "decoder.steps=1")) == 0  # released


def test_a_full_disk_is_one_line_and_leaves_no_temp_files(tiny_run, tmp_path, monkeypatch, capsys):
    import errno

    run = run_with_encoder(tiny_run, tmp_path, "full")
    assert main(_cli_train(run, "decoder.steps=1")) == 0
    before = load_file(run.decoder("trunk") / "diffusion_pytorch_model.safetensors")

    def no_space(self, path, *args, **kwargs):
        path.mkdir(parents=True, exist_ok=True)
        (path / "partial.bin").write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RCDMDecoder, "save_pretrained", no_space)
    capsys.readouterr()
    assert main(_cli_train(run, "decoder.steps=2")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcdm-viz: error: disk full") and len(err.splitlines()) == 1
    assert sorted(p.name for p in (run.root / "decoders").iterdir()) == ["trunk"]  # no .tmp-trunk
    after = load_file(run.decoder("trunk") / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)  # the old decoder is untouched


def test_a_fresh_training_keeps_the_old_metrics_with_the_old_model_until_it_is_replaced(tiny_run, tmp_path):
    run = run_with_encoder(tiny_run, tmp_path, "metrics")
    assert main(_cli_train(run, "decoder.steps=2")) == 0
    old = read_metrics(run.decoder("trunk") / "metrics.jsonl")
    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        raise SystemExit("killed")

    import rcdm_viz.decoder.train as dtrain

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dtrain, "_save_atomic", killed)
        with pytest.raises(SystemExit):
            main(_cli_train(run, "decoder.steps=3"))
    assert calls and read_metrics(run.decoder("trunk") / "metrics.jsonl") == old  # still the old model's
    assert main(_cli_train(run, "decoder.steps=3")) == 0
    assert [r["step"] for r in read_metrics(run.decoder("trunk") / "metrics.jsonl")] == [1, 2, 3]


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (symlinks as their targets' names, not followed) and its bytes."""
    return {
        str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()
    }


def test_a_refused_batch_size_leaves_the_run_byte_identical(tiny_run, tmp_path, capsys):
    """After a training that left resumable checkpoints, a batch larger than the image set is refused
    before checkpoints, metrics or config.yaml change: the next --resume still finds step 2."""
    run = run_with_encoder(tiny_run, tmp_path, "refused")
    assert main(_cli_train(run, "decoder.steps=4", "decoder.checkpoint_every=2")) == 0
    before = _tree(run.root)
    capsys.readouterr()
    assert main(_cli_train(run, "decoder.steps=4", "decoder.batch_size=100000")) == 2
    assert "decoder.batch_size 100000 exceeds" in capsys.readouterr().err
    assert _tree(run.root) == before
    assert [p.name for p in checkpoint_dirs(run.checkpoints("decoder-trunk"))] == ["step-000000002"]
    # a killed cache write left temps: the next training of this layer removes its own, not another's
    (run.features / ".trunk.safetensors.k1ll.tmp").write_bytes(b"torn")
    (run.features / ".head1.safetensors.l1ve.tmp").write_bytes(b"another step's")
    assert main([*_cli_train(run, "decoder.steps=4", "decoder.checkpoint_every=2"), "--resume"]) == 0
    assert sorted(p.name for p in run.features.iterdir() if p.name.endswith(".tmp")) == [
        ".head1.safetensors.l1ve.tmp"
    ]


def test_a_decoder_records_the_whole_config_it_trained_with(tiny_run):
    """Its data section too: a preset that changes data.* is visible in the decoder's own bundle."""
    import yaml

    from rcdm_viz.config import to_dict

    cfg, run = tiny_run
    recorded = yaml.safe_load((run.decoder("trunk") / "training.yaml").read_text())
    assert recorded["data"] == to_dict(cfg)["data"] and recorded["decoder"] == to_dict(cfg)["decoder"]
