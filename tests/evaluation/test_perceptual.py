"""True LPIPS (AlexNet) from `rcdm-viz weights lpips`: values pinned on a triplet derived from a real
photograph, heads equal to the lpips package's v0.1 ones, and the decoder scores use it whenever present."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from rcdm_viz import weights
from rcdm_viz.config import Distance
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.evaluation import perceptual
from rcdm_viz.evaluation.scores import resolve_distance
from tests._real import photo, real_weights


def lpips_triplet() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed 64-px triplet from scikit-image's chelsea photograph: the reference (a 256-px crop of the
    cat's face, 4x4-averaged), p0 = the reference 3x3 box-blurred, p1 = the crop 16 px to the right."""
    cat = photo("chelsea")
    ref = F.avg_pool2d(cat[..., 22:278, 97:353], 4)
    p0 = F.avg_pool2d(ref, 3, stride=1, padding=1, count_include_pad=False)
    p1 = F.avg_pool2d(cat[..., 22:278, 113:369], 4)
    return ref, p0, p1


def test_lpips_values_are_pinned_and_heads_are_lpips_v01() -> None:
    import lpips

    path = real_weights("lpips")
    distance = perceptual.make_lpips_distance(path)
    ref, p0, p1 = lpips_triplet()
    values = distance(torch.cat([ref, ref, ref]), torch.cat([p0, p1, ref]))
    assert values.tolist() == pytest.approx([0.11731, 0.05457, 0.0], abs=2e-4)
    small = distance(F.avg_pool2d(ref, 2), F.avg_pool2d(p0, 2))  # 32 px, the smallest side LPIPS admits
    assert 0 < float(small) < 1
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu")
    ours = weights.load_weights("lpips", path)
    assert set(shipped) == {f"lin{k}.model.1.weight" for k in range(5)}
    assert all(torch.equal(shipped[k], ours[k]) for k in shipped)


def test_scores_use_lpips_when_present_and_name_the_fallback(monkeypatch, tmp_path: Path) -> None:
    real = real_weights("lpips")
    assert resolve_distance(Distance.AUTO, 32) is Distance.LPIPS_ALEX
    assert resolve_distance(Distance.AUTO, 16) is Distance.SSIM  # below LPIPS' 32 px
    with pytest.raises(RcdmVizError, match="lpips-alex needs images of >= 32 px, got 16"):
        resolve_distance(Distance.LPIPS_ALEX, 16)
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(tmp_path))
    assert resolve_distance(Distance.AUTO, 32) is Distance.SSIM
    with pytest.raises(RcdmVizError, match=r"run `rcdm-viz weights lpips`"):
        resolve_distance(Distance.LPIPS_ALEX, 64)
    shutil.copy(real, tmp_path / real.name)
    shutil.copy(f"{real}.sha256", tmp_path / f"{real.name}.sha256")
    assert resolve_distance(Distance.AUTO, 32) is Distance.LPIPS_ALEX
