"""What both training loops share: counter-based seeds and data order, checkpoint bookkeeping, the loop."""

from __future__ import annotations

import ast
import hashlib
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rcdm_viz
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.records import StepRecord
from rcdm_viz.runs import MetricsLog, read_metrics
from rcdm_viz.seeding import derive_seed, generator_for, sample_seed
from rcdm_viz.training import (
    LoopSettings,
    Trainer,
    batch_indices,
    checkpoint_dirs,
    load_latest_checkpoint,
    prepare_checkpoints,
    save_checkpoint,
    settle_checkpoint,
)


def test_seeds_are_blake2b_of_their_parts_and_never_change():
    """A changed derivation would silently change every run's data order and samples."""
    def want(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & (2**63 - 1)

    assert derive_seed(0, "epoch", 3) == want(repr((0, "epoch", 3)))
    assert sample_seed(5, 2) == want("rcdm-viz:5:2")
    assert derive_seed(0, "epoch", 3) != derive_seed(0, "epoch", 4) != derive_seed(1, "epoch", 4)
    a = torch.rand(4, generator=generator_for(7, "x"))
    assert torch.equal(a, torch.rand(4, generator=generator_for(7, "x")))
    assert not torch.equal(a, torch.rand(4, generator=generator_for(7, "y")))


def test_batch_indices_walk_seeded_epoch_permutations_and_drop_the_tail():
    n, batch, seed = 10, 3, 0
    per_epoch = n // batch  # 3 full batches; 1 image dropped per epoch
    epoch0 = torch.cat([batch_indices(n, batch, s, seed) for s in range(per_epoch)])
    assert len(set(epoch0.tolist())) == 9 and set(epoch0.tolist()) <= set(range(n))
    assert torch.equal(epoch0, torch.randperm(n, generator=generator_for(seed, "epoch", 0))[:9])
    epoch1 = torch.cat([batch_indices(n, batch, s, seed) for s in range(per_epoch, 2 * per_epoch)])
    assert not torch.equal(epoch0, epoch1)  # a new permutation every epoch
    assert torch.equal(batch_indices(n, batch, 4, seed), batch_indices(n, batch, 4, seed))  # resume replays


def test_checkpoint_dirs_lists_complete_checkpoints_oldest_first(tmp_path):
    for step in (20, 3, 100):
        (tmp_path / f"step-{step:09d}").mkdir()
        (tmp_path / f"step-{step:09d}" / "state.json").write_text("{}")
    (tmp_path / "step-000000200").mkdir()  # interrupted: no state.json
    (tmp_path / ".tmp-step-000000300").mkdir()
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [f"step-{s:09d}" for s in (3, 20, 100)]
    assert checkpoint_dirs(tmp_path / "missing") == []


def _settings(**changes) -> LoopSettings:
    base = dict(name="test", what="test", lr_key="test.lr", batch_size=4, log_every=3, checkpoint_every=10**9,
                keep_checkpoints=1)
    return LoopSettings(**{**base, **changes})


def _step(step: int, loss: float) -> StepRecord:
    return StepRecord(step=step, loss=loss, lr=0.1, images_per_s=1.0, processes=1)


def _trainer(acc, root: Path, steps: int, **changes) -> Trainer:
    log = MetricsLog(root / "metrics.jsonl")
    return Trainer(accelerator=acc, settings=_settings(**changes), steps=steps, checkpoints=root, log=log,
                   progress=False)


def test_the_loop_records_every_log_every_steps_and_at_the_last(tmp_path):
    trainer = _trainer(SimpleNamespace(is_main_process=True), tmp_path, 10)
    windows, after = [], []

    def record(step, window, rate):
        windows.append((step, [w["loss"] for w in window]))
        assert rate > 0
        return _step(step, window[-1]["loss"])

    trainer.run(start=2, step=lambda s: {"loss": float(s)}, record=record,
                after_step=lambda s: after.append(s) or False)
    assert windows == [(3, [2.0]), (6, [3.0, 4.0, 5.0]), (9, [6.0, 7.0, 8.0]), (10, [9.0])]
    assert [r["step"] for r in read_metrics(trainer.log.path)] == [3, 6, 9, 10]
    assert after == list(range(3, 11))


def test_the_loop_stops_at_a_non_finite_loss_naming_the_setting_to_lower(tmp_path):
    trainer = _trainer(SimpleNamespace(is_main_process=True), tmp_path, 5)
    want = r"^test loss became nan at step 1; lower test.lr \(no checkpoint to resume from: train afresh\)$"
    with pytest.raises(RcdmVizError, match=want):
        trainer.run(start=0, step=lambda s: {"loss": math.nan if s == 1 else 1.0},
                    record=lambda s, w, r: _step(s, 0.0))


def _fake_accelerator(saved: list[str]) -> SimpleNamespace:
    def save_state(path):
        Path(path).mkdir(parents=True)
        saved.append(Path(path).name)

    return SimpleNamespace(is_main_process=True, wait_for_everyone=lambda: None, save_state=save_state,
                           load_state=lambda path: None)


def test_only_states_with_a_healthy_loss_become_checkpoints(tmp_path):
    """The checkpoint after step s holds the state whose loss step s + 1 measures: a state that diverged
    (non-finite, or 100x the first loss) is deleted, and the error names the checkpoint a resume uses."""
    losses = {0: 1.0, 1: 0.9, 2: 0.8, 3: 500.0, 4: 1e6, 5: math.nan}
    settings = dict(checkpoint_every=1, keep_checkpoints=5, identity={"a": 1})
    trainer = _trainer(_fake_accelerator([]), tmp_path, 8, **settings)
    with pytest.raises(RcdmVizError, match="--resume continues from step 2"):
        trainer.run(start=0, step=lambda s: {"loss": losses[s]}, record=lambda s, w, r: _step(s, 0.0))
    assert [p.name for p in checkpoint_dirs(tmp_path)] == [f"step-{s:09d}" for s in (1, 2)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_resume_checks_the_identity_and_the_step(tmp_path):
    acc = _fake_accelerator([])
    pending = save_checkpoint(acc, tmp_path, 4, {"decoder": {"seed": 0, "lr": 1.0}})
    settle_checkpoint(acc, pending, True, 2)
    assert load_latest_checkpoint(acc, tmp_path, {"decoder": {"seed": 0, "lr": 1.0}}, 10) == 4
    with pytest.raises(RcdmVizError, match=r"another configuration \(differs in: decoder.seed\)"):
        load_latest_checkpoint(acc, tmp_path, {"decoder": {"seed": 7, "lr": 1.0}}, 10)
    with pytest.raises(RcdmVizError, match="at step 4, past the 3 steps configured"):
        load_latest_checkpoint(acc, tmp_path, {"decoder": {"seed": 0, "lr": 1.0}}, 3)
    prepare_checkpoints(acc, tmp_path, resume=False)
    assert load_latest_checkpoint(acc, tmp_path, {}, 10) == 0


class _Plant:
    """Unpickling this calls ``Path.touch`` on a marker: code a checkpoint must never run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_resume_runs_no_code_planted_in_a_checkpoint(tmp_path):
    """A registered object's state (``custom_checkpoint_0.pkl``) loads without a full unpickler: a pickle
    that names a callable is a one-line error and its code never runs; a tensor state still loads."""
    ema = torch.nn.Linear(2, 2)
    loaded = []
    acc = _fake_accelerator([])
    acc._custom_objects = [ema]
    def load_state(path):  # as accelerate's: each registered object through load_custom_state
        import accelerate.accelerator

        loaded.append(path)
        for index, obj in enumerate(acc._custom_objects):
            accelerate.accelerator.load_custom_state(obj, path, index)

    acc.load_state = load_state
    pending = save_checkpoint(acc, tmp_path, 4, {"a": 1})
    settle_checkpoint(acc, pending, True, 2)
    latest = checkpoint_dirs(tmp_path)[-1]
    marker = tmp_path / "ran"
    torch.save({"x": _Plant(marker)}, latest / "custom_checkpoint_0.pkl")
    with pytest.raises(RcdmVizError, match="^cannot resume from"):
        load_latest_checkpoint(acc, tmp_path, {"a": 1}, 10)
    assert not marker.exists() and loaded == [] and acc._custom_objects == [ema]
    want = {k: torch.full_like(v, 3.0) for k, v in ema.state_dict().items()}
    torch.save(want, latest / "custom_checkpoint_0.pkl")
    assert load_latest_checkpoint(acc, tmp_path, {"a": 1}, 10) == 4
    assert torch.equal(ema.weight, want["weight"])
    assert loaded == [str(latest)] and acc._custom_objects == [ema]


def test_a_resume_names_every_differing_field(tmp_path):
    acc = _fake_accelerator([])
    settle_checkpoint(acc, save_checkpoint(acc, tmp_path, 4, {"d": {k: 0 for k in "abcdefgh"}}), True, 2)
    with pytest.raises(RcdmVizError, match=r"differs in: d.a, d.b, d.c, d.d, d.e, d.f, d.g, d.h\)"):
        load_latest_checkpoint(acc, tmp_path, {"d": {k: 1 for k in "abcdefgh"}}, 10)


def test_a_trainer_resumes_from_its_newest_checkpoint_and_truncates_its_log(tmp_path):
    acc = _fake_accelerator([])
    trainer = _trainer(acc, tmp_path, 10, identity={"a": 1})
    settle_checkpoint(acc, save_checkpoint(acc, tmp_path, 4, {"a": 1}), True, 2)
    for step in (2, 4, 6):
        trainer.log.log(step=step, loss=1.0)
    (tmp_path / ".tmp-step-000000006").mkdir()  # what a killed save left
    assert trainer.begin(resume=True) == 4
    assert [r["step"] for r in read_metrics(trainer.log.path)] == [2, 4]
    assert not (tmp_path / ".tmp-step-000000006").exists()
    assert trainer.begin(resume=False) == 0 and checkpoint_dirs(tmp_path) == []


def test_the_trainer_and_its_settings_take_keywords_only(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(TypeError):
        Trainer(None, _settings(), 10, tmp_path, log)
    with pytest.raises(TypeError):
        LoopSettings("test", "test", "test.lr", 4, 3, 10, 1)
    trainer = _trainer(SimpleNamespace(is_main_process=True), tmp_path, 10)
    with pytest.raises(TypeError):
        trainer.begin(False)
    with pytest.raises(TypeError):
        trainer.run(0, lambda s: {"loss": 1.0}, lambda s, w, r: _step(s, 1.0))


def _positional(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[str]:
    names = [a.arg for a in node.args.posonlyargs + node.args.args]
    return [name for name in names if name not in ("self", "cls")]


def test_no_function_in_the_package_takes_more_than_six_positional_parameters():
    """A long positional signature invites calls that pass ``None`` and numbers by position; past six,
    parameters are keyword-only."""
    package = Path(rcdm_viz.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                if len(_positional(node)) > 6:
                    found.append(f"{path.relative_to(package)}:{node.lineno}")
    assert found == []
