"""The training step: exact resume (BYOL target, online probes), 2 processes = 1, widths, errors."""

from __future__ import annotations

import datetime
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from rcdm_viz.cli import main
from rcdm_viz.config import Config
from rcdm_viz.encoders import build_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, read_metrics
from rcdm_viz.ssl.batchnorm import GlobalBatchNorm
from rcdm_viz.ssl.optim import make_optimizer
from rcdm_viz.ssl.train import build_ssl_step, train_encoder
from rcdm_viz.training import checkpoint_dirs
from tests._spawn import accelerate_launch, free_port, spawn_ranks
from tests.conftest import TINY, tiny_config


def _weights(run: RunDir) -> dict[str, torch.Tensor]:
    return load_file(run.encoder / "model.safetensors")


@pytest.mark.parametrize("method", ["byol", "simclr_class"])
def test_resume_is_bit_exact_with_target_network_and_probes(tmp_path, method):
    extra = (f"ssl.method={method}", "ssl.checkpoint_every=5", "ssl.optimizer=lars", "ssl.lr=0.3")
    straight = RunDir(tmp_path / "straight")
    train_encoder(tiny_config(*extra), straight, progress=False)
    resumed = RunDir(tmp_path / "resumed")
    train_encoder(tiny_config(*extra), resumed, progress=False)
    # As if killed after step 6: the step-5 checkpoint exists; resuming must replay steps 5..7 exactly.
    assert [p.name for p in checkpoint_dirs(resumed.checkpoints("encoder"))] == ["step-000000005"]
    (resumed.encoder / "model.safetensors").unlink()
    train_encoder(tiny_config(*extra), resumed, resume=True, progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Probe accuracies and BYOL's momentum are logged and replayed identically.
    ra, rb = read_metrics(straight.encoder_metrics), read_metrics(resumed.encoder_metrics)
    keys = [k for k in ra[-1] if k.startswith("probe/") or k in ("loss", "byol_momentum")]
    assert "probe/trunk" in keys and "probe/head3" in keys
    assert [[r[k] for k in keys] for r in ra] == [[r[k] for k in keys] for r in rb]


def test_step_updates_target_and_probes_only_as_declared(tmp_path):
    cfg = tiny_config("ssl.method=byol")
    from rcdm_viz.training import make_accelerator

    step, encoder = build_ssl_step(cfg, make_accelerator(cfg.ssl.precision), 4, 10, 5)
    target_before = [p.clone() for p in step.target.encoder.parameters()]
    images = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for i in range(3):  # the first step has lr 0 (warm-up), so the online and target weights still agree
        logs = step(images, i, torch.arange(8) % 4)
    assert set(logs) >= {"loss", "byol_momentum", "probe/trunk", "probe/head3"}
    moved = [
        not torch.equal(a, b) for a, b in zip(target_before, step.target.encoder.parameters(), strict=True)
    ]
    assert any(moved)
    assert all(not p.requires_grad for p in step.target.encoder.parameters())


# ---------------------------------------------------------------- 2 processes x N == 1 process x 2N

WORLD, N = 2, 4
METHODS = ["simclr", "byol", "supervised"]  # global loss; target network; local loss


def _two_process_config(method: str) -> Config:
    return tiny_config(f"ssl.method={method}", "ssl.optimizer=lars", "ssl.lr=0.5", "ssl.batch_size=8")


def _run_steps(method: str, accelerator, views, rows: slice) -> dict:
    """Two SSL steps on the given rows of fixed global views; returns loss, grads, weights, buffers."""
    cfg = _two_process_config(method)
    step, encoder = build_ssl_step(cfg, accelerator, 4, 10, 5)
    out = {}
    for s, (v1, v2, y) in enumerate(views):
        logs = step.update(v1[rows], v2[rows], y[rows], s)
        out[f"loss{s}"] = torch.tensor(logs["loss"])
    model = accelerator.unwrap_model(step.model)
    out["grads"] = {k: p.grad.clone() for k, p in model.named_parameters()}
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    if step.target is not None:
        out["target"] = {k: v.clone() for k, v in step.target.state_dict().items()}
    return out


def _views(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.rand(2 * N, 3, 16, 16, generator=g),
            torch.rand(2 * N, 3, 16, 16, generator=g),
            torch.arange(2 * N) % 4,
        )
        for _ in range(2)
    ]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    from rcdm_viz.training import make_accelerator

    try:
        accelerator = make_accelerator(_two_process_config("simclr").ssl.precision)
        assert accelerator.num_processes == WORLD
        rows = slice(rank * N, (rank + 1) * N)
        results = {m: _run_steps(m, accelerator, _views(), rows) for m in METHODS}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while its peer still talks to it
    finally:
        dist.destroy_process_group()


def test_two_processes_train_like_one(tmp_path):
    """The real SSL step (views -> encoder -> loss -> LARS), DDP with global BatchNorm, vs one process."""
    spawn_ranks(_worker, (free_port(), str(tmp_path)), WORLD, tmp_path)
    from rcdm_viz.training import make_accelerator

    accelerator = make_accelerator(_two_process_config("simclr").ssl.precision)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for method in METHODS:
        want = _run_steps(method, accelerator, _views(), slice(None))
        for r, res in enumerate(ranks):
            got = res[method]
            for s in range(2):
                assert torch.allclose(got[f"loss{s}"], want[f"loss{s}"], rtol=1e-4), (method, r, s)
            # float32: compare against the largest gradient (biases before BatchNorm get ~0, pure noise).
            scale = max(g.abs().max() for g in want["grads"].values())
            for name, g in want["grads"].items():
                assert torch.allclose(got["grads"][name], g, rtol=1e-3, atol=1e-5 * scale), (method, r, name)
            for name, v in want["state"].items():
                if v.is_floating_point():
                    assert torch.allclose(got["state"][name], v, rtol=1e-4, atol=1e-5), (method, r, name)
            for name, v in want.get("target", {}).items():
                assert torch.allclose(got["target"][name], v.to(got["target"][name].dtype), atol=1e-5), name


def test_global_batchnorm_is_batchnorm_on_one_process():
    bn = torch.nn.BatchNorm2d(3)
    gbn = GlobalBatchNorm(3)
    x = torch.randn(4, 3, 5, 5)
    assert torch.allclose(bn(x), gbn(x)) and torch.allclose(bn.running_var, gbn.running_var)


# ---------------------------------------------------------------- widths, schedules, errors


@pytest.mark.parametrize(
    ("arch", "width", "side", "batch"),
    [
        ("resnet18", 512, 16, 4),
        ("resnet18", 32768, 16, 4),
        ("resnet50", 32768, 32, 2),
    ],
)
def test_widths_forward_and_backward(arch, width, side, batch):
    torch.manual_seed(0)
    enc = build_encoder(
        arch,
        width=width,
        head="linear:16",
        base_width=4 if arch == "resnet18" else 8,
        small_input=True,
        resolution=side,
    )
    out = enc(torch.rand(batch, 3, side, side))
    assert out["trunk"].shape == (batch, width) and out["head1"].shape == (batch, 16)
    (out["head1"].pow(2).mean() + out["trunk"].mean()).backward()
    last = enc.trunk.layer4[-1]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in last.parameters())


def test_warmup_then_cosine():
    cfg = tiny_config("ssl.optimizer=lars", "ssl.lr=0.5", "ssl.warmup_epochs=1", "ssl.batch_size=256")
    model = torch.nn.Linear(2, 2)
    opt, sched = make_optimizer(model, cfg.ssl, steps=20, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0 and lrs[5] == pytest.approx(0.5)  # linear warm-up to 0.5 x 256/256
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False)) and lrs[-1] < 0.05


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("ssl.method=dino", "'dino'"),
        ("encoder.width=0", "bad value 0 for 'encoder.width'"),
        ("encoder.head=8192-x", "8192-x"),
        ("ssl.optimizer=sgd", "'sgd'"),
        ("data.source=imagenet", "'imagenet'"),
    ],
)
def test_bad_training_input_is_one_line_exit_2(tmp_path, capsys, override, fragment):
    argv = ["train-encoder", "--run", str(tmp_path / "r"), "--no-progress"]
    for item in TINY:
        argv += ["--set", item]
    argv += ["--set", override]  # after the tiny settings, so that it wins
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcdm-viz: error:") and fragment in err and "\n" not in err


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    run = RunDir(tmp_path / "r")
    run.encoder.mkdir(parents=True)  # with what a killed save left: the next training removes it
    for name in (".model.safetensors.k1.tmp", ".metrics.jsonl.k2.tmp"):
        (run.encoder / name).write_bytes(b"torn")
    train_encoder(tiny_config("ssl.epochs=1"), run, resume=True, progress=False)
    assert [r["step"] for r in read_metrics(run.encoder_metrics)] == [1, 2, 3, 4]
    assert not [p.name for p in run.encoder.iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(run.root)
    with pytest.raises(RcdmVizError, match="batch_size"):
        train_encoder(tiny_config("ssl.batch_size=1000"), run, progress=False)


def test_encoder_resume_refuses_another_configuration_and_a_second_training(tmp_path):
    from rcdm_viz.runs import step_lock

    run = RunDir(tmp_path / "r")
    train_encoder(tiny_config("ssl.epochs=1", "ssl.checkpoint_every=2"), run, progress=False)
    assert [p.name for p in checkpoint_dirs(run.checkpoints("encoder"))] == ["step-000000002"]
    other = tiny_config("ssl.epochs=1", "ssl.checkpoint_every=2", "encoder.width=16")
    with pytest.raises(RcdmVizError, match=r"another configuration \(differs in: encoder.width\)"):
        train_encoder(other, run, resume=True, progress=False)
    with step_lock(run, "encoder"), pytest.raises(RcdmVizError, match="already running .*pid"):
        train_encoder(other, run, progress=False)


def test_width_presets_differ_only_in_width():
    from rcdm_viz.config import load_config, to_dict

    for suffix in ("", "-imagenet"):
        dicts = {d: to_dict(load_config(f"en-width-{d}{suffix}")) for d in (512, 2048, 8192, 32768)}
        for d, cfg in dicts.items():
            assert cfg["encoder"]["width"] == d and cfg["ssl"]["optimizer"] == "lars"
            cfg["encoder"].pop("width")
            cfg.pop("presets")  # the preset's own name
        assert all(cfg == dicts[512] for cfg in dicts.values())
    methods = {
        k: load_config(f"gr-positives-{k}").ssl.method.value for k in ("augment", "class", "neighbour")
    }
    assert methods == {"augment": "simclr", "class": "simclr_class", "neighbour": "simclr_neighbour"}


def test_train_encoder_under_accelerate_launch(tmp_path):
    """`accelerate launch` runs `train-encoder` on 2 gloo processes as torchrun does: one bundle, rank 0's
    metrics (the step equivalence itself is test_two_processes_train_like_one)."""
    sets = ["ssl.epochs=1", "ssl.batch_size=16", "data.n_train=32"]
    overrides = [arg for kv in TINY + sets for arg in ("--set", kv)]
    run = RunDir(tmp_path / "run")
    args = ["rcdm_viz.cli", "train-encoder", "--run", str(run.root), "--no-progress", *overrides]
    done = accelerate_launch(args, 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_metrics(run.encoder_metrics)
    assert [(r["step"], r["processes"]) for r in rows] == [(1, 2), (2, 2)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert (run.encoder / "model.safetensors").is_file()
