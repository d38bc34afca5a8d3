"""The runs root and the paths inside it: finding runs, resolving names from URLs, and refusing any file
that resolves outside the root (``..``, absolute paths, symlinks leading elsewhere)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir

RUNS_ENV = "RCDM_VIZ_RUNS"  # environment variable naming the runs root (`rcdm-viz app --runs DIR` sets it)
DEFAULT_RUNS = "runs"  # runs root when the variable is unset
MAX_DEPTH = 3  # runs may be grouped in folders (runs/widths/d512), at most this deep
_RUN_MARKERS = ("config.yaml", "encoder", "decoders", "samples")  # any of these makes a directory a run


# ------------------------------------------------------------------------------------ runs and paths


def runs_root(value: str | os.PathLike[str] | None = None) -> Path:
    """The runs root: ``value``, else $RCDM_VIZ_RUNS, else ``runs/``; absolute, symlinks resolved."""
    raw = value if value not in (None, "") else os.environ.get(RUNS_ENV) or DEFAULT_RUNS
    return Path(raw).expanduser().resolve()


def safe_join(base: Path, *parts: str) -> Path:
    """``base/part/...`` resolved, refusing anything that is not a plain name or lands outside ``base``.

    Names come from URLs and file listings, so ``..``, absolute paths, separators and symlinks that point
    elsewhere are all refused; the final check compares resolved paths (``is_relative_to``).
    """
    root = Path(base).resolve()
    path = root
    for part in parts:
        if (
            not isinstance(part, str)
            or part in ("", ".", "..")
            or "/" in part
            or "\\" in part
            or "\x00" in part
        ):
            raise RcdmVizError(f"'{part}' is not a valid name inside '{root}'")
        path = path / part
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise RcdmVizError(f"'{'/'.join(parts)}' leads outside '{root}'")
    return resolved


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds any part of a run (config.yaml, encoder/, decoders/ or samples/)."""
    return any((Path(path) / marker).exists() for marker in _RUN_MARKERS)


def list_runs(root: Path) -> list[str]:
    """Names (relative paths, '/'-separated) of the run directories under ``root``, sorted.

    A run is a directory holding config.yaml, encoder/, decoders/ or samples/; folders that are not runs
    are searched up to ``MAX_DEPTH`` levels. Hidden directories and links leaving the root are skipped.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise RcdmVizError(f"runs root '{root}' does not exist or is not a directory")
    found: list[str] = []
    frontier = [root]
    for _ in range(MAX_DEPTH):
        deeper = []
        for folder in frontier:
            for child in sorted(folder.iterdir()):
                if child.name.startswith(".") or not child.is_dir():
                    continue
                if not child.resolve().is_relative_to(root):
                    continue
                if is_run_dir(child):
                    found.append(child.relative_to(root).as_posix())
                else:
                    deeper.append(child)
        frontier = deeper
    return sorted(found)


@dataclass(frozen=True)
class BrowsedRun(RunDir):
    """A run found under a runs root: every file browse opens in it must resolve inside ``limit``."""

    limit: Path | None = None


def confined(run: RunDir, path: Path) -> Path | None:
    """``path`` resolved when it lies inside the runs root (inside the run for a bare ``RunDir``), else None:
    a symlink inside a listed run must not make the app read files from elsewhere."""
    limit = getattr(run, "limit", None) or Path(run.root).resolve()
    resolved = Path(path).resolve()
    return resolved if resolved.is_relative_to(limit) else None


def refused(run: RunDir, path: Path, problems: list[str]) -> bool:
    """True (noted in ``problems``) when ``path`` exists but leads outside the runs root."""
    if confined(run, path) is not None or not (path.is_symlink() or path.exists()):
        return False
    problems.append(f"{Path(path).relative_to(run.root).as_posix()} points outside the runs root: not read")
    return True


def resolve_run(root: Path, name: str) -> RunDir:
    """The run called ``name`` (as ``list_runs`` names it) under ``root``, or a one-line error."""
    if not isinstance(name, str) or not name.strip():
        raise RcdmVizError("no run selected")
    path = safe_join(root, *name.split("/"))
    if not path.is_dir() or not is_run_dir(path):
        raise RcdmVizError(f"'{name}' is not a run directory under '{Path(root).resolve()}'")
    return BrowsedRun(path, limit=Path(root).resolve())
