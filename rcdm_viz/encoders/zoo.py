"""Public encoder checkpoints: the registry (``rcdm_viz/pretrained_encoders/``), one adapter onto ``Encoder``.

Each registry file (YAML, one per model) names the architecture, the projector layout, the input size and
normalisation, where users obtain the file, the hash its publisher states (if any), and the checkpoint's key
layout: where the state dict sits (``state``), which checkpoint prefix feeds which Encoder prefix (``keys``)
and which checkpoint keys are deliberately unused (``ignore``). The adapter is generic over that data.

Files are only read from paths the user names (or finds with ``find_local_weights``); ``.pth`` files go
through ``torch.load(weights_only=True)``, so a pickle that carries code is refused. Objects the publishers'
training scripts pickled beside the weights (``inert_globals``: an optimizer filter function, an argparse
namespace) load as inert placeholders, never as the original code.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from rcdm_viz.config import flatten
from rcdm_viz.encoders.efficientnet import ARCH as EFFICIENTNET
from rcdm_viz.encoders.efficientnet import EfficientNetEncoder
from rcdm_viz.encoders.encoder import Encoder
from rcdm_viz.encoders.projector import parse_head
from rcdm_viz.encoders.resnet import Arch
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.layers import head_name
from rcdm_viz.runs import ENCODER_DIR, RunDir, fill_and_replace_dir, read_json, write_json
from rcdm_viz.weights import get_package, load_weights

REGISTRY_DIR = Path(str(resources.files("rcdm_viz").joinpath("pretrained_encoders")))  # package data
WEIGHTS_ENV = "RCDM_VIZ_WEIGHTS"
DEFAULT_WEIGHTS_DIR = Path("~/.cache/rcdm-viz/weights")
SOURCE_FILE = "source.json"  # provenance of an imported encoder, next to the bundle
_DDP_PREFIX = "module."


@dataclass(frozen=True)
class PublicEncoder:
    """One registry entry (see ``rcdm_viz/pretrained_encoders/*.yaml`` for the meaning of each field)."""

    name: str
    description: str
    method: str
    arch: str
    width: int
    head: str
    filename: str
    url: str
    sha256_prefix: str | None
    torch_hub: bool
    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state: tuple[str, ...]
    keys: dict[str, str]
    ignore: tuple[str, ...]
    inert_globals: tuple[str, ...]
    code: str
    package: str | None = None  # obtained and converted by `rcdm-viz weights <package>` (rcdm_viz.weights)

    def encoder_config(self) -> dict[str, Any]:
        """Constructor arguments of the Encoder this checkpoint maps onto."""
        return {
            "arch": self.arch,
            "width": self.width,
            "head": self.head,
            "mean": list(self.mean),
            "std": list(self.std),
            "resolution": self.resolution,
        }


_TOP_KEYS = {"name", "description", "method", "arch", "width", "head", "file", "input", "state", "keys"}
_OPTIONAL_KEYS = {"ignore", "inert_globals", "code", "package"}
_FILE_KEYS = {"name", "url", "sha256_prefix"}
_INPUT_KEYS = {"resolution", "mean", "std"}


def _check_keys(data: Any, required: set[str], optional: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RcdmVizError(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - required - optional)
    missing = sorted(required - set(data))
    if unknown or missing:
        what = f"unknown key {unknown[0]!r}" if unknown else f"missing key {missing[0]!r}"
        raise RcdmVizError(f"{where}: {what}")
    return data


def _parse_entry(path: Path) -> PublicEncoder:
    """Read and validate one registry file (fields, architecture, projector spec, hash format)."""
    where = str(path)
    data = _check_keys(yaml.safe_load(path.read_text()), _TOP_KEYS, _OPTIONAL_KEYS, where)
    file = _check_keys(data["file"], _FILE_KEYS, {"torch_hub"}, f"{where}: file")
    inp = _check_keys(data["input"], _INPUT_KEYS, set(), f"{where}: input")
    prefix = file["sha256_prefix"]
    if prefix is not None and not re.fullmatch(r"[0-9a-f]{8,64}", str(prefix)):
        raise RcdmVizError(f"{where}: sha256_prefix {prefix!r} is not 8-64 lowercase hex digits")
    entry = PublicEncoder(
        name=str(data["name"]),
        description=str(data["description"]),
        method=str(data["method"]),
        arch=str(data["arch"]),
        width=int(data["width"]),
        head=str(data["head"]),
        filename=str(file["name"]),
        url=str(file["url"]),
        sha256_prefix=None if prefix is None else str(prefix),
        torch_hub=bool(file.get("torch_hub", False)),
        resolution=int(inp["resolution"]),
        mean=tuple(float(v) for v in inp["mean"]),  # type: ignore[arg-type]
        std=tuple(float(v) for v in inp["std"]),  # type: ignore[arg-type]
        state=tuple(str(k) for k in data["state"] or ()),
        keys={str(k): str(v) for k, v in (data["keys"] or {}).items()},
        ignore=tuple(str(k) for k in data.get("ignore") or ()),
        inert_globals=tuple(str(k) for k in data.get("inert_globals") or ()),
        code=str(data.get("code", "")),
        package=None if data.get("package") is None else str(data["package"]),
    )
    if path.stem != entry.name:
        raise RcdmVizError(f"{where}: name {entry.name!r} differs from the file name {path.stem!r}")
    if entry.package is not None:
        _check_package_entry(entry, where)
        return entry
    Arch.parse(entry.arch)
    parse_head(entry.head)
    return entry


def _check_package_entry(entry: PublicEncoder, where: str) -> None:
    """An entry whose weights come from ``rcdm-viz weights``: a known package, an architecture with its
    own module (today: EfficientNet-Lite0), and that package's converted file name."""
    try:
        package = get_package(entry.package or "")
    except RcdmVizError as err:
        raise RcdmVizError(f"{where}: {err}") from None
    if entry.arch != EFFICIENTNET:
        raise RcdmVizError(f"{where}: arch {entry.arch!r} of a package entry must be {EFFICIENTNET!r}")
    if entry.filename != package.filename:
        raise RcdmVizError(f"{where}: file name {entry.filename!r} is not {package.filename!r}")


def load_registry(directory: str | os.PathLike[str] = REGISTRY_DIR) -> dict[str, PublicEncoder]:
    """All registry entries in ``directory`` (``*.yaml``), by name, sorted."""
    paths = sorted(Path(directory).glob("*.yaml"))
    if not paths:
        raise RcdmVizError(f"no encoder registry files (*.yaml) in '{directory}'")
    return {entry.name: entry for entry in map(_parse_entry, paths)}


def get_public_encoder(name: str, directory: str | os.PathLike[str] = REGISTRY_DIR) -> PublicEncoder:
    """The registry entry called ``name``, or the user's own registry file when ``name`` is a YAML path;
    a one-line error listing the known names otherwise."""
    if Path(name).suffix in (".yaml", ".yml"):
        if not Path(name).is_file():
            raise RcdmVizError(f"encoder registry file '{name}' does not exist")
        return _parse_entry(Path(name))
    registry = load_registry(directory)
    if name not in registry:
        raise RcdmVizError(f"unknown public encoder {name!r}; known: {', '.join(registry)}")
    return registry[name]


# ------------------------------------------------------------------------------------- local files
def weights_dirs(entry: PublicEncoder | None = None) -> list[Path]:
    """Where ``find_local_weights`` looks: $RCDM_VIZ_WEIGHTS (os.pathsep-separated) or
    ~/.cache/rcdm-viz/weights, plus torch.hub's checkpoints directory for torchvision's files."""
    env = os.environ.get(WEIGHTS_ENV)
    dirs = [Path(p).expanduser() for p in env.split(os.pathsep) if p] if env else [DEFAULT_WEIGHTS_DIR]
    if entry is None or entry.torch_hub:
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return [d.expanduser() for d in dirs]


def find_local_weights(entry: PublicEncoder) -> Path | None:
    """The first file named ``entry.filename`` in ``weights_dirs(entry)``, or None."""
    for directory in weights_dirs(entry):
        candidate = directory / entry.filename
        if candidate.is_file():
            return candidate
    return None


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


class _Inert:
    """Stand-in for a non-tensor object a training script pickled beside the weights: accepts any
    construction and state, does nothing, and is never called by the loader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def read_checkpoint(path: str | os.PathLike[str], inert_globals: tuple[str, ...] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; ``inert_globals`` (full names) load as placeholders.

    Raises a one-line RcdmVizError naming the file (and the refused global) when the file holds code or
    objects weights_only refuses, or is not a torch checkpoint.
    """
    stand_ins: list[Any] = [(_Inert, name) for name in inert_globals]
    try:
        # torch warns about unusual pickle protocols; the outcome (loaded or refused) is what users need.
        with torch.serialization.safe_globals(stand_ins), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)|unrecognized function (\S+)", str(err))
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = detail.group(1).strip() if detail else "unpickling refused"
        what = f"the global {found.group(1) or found.group(2)!r}" if found else f"non-tensor data ({reason})"
        raise RcdmVizError(
            f"refused to load '{path}': it pickles {what}, which torch.load(weights_only=True) does not run"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RcdmVizError(f"cannot read checkpoint '{path}': {first}") from None


# ------------------------------------------------------------------------------------------ adapter
def _our_prefix(entry: PublicEncoder, key: str) -> str:
    """The longest ``entry.keys`` prefix of Encoder state key ``key``."""
    matches = [p for p in entry.keys if key.startswith(p)]
    if not matches:
        raise RcdmVizError(f"registry entry {entry.name!r} maps no checkpoint key onto Encoder key {key!r}")
    return max(matches, key=len)


def _state_dict_at(checkpoint: Any, entry: PublicEncoder, file: str) -> dict[str, Tensor]:
    """Descend ``entry.state`` into the checkpoint, flatten nested mappings, and strip a DDP "module."
    prefix carried by every key."""
    state = checkpoint
    for step, name in enumerate(entry.state):
        if not isinstance(state, Mapping) or name not in state:
            path = "".join(f"[{k!r}]" for k in entry.state[: step + 1])
            raise RcdmVizError(f"'{file}': missing key {path} ({entry.name}'s layout)")
        state = state[name]
    if not isinstance(state, Mapping) or not state:
        raise RcdmVizError(f"'{file}': no state dict at {list(entry.state)} ({entry.name}'s layout)")
    flat = flatten(state)  # VISSL nests {"trunk": {...}, "heads": {...}}
    if all(k.startswith(_DDP_PREFIX) for k in flat):
        flat = {k[len(_DDP_PREFIX) :]: v for k, v in flat.items()}
    return flat


def _fold_weight_norm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Replace weight_norm's (weight_g, weight_v) pairs by the weight they define: g * v / ||v|| (norm
    over every dim but 0, torch.nn.utils.weight_norm's default), so both DINO head variants load."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".weight_g")]:
        base = key[: -len("_g")]
        if base + "_v" not in out or base in out:
            continue  # not a weight-norm pair: left for the key check to report
        g, v = out.pop(key), out.pop(base + "_v")
        norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.ndim - 1)))
        out[base] = g * v / norm
    return out


def adapt_state_dict(entry: PublicEncoder, checkpoint: Any, file: str) -> dict[str, Tensor]:
    """Map a loaded checkpoint onto the state dict of ``Encoder(**entry.encoder_config())``.

    Every Encoder key must find its checkpoint key with the same shape (a missing
    ``num_batches_tracked``, absent from files saved by old PyTorch, counts as 0, as BatchNorm itself
    does); every checkpoint key must be used or listed in ``entry.ignore``. Otherwise a one-line
    RcdmVizError names ``file`` and the key.
    """
    state = _fold_weight_norm(_state_dict_at(checkpoint, entry, file))
    with torch.device("meta"):
        target = Encoder(**entry.encoder_config()).state_dict()
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for key, ref in target.items():
        ours = _our_prefix(entry, key)
        theirs = entry.keys[ours] + key[len(ours) :]
        value = state.get(theirs)
        if value is None and key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=ref.dtype)
            continue
        if not isinstance(value, Tensor):
            raise RcdmVizError(f"'{file}': missing key {theirs!r} ({entry.name}'s layout, for {key})")
        if value.shape != ref.shape:
            raise RcdmVizError(
                f"'{file}': key {theirs!r} has shape {tuple(value.shape)}, "
                f"{entry.name} expects {tuple(ref.shape)}"
            )
        out[key] = value.to(ref.dtype) if value.is_floating_point() else value
        used.add(theirs)
    extra = [k for k in state if k not in used and not str(k).startswith(entry.ignore)]
    if extra:
        raise RcdmVizError(
            f"'{file}': unexpected key {extra[0]!r} ({len(extra)} unused keys; not {entry.name}'s layout?)"
        )
    return out


def load_public_encoder(
    entry: PublicEncoder | str, weights: str | os.PathLike[str], sha256: str | None = None
) -> Encoder:
    """The Encoder (CPU, eval mode) of a public checkpoint file, after checking the stated hash, if any
    (``sha256``: the file's digest when the caller already computed it)."""
    entry = get_public_encoder(entry) if isinstance(entry, str) else entry
    path = Path(weights)
    if not path.is_file():
        raise RcdmVizError(f"weights file '{path}' does not exist")
    check_hash(entry, path, sha256)
    if entry.package is not None:
        return EfficientNetEncoder.from_state_dict(entry.encoder_config(), load_weights(entry.package, path))
    state = adapt_state_dict(entry, read_checkpoint(path, entry.inert_globals), str(path))
    return Encoder.from_state_dict(entry.encoder_config(), state)


def check_hash(entry: PublicEncoder, path: Path, digest: str | None = None) -> str:
    """sha256 of ``path``; a one-line error if the publisher states a prefix and it differs."""
    digest = digest or sha256_file(path)
    if entry.sha256_prefix and not digest.startswith(entry.sha256_prefix):
        raise RcdmVizError(
            f"'{path}': sha256 {digest[:16]}... does not start with {entry.sha256_prefix!r}, "
            f"the hash its publisher states for {entry.filename} ({entry.name})"
        )
    return digest


# ------------------------------------------------------------------------------------- run import
def import_public_encoder(
    run: RunDir, name: str | None, weights: str | os.PathLike[str] | None = None
) -> Path:
    """Convert a public checkpoint once into the run's ``encoder/`` bundle (safetensors + JSON) and
    record its source (registry name, file name, sha256) in ``encoder/source.json``.

    ``weights`` defaults to the file found by ``find_local_weights``. A run that already holds this very
    encoder is left as it is; a run holding another encoder is a one-line error.
    Returns the bundle directory.
    """
    if not name:
        raise RcdmVizError("a weights file needs a registry entry to read it (see `rcdm-viz encoders`)")
    entry = get_public_encoder(name)
    source_path = run.encoder / SOURCE_FILE
    existing = read_json(source_path) if source_path.is_file() else None
    if weights is None:
        if run.has_encoder() and existing and existing.get("encoder") == entry.name:
            return run.encoder
        found = find_local_weights(entry)
        if found is None:
            dirs = ", ".join(str(d) for d in weights_dirs(entry))
            how = f"run `rcdm-viz weights {entry.package}`" if entry.package else "give its weights file"
            raise RcdmVizError(f"no {entry.filename} for {entry.name} in {dirs}; {how}")
        weights = found
    path = Path(weights)
    if not path.is_file():
        raise RcdmVizError(f"weights file '{path}' does not exist")
    digest = check_hash(entry, path)
    if run.has_encoder():
        if existing and existing.get("encoder") == entry.name and existing.get("sha256") == digest:
            return run.encoder
        held = f"{existing['encoder']} from {existing['file']}" if existing else "a trained encoder"
        raise RcdmVizError(
            f"run '{run.root}' already has an encoder ({held}); use a new run directory for {entry.name}"
        )
    encoder = load_public_encoder(entry, path, sha256=digest)
    # Provenance first: a bundle never exists without the record of where it came from.
    source = {"encoder": entry.name, "file": path.name, "sha256": digest, "url": entry.url}

    def fill(folder: Path) -> None:  # swapped in as one folder: no bundle without its record
        write_json(folder / SOURCE_FILE, {**source, "layers": encoder.layer_dims})
        encoder.save(folder)

    fill_and_replace_dir(run.root / ENCODER_DIR, fill)
    return run.encoder


def registry_table(directory: str | os.PathLike[str] = REGISTRY_DIR) -> str:
    """Text table of the registry: name, layers with dimensions, file, and whether it is present locally."""
    rows = [("name", "layers", "file", "local copy")]
    for entry in load_registry(directory).values():
        heads = [f"{head_name(i)}:{d}" for i, d in enumerate(parse_head(entry.head).dims)]  # DESIGN's names
        layers = " ".join([f"trunk:{entry.width}", *heads])
        found = find_local_weights(entry)
        rows.append((entry.name, layers, entry.filename, str(found) if found else "missing"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join([*(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)), r[3]]) for r in rows]
    where = ", ".join(str(d) for d in weights_dirs())
    lines.append(
        f"(looked in {where}; set ${WEIGHTS_ENV} to change; obtain files from each entry's url in "
        f"{REGISTRY_DIR}, or with `rcdm-viz weights` for those from the package index)"
    )
    return "\n".join(lines)


__all__ = [
    "PublicEncoder",
    "adapt_state_dict",
    "check_hash",
    "find_local_weights",
    "get_public_encoder",
    "import_public_encoder",
    "load_public_encoder",
    "load_registry",
    "read_checkpoint",
    "registry_table",
    "sha256_file",
    "weights_dirs",
]
