"""What every training step shares: accelerate setup, counter-based randomness, checkpoints, the loop.

Exact resume without saving RNG state: every random draw of a training step comes from a generator seeded
by (seed, step, rank, stream), and the data order of an epoch from (seed, epoch). Resuming at step s thus
replays exactly what an uninterrupted run would have drawn; a checkpoint only holds model, optimizer, LR
schedule (and EMA) state plus the step counter.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from tqdm.auto import tqdm

from rcdm_viz.config import Precision
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import MetricsLog, atomic_write_text
from rcdm_viz.seeding import generator_for

_CKPT_PREFIX = "step-"


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


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, keep: int) -> None:
    """Save the accelerate state at ``step`` under ``root/step-N`` and keep the newest ``keep``.

    Written into a temporary directory and renamed, so a crash never leaves a half checkpoint that
    ``--resume`` would pick up.
    """
    final = root / f"{_CKPT_PREFIX}{step:09d}"
    tmp = root / f".tmp-{_CKPT_PREFIX}{step:09d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        atomic_write_text(tmp / "state.json", json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(root)[: -max(keep, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_latest_checkpoint(accelerator: Accelerator, root: Path) -> int:
    """Load the newest checkpoint under ``root`` into the prepared objects; returns its step (0 if none)."""
    found = checkpoint_dirs(root)
    if not found:
        return 0
    latest = found[-1]
    accelerator.load_state(str(latest))
    return int(json.loads((latest / "state.json").read_text())["step"])


@dataclass(frozen=True)
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


def run_steps(
    accelerator: Accelerator,
    settings: LoopSettings,
    start: int,
    steps: int,
    step: Callable[[int], dict[str, float]],
    record: Callable[[int, list[dict[str, float]], float], dict],
    log: MetricsLog,
    ckpt_root: Path,
    progress: bool,
    after_step: Callable[[int], bool] | None = None,
) -> None:
    """Steps ``start..steps-1`` of a training loop, with what every loop needs around ``step(s)``.

    ``step(s)`` runs optimisation step s and returns its logs (with "loss"); a non-finite loss is a one-line
    error. Every ``log_every`` steps (and at the last) ``record(s + 1, logs since the last record, images/s)``
    gives the metrics record to append (it must hold "loss", shown on the progress bar, main process
    only). Checkpoints every ``checkpoint_every`` steps (not at the last: the caller saves the result).
    ``after_step(s + 1)`` runs last; when it returns True (time spent outside training, e.g. progress
    samples) the throughput clock restarts.
    """
    shown = progress and accelerator.is_main_process
    bar = tqdm(range(start, steps), desc=settings.name, disable=not shown)
    tick, seen, window = time.perf_counter(), 0, []
    for s in bar:
        logs = step(s)
        if not math.isfinite(logs["loss"]):
            loss, lower = logs["loss"], settings.lr_key
            raise RcdmVizError(f"{settings.what} loss became {loss} at step {s}; lower {lower}")
        window.append(logs)
        seen += settings.batch_size
        if (s + 1) % settings.log_every == 0 or s + 1 == steps:
            rate = seen / (time.perf_counter() - tick)
            entry = record(s + 1, window, rate)
            log.log(**entry)
            bar.set_postfix(loss=f"{entry['loss']:.{settings.loss_digits}f}", img_s=f"{rate:.0f}")
            tick, seen, window = time.perf_counter(), 0, []
        if (s + 1) % settings.checkpoint_every == 0 and s + 1 < steps:
            save_checkpoint(accelerator, ckpt_root, s + 1, settings.keep_checkpoints)
        if after_step is not None and after_step(s + 1):
            tick = time.perf_counter()
