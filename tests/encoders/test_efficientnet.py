"""The zoo's ImageNet classifier, EfficientNet-Lite0, from the REAL converted file (`rcdm-viz weights`): named
layers, its top-1 class on two real photographs, and the whole pipeline on it (quickstart --encoder, then
`sample` on real photographs with scores).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from rcdm_viz import cli
from rcdm_viz.data.images import fit
from rcdm_viz.encoders import EfficientNetEncoder, load_encoder, zoo
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir, read_json
from tests._real import photo, real_weights
from tests.conftest import TINY

NAME = "efficientnet-lite0-imagenet"
LAYER_DIMS = {"stage1": 24, "stage2": 40, "stage3": 112, "trunk": 1280, "head1": 1000}
EGYPTIAN_CAT, ESPRESSO = 285, 967  # ImageNet-1k class indices


@pytest.fixture(scope="module")
def classifier() -> EfficientNetEncoder:
    return zoo.load_public_encoder(NAME, real_weights("efficientnet-lite0"))


def test_real_weights_layers_and_top1_on_real_photos(classifier: EfficientNetEncoder) -> None:
    assert classifier.layer_dims == LAYER_DIMS and classifier.all_layer_names == list(LAYER_DIMS)
    assert classifier.layer_names == ["trunk", "head1"]
    x = torch.cat([fit(photo("chelsea")[0], 224)[None], fit(photo("coffee")[0], 224)[None]])
    with torch.no_grad():
        out = classifier(x, classifier.all_layer_names)
        probs = out["head1"].softmax(dim=1)
        assert {k: v.shape[1] for k, v in out.items()} == LAYER_DIMS
        top = probs.max(dim=1)
        assert top.indices.tolist() == [EGYPTIAN_CAT, ESPRESSO]
        assert top.values.tolist() == pytest.approx([0.392, 0.941], abs=0.01)
        for name in LAYER_DIMS:  # a shallow request stops early and gives the same features
            assert torch.allclose(classifier(x, [name])[name], out[name], atol=1e-5), name


def test_large_batches_run_in_chunks_with_the_same_result(classifier: EfficientNetEncoder) -> None:
    x = torch.rand(18, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = classifier(x, ["stage2", "head1"])
        alone = [classifier(x[i : i + 1], ["stage2", "head1"]) for i in range(len(x))]
    for name in ("stage2", "head1"):
        assert torch.allclose(whole[name], torch.cat([a[name] for a in alone]), atol=1e-4)


def test_bundle_round_trip_and_registry_entry(classifier: EfficientNetEncoder, tmp_path: Path) -> None:
    loaded = load_encoder(classifier.save(tmp_path / "encoder"))
    assert isinstance(loaded, EfficientNetEncoder) and loaded.fingerprint() == classifier.fingerprint()
    entry = zoo.get_public_encoder(NAME)
    assert (entry.package, entry.resolution, entry.mean, entry.std) == ("efficientnet-lite0", 224, (0.5,) * 3,
                                                                        (0.5,) * 3)
    with pytest.raises(RcdmVizError, match="unknown layer 'head2'; this encoder has: stage1, stage2"):
        classifier(torch.zeros(1, 3, 32, 32), ["head2"])


def _tiny(*extra: str) -> list[str]:
    sets = [*TINY, "data.n_train=64", "data.n_val=32", "data.resolution=32", "decoder.resolution=32",
            "probe.mlp_epochs=0", "probe.invariance_images=4", "probe.rankme_n=32", "scores.gallery=16",
            "scores.oracle_n_train=128", "scores.oracle_steps=30", *extra]
    return [arg for s in sets for arg in ("--set", s)]


def test_quickstart_on_the_frozen_classifier_then_real_photos(tmp_path: Path, capsys) -> None:
    real_weights("efficientnet-lite0")
    real_weights("lpips")
    run = RunDir(tmp_path / "qs")
    args = ["quickstart", "--encoder", NAME, "--run", str(run.root), "--no-progress", *_tiny()]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "frozen, imported from the registry; no SSL training" in out and "train encoder" not in out
    assert "perceptual distance: lpips-alex" in out
    decoder = read_json(run.root / "decoders" / "all" / "config.json")
    assert decoder["layer_dims"] == {"trunk": 1280, "head1": 1000}
    assert set(read_json(run.probes)["layers"]) == set(LAYER_DIMS)
    images = []
    for name in ("chelsea", "coffee"):
        images.append(tmp_path / f"{name}.png")
        Image.fromarray(photo(name)[0].mul(255).round().byte().permute(1, 2, 0).numpy()).save(images[-1])
    args = ["sample", *map(str, images), "--layers", "all", "--scores", "--run", str(run.root)]
    assert cli.main([*args, "--no-progress", *_tiny()]) == 0
    for name in ("chelsea", "coffee"):
        assert (run.samples(name) / "grid.png").is_file()
        scores = read_json(run.samples(name) / "scores.json")
        assert scores["distance"] == "lpips-alex" and set(scores["layers"]) == {"trunk", "head1"}
        assert all(0 <= row["fidelity"] < 2 for row in scores["layers"].values())
