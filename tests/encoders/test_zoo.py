"""Public encoders: each official checkpoint layout (random weights made here) maps onto Encoder exactly.

The trunk is compared with torchvision's ResNet-50 holding the same state dict; the heads with reference
modules built here after each official code (VICReg/Barlow Twins ``Projector``, DINO ``DINOHead``, VISSL's
SimCLR ``mlp`` heads) holding the same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from rcdm_viz import cli
from rcdm_viz.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, load_encoder, parse_head, zoo
from rcdm_viz.encoders.projector import HeadStyle
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import RunDir

DOCUMENTED_HEADS = {  # the dimension of every head layer, from each publisher's code
    "torchvision-resnet50": [],
    "torchvision-resnet50-v2": [],
    "vicreg-resnet50": [8192, 8192, 8192],
    "barlowtwins-resnet50": [8192, 8192, 8192],
    "dino-resnet50": [4096, 256, 60000],
    "simclr-resnet50-vissl": [2048, 128],
}


def _randomise_bn(module: nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so that eval-mode BN is really tested."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
            m.num_batches_tracked.fill_(1000)


@pytest.fixture(scope="module")
def tv() -> dict[str, Any]:
    """A random torchvision ResNet-50, its state dict, test images and the reference pooled features."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        _randomise_bn(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    trunk = nn.Sequential(*list(model.children())[:-1], nn.Flatten())  # everything but fc
    with torch.no_grad():
        ref = trunk((x - mean) / std)
    return {"state": model.state_dict(), "x": x, "trunk": ref}


def _backbone(tv: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    """torchvision keys without fc, under ``prefix`` (the backbone of every SSL checkpoint here)."""
    return {prefix + k: v for k, v in tv["state"].items() if not k.startswith("fc.")}


def _prefixed(module: nn.Module, prefix: str) -> dict[str, Tensor]:
    return {prefix + k: v for k, v in module.state_dict().items()}


def _exclude_bias_and_norm(p: Tensor) -> bool:
    return p.ndim == 1


# Each builder returns (checkpoint object, reference head outputs as a function of the pooled trunk).
Builder = Callable[[dict[str, Any]], tuple[Any, Callable[[Tensor], list[Tensor]]]]


def _vicreg_like(bias: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    dims = [2048, 8192, 8192, 8192]
    for i in range(2):
        layers += [nn.Linear(dims[i], dims[i + 1], bias=bias), nn.BatchNorm1d(dims[i + 1]), nn.ReLU()]
    layers.append(nn.Linear(8192, 8192, bias=False))
    return nn.Sequential(*layers).eval()


def _seq_outputs(seq: nn.Sequential, ends: list[int]) -> Callable[[Tensor], list[Tensor]]:
    return lambda h: [seq[:end](h) for end in ends]


def _build_vicreg(tv: dict[str, Any]) -> tuple[Any, Callable[[Tensor], list[Tensor]]]:
    proj = _vicreg_like(bias=True)
    _randomise_bn(proj, torch.Generator().manual_seed(4))
    state = {**_backbone(tv, "module.backbone."), **_prefixed(proj, "module.projector.")}
    # LARS param_groups hold main_vicreg.py's filter function: pickled as __main__.exclude_bias_and_norm.
    groups = [{"lr": 0.2, "weight_decay_filter": _exclude_bias_and_norm, "params": [0, 1]}]
    ckpt = {"epoch": 1000, "model": state, "optimizer": {"state": {}, "param_groups": groups}}
    return ckpt, _seq_outputs(proj, [3, 6, 7])


def _build_barlow(tv: dict[str, Any]) -> tuple[Any, Callable[[Tensor], list[Tensor]]]:
    proj = _vicreg_like(bias=False)
    _randomise_bn(proj, torch.Generator().manual_seed(4))
    loss_bn = nn.BatchNorm1d(8192, affine=False)
    state = {
        **_backbone(tv, "module.backbone."),
        **_prefixed(proj, "module.projector."),
        **_prefixed(loss_bn, "module.bn."),
    }
    groups = [{"lr": 0.2, "weight_decay_filter": True, "lars_adaptation_filter": True, "params": [0]}]
    ckpt = {"epoch": 1000, "model": state, "optimizer": {"state": {}, "param_groups": groups}}
    return ckpt, _seq_outputs(proj, [3, 6, 7])


def _dino_head() -> tuple[nn.Sequential, nn.Module]:
    mlp = nn.Sequential(nn.Linear(2048, 4096), nn.BatchNorm1d(4096), nn.GELU(), nn.Linear(4096, 256)).eval()
    with warnings.catch_warnings():  # the deprecated weight_norm is the one DINO's code used
        warnings.simplefilter("ignore", FutureWarning)
        last = nn.utils.weight_norm(nn.Linear(256, 60000, bias=False))
    with torch.no_grad():
        _randomise_bn(mlp, torch.Generator().manual_seed(4))
        last.weight_g.uniform_(0.5, 1.5)  # g != 1 so that the folding g * v / ||v|| is really tested
    return mlp, last


def _dino_checkpoint(tv: dict[str, Any], head_state: dict[str, Tensor]) -> dict[str, Any]:
    teacher = {**_backbone(tv, "backbone."), **head_state}
    args = argparse.Namespace(arch="resnet50", out_dim=60000, use_bn_in_head=True)
    return {"student": teacher, "teacher": teacher, "epoch": 100, "args": args, "dino_loss": {}}


def _build_dino(tv: dict[str, Any]) -> tuple[Any, Callable[[Tensor], list[Tensor]]]:
    mlp, last = _dino_head()

    def outputs(h: Tensor) -> list[Tensor]:
        return [mlp[:3](h), mlp(h), last(F.normalize(mlp(h), dim=-1, p=2))]

    state = {**_prefixed(mlp, "head.mlp."), **_prefixed(last, "head.last_layer.")}
    return _dino_checkpoint(tv, state), outputs


def _build_simclr(tv: dict[str, Any]) -> tuple[Any, Callable[[Tensor], list[Tensor]]]:
    # VISSL heads: [mlp 2048-2048 with ReLU, mlp 2048-128]; each MLP keeps its layers in `clf`.
    heads = nn.ModuleList([nn.Module(), nn.Module()])
    heads[0].clf = nn.Sequential(nn.Linear(2048, 2048), nn.ReLU())
    heads[1].clf = nn.Sequential(nn.Linear(2048, 128))
    model = {"trunk": _backbone(tv, "_feature_blocks."), "heads": heads.state_dict()}
    ckpt = {"phase_idx": 999, "iteration": 1, "classy_state_dict": {"base_model": {"model": model}}}
    return ckpt, lambda h: [heads[0].clf(h), heads[1].clf(heads[0].clf(h))]


def _build_torchvision(tv: dict[str, Any]) -> tuple[Any, Callable[[Tensor], list[Tensor]]]:
    return dict(tv["state"]), lambda h: []


BUILDERS: dict[str, Builder] = {
    "torchvision-resnet50": _build_torchvision,
    "vicreg-resnet50": _build_vicreg,
    "barlowtwins-resnet50": _build_barlow,
    "dino-resnet50": _build_dino,
    "simclr-resnet50-vissl": _build_simclr,
}


@pytest.fixture(scope="module")
def main_module_global() -> Any:
    """Make the filter function picklable as ``__main__.exclude_bias_and_norm``, as in VICReg's files."""
    main = sys.modules["__main__"]
    _exclude_bias_and_norm.__module__ = "__main__"
    _exclude_bias_and_norm.__qualname__ = "exclude_bias_and_norm"
    main.exclude_bias_and_norm = _exclude_bias_and_norm  # type: ignore[attr-defined]
    yield
    del main.exclude_bias_and_norm  # type: ignore[attr-defined]


def _no_hash(name: str) -> zoo.PublicEncoder:
    """The registry entry without its stated hash (files made here cannot match torchvision's)."""
    return dataclasses.replace(zoo.get_public_encoder(name), sha256_prefix=None)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_layout_maps_onto_encoder(
    name: str, tv: dict[str, Any], tmp_path: Path, main_module_global: Any
) -> None:
    torch.manual_seed(3)
    ckpt, reference_heads = BUILDERS[name](tv)
    path = tmp_path / zoo.get_public_encoder(name).filename
    torch.save(ckpt, path)
    encoder = zoo.load_public_encoder(_no_hash(name), path)
    heads = [n for n in encoder.layer_names if n.startswith("head")]
    assert [encoder.layer_dims[n] for n in heads] == DOCUMENTED_HEADS[name]
    assert encoder.layer_dims["trunk"] == 2048 and not encoder.training
    with torch.no_grad():
        out = encoder(tv["x"], layers=encoder.layer_names)
        assert torch.equal(out["trunk"], tv["trunk"])  # same ops as torchvision, so bit for bit
        expected = reference_heads(tv["trunk"])
    assert len(expected) == len(heads)
    for layer, ref in zip(heads, expected, strict=True):
        assert out[layer].shape == (2, encoder.layer_dims[layer])
        torch.testing.assert_close(out[layer], ref, rtol=1e-5, atol=1e-5)


def test_dino_plain_last_layer_weight(tv: dict[str, Any], tmp_path: Path) -> None:
    """RCDM's loader reads head.last_layer.weight (no weight norm) from DINO's file: accept that too."""
    mlp, last = _dino_head()
    with torch.no_grad():
        last(torch.zeros(1, 256))  # weight_norm's hook recomputes .weight from (g, v) on forward
    folded = last.weight.detach().clone()
    state = {**_prefixed(mlp, "module.head.mlp."), "module.head.last_layer.weight": folded}
    ckpt = _dino_checkpoint(tv, {})
    ckpt["teacher"] = {**{"module." + k: v for k, v in _backbone(tv, "backbone.").items()}, **state}
    path = tmp_path / "dino.pth"
    torch.save(ckpt, path)
    encoder = zoo.load_public_encoder("dino-resnet50", path)
    with torch.no_grad():
        got = encoder(tv["x"], layers=["head3"])["head3"]
        want = last(F.normalize(mlp(tv["trunk"]), dim=-1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------- errors
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_carrying_code_is_refused(
    tmp_path: Path, writer: str, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "resnet50_fullckpt.pth"
    payload = {"model": {"x": _RunsCode(marker)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # a legacy (non-zip) pickle file
    with pytest.raises(RcdmVizError) as info:
        zoo.load_public_encoder("vicreg-resnet50", path)  # its inert globals do not cover os.system
    message = str(info.value)
    assert str(path) in message and "system" in message and "\n" not in message
    run = tmp_path / "run"
    code = cli.main(["probe", "--run", str(run), "--encoder", "vicreg-resnet50", "--weights", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not RunDir(run).has_encoder()


def _save(tmp_path: Path, state: dict[str, Tensor], name: str = "resnet50.pth") -> Path:
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_key_is_named(tv: dict[str, Any], tmp_path: Path) -> None:
    state = dict(tv["state"])
    del state["layer3.1.conv2.weight"]
    path = _save(tmp_path, state)
    with pytest.raises(RcdmVizError, match=r"resnet50\.pth.*missing key 'layer3\.1\.conv2\.weight'"):
        zoo.load_public_encoder(_no_hash("torchvision-resnet50"), path)


def test_shape_mismatch_is_named(tv: dict[str, Any], tmp_path: Path) -> None:
    state = {**tv["state"], "layer4.2.bn3.weight": torch.ones(1024)}
    path = _save(tmp_path, state)
    with pytest.raises(RcdmVizError, match=r"resnet50\.pth.*'layer4\.2\.bn3\.weight'.*\(1024,\).*\(2048,\)"):
        zoo.load_public_encoder(_no_hash("torchvision-resnet50"), path)


def test_unexpected_key_and_missing_container_are_named(tv: dict[str, Any], tmp_path: Path) -> None:
    path = _save(tmp_path, {**tv["state"], "layer5.0.weight": torch.ones(3)})
    with pytest.raises(RcdmVizError, match=r"resnet50\.pth.*unexpected key 'layer5\.0\.weight'"):
        zoo.load_public_encoder(_no_hash("torchvision-resnet50"), path)
    with pytest.raises(RcdmVizError, match=r"resnet50\.pth.*missing key \['teacher'\]"):
        zoo.load_public_encoder("dino-resnet50", path)  # a plain state dict is not DINO's layout


def test_stated_hash_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    digest = zoo.sha256_file(path)
    with pytest.raises(RcdmVizError, match=r"resnet50-0676ba61\.pth.*'0676ba61'"):
        zoo.load_public_encoder("torchvision-resnet50", path)
    entry = dataclasses.replace(zoo.get_public_encoder("torchvision-resnet50"), sha256_prefix=digest[:8])
    assert zoo.check_hash(entry, path) == digest


def test_registry_entries_are_factual() -> None:
    registry = zoo.load_registry()
    assert set(DOCUMENTED_HEADS) <= set(registry)
    # Only torchvision states hashes (in its file names); none is invented for the others.
    stated = {name: e.sha256_prefix for name, e in registry.items() if e.sha256_prefix}
    assert stated == {"torchvision-resnet50": "0676ba61", "torchvision-resnet50-v2": "11ad3fa6"}
    checkpoints = {name: e for name, e in registry.items() if e.package is None}
    for entry in checkpoints.values():
        assert entry.filename in entry.url
        assert entry.resolution == 224 and entry.mean == IMAGENET_MEAN and entry.std == IMAGENET_STD
    # From the package index via `rcdm-viz weights` (hashes in rcdm_viz/weights.py); see test_efficientnet.
    assert {n: e.package for n, e in registry.items() if e.package} == {
        "efficientnet-lite0-imagenet": "efficientnet-lite0"
    }
    assert parse_head(registry["dino-resnet50"].head).style is HeadStyle.DINO
    for entry in checkpoints.values():  # every Encoder key has a checkpoint prefix to come from
        with torch.device("meta"):
            keys = list(Encoder(**entry.encoder_config()).state_dict())
        assert all(any(k.startswith(p) for p in entry.keys) for k in keys), entry.name


def test_registry_unknown_field_is_an_error(tmp_path: Path) -> None:
    text = (zoo.REGISTRY_DIR / "vicreg-resnet50.yaml").read_text()
    (tmp_path / "vicreg-resnet50.yaml").write_text(text + "colour: blue\n")
    with pytest.raises(RcdmVizError, match="unknown key 'colour'"):
        zoo.load_registry(tmp_path)
    with pytest.raises(RcdmVizError, match="unknown public encoder 'mocov9'.*vicreg-resnet50"):
        zoo.get_public_encoder("mocov9")


# ---------------------------------------------------------------------------------------- run + CLI
@pytest.fixture(scope="module")
def dino_file(tv: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    mlp, last = _dino_head()
    state = {**_prefixed(mlp, "head.mlp."), **_prefixed(last, "head.last_layer.")}
    directory = tmp_path_factory.mktemp("weights")
    path = directory / zoo.get_public_encoder("dino-resnet50").filename
    torch.save(_dino_checkpoint(tv, state), path)
    return path


def test_cli_imports_into_run_once(
    dino_file: Path, tmp_path: Path, tv: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["sample", str(tmp_path / "missing.png"), "--run", str(run), "--encoder", "dino-resnet50"]
    # The import happens first; the missing image then ends the command with a one-line error.
    assert cli.main([*args, "--weights", str(dino_file)]) == 2
    assert "missing.png" in capsys.readouterr().err
    bundle = load_encoder(RunDir(run).require_encoder())
    source = json.loads((run / "encoder" / zoo.SOURCE_FILE).read_text())
    assert source["encoder"] == "dino-resnet50" and source["file"] == dino_file.name
    assert source["sha256"] == zoo.sha256_file(dino_file)
    assert source["layers"]["head3"] == 60000
    direct = zoo.load_public_encoder("dino-resnet50", dino_file)
    with torch.no_grad():
        a, b = bundle(tv["x"]), direct(tv["x"])
    assert all(torch.equal(a[k], b[k]) for k in a)
    fingerprint = bundle.fingerprint()
    # Same encoder again (with or without --weights): reused as it is; another one: a one-line error.
    assert cli.main([*args, "--weights", str(dino_file)]) == 2
    assert cli.main(args) == 2
    capsys.readouterr()
    assert load_encoder(run / "encoder").fingerprint() == fingerprint
    other = ["probe", "--run", str(run), "--encoder", "vicreg-resnet50", "--weights", str(dino_file)]
    assert cli.main(other) == 2
    err = capsys.readouterr().err.strip()
    assert "already has an encoder (dino-resnet50" in err and len(err.splitlines()) == 1


def test_cli_encoders_lists_local_files(
    dino_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(dino_file.parent))
    assert cli.main(["encoders"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert str(dino_file) in lines["dino-resnet50"]
    assert "head3:60000" in lines["dino-resnet50"]
    assert lines["vicreg-resnet50"].rstrip().endswith("missing")


def test_weights_without_encoder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["probe", "--run", str(tmp_path / "r"), "--weights", str(tmp_path / "x.pth")]) == 2
    assert "--weights needs --encoder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ head styles
@pytest.mark.parametrize(
    ("spec", "style", "dims"),
    [
        ("barlowtwins:8192-8192-8192", HeadStyle.BARLOW_TWINS, (8192, 8192, 8192)),
        ("simclr:2048-128", HeadStyle.SIMCLR, (2048, 128)),
        ("dino:4096-256-60000", HeadStyle.DINO, (4096, 256, 60000)),
        ("vicreg:64-8", HeadStyle.VICREG, (64, 8)),
    ],
)
def test_styled_head_round_trips(spec: str, style: HeadStyle, dims: tuple[int, ...]) -> None:
    parsed = parse_head(spec)
    assert parsed.style is style and parsed.dims == dims and not parsed.linear
    assert parse_head(parsed.to_string()) == parsed
    assert parse_head("8192-8192-8192").to_string() == "8192-8192-8192"  # the default stays unprefixed


@pytest.mark.parametrize("spec", ["dino:256", "mocov3:8-8", "simclr:", "barlowtwins:8--8"])
def test_bad_styled_head_is_named(spec: str) -> None:
    with pytest.raises(RcdmVizError) as info:
        parse_head(spec)
    assert repr(spec) in str(info.value)


def test_a_registry_file_of_ones_own_works_by_path(tmp_path: Path) -> None:
    text = (zoo.REGISTRY_DIR / "vicreg-resnet50.yaml").read_text()
    mine = tmp_path / "vicreg-resnet50.yaml"  # a registry file is named after its entry
    mine.write_text(text)
    assert zoo.get_public_encoder(str(mine)) == zoo.get_public_encoder("vicreg-resnet50")
    with pytest.raises(RcdmVizError, match="does not exist"):
        zoo.get_public_encoder(str(tmp_path / "missing.yaml"))
    assert zoo.REGISTRY_DIR.parent.name == "rcdm_viz"  # package data, found from any directory
