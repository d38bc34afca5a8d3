"""The run directory: one place for everything a run produces, which the app browses.

Layout (docs/DESIGN.md, "The run directory")::

    runs/<name>/config.yaml, encoder/, features/<layer>.*, decoders/<layer>/, checkpoints/<step>/,
    samples/<image-id>/, report/
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rcdm_viz.config import Config, to_dict
from rcdm_viz.errors import RcdmVizError

ALL_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
ALL_LAYERS = "all"  # `--layer all`: the shared decoder of every layer, saved in decoders/all/


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

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
        ``decoders/all/`` when trained, else None."""
        for path in (self.decoder(layer), self.shared_decoder):
            if (path / "config.json").is_file():
                return path
        return None

    def checkpoints(self, step_name: str) -> Path:
        """Resumable training state of one step (e.g. "encoder", "decoder-trunk")."""
        return self.root / "checkpoints" / step_name

    def samples(self, image_id: str) -> Path:
        return self.root / "samples" / image_id

    @property
    def report(self) -> Path:
        return self.root / "report"

    def has_encoder(self) -> bool:
        return (self.encoder / "config.json").is_file() and (self.encoder / "model.safetensors").is_file()

    def require_encoder(self) -> Path:
        """The encoder bundle path, or a one-line error if this run has none."""
        if not self.has_encoder():
            raise RcdmVizError(
                f"run directory '{self.root}' has no encoder (expected {self.encoder}/model.safetensors); "
                "run `rcdm-viz train-encoder --run DIR` first"
            )
        return self.encoder

    def decoder_layers(self) -> list[str]:
        """Layers that have a trained decoder in this run."""
        root = self.root / "decoders"
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file next to ``path``, then ``os.replace`` it onto ``path``.

    A reader never sees a half-written file; the temp file is removed when ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
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
    existing: dict[str, Any] = {}
    if run.config.is_file():
        existing = yaml.safe_load(run.config.read_text()) or {}
    full = to_dict(cfg)
    for name in sections:
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
        kept = [
            ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Read a metrics.jsonl file, skipping a torn last line (a training still in progress)."""
    records = []
    if not Path(path).is_file():
        return records
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
