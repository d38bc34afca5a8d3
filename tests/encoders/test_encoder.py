"""Tests for rcdm_viz.encoders: widened trunk, projector parsing, named layers, bundles."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn

from rcdm_viz.encoders import Arch, Encoder, build_encoder, load_encoder, parse_head
from rcdm_viz.encoders.projector import HeadSpec, Projector
from rcdm_viz.encoders.resnet import ResNetTrunk
from rcdm_viz.errors import RcdmVizError

RESNET50_PARAMS = 23_508_032
BUNDLE_FILES = ["config.json", "metrics.jsonl", "model.safetensors"]


def _n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny(head: str = "16-8", **kw) -> Encoder:
    args = {"arch": "resnet18", "width": 32, "head": head, "base_width": 8, "small_input": True}
    args["resolution"] = 32
    return build_encoder(**{**args, **kw})


# ----------------------------------------------------------------------------------------------- trunk
def test_resnet50_trunk_is_torchvision_resnet50_without_fc() -> None:
    torch.manual_seed(0)
    trunk = ResNetTrunk(Arch.RESNET50, 2048)
    reference = torchvision.models.resnet50()
    reference.fc = nn.Identity()
    assert _n_params(trunk) == RESNET50_PARAMS == _n_params(reference)
    assert list(trunk.state_dict()) == list(reference.state_dict())
    trunk.load_state_dict(reference.state_dict(), strict=True)
    trunk.eval()
    reference.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = trunk(x), reference(x)
    assert ours.shape == (2, 2048)
    assert torch.equal(ours, theirs)


def _widened_resnet50_params(width: int) -> int:
    """ResNet-50 trunk count with the last block at ``width``: conv3+bn3 become 512 -> D and a
    1x1 conv + BN shortcut 2048 -> D is added."""
    return RESNET50_PARAMS - (512 * 2048 + 2 * 2048) + (512 * width + 2 * width) + (2048 * width + 2 * width)


@pytest.mark.parametrize("width", [512, 32768])
def test_resnet50_widened_param_count_and_shortcut(width: int) -> None:
    with torch.device("meta"):  # structure only: no memory, no init cost
        trunk = ResNetTrunk("resnet50", width)
    last = trunk.layer4[-1]
    assert last.conv3.out_channels == width and last.bn3.num_features == width
    assert isinstance(last.downsample, nn.Sequential)
    assert last.downsample[0].in_channels == 2048 and last.downsample[0].out_channels == width
    assert last.downsample[0].kernel_size == (1, 1) and last.downsample[1].num_features == width
    # the other blocks of the last stage are untouched
    assert trunk.layer4[1].downsample is None and trunk.layer4[1].conv3.out_channels == 2048
    assert _n_params(trunk) == _widened_resnet50_params(width)
    keys = set(trunk.state_dict())
    assert "layer4.2.downsample.0.weight" in keys and "layer4.2.downsample.1.running_var" in keys


@pytest.mark.parametrize("arch", [a.value for a in Arch])
def test_wide_trunk_forward_backward(arch: str) -> None:
    torch.manual_seed(0)
    enc = build_encoder(arch, 32768, head="linear:8", base_width=16, small_input=True, resolution=32)
    last = enc.trunk.layer4[-1]
    assert isinstance(last.downsample, nn.Sequential) and last.downsample[0].out_channels == 32768
    out = enc(torch.rand(2, 3, 32, 32), layers=["trunk", "head1"])
    assert out["trunk"].shape == (2, 32768) and out["head1"].shape == (2, 8)
    assert (out["trunk"] >= 0).all()  # after the final ReLU
    out["head1"].pow(2).sum().backward()
    assert last.downsample[0].weight.grad is not None and last.downsample[0].weight.grad.abs().sum() > 0
    assert enc.trunk.conv1.weight.grad.abs().sum() > 0


def test_resnet50_narrow_trunk_runs() -> None:
    enc = build_encoder("resnet50", 512, head="none", base_width=16, small_input=True, resolution=32)
    out = enc(torch.rand(2, 3, 32, 32))
    assert list(out) == ["trunk"] and out["trunk"].shape == (2, 512)


def test_resnet18_standard_width_has_no_extra_shortcut() -> None:
    trunk = ResNetTrunk("resnet18", 512)
    reference = torchvision.models.resnet18()
    del reference.fc
    assert trunk.layer4[-1].downsample is None
    assert list(trunk.state_dict()) == list(reference.state_dict())
    assert _n_params(trunk) == _n_params(reference)


def test_small_input_stem_and_base_width() -> None:
    trunk = ResNetTrunk("resnet18", 64, base_width=8, small_input=True)
    assert trunk.conv1.kernel_size == (3, 3) and trunk.conv1.stride == (1, 1)
    assert isinstance(trunk.maxpool, nn.Identity)
    assert trunk.stage_dims == {"stage1": 8, "stage2": 16, "stage3": 32, "trunk": 64}
    stages = trunk.forward_stages(torch.rand(2, 3, 32, 32), "stage2")
    assert list(stages) == ["stage1", "stage2"] and stages["stage2"].shape == (2, 16)


@pytest.mark.parametrize("bad", [0, -3])
def test_bad_width_is_named(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"width.*{bad}"):
        ResNetTrunk("resnet18", bad)


def test_unknown_arch_lists_valid() -> None:
    with pytest.raises(RcdmVizError, match="vgg16.*resnet18, resnet50"):
        build_encoder("vgg16")


# -------------------------------------------------------------------------------------------- projector
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8192-8192-8192", HeadSpec((8192, 8192, 8192), False)),
        ("2048-2048-2048", HeadSpec((2048, 2048, 2048), False)),
        ("64", HeadSpec((64,), False)),
        ("linear:32", HeadSpec((32,), True)),
        ("none", HeadSpec((), False)),
    ],
)
def test_parse_head_valid(spec: str, expected: HeadSpec) -> None:
    parsed = parse_head(spec)
    assert parsed == expected
    assert parse_head(parsed.to_string()) == parsed


@pytest.mark.parametrize("spec", ["", "abc", "8192--8", "0-5", "linear:x", "linear:0", "-8", "8-", "8.5"])
def test_parse_head_invalid_names_the_string(spec: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_head(spec)
    assert repr(spec) in str(info.value)


def test_projector_matches_vicreg_structure() -> None:
    torch.manual_seed(0)
    proj = Projector(16, "32-32-8")
    hidden, last = proj.layers[0], proj.layers[2]
    assert [type(m) for m in hidden] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert hidden[0].bias is not None
    assert isinstance(last, nn.Linear) and last.bias is None
    h = torch.randn(4, 16)
    out = proj(h)
    # straightforward reference: the same modules chained as VICReg's nn.Sequential
    seq = nn.Sequential(*proj.layers[0], *proj.layers[1], proj.layers[2])
    assert list(out) == ["head1", "head2", "head3"]
    assert torch.equal(out["head3"], seq(h))
    assert (out["head1"] >= 0).all() and out["head2"].shape == (4, 32)
    lin = Projector(16, "linear:4")
    assert len(lin.layers) == 1 and isinstance(lin.layers[0], nn.Linear) and lin.layers[0].bias is None


def test_projector_stops_at_deepest_requested_layer() -> None:
    proj = Projector(8, "8-8-8")
    calls: list[int] = []
    for i, layer in enumerate(proj.layers):
        layer.register_forward_hook(lambda *_, i=i: calls.append(i))
    out = proj(torch.randn(3, 8), ["head2"])
    assert list(out) == ["head2"] and calls == [0, 1]


# ---------------------------------------------------------------------------------------------- encoder
@pytest.mark.parametrize(
    ("head", "names", "dims"),
    [
        ("16-16-8", ["trunk", "head1", "head2", "head3"], {"head1": 16, "head2": 16, "head3": 8}),
        ("linear:4", ["trunk", "head1"], {"head1": 4}),
        ("none", ["trunk"], {}),
    ],
)
def test_layer_names_and_dims(head: str, names: list[str], dims: dict[str, int]) -> None:
    enc = _tiny(head)
    assert enc.layer_names == names
    assert enc.all_layer_names == ["stage1", "stage2", "stage3", *names]
    assert enc.layer_dims == {"stage1": 8, "stage2": 16, "stage3": 32, "trunk": 32, **dims}
    assert enc.embedding_layer == names[-1]
    out = enc(torch.rand(2, 3, 32, 32), layers=enc.all_layer_names)
    assert list(out) == enc.all_layer_names
    assert {k: v.shape[1] for k, v in out.items()} == enc.layer_dims
    assert list(enc(torch.rand(2, 3, 32, 32))) == names


def test_trunk_request_does_not_run_projector(monkeypatch: pytest.MonkeyPatch) -> None:
    enc = _tiny("16-8").eval()

    def boom(*_args, **_kwargs):
        raise AssertionError("projector ran")

    monkeypatch.setattr(enc.projector, "forward", boom)
    out = enc(torch.rand(2, 3, 32, 32), layers=["trunk"])
    assert list(out) == ["trunk"]
    with pytest.raises(AssertionError, match="projector ran"):
        enc(torch.rand(2, 3, 32, 32), layers=["head1"])


def test_stage1_request_runs_only_layer1() -> None:
    enc = _tiny().eval()
    ran: list[str] = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        getattr(enc.trunk, name).register_forward_hook(lambda *_, n=name: ran.append(n))
    enc.projector.register_forward_hook(lambda *_: ran.append("projector"))
    enc(torch.rand(2, 3, 32, 32), layers=["stage1"])
    assert ran == ["layer1"]
    ran.clear()
    enc(torch.rand(2, 3, 32, 32), layers=["stage3", "stage1"])
    assert ran == ["layer1", "layer2", "layer3"]


def test_normalisation_is_inside() -> None:
    enc = _tiny(mean=(0.5, 0.25, 0.0), std=(0.5, 0.5, 2.0)).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.5, 2.0]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.equal(enc(x, ["trunk"])["trunk"], enc.trunk((x - mean) / std))


def test_unknown_layer_message() -> None:
    enc = _tiny("16-8")
    with pytest.raises(RcdmVizError) as info:
        enc(torch.rand(2, 3, 32, 32), layers=["xyz"])
    expected = "unknown layer 'xyz'; this encoder has: stage1, stage2, stage3, trunk, head1, head2"
    assert str(info.value) == expected


def test_bad_input_shape() -> None:
    with pytest.raises(ValueError, match="N, 3, H, W"):
        _tiny()(torch.rand(2, 1, 32, 32))


def test_config_is_json_and_rebuilds() -> None:
    enc = _tiny("linear:4")
    config = json.loads(json.dumps(enc.config))
    assert config == {
        "arch": "resnet18",
        "width": 32,
        "head": "linear:4",
        "base_width": 8,
        "small_input": True,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resolution": 32,
    }
    assert Encoder(**config).config == config


# ---------------------------------------------------------------------------------------------- bundles
def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    enc = _tiny("16-8")
    enc.train()
    enc(torch.rand(4, 3, 32, 32))  # move BN running stats away from their initial values
    enc.eval()
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "metrics.jsonl").write_text("{}\n")
    enc.save(tmp_path / "enc")
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == BUNDLE_FILES
    loaded = load_encoder(tmp_path / "enc")
    assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
    assert loaded.config == enc.config
    assert loaded.fingerprint() == enc.fingerprint()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        a, b = enc(x, enc.all_layer_names), loaded(x, loaded.all_layer_names)
    assert all(torch.equal(a[k], b[k]) for k in a)
    enc.save(tmp_path / "enc")  # overwriting an existing bundle works and leaves no temp files
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == BUNDLE_FILES


def test_fingerprint_changes_with_weights_and_config() -> None:
    torch.manual_seed(0)
    enc = _tiny()
    fp = enc.fingerprint()
    assert len(fp) == 16 and fp == enc.fingerprint()
    with torch.no_grad():
        enc.projector.layers[-1].weight[0, 0] += 1e-3
    assert enc.fingerprint() != fp
    torch.manual_seed(0)
    other = _tiny(resolution=64)
    assert other.state_dict().keys() == enc.state_dict().keys() and other.fingerprint() != fp


def test_load_missing_or_incomplete_bundle(tmp_path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(RcdmVizError, match="nope"):
        load_encoder(missing)
    partial = tmp_path / "partial"
    _tiny().save(partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(RcdmVizError, match="partial"):
        load_encoder(partial)


@pytest.mark.parametrize(
    ("name", "content"),
    [("model.safetensors", b"garbage"), ("config.json", b"[1, 2]"), ("config.json", b"{")],
)
def test_load_corrupt_bundle(tmp_path, name: str, content: bytes) -> None:
    _tiny().save(tmp_path / "bad")
    (tmp_path / "bad" / name).write_bytes(content)
    with pytest.raises(RcdmVizError, match="bad"):
        load_encoder(tmp_path / "bad")


def test_load_detects_mismatched_files(tmp_path) -> None:
    _tiny("16-8").save(tmp_path / "a")
    _tiny("linear:4").save(tmp_path / "b")
    (tmp_path / "a" / "config.json").write_bytes((tmp_path / "b" / "config.json").read_bytes())
    with pytest.raises(RcdmVizError, match="disagree"):
        load_encoder(tmp_path / "a")


@torch.no_grad()
def test_an_encoder_with_non_finite_weights_is_refused_on_load(tmp_path) -> None:
    enc = _tiny("16-8")
    list(enc.parameters())[-1][0] = float("inf")
    enc.save(tmp_path / "enc")
    with pytest.raises(RcdmVizError, match=r"^the encoder bundle '.*enc' holds non-finite weights \(.+\)"):
        load_encoder(tmp_path / "enc")
