"""The run directory: one place for everything a run produces, which the app browses.

Layout (docs/DESIGN.md, "The run directory")::

    runs/<name>/config.yaml, encoder/, features/<layer>.*, decoders/<layer>/, checkpoints/<step>/,
    samples/<image-id>/, report/
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rcdm_viz.config import Config, read_config_file, to_dict
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.records import ProbeReport, StepRecord

ALL_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
ALL_LAYERS = "all"  # `--layer all`: the shared decoder of every layer, saved in decoders/all/
ENCODER_DIR = "encoder"
ENCODER_SECTIONS = ("data", "encoder", "views", "ssl")  # what an encoder's training decides for its run
TRAINING_CONFIG = "training.yaml"  # in a model's bundle: the resolved config of the training that made it
PRIOR_LAYER = "prior"  # `--layer prior`: the unconditional decoder of the images, saved in decoders/prior/


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def encoder(self) -> Path:
        """``encoder/``; while a swap killed between its two renames left only the set-aside bundle, that
        one (it is still the run's encoder; the next swap puts it back)."""
        live = self.root / ENCODER_DIR
        aside = aside_path(live)
        return aside if not live.exists() and (aside / "config.json").is_file() else live

    @property
    def encoder_training(self) -> Path:
        """The resolved config of the training that made ``encoder/`` (in the bundle, swapped in with it)."""
        return self.encoder / TRAINING_CONFIG

    @property
    def encoder_metrics(self) -> Path:
        return self.encoder / "metrics.jsonl"

    @property
    def probes(self) -> Path:
        return self.encoder / "probes.json"

    @property
    def features(self) -> Path:
        return self.root / "features"

    def decoder(self, layer: str) -> Path:
        """Directory of the decoder for ``layer`` ("all" for the shared decoder)."""
        return self.root / "decoders" / layer

    @property
    def shared_decoder(self) -> Path:
        """Directory of the shared decoder of every layer (``train-decoder --layer all``)."""
        return self.decoder(ALL_LAYERS)

    def decoder_for(self, layer: str) -> Path | None:
        """The decoder that serves ``layer``: its own ``decoders/<layer>/`` when trained, else the shared
        ``decoders/all/`` when trained, else None. A decoder set aside by a swap that was killed midway
        (``replace_dir``) still serves."""
        for path in (self.decoder(layer), self.shared_decoder):
            for candidate in (path, aside_path(path)):
                if (candidate / "config.json").is_file():
                    return candidate
        return None

    def checkpoints(self, step_name: str) -> Path:
        """Resumable training state of one step (e.g. "encoder", "decoder-trunk")."""
        return self.root / "checkpoints" / step_name

    def training_metrics(self, step_name: str) -> Path:
        """metrics.jsonl of a training in progress; it joins the model's bundle when the model is saved,
        so a bundle's metrics always describe that bundle's model."""
        return self.checkpoints(step_name) / "metrics.jsonl"

    def samples(self, image_id: str) -> Path:
        """``samples/<image_id>``; an id that is empty, hidden (``.``, ``..``) or a path is refused, so a
        sample directory is always one visible folder right under ``samples/``."""
        if not image_id or image_id.startswith(".") or "/" in image_id or "\\" in image_id:
            raise RcdmVizError(f"'{image_id[:80]}' is not a sample id (a visible name without '/')")
        return self.root / "samples" / image_id

    @property
    def report(self) -> Path:
        return self.root / "report"

    def read_probes(self) -> ProbeReport | None:
        """``encoder/probes.json`` as a typed record, None when the encoder has not been probed; a file of
        another version or shape is a one-line error naming it."""
        if not self.probes.is_file():
            return None
        try:
            return ProbeReport.from_json(read_json(self.probes))
        except ValueError as err:
            raise RcdmVizError(f"'{self.probes}' cannot be read: {err}; run `rcdm-viz probe` again") from None

    def has_encoder(self) -> bool:
        return (self.encoder / "config.json").is_file() and (self.encoder / "model.safetensors").is_file()

    def require_encoder(self) -> Path:
        """The encoder bundle path, or a one-line error if this run has none."""
        if not self.has_encoder():
            # After `make demo` the trained run is runs/quickstart, not the commands' default runs/default.
            beside = self.root.parent
            siblings = beside.iterdir() if beside.is_dir() else ()
            trained = sorted(str(d) for d in siblings if RunDir(d).has_encoder())
            hint = f"; runs beside it with an encoder: {', '.join(trained)} (pass --run)" if trained else ""
            raise RcdmVizError(
                f"run directory '{self.root}' has no encoder (expected {self.encoder}/model.safetensors); "
                f"run `rcdm-viz train-encoder --run DIR` first{hint}"
            )
        return self.encoder

    def decoder_layers(self) -> list[str]:
        """Layers that have a trained decoder in this run."""
        root = self.root / "decoders"
        if not root.is_dir():
            return []
        live = (p for p in root.iterdir() if not p.name.startswith("."))
        found = {p.name for p in live if (p / "config.json").is_file()}
        aside = {p.name[len(_ASIDE) :] for p in root.glob(f"{_ASIDE}*") if (p / "config.json").is_file()}
        return sorted(found | aside)


_ASIDE = ".old-"  # prefix of a directory that replace_dir set aside


def aside_path(final: Path) -> Path:
    """Where ``replace_dir`` keeps the old ``final`` during a swap."""
    return final.with_name(f"{_ASIDE}{final.name}")


def replace_dir(new: Path, final: Path) -> None:
    """Move directory ``new`` onto ``final``: the old one is renamed aside first, then ``new`` renamed in,
    then the old one deleted. A kill at any moment leaves a complete ``final`` or its aside copy (which
    ``RunDir.decoder_for`` still finds); an error puts the old one back."""
    old = aside_path(final)
    _restore_aside(final)
    had_old = final.exists()
    if had_old:
        final.rename(old)
        kill_point(f"aside:{final.name}")
    try:
        new.rename(final)
    except Exception:
        if had_old:
            old.rename(final)
        raise
    kill_point(f"swapped:{final.name}")
    shutil.rmtree(old, ignore_errors=True)


KILL_AT = "RCDM_VIZ_KILL_AT"  # the kill tests' hook: an event name below, e.g. "wrote:model.safetensors"


def kill_point(event: str) -> None:
    """SIGKILL this process at ``event`` when ``$RCDM_VIZ_KILL_AT`` names it, so that tests can stop a real
    command at the worst instants: ``wrote:<file>`` (temp file written, not yet in place),
    ``replaced:<file>`` (in place), ``aside:<dir>`` (old folder set aside, new one not yet in),
    ``swapped:<dir>`` (new folder in, old one not yet deleted)."""
    if os.environ.get(KILL_AT) == event:
        os.kill(os.getpid(), signal.SIGKILL)


def tidy_swap(final: Path) -> None:
    """Undo what a killed swap of ``final`` left: its set-aside copy goes back when ``final`` is missing (it
    is the live one) or is deleted, and half-filled ``.<name>.new-*`` folders are removed. Called by the next
    command of the same step, under its lock."""
    final = Path(final)
    _restore_aside(final)
    for left in final.parent.glob(f".{final.name}.new-*"):
        if left.is_dir() and not left.is_symlink():
            shutil.rmtree(left, ignore_errors=True)


def _restore_aside(final: Path) -> None:
    """A swap killed in its window left only the set-aside copy: it is the live one again. Otherwise the
    set-aside copy of a finished swap is deleted."""
    old = aside_path(final)
    if old.exists() and not final.exists():
        old.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full; torch and safetensors wrap ENOSPC in messages."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc).lower()
    return "no space left" in text or "file write failed" in text or "disk quota" in text


@contextmanager
def writing(what: Path, cleanup: tuple[Path, ...] = ()) -> Iterator[None]:
    """Write ``what``; on any error remove ``cleanup`` (temp files that would keep a full disk full) and
    turn a full disk into a one-line error."""
    try:
        yield
    except Exception as exc:
        for path in cleanup:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise RcdmVizError(f"disk full while writing '{what}'; free some space and retry") from None
        raise


@contextmanager
def step_lock(run: RunDir, step_name: str, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of one step of one run (e.g. "decoder-trunk") or fail with a one-line error naming
    the holder. An OS lock (flock): a killed holder releases it, so no stale lock ever blocks a retry."""
    if not enabled:
        yield
        return
    path = run.root / "checkpoints" / f".{step_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise RcdmVizError(
                f"step '{step_name}' of run '{run.root}' is already running ({holder}); wait for it to end"
            ) from None
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing releases the flock


def sweep_temp(folder: Path, names: Iterable[str] | None = None) -> None:
    """Remove the temp files (``.<name>.*.tmp``, as ``atomic_write`` names them) that a killed write left
    in ``folder``; ``names`` limits it to the temps of those files (a folder shared with other steps).
    Called by the next command of the same step, under its lock, so no live write owns them."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return
    prefixes = None if names is None else tuple(f".{n}." for n in names)
    for path in folder.iterdir():
        name = path.name
        if not (name.startswith(".") and name.endswith(".tmp")) or path.is_symlink() or not path.is_file():
            continue
        if prefixes is None or name.startswith(prefixes):
            path.unlink(missing_ok=True)


def fill_and_replace_dir(final: Path, fill: Callable[[Path], object]) -> None:
    """Fill a new folder beside ``final`` (``.<name>.new-*``) and swap it in as a whole (``replace_dir``):
    a kill leaves the previous folder or the new one, never a mix. Half-filled folders of killed calls
    are removed first."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tidy_swap(final)
    new = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.new-"))
    os.chmod(new, _file_mode() | 0o111 & ~os.umask(os.umask(0)))  # mkdtemp's are owner-only
    try:
        fill(new)
        replace_dir(new, final)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, then ``os.replace`` it onto ``path``.

    A reader never sees a half-written file; the temp file is removed when ``write`` fails. The file gets
    the permissions of an ordinary write (mkstemp's are owner-only, which hides runs from a shared group).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode())
        kill_point(f"wrote:{path.name}")
        os.replace(tmp, path)
        kill_point(f"replaced:{path.name}")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and ``os.replace``."""
    atomic_write(path, lambda tmp: _write_synced(tmp, data))


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Atomic, pretty JSON write."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Read JSON, with a one-line error naming the file when it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RcdmVizError(f"file '{path}' does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RcdmVizError(f"cannot read '{path}': {exc}") from None


def record_config(run: RunDir, cfg: Config, sections: tuple[str, ...]) -> None:
    """Merge the resolved ``sections`` of ``cfg`` into the run's config.yaml.

    config.yaml then holds the resolved config of every step that ran here: each step writes the sections
    it used, keeping what earlier steps wrote for the others.
    """
    with config_lock(run):
        _merge_config(run, cfg, sections)


def read_run_config(run: RunDir) -> dict[str, Any]:
    """The run's config.yaml with the encoder's sections taken from the bundle's own ``training.yaml``:
    the bundle is swapped in as a whole before config.yaml is updated, so after a kill between the two the
    bundle's record is the true one."""
    merged = read_config_file(run.config) if run.config.is_file() else {}
    if run.encoder_training.is_file():
        trained = read_config_file(run.encoder_training)
        merged.update({k: trained[k] for k in ENCODER_SECTIONS if k in trained})
    return merged


@contextmanager
def config_lock(run: RunDir) -> Iterator[None]:
    """Hold ``checkpoints/.run.lock`` (a blocking flock) around a read-modify-write of config.yaml: two
    steps of one run recording at once would otherwise each write back what they read, losing the other's
    sections."""
    path = run.root / "checkpoints" / ".run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _merge_config(run: RunDir, cfg: Config, sections: tuple[str, ...]) -> None:
    existing: dict[str, Any] = {}
    if run.config.is_file():
        try:
            existing = yaml.safe_load(run.config.read_text()) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            raise RcdmVizError(f"cannot read '{run.config}': not a UTF-8 YAML file") from None
        if not isinstance(existing, dict):
            raise RcdmVizError(f"'{run.config}' must hold a mapping")
    full = to_dict(cfg)
    for name in dict.fromkeys((*sections, "presets")):  # every step records the presets its config merged
        existing[name] = full[name]
    atomic_write_text(run.config, yaml.safe_dump(existing, sort_keys=False))


class MetricsLog:
    """Append-only JSONL metrics file (one JSON object per line, flushed per record)."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        """Append one record (no-op on non-main processes)."""
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (used on resume so the log matches an uninterrupted run)."""
        if not (self.enabled and self.path.is_file()):
            return
        kept = [ln for ln in self.path.read_text(errors="replace").splitlines() if _step_of(ln) <= step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))


def read_steps(path: Path) -> list[StepRecord]:
    """The step records of a metrics.jsonl file (``records.StepRecord``), in order; other lines (a warm
    start's source, a torn or foreign line) are left out."""
    steps = []
    for record in read_metrics(path):
        try:
            steps.append(StepRecord.from_json(record))
        except ValueError:
            continue
    return steps


def _record(line: str) -> dict[str, Any] | None:
    """One metrics line as its record; None for a torn line or one that is not a JSON object."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _step_of(line: str) -> float:
    """The step of one metrics line; a torn or foreign line counts as past every step (it is dropped)."""
    record = _record(line)
    step = record.get("step", 0) if record is not None else None
    return step if isinstance(step, int | float) and not isinstance(step, bool) else float("inf")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file, skipping a torn last line (a training still in progress) and any line that
    is not one JSON object (a hand-edited or foreign file)."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text(errors="replace").splitlines():
        if (record := _record(line)) is not None:
            records.append(record)
    return records
