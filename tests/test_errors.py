"""Who raises what: ``RcdmVizError`` is a user's mistake (one line, exit 2); a broken internal invariant is an
ordinary exception whose traceback reaches the contributor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rcdm_viz
from rcdm_viz import cli

PACKAGE = Path(rcdm_viz.__file__).parent

# Where user input enters: the commands, the config, the files a run holds, the data, the public encoders,
# the weights and shipped priors, the browser. Only these raise RcdmVizError (docs/DESIGN.md, "Errors").
BOUNDARY_MODULES = {
    "cli.py", "config.py", "field_rules.py", "choices.py", "runs.py", "records.py", "weights.py",
    "safe_pickle.py", "checks.py", "footprint.py", "errors.py", "sample_run.py", "encoders/zoo.py",
    "decoder/priors.py", "decoder/warm_start.py",
}
BOUNDARY_PACKAGES = ("data/", "browse/", "app/")
# Functions elsewhere that meet user input first: a file or path the user names, a layer name or spec the
# user types, a setting checked against what only the run knows (its images, its processes, its outcome).
BOUNDARY_FUNCTIONS = {
    "decoder/model.py::load_decoder",  # a decoder directory on disk
    "encoders/encoder.py::load_encoder",  # an encoder bundle on disk
    "encoders/encoder.py::Encoder.select_layers",  # --layers
    "encoders/encoder.py::Encoder._check_names",  # layer names a command or a notebook passes
    "encoders/projector.py::parse_head",  # encoder.head
    "encoders/efficientnet.py::EfficientNetEncoder.__init__",  # data.resolution against the ImageNet model
    "decoder/sampling.py::_check_sample_args",  # the public sample(): steps and layer
    "decoder/train.py::_check_decoder_config",  # the batch split over this launch's processes
    "decoder/train.py::check_batch_fits",  # decoder.batch_size against the images there are
    "training.py::load_latest_checkpoint",  # --resume
    "training.py::Trainer.run",  # a diverged loss: lower the learning rate
    "ssl/train.py::total_steps",  # ssl.batch_size against the images there are
    "ssl/train.py::train_encoder",  # a method that needs labels on unlabelled images
    "ssl/pairing.py::neighbour_table",  # ssl.reference_encoder
    "evaluation/gather.py::decoder_scores",  # a scores.json on disk
    "evaluation/gather.py::gather_run",  # report on a run with nothing to report
    "evaluation/report.py::compare_runs",  # report --compare with no runs
    "evaluation/perceptual.py::lpips_alexnet",  # the LPIPS weights file
    "evaluation/probes.py::select_ridge",  # probe.ridge_holdout against the images there are
    "evaluation/scores.py::resolve_distance",  # scores.distance against the image size
}


def _user_error_raises(path: Path) -> dict[str, list[int]]:
    """{qualified function name: lines} of every ``raise RcdmVizError(...)`` in ``path``."""
    found: dict[str, list[int]] = {}

    def walk(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                walk(child, [*scope, child.name])
                continue
            exc = child.exc if isinstance(child, ast.Raise) else None
            if exc is not None and "RcdmVizError" in ast.unparse(exc):
                found.setdefault(".".join(scope), []).append(child.lineno)
            walk(child, scope)

    walk(ast.parse(path.read_text()), [])
    return found


def test_user_errors_are_raised_only_where_user_input_enters():
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module in BOUNDARY_MODULES or module.startswith(BOUNDARY_PACKAGES):
            continue
        stray += [f"{module}::{name} (line {lines[0]})" for name, lines in _user_error_raises(path).items()
                  if f"{module}::{name}" not in BOUNDARY_FUNCTIONS]
    assert stray == [], "internal invariants raise ValueError, not RcdmVizError: " + ", ".join(stray)


def test_the_boundary_list_names_only_what_exists():
    listed = {entry.split("::")[0] for entry in BOUNDARY_FUNCTIONS} | BOUNDARY_MODULES
    assert all((PACKAGE / module).is_file() for module in listed)
    for entry in BOUNDARY_FUNCTIONS:
        module, name = entry.split("::")
        assert name in _user_error_raises(PACKAGE / module), f"{entry} raises no RcdmVizError: drop it"


def test_an_internal_error_reaches_the_terminal_with_its_traceback(monkeypatch):
    def broken(args):
        raise ValueError("x0 must have shape [N, 3, H, W], got [3, 8, 8]")

    monkeypatch.setattr(cli, "run_command", broken)
    with pytest.raises(ValueError, match="x0 must have shape"):  # not turned into "rcdm-viz: error: ..."
        cli.main(["probe", "--run", "nowhere"])
