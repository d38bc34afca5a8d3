"""What every training step shares: accelerate setup, counter-based randomness, checkpoints, the loop.

Exact resume without saving RNG state: every random draw of a training step comes from a generator seeded
by (seed, step, rank, stream), and the data order of an epoch from (seed, epoch). Resuming at step s thus
replays exactly what an uninterrupted run would have drawn; a checkpoint only holds model, optimizer, LR
schedule (and EMA) state plus the step counter, and the identity of its training (configuration and
architecture), which a resume must match.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import accelerate.accelerator as accelerate_accelerator
import torch
from accelerate import Accelerator, PartialState

from rcdm_viz.config import DecoderConfig, Precision, SSLConfig, flatten
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.progress import tqdm
from rcdm_viz.records import StepRecord
from rcdm_viz.runs import MetricsLog, RunDir, atomic_write_text, writing
from rcdm_viz.seeding import generator_for

_CKPT_PREFIX = "step-"
_PENDING = ".pending-"  # a checkpoint whose state has not yet shown a healthy loss
# A loss this many times the first loss of a training is divergence: its state is never checkpointed.
# Normal training stays far below (losses start at their largest, O(1) to O(log batch) here).
DIVERGED_FACTOR = 100.0


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """``auto`` -> bf16 where native, else fp32; an explicit choice is kept (with a warning if emulated)."""
    precision = Precision(precision)
    if precision is Precision.AUTO:
        return Precision.BF16 if native_bf16(device) else Precision.FP32
    if precision is Precision.BF16 and not native_bf16(device):
        warnings.warn(f"bf16 is emulated on this {device.type} and much slower than fp32", stacklevel=2)
    return precision


def make_accelerator(precision: Precision) -> Accelerator:
    """An Accelerator for this process (CPU, one GPU, or one rank of torchrun / accelerate launch)."""
    # Under torchrun on a machine without GPUs accelerate uses gloo only when told cpu=True; otherwise
    # every rank would silently train alone.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = PartialState(cpu=cpu).device
    # Every step here is one *global* batch sharded over ranks, so the LR schedule advances once per step;
    # accelerate's default would advance it num_processes times (it assumes per-device batches).
    return Accelerator(
        mixed_precision=resolve_precision(precision, device).accelerate_name,
        cpu=cpu,
        step_scheduler_with_optimizer=False,
    )


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Global indices of optimisation step ``step``: epochs are seeded permutations, the tail dropped.

    Returns long [batch_size]. ``batch_size`` must be <= n.
    """
    per_epoch = n // batch_size
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=generator_for(seed, "epoch", epoch))
    return perm[pos * batch_size : (pos + 1) * batch_size]


def shard(indices: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """This process's contiguous share of a global batch (so all ranks together see the whole batch)."""
    return indices.chunk(accelerator.num_processes)[accelerator.process_index]


def checkpoint_dirs(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(_CKPT_PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(_CKPT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, identity: dict[str, Any]) -> Path:
    """Save the accelerate state at ``step`` as a *pending* checkpoint ``root/.pending-step-N``; returns
    its path. ``settle_checkpoint`` makes it resumable once the next step shows its loss is healthy.

    Written into a temporary directory and renamed, so a crash never leaves a half checkpoint that
    ``--resume`` would pick up; a failed write (a full disk) removes its temporary directory.
    """
    name = f"{_CKPT_PREFIX}{step:09d}"
    tmp, pending = root / f".tmp-{name}", root / f"{_PENDING}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    with writing(tmp, cleanup=(tmp,)):
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            atomic_write_text(tmp / "state.json", json.dumps({"step": step, "identity": identity}))
            shutil.rmtree(pending, ignore_errors=True)
            tmp.rename(pending)
    accelerator.wait_for_everyone()
    return pending


def settle_checkpoint(accelerator: Accelerator, pending: Path, healthy: bool, keep: int) -> None:
    """Promote a pending checkpoint to ``step-N`` (keeping the newest ``keep``) when the loss of its state
    was ``healthy``, else delete it: a diverged state is never resumable."""
    if accelerator.is_main_process and pending.is_dir():
        if healthy:
            final = pending.with_name(pending.name[len(_PENDING) :])
            shutil.rmtree(final, ignore_errors=True)
            pending.rename(final)
            for old in checkpoint_dirs(pending.parent)[: -max(keep, 1)]:
                shutil.rmtree(old, ignore_errors=True)
        else:
            shutil.rmtree(pending, ignore_errors=True)
    accelerator.wait_for_everyone()


def prepare_checkpoints(accelerator: Accelerator, root: Path, resume: bool) -> None:
    """Remove what killed or failed saves left (temp and pending checkpoints); a fresh training also
    removes the checkpoints of any earlier training, which a later ``--resume`` would otherwise load."""
    if accelerator.is_main_process and root.is_dir():
        for path in root.iterdir():
            if not resume or path.name.startswith((".tmp-", _PENDING)):
                shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    accelerator.wait_for_everyone()


def _apply_base_lrs(schedulers: Sequence[Any], bases: list[list[float]]) -> None:
    """Give loaded LambdaLR schedules the configured base learning rates at their loaded step: a resume
    with a lower learning rate (after a divergence) must not keep the checkpoint's."""
    for sched, base in zip(schedulers, bases, strict=True):
        inner = getattr(sched, "scheduler", sched)  # accelerate wraps schedulers
        inner.base_lrs = list(base)
        for group, lr, factor in zip(inner.optimizer.param_groups, base, inner.lr_lambdas, strict=True):
            group["initial_lr"] = lr
            group["lr"] = lr * factor(inner.last_epoch)
        inner._last_lr = [group["lr"] for group in inner.optimizer.param_groups]


def load_latest_checkpoint(
    accelerator: Accelerator, root: Path, identity: dict[str, Any], steps: int, schedulers: Sequence[Any] = ()
) -> int:
    """Load the newest checkpoint under ``root`` into the prepared objects; returns its step (0 if none).

    ``identity`` is what must match (config fields and architecture): a checkpoint of another
    configuration, or one past ``steps``, is a one-line error, never silently loaded. The learning rate
    is not part of it: ``schedulers`` (LambdaLR) keep their configured base rates."""
    found = checkpoint_dirs(root)
    if not found:
        return 0
    latest = found[-1]
    try:
        state = json.loads((latest / "state.json").read_text())
        step, stored = int(state["step"]), state.get("identity")
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        raise RcdmVizError(f"checkpoint '{latest}' is unreadable; train without --resume") from None
    if stored != identity:
        try:
            ours, theirs = flatten(identity), flatten(stored if isinstance(stored, dict) else {})
        except RecursionError:
            raise RcdmVizError(f"checkpoint '{latest}' is unreadable; train without --resume") from None
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise RcdmVizError(  # every differing field: they are config keys, a short list
            f"checkpoint '{latest}' belongs to another configuration (differs in: {', '.join(differ)}); "
            "train without --resume to start afresh"
        )
    if step > steps:
        raise RcdmVizError(f"checkpoint '{latest}' is at step {step}, past the {steps} steps configured")
    bases = [list(getattr(sched, "scheduler", sched).base_lrs) for sched in schedulers]
    try:
        _load_state_inert(accelerator, latest)
    except (RuntimeError, ValueError, KeyError, OSError, pickle.UnpicklingError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RcdmVizError(f"cannot resume from '{latest}': {reason}") from None
    _apply_base_lrs(schedulers, bases)
    return step


def _load_state_inert(accelerator: Accelerator, path: Path) -> None:
    """``accelerator.load_state`` without its one full unpickler: accelerate loads objects registered for
    checkpointing (EMA, target network) from ``custom_checkpoint_*.pkl`` with ``weights_only=False``,
    which runs any code a planted file names. Those states are read here first with ``weights_only=True``
    (tensors and plain containers only), and accelerate's loader is swapped, for this call, for one that
    hands them over without reading the files again; the rest accelerate loads with ``weights_only``."""
    custom = list(getattr(accelerator, "_custom_objects", []))
    states = [
        torch.load(path / f"custom_checkpoint_{index}.pkl", map_location="cpu", weights_only=True)
        for index in range(len(custom))
    ]

    def hand_over(obj: Any, _path: str, index: int = 0) -> None:
        obj.load_state_dict(states[index])

    original = accelerate_accelerator.load_custom_state
    accelerate_accelerator.load_custom_state = hand_over
    try:
        accelerator.load_state(str(path))
    finally:
        accelerate_accelerator.load_custom_state = original


def resume_hint(root: Path) -> str:
    """Which checkpoint ``--resume`` would use, for an error that stops a training."""
    found = checkpoint_dirs(root)
    if not found:
        return "no checkpoint to resume from: train afresh"
    step = int(found[-1].name[len(_CKPT_PREFIX) :])
    return f"--resume continues from step {step}, the newest checkpoint whose loss was healthy"


@dataclass(frozen=True, kw_only=True)
class LoopSettings:
    """What a training loop needs to know besides its step: names, batch size, logging and checkpoints."""

    name: str  # progress-bar label, e.g. "encoder" or "decoder trunk"
    what: str  # whose loss a non-finite-loss error names ("encoder", "decoder")
    lr_key: str  # the config key that error tells the user to lower ("ssl.lr", "decoder.lr")
    batch_size: int  # global images per step, for the throughput
    log_every: int  # steps between metrics records
    checkpoint_every: int  # steps between resumable checkpoints
    keep_checkpoints: int  # how many checkpoints to keep
    loss_digits: int = 3  # decimals of the loss on the progress bar
    # what a resume must match (config fields, architecture), stored with every checkpoint
    identity: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls, section: SSLConfig | DecoderConfig, *, name: str, what: str, lr_key: str,
        identity: dict[str, Any], loss_digits: int = 3,
    ) -> LoopSettings:
        """The settings of a training configured by ``section`` (its batch size, logging and checkpoints)."""
        return cls(name=name, what=what, lr_key=lr_key, batch_size=section.batch_size,
                   log_every=section.log_every, checkpoint_every=section.checkpoint_every,
                   keep_checkpoints=section.keep_checkpoints, loss_digits=loss_digits, identity=identity)


StepFn = Callable[[int], dict[str, float]]  # step s -> its logs (with "loss")
# (step, logs since the last record, images/s) -> the metrics record
RecordFn = Callable[[int, list[dict[str, float]], float], StepRecord]


@dataclass(frozen=True, kw_only=True)
class Trainer:
    """What every training shares around its step: the accelerator, the loop settings, the checkpoints of
    one training step of a run and the metrics log of the training in progress, and the step loop.

    A training builds one (``Trainer.for_run``), calls ``begin`` (clear or resume) and ``run`` with its own
    step and record functions; saving the trained model stays with the training.
    """

    accelerator: Accelerator
    settings: LoopSettings
    steps: int  # optimisation steps of the whole training: the loop runs ``start..steps-1``
    checkpoints: Path  # the checkpoint root of this training
    log: MetricsLog  # metrics of the training in progress (enabled on the main process only)
    progress: bool = True  # a progress bar on the main process

    @classmethod
    def for_run(
        cls, run: RunDir, step_name: str, *, accelerator: Accelerator, settings: LoopSettings, steps: int,
        progress: bool,
    ) -> Trainer:
        """The trainer of step ``step_name`` of ``run`` (``checkpoints/<step_name>/`` and its metrics)."""
        log = MetricsLog(run.training_metrics(step_name), enabled=accelerator.is_main_process)
        return cls(accelerator=accelerator, settings=settings, steps=steps,
                   checkpoints=run.checkpoints(step_name), log=log, progress=progress)

    def begin(self, *, resume: bool, schedulers: Sequence[Any] = ()) -> int:
        """Clear what killed saves left (and, unless ``resume``, the checkpoints of an earlier training);
        with ``resume`` load the newest checkpoint (``load_latest_checkpoint``). The metrics log loses the
        records past the step it returns, where the loop starts (0 without a checkpoint)."""
        acc = self.accelerator
        prepare_checkpoints(acc, self.checkpoints, resume)
        start = 0
        if resume:
            identity = self.settings.identity
            start = load_latest_checkpoint(acc, self.checkpoints, identity, self.steps, schedulers)
        if acc.is_main_process:
            self.log.truncate_after(start)
        return start

    def run(
        self, *, start: int, step: StepFn, record: RecordFn, after_step: Callable[[int], bool] | None = None
    ) -> None:
        """Steps ``start..steps-1`` of a training loop, with what every loop needs around ``step(s)``.

        ``step(s)`` runs optimisation step s and returns its logs (with "loss"); a non-finite loss is a
        one-line error. Every ``log_every`` steps (and at the last) ``record(s + 1, logs since the last
        record, images/s)`` gives the metrics record to append (its loss is shown on the progress bar, main
        process only). Checkpoints every ``checkpoint_every`` steps (not at the last: the caller
        saves the result), each pending until the next step has measured its state's loss: a non-finite
        loss, or one over ``DIVERGED_FACTOR`` times the first, deletes it, so ``--resume`` never continues a
        diverged state. ``after_step(s + 1)`` runs last; when it returns True (time spent outside training,
        e.g. progress samples) the throughput clock restarts.
        """
        acc, settings, steps = self.accelerator, self.settings, self.steps
        shown = self.progress and acc.is_main_process
        bar = tqdm(range(start, steps), desc=settings.name, disable=not shown)
        tick, seen, window = time.perf_counter(), 0, []
        pending, reference = None, None
        for s in bar:
            logs = step(s)
            loss = logs["loss"]
            finite = math.isfinite(loss)
            reference = abs(loss) if reference is None and finite else reference
            if pending is not None:  # the pending checkpoint holds the state whose loss step s just measured
                healthy = finite and abs(loss) <= DIVERGED_FACTOR * max(reference or 0.0, 1e-3)
                settle_checkpoint(acc, pending, healthy, settings.keep_checkpoints)
                pending = None
            if not finite:
                raise RcdmVizError(
                    f"{settings.what} loss became {loss} at step {s}; lower {settings.lr_key} "
                    f"({resume_hint(self.checkpoints)})"
                )
            window.append(logs)
            seen += settings.batch_size
            if (s + 1) % settings.log_every == 0 or s + 1 == steps:
                rate = seen / (time.perf_counter() - tick)
                entry = record(s + 1, window, rate)
                self.log.log(**entry.to_json())
                bar.set_postfix(loss=f"{entry.loss:.{settings.loss_digits}f}", img_s=f"{rate:.0f}")
                tick, seen, window = time.perf_counter(), 0, []
            if (s + 1) % settings.checkpoint_every == 0 and s + 1 < steps:
                pending = save_checkpoint(acc, self.checkpoints, s + 1, settings.identity)
            if after_step is not None and after_step(s + 1):
                tick = time.perf_counter()
