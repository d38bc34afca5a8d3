"""Who raises what: ``RcdmVizError`` is a user's mistake (one line, exit 2); a broken internal invariant is an
ordinary exception whose traceback reaches the contributor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rcdm_viz
from rcdm_viz import cli

PACKAGE = Path(rcdm_viz.__file__).parent

# Maths and drawing on tensors the package itself made: no user input reaches them unchecked (the config
# and the commands check it first), so a failed check there is a bug, never a typo.
INTERNAL = ["decoder/schedule.py", "decoder/grids.py", "ssl/losses.py", "ssl/optim.py", "ssl/batchnorm.py",
            "data/views.py", "features.py", "seeding.py", "records.py"]


def _raises_user_error(path: Path) -> list[int]:
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise) and node.exc is not None
            and "RcdmVizError" in ast.unparse(node.exc)]


@pytest.mark.parametrize("module", INTERNAL)
def test_internal_modules_raise_ordinary_exceptions(module):
    assert _raises_user_error(PACKAGE / module) == []


def test_an_internal_error_reaches_the_terminal_with_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("x0 must have shape [N, 3, H, W], got [3, 8, 8]")

    monkeypatch.setattr(cli, "run_command", broken)
    with pytest.raises(ValueError, match="x0 must have shape"):  # not turned into "rcdm-viz: error: ..."
        cli.main(["probe", "--run", "nowhere"])
