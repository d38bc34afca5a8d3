"""The package as a user installs it: a wheel built from the tree, installed into a fresh venv, run from an
empty directory, finds its presets, encoder registry and app (package data, not the source tree)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    "tmp",
)
SHIPPED = ("rcdm_viz/presets/quickstart.yaml", "rcdm_viz/pretrained_encoders/vicreg-resnet50.yaml",
           "rcdm_viz/app/streamlit_app.py")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _build_wheel(tmp: Path) -> Path:
    """sdist, then the wheel from the sdist (`python -m build`): both must carry the package data."""
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)  # the build writes build/ and egg-info: not in the tree
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)], tmp)
    (wheel,) = (tmp / "dist").glob("rcdm_viz-*.whl")
    assert len(list((tmp / "dist").glob("rcdm_viz-*.tar.gz"))) == 1
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel. Its dependencies (torch & co., gigabytes) are this interpreter's,
    reached through a .pth path line, which adds the directory without running the .pth files in it: the
    editable install of the source tree stays out of sight, so rcdm_viz can only come from the wheel."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)
    (Path(purelib.strip()) / "rcdm_viz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)], tmp)
    return venv


@pytest.fixture
def tmp_path(tmp_path):
    """pytest keeps the last runs' temporary directories; the built tree and venv need not outlive it."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.slow
def test_the_wheel_works_from_an_empty_directory(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert set(SHIPPED) <= set(zipfile.ZipFile(wheel).namelist())
    venv = _fresh_venv(tmp_path, wheel)
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    cli, python = str(venv / "bin" / "rcdm-viz"), str(venv / "bin" / "python")

    where = _run([python, "-c", "import rcdm_viz; print(rcdm_viz.__file__)"], empty, env)
    assert where.startswith(str(venv)), where
    assert _run([cli, "--version"], empty, env).startswith("rcdm-viz ")
    assert "vicreg-resnet50" in _run([cli, "encoders"], empty, env)
    assert "quickstart" in _run([cli, "presets"], empty, env)
    sets = [a for o in [*TINY, "ssl.epochs=1"] for a in ("--set", o)]
    train = [cli, "train-encoder", "--run", "r", "--preset", "quickstart", *sets, "--no-progress"]
    out = _run(train, empty, env)
    assert "encoder saved to r/encoder" in out
    assert "presets:\n- quickstart\n" in (empty / "r" / "config.yaml").read_text()
    assert "Streamlit browser" in _run([cli, "app", "--help"], empty, env)
    app = "from importlib import resources; print(resources.files('rcdm_viz.app') / 'streamlit_app.py')"
    assert Path(_run([python, "-c", app], empty, env).strip()).is_file()
