"""Factor views: the second view re-renders its scene with named factors redrawn, nothing else changed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rcdm_viz.cli import main
from rcdm_viz.config import DataSource, Method
from rcdm_viz.data.factor_views import FactorViews, check_redraw_factors, draw_factors
from rcdm_viz.data.sources import load_images
from rcdm_viz.data.synthetic import FACTOR_RANGES, FACTORS
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir
from rcdm_viz.ssl.train import train_encoder
from tests.conftest import TINY, tiny_config

REDRAW = ("floor_hue", "spot_phi")


@pytest.fixture(scope="module")
def scenes():
    return load_images(tiny_config().data, "train", progress=False)


def test_unchanged_factors_give_the_stored_image_exactly(scenes):
    views = FactorViews(scenes, REDRAW)
    idx = torch.tensor([3, 0, 17, 5])
    same = torch.stack([scenes.factors[k][idx] for k in REDRAW], dim=1)
    assert torch.equal(views.render(idx, same), scenes.batch(idx))


def test_only_the_redrawn_factors_change(scenes):
    views = FactorViews(scenes, REDRAW)
    idx = torch.arange(16)
    values = draw_factors(REDRAW, len(idx), seed=0, step=3)
    factors = views.factors(idx, values)
    for name in FACTORS:
        stored = scenes.factors[name][idx]
        if name in REDRAW:
            assert not torch.equal(factors[name], stored)
            lo, hi = FACTOR_RANGES[name]
            assert float(factors[name].min()) >= lo and float(factors[name].max()) <= hi
        else:
            assert torch.equal(factors[name], stored)
    partner = views.render(idx, values)
    # Every scene looks different once its floor colour and light direction are redrawn.
    changed = (partner - scenes.batch(idx)).abs().flatten(1).amax(1)
    assert bool((changed > 0.05).all())


def test_draws_depend_on_step_and_seed_only():
    a = draw_factors(REDRAW, 8, seed=0, step=5)
    assert torch.equal(a, draw_factors(REDRAW, 8, seed=0, step=5))
    assert not torch.equal(a, draw_factors(REDRAW, 8, seed=0, step=6))
    assert not torch.equal(a, draw_factors(REDRAW, 8, seed=1, step=5))
    # A rank's share of the global draw is the same rows whatever the batch is split into.
    assert torch.equal(a.chunk(2)[1], a[4:])


def test_resume_is_bit_exact_with_factor_views(tmp_path):
    extra = ("views.redraw_factors=[floor_hue]", "ssl.checkpoint_every=5")
    straight, resumed = RunDir(tmp_path / "straight"), RunDir(tmp_path / "resumed")
    train_encoder(tiny_config(*extra), straight, progress=False)
    train_encoder(tiny_config(*extra), resumed, progress=False)
    (resumed.encoder / "model.safetensors").unlink()
    train_encoder(tiny_config(*extra), resumed, resume=True, progress=False)
    a = load_file(straight.encoder / "model.safetensors")
    b = load_file(resumed.encoder / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... and the factor views changed training: the same run without them ends elsewhere.
    plain = RunDir(tmp_path / "plain")
    train_encoder(tiny_config("ssl.checkpoint_every=5"), plain, progress=False)
    c = load_file(plain.encoder / "model.safetensors")
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("method", [m for m in Method if m is not Method.SIMCLR_NEIGHBOUR])
def test_every_method_trains_with_factor_views(tmp_path, method):
    cfg = tiny_config(f"ssl.method={method.value}", "ssl.epochs=1", "views.redraw_factors=[object_hue]")
    encoder = train_encoder(cfg, RunDir(tmp_path / "run"), progress=False)
    assert encoder.layer_names[-1] == "head3"


def test_neighbour_positives_with_factor_views(tmp_path, tiny_run):
    _, reference = tiny_run
    cfg = tiny_config(
        "ssl.method=simclr_neighbour", "ssl.epochs=1", "views.redraw_factors=[spot_hue]",
        f"ssl.reference_encoder={reference.encoder}",
    )
    train_encoder(cfg, RunDir(tmp_path / "run"), progress=False)
    assert (tmp_path / "run" / "encoder" / "model.safetensors").is_file()


def test_bad_factor_names_and_sources():
    assert check_redraw_factors((), DataSource.FOLDER) == ()
    with pytest.raises(RcdmVizError, match="unknown factor 'floor_colour'.*floor_hue"):
        check_redraw_factors(["floor_colour"], DataSource.SYNTHETIC)
    with pytest.raises(RcdmVizError, match="needs data.source=synthetic.*folder"):
        check_redraw_factors(["floor_hue"], DataSource.FOLDER)
    with pytest.raises(RcdmVizError, match="twice"):
        check_redraw_factors(["floor_hue", "floor_hue"], DataSource.SYNTHETIC)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("views.redraw_factors=[floor_colour]", "unknown factor 'floor_colour'"),
        ("data.source=cache", "views.redraw_factors ['floor_hue'] needs data.source=synthetic"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path, capsys, override, fragment):
    args = ["train-encoder", "--run", str(tmp_path / "run"), "--set", "views.redraw_factors=[floor_hue]"]
    for text in [*TINY, override]:
        args += ["--set", text]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.yaml").exists()  # nothing written before the check
