"""Image folders (ImageNet layout), robust decoding, the uint8 cache and its CLI; bad input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rcdm_viz.cli import main
from rcdm_viz.config import load_config
from rcdm_viz.data.cache import open_cache, write_cache
from rcdm_viz.data.folder import decode
from rcdm_viz.data.sources import load_images
from rcdm_viz.errors import RcdmVizError

COLOURS = {"n01440764": (220, 20, 20), "n01443537": (20, 200, 30), "n01484850": (30, 40, 210)}


def _make_folder(root: Path, per_class: int = 3, corrupt: bool = True) -> Path:
    """ImageNet layout: train/ and val/ with one colour per class; JPEG and PNG of various sizes."""
    for split in ("train", "val"):
        for c, (name, colour) in enumerate(COLOURS.items()):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                size = (40 + 7 * i, 24 + 5 * c)  # landscape and portrait-ish, never square
                Image.new("RGB", size, colour).save(d / f"{name}_{i}.JPEG", quality=95)
        Image.new("L", (20, 30), 128).save(root / split / "n01443537" / "gray.png")
    if corrupt:
        (root / "train" / "n01440764" / "broken.JPEG").write_bytes(b"\xff\xd8\xff not really a jpeg")
        (root / "train" / "n01484850" / "notes.txt").write_text("not an image")
    return root


def _folder_cfg(root: Path, *extra: str):
    return load_config(None, ["data.source=folder", f"data.root={root}", "data.resolution=16", *extra])


def test_folder_loads_sorted_classes_and_counts_corrupt_files(tmp_path):
    root = _make_folder(tmp_path / "imagenet")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\).*(broken\.JPEG|notes\.txt)"):
        train = load_images(_folder_cfg(root).data, "train", progress=False)
    assert len(train) == 3 * 3 + 1
    assert train.class_names == tuple(sorted(COLOURS))
    assert train.num_classes == 3
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 16, 16)
    # Each image has its class's colour (JPEG rounding aside); gray.png is RGB-converted and labelled 1.
    for img, label in zip(train.images, train.labels, strict=True):
        mean = img.float().mean(dim=(1, 2))
        if mean.std() < 2:  # the gray image
            assert label == 1
            continue
        want = torch.tensor(COLOURS[train.class_names[label]], dtype=torch.float32)
        assert (mean - want).abs().max() < 8, (label, mean)


def test_folder_val_split_and_subset(tmp_path):
    root = _make_folder(tmp_path / "imagenet", corrupt=False)
    val = load_images(_folder_cfg(root).data, "val", progress=False)
    assert len(val) == 10
    some = load_images(_folder_cfg(root).data, "val", n=4, resolution=8, progress=False)
    again = load_images(_folder_cfg(root).data, "val", n=4, resolution=8, progress=False)
    assert some.images.shape == (4, 3, 8, 8) and torch.equal(some.images, again.images)


def test_decode_resizes_shorter_side_and_centre_crops(tmp_path):
    img = Image.new("RGB", (60, 20), (0, 0, 0))
    img.paste((255, 255, 255), (20, 0, 40, 20))  # a white centre third
    img.save(tmp_path / "wide.png")
    out = decode(tmp_path / "wide.png", 10)
    assert out.shape == (3, 10, 10)
    # Shorter side 20 -> 10, so the 60-wide image becomes 30 wide and the centre crop is the white third.
    assert out[:, :, 2:8].float().mean() > 240


@pytest.mark.parametrize(
    "layout, fragment",
    [("missing", "does not exist"), ("empty", "is empty"), ("flat", "no class subfolders")],
)
def test_bad_folders_are_one_line_errors_naming_the_path(tmp_path, layout, fragment):
    root = tmp_path / layout
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        Image.new("RGB", (8, 8)).save(root / "a.png")
    with pytest.raises(RcdmVizError, match=fragment) as err:
        load_images(_folder_cfg(root).data, "train", progress=False)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_folder_without_root_is_an_error():
    with pytest.raises(RcdmVizError, match="data.root"):
        load_images(load_config(None, ["data.source=folder"]).data, "train", progress=False)


def test_cache_round_trip_matches_folder_and_is_memory_mapped(tmp_path):
    root = _make_folder(tmp_path / "imagenet")
    out = tmp_path / "cache16"
    with pytest.warns(UserWarning, match="skipped 2"):
        meta = write_cache(root, 16, out, progress=False)
    assert meta["splits"] == {"train": 10, "val": 10}
    assert len(meta["skipped"]["train"]) == 2 and meta["skipped"]["val"] == []
    assert json.loads((out / "meta.json").read_text())["classes"] == sorted(COLOURS)
    assert isinstance(np.load(out / "train.npy", mmap_mode="r"), np.memmap)
    images, labels, classes = open_cache(out, "train")
    with pytest.warns(UserWarning):
        folder = load_images(_folder_cfg(root).data, "train", progress=False)
    assert torch.equal(images, folder.images) and torch.equal(labels, folder.labels)
    cached = load_images(
        load_config(None, ["data.source=cache", f"data.root={out}"]).data,
        "val",
        n=5,
        resolution=8,
        progress=False,
    )
    assert cached.images.shape == (5, 3, 8, 8) and cached.num_classes == 3


def test_cache_cli_and_bad_cache(tmp_path, capsys):
    root = _make_folder(tmp_path / "imagenet", corrupt=False)
    out = tmp_path / "c"
    argv = ["cache", "--data", str(root), "--resolution", "12", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "train 10" in capsys.readouterr().out
    assert np.load(out / "val.npy").shape == (10, 3, 12, 12)
    assert main(["cache", "--data", str(tmp_path / "nope"), "--resolution", "12", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rcdm-viz: error:") and "nope" in err and "\n" not in err
    with pytest.raises(RcdmVizError, match="not an rcdm-viz cache"):
        open_cache(tmp_path, "train")


def test_training_on_a_cache(tmp_path):
    from rcdm_viz.runs import RunDir, read_metrics
    from rcdm_viz.ssl.train import train_encoder
    from tests.conftest import tiny_config

    root = _make_folder(tmp_path / "imagenet", per_class=6, corrupt=False)
    write_cache(root, 16, tmp_path / "cache", progress=False)
    cfg = tiny_config(
        "data.source=cache", f"data.root={tmp_path / 'cache'}", "ssl.batch_size=8", "ssl.epochs=1"
    )
    run = RunDir(tmp_path / "run")
    train_encoder(cfg, run, progress=False)
    assert [r["step"] for r in read_metrics(run.encoder_metrics)] == [1, 2]


def test_label_methods_need_two_classes(tmp_path):
    from rcdm_viz.runs import RunDir
    from rcdm_viz.ssl.train import train_encoder
    from tests.conftest import tiny_config

    d = tmp_path / "one" / "only_class"
    d.mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (10, 10), (i * 30, 0, 0)).save(d / f"{i}.png")
    cfg = tiny_config(
        "data.source=folder", f"data.root={tmp_path / 'one'}", "ssl.batch_size=4", "ssl.method=simclr_class"
    )
    with pytest.raises(RcdmVizError, match="simclr_class.*1 class"):
        train_encoder(cfg, RunDir(tmp_path / "run"), progress=False)


def test_a_cache_subset_at_another_resolution_is_read_on_demand(tmp_path):
    """A subset (and a resize) of a cache reads its rows when asked: the same pixels as resizing eagerly."""
    from rcdm_viz.data.sources import MappedImages, resize_uint8, subset

    root = _make_folder(tmp_path / "imagenet", corrupt=False)
    write_cache(root, 16, tmp_path / "c", progress=False)
    cfg = load_config(None, ["data.source=cache", f"data.root={tmp_path / 'c'}"]).data
    got = load_images(cfg, "train", n=6, resolution=8, progress=False)
    assert isinstance(got.images, MappedImages) and got.images.shape == (6, 3, 8, 8) and len(got) == 6
    full, labels, _ = open_cache(tmp_path / "c", "train")
    chosen = subset(len(full), 6, cfg.seed, "train")
    want = resize_uint8(full[chosen], 8)
    idx = torch.tensor([5, 0, 3])
    assert torch.equal(got.images[idx], want[idx]) and torch.equal(got.labels, labels[chosen])
    assert torch.equal(got.batch(torch.arange(6)), want.float() / 255)


# ------------------------------------------------------------------- decoding what users actually have


def test_16bit_and_float_images_keep_their_brightness(tmp_path):
    from rcdm_viz.data.folder import open_rgb

    grey16 = np.full((8, 8), 32768, np.uint16)  # mid grey in 16 bits (PIL alone reads it as white)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    Image.fromarray(np.full((8, 8), 0.25, np.float32)).save(tmp_path / "f.tiff")  # float in [0, 1]
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert open_rgb(tmp_path / "g16.png", 8).getpixel((0, 0)) == (128, 128, 128)
    assert open_rgb(tmp_path / "f.tiff", 8).getpixel((0, 0)) == (64, 64, 64)


def test_exif_orientation_is_applied(tmp_path):
    from rcdm_viz.data.folder import open_rgb

    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    upright = open_rgb(tmp_path / "rot.jpg", 16)
    assert upright.size == (20, 40)
    r, _, b = upright.getpixel((10, 5))
    assert b > 200 and r < 60  # the blue half is now on top


def test_large_images_are_downscaled_first_and_bombs_refused(tmp_path):
    from rcdm_viz.data.folder import MAX_PIXELS, open_rgb
    from tests.test_bad_input import bomb_png

    Image.new("RGB", (2100, 1100), (9, 9, 9)).save(tmp_path / "big.png")
    assert open_rgb(tmp_path / "big.png", 256).size == (1050, 550)  # integer factor 2, before any float
    bomb_png(tmp_path / "bomb.png", 10000)
    assert 10000 * 10000 > MAX_PIXELS
    with pytest.raises(ValueError, match="10000x10000 pixels"):
        open_rgb(tmp_path / "bomb.png", 64)
