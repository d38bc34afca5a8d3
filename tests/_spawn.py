"""Run a gloo worker on several CPU processes for the multi-process equivalence tests."""

from __future__ import annotations

import socket
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
