"""`rcdm-viz cache` survives a kill: run again, it resumes and ends with the same bytes."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rcdm_viz.data.cache import write_cache

# Every folder here holds one corrupt file on purpose; its one-line warning is tested in test_folder.py.
pytestmark = pytest.mark.filterwarnings("ignore:skipped 1 unreadable file")


def _noise_folder(root: Path, per_class: int) -> Path:
    """Two classes of noise PNGs (slow enough to decode that a kill lands midway), one corrupt file."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        d = root / "train" / name
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (192, 160, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    (root / "train" / "a" / "050-broken.png").write_bytes(b"\x89PNG not really")
    return root


def _done(status: Path) -> int:
    try:  # the file may be mid-creation (header written, not yet sized)
        return int((np.load(status, mmap_mode="r") > 0).sum())
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):  # empty, or a header half written
        return 0


def _kill_midway(argv: list[str], status: Path) -> int:
    """Start ``argv``, SIGKILL it once its first chunk is saved; returns how many images it had done."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            done = _done(status)
            if done:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return done
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise AssertionError(f"the cache run finished (rc {proc.returncode}) before it could be killed")


def test_killed_cache_resumes_to_identical_bytes(tmp_path):
    root = _noise_folder(tmp_path / "folder", per_class=100)
    want = tmp_path / "want"
    write_cache(root, 24, want, workers=1, progress=False, chunk=4)
    out = tmp_path / "got"
    argv = [
        sys.executable,
        "-m",
        "rcdm_viz.cli",
        "cache",
        "--data",
        str(root),
        "--resolution",
        "24",
        "--out",
        str(out),
        "--workers",
        "1",
        "--chunk",
        "4",
        "--no-progress",
    ]
    done = _kill_midway(argv, out / ".train.status.npy")
    assert 0 < done < 201 and not (out / "train.npy").exists()
    resumed = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    files = sorted(p.name for p in want.iterdir())
    assert sorted(p.name for p in out.iterdir()) == files  # no partial files left behind
    for name in files:
        if name != "meta.json":  # meta names its output directory nowhere, but check it apart anyway
            assert (out / name).read_bytes() == (want / name).read_bytes(), name
    assert (out / "meta.json").read_text() == (want / "meta.json").read_text()


def test_a_different_job_is_not_resumed(tmp_path):
    """Partial files of another resolution are discarded, not mixed in."""
    root = _noise_folder(tmp_path / "folder", per_class=6)
    out = tmp_path / "c"
    write_cache(root, 16, out, workers=1, progress=False, chunk=4)
    np.lib.format.open_memmap(out / ".train.status.npy", mode="w+", dtype=np.uint8, shape=(13,))[:] = 1
    meta = write_cache(root, 12, out, workers=1, progress=False, chunk=4)
    assert meta["splits"]["train"] == 12 and np.load(out / "train.npy").shape == (12, 3, 12, 12)
    assert np.load(out / "train.npy").any()


def test_a_split_finished_before_the_kill_is_not_decoded_again(tmp_path, monkeypatch):
    import rcdm_viz.data.cache as cache

    root = _noise_folder(tmp_path / "folder", per_class=4)
    shutil.copytree(root / "train", root / "val")
    want = tmp_path / "want"
    write_cache(root, 8, want, workers=1, progress=False, chunk=4)
    real, seen = cache.decode_many, []

    def killed_in_val(files, *args):
        if "val" in str(files[0]):
            raise KeyboardInterrupt  # stands for the kill
        yield from real(files, *args)

    def counting(files, *args):
        seen.extend(files)
        yield from real(files, *args)

    out = tmp_path / "got"
    monkeypatch.setattr(cache, "decode_many", killed_in_val)
    with pytest.raises(KeyboardInterrupt):
        write_cache(root, 8, out, workers=1, progress=False, chunk=4)
    monkeypatch.setattr(cache, "decode_many", counting)
    write_cache(root, 8, out, workers=1, progress=False, chunk=4)
    assert seen and all("val" in str(f) for f in seen)  # train was not decoded again
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in want.iterdir())
    for path in want.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


@pytest.mark.parametrize("damage", ["truncated images", "labels of another size", "label beyond the classes"])
def test_a_torn_or_inconsistent_cache_is_refused_with_one_line(tmp_path, damage):
    from rcdm_viz.data.cache import open_cache
    from rcdm_viz.errors import RcdmVizError

    out = tmp_path / "cache"
    write_cache(_noise_folder(tmp_path / "imgs", 4), 8, out)
    images, labels = out / "train.npy", out / "train-labels.npy"
    if damage == "truncated images":
        images.write_bytes(images.read_bytes()[:-100])
    elif damage == "labels of another size":
        np.save(labels, np.zeros(3, np.int64))
    else:
        np.save(labels, np.full(len(np.load(labels)), 7, np.int64))
    with pytest.raises(RcdmVizError, match="cache") as err:
        open_cache(out, "train")
    assert "\n" not in str(err.value) and "rcdm-viz cache" in str(err.value) or "classes" in str(err.value)
