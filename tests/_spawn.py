"""Run a gloo worker on several CPU processes for the multi-process equivalence tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_ranks(worker: Callable, args: tuple, nprocs: int, out_dir: Path) -> None:
    """``mp.spawn(worker, args, nprocs)``; each rank must write ``out_dir/rank{r}.pt`` as its last act.

    gloo has once aborted a rank (SIGABRT, "terminate called without an active exception") while tearing the
    process group down after every rank had written its results. What the tests check is those results, so a
    crash after all of them exist is tolerated; any crash before that, or a missing file, still fails.
    """
    try:
        mp.spawn(worker, args=args, nprocs=nprocs, join=True)
    except mp.ProcessExitedException:
        if not all((Path(out_dir) / f"rank{r}.pt").is_file() for r in range(nprocs)):
            raise


def accelerate_launch(module_args: list[str], nprocs: int, tmp: Path) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``python -m <module_args>`` on ``nprocs`` CPU processes (gloo, 1 thread each).

    ``--multi_gpu`` is accelerate's multi-process launcher (torch.distributed.run underneath); on a machine
    without GPUs each process then joins a gloo group (``training.make_accelerator``). ``--cpu`` would run ONE
    process unless MPI is installed. HF_HOME points into ``tmp`` so that no user accelerate config applies.
    """
    argv = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(nprocs),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        *module_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
