"""Sampling a run's decoders into samples/<image-id>/: which decoder serves a layer, what is written."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from rcdm_viz.encoders import load_encoder
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, read_json
from rcdm_viz.sample_run import load_decoders, sample_across_runs, sample_images


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    cfg, run = tiny_run
    copy = RunDir(tmp_path / "run")
    shutil.copytree(run.root, copy.root)
    return cfg, copy


def test_load_decoders_uses_the_layers_own_then_the_shared_decoder_and_checks_it(run_copy):
    cfg, run = run_copy
    encoder = load_encoder(run.require_encoder())
    assert list(load_decoders(run, ["trunk"], encoder)) == ["trunk"]
    with pytest.raises(RcdmVizError, match="no decoder for layer 'head1'.*--layer all"):
        load_decoders(run, ["head1"], encoder)
    shutil.copytree(run.decoder("trunk"), run.shared_decoder)  # a "shared" decoder that knows only trunk
    with pytest.raises(RcdmVizError, match="has no layer 'head1'"):
        load_decoders(run, ["trunk", "head1"], encoder)
    shutil.rmtree(run.decoder("trunk"))
    both = load_decoders(run, ["trunk"], encoder)
    assert both["trunk"].config.layer_dims == {"trunk": encoder.layer_dims["trunk"]}


def test_sample_images_writes_the_same_grid_for_the_same_seed(run_copy, tmp_path):
    cfg, run = run_copy
    image = tmp_path / "in put.png"
    Image.new("RGB", (20, 24), (200, 30, 30)).save(image)
    first = sample_images(cfg, run, [str(image)], "trunk")
    assert first == [run.samples("in_put") / "grid.png"]
    meta = read_json(run.samples("in_put") / "meta.json")
    assert meta == {"format": 1, "layers": ["trunk"], "n": cfg.sample.n, "sampler": cfg.sample.sampler.value,
                    "steps": cfg.sample.steps, "guidance": cfg.sample.guidance, "seed": cfg.sample.seed,
                    "resolution": cfg.decoder.resolution}
    grid = first[0].read_bytes()
    sample_images(cfg, run, [str(image)], "trunk")
    assert first[0].read_bytes() == grid
    assert sorted(p.name for p in run.samples("in_put").iterdir()) == ["grid.png", "input.png", "meta.json",
                                                                       "trunk.png"]


def test_sample_images_refuses_bad_requests_before_sampling(run_copy, tmp_path):
    cfg, run = run_copy
    good = tmp_path / "a.png"
    Image.new("RGB", (16, 16)).save(good)
    with pytest.raises(RcdmVizError, match="an interpolation needs exactly 2 images, got 1"):
        sample_images(cfg, run, [str(good)], "trunk", interpolate=3)
    with pytest.raises(RcdmVizError, match="image '.*missing.png' does not exist"):
        sample_images(cfg, run, [str(good), str(tmp_path / "missing.png")], "trunk")
    with pytest.raises(RcdmVizError, match="unknown layer 'head9'"):
        sample_images(cfg, run, [str(good)], "trunk,head9")
    assert not run.samples("a").exists()


def test_inputs_sharing_a_name_get_distinct_sample_ids(run_copy, tmp_path):
    from rcdm_viz.data.images import image_ids

    cfg, run = run_copy
    (tmp_path / "b").mkdir()
    paths = [tmp_path / "good.png", tmp_path / "good.jpg", tmp_path / "b" / "good.png", tmp_path / "solo.png"]
    for i, path in enumerate(paths):
        Image.new("RGB", (20, 20), (60 * i, 10, 10)).save(path)
    assert image_ids(paths) == ["good_png", "good_jpg", "good_png-2", "solo"]
    grids = sample_images(cfg, run, [str(p) for p in paths[:2]], "trunk")
    assert [g.parent.name for g in grids] == ["good_png", "good_jpg"]
    ids = ("good_png", "good_jpg")
    first, second = (Image.open(run.samples(i) / "input.png").getpixel((0, 0)) for i in ids)
    assert first != second  # neither overwrote the other


def test_sample_across_runs_puts_each_runs_layer_in_one_grid_in_order(run_copy, tmp_path):
    cfg, run = run_copy
    image = tmp_path / "scene.png"
    Image.new("RGB", (20, 20), (30, 160, 40)).save(image)
    later = RunDir(tmp_path / "epoch-9")
    shutil.copytree(run.root, later.root)
    alone = sample_images(cfg, run, [str(image)], "trunk")[0].parent / "trunk.png"
    grids = sample_across_runs(cfg, [run, later], [str(image)], "trunk", tmp_path / "compare")
    assert grids == [tmp_path / "compare" / "scene" / "grid.png"]
    meta = read_json(tmp_path / "compare" / "scene" / "meta.json")
    assert meta["layers"] == ["run trunk", "epoch-9 trunk"]
    # same settings and seeds as sampling one run: each row is that run's own strip
    strip = (tmp_path / "compare" / "scene" / "run trunk.png").read_bytes()
    assert strip == alone.read_bytes()
    assert (tmp_path / "compare" / "scene" / "epoch-9 trunk.png").read_bytes() == strip  # same weights
    with pytest.raises(RcdmVizError, match="two runs named 'run'"):
        sample_across_runs(cfg, [run, run], [str(image)], "trunk", tmp_path / "again")


def test_image_ids_name_one_visible_folder_under_samples(tmp_path):
    """Stems ``..``, ``.`` and ``.png`` would name the run root, samples/ itself or a hidden folder."""
    from rcdm_viz.data.images import image_id

    assert [image_id(n) for n in ("...png", "..png", ".png", ".hidden.png", "a..b.png")] == [
        "image", "image", "png", "hidden", "a..b"
    ]
    run = RunDir(tmp_path)
    assert run.samples("ok") == tmp_path / "samples" / "ok"
    for bad in ("", ".", "..", ".png", "a/b", "../x"):
        with pytest.raises(RcdmVizError, match="is not a sample id"):
            run.samples(bad)


def test_a_sampling_removes_the_temps_a_killed_sampling_left(tmp_path):
    import torch

    from rcdm_viz.config import load_config
    from rcdm_viz.sample_run import write_sample_dir

    out = tmp_path / "samples" / "img"
    out.mkdir(parents=True)
    for name in (".grid.png.k1.tmp", ".meta.json.k2.tmp", ".trunk.png.k3.tmp"):
        (out / name).write_bytes(b"torn")
    settings = load_config(None, ["sample.n=2"]).sample
    write_sample_dir(out, torch.rand(3, 16, 16), {"trunk": torch.rand(2, 3, 16, 16)}, {}, settings)
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "input.png", "meta.json", "trunk.png"]
    assert read_json(out / "meta.json")["n"] == 2


def test_a_sample_folder_is_replaced_as_a_whole(tmp_path, monkeypatch):
    """A sampling stopped while writing leaves the previous folder as it was (meta.json still describes
    its strips); a folder half-filled by a killed one is removed by the next."""
    import torch

    import rcdm_viz.sample_run as sr
    from rcdm_viz.config import load_config

    out = tmp_path / "samples" / "img"

    def write(n):
        settings = load_config(None, [f"sample.n={n}"]).sample
        sr.write_sample_dir(out, torch.rand(3, 16, 16), {"trunk": torch.rand(n, 3, 16, 16)}, {}, settings)

    write(2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(sr, "write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        write(4)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out.parent / ".img.new-k1ll").mkdir()
    (out.parent / ".img.new-k1ll" / "trunk.png").write_bytes(b"half")
    write(4)
    assert sorted(p.name for p in out.parent.iterdir()) == ["img"]
    assert read_json(out / "meta.json")["n"] == 4
