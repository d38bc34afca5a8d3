"""LPIPS v0.1 on AlexNet (Zhang et al. 2018), as RCDM scores its samples, from the converted weights.

The network is the ``lpips`` package's own definition (scaling layer, torchvision AlexNet features cut into
five slices, unit-normalised differences, 1x1 linear heads, spatial mean); it is built without any weights
(``pnet_rand=True``, ``pretrained=False``: nothing is downloaded) and then given the AlexNet features and
linear heads of ``rcdm-viz weights lpips`` (see ``rcdm_viz.weights``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.weights import find_weights, load_weights

# AlexNet's second max-pool needs >= 3x3 inputs: conv1 (11 px, stride 4) then pool1 must leave 3 px.
LPIPS_MIN_SIDE = 32
# torchvision ``features`` index -> the lpips alexnet slice holding it
_SLICE_OF = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def lpips_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Converted keys (features.<i>.*, lin<k>.model.1.weight) -> ``lpips.LPIPS(net="alex")`` keys."""
    out = {}
    for key, value in state.items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            out[f"net.slice{_SLICE_OF[index]}.{key[len('features.'):]}"] = value
        else:
            out[key] = value
    return out


def lpips_alexnet(path: str | os.PathLike[str] | None = None) -> nn.Module:
    """``lpips.LPIPS(net="alex")`` in eval mode holding the verified converted weights (at ``path`` or
    found in $RCDM_VIZ_WEIGHTS); a one-line error if they are missing or fail their check."""
    import lpips

    state = lpips_state_dict(load_weights("lpips", path))
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # torchvision's note on the deprecated `pretrained` argument
        net = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    missing, unexpected = net.load_state_dict(state, strict=False)
    # lpips registers each head twice (lin<k> and lins.<k>, the same module): the aliases may be "missing",
    # as may the scaling layer's constants (set by lpips' own code).
    missing = [k for k in missing if not k.startswith(("lins.", "scaling_layer."))]
    if missing or unexpected:
        raise RcdmVizError(f"LPIPS weights do not fit lpips' AlexNet: {(missing or unexpected)[0]!r}")
    return net.eval().requires_grad_(False)


def lpips_available() -> bool:
    """Whether the converted LPIPS weights are on disk (not verified here; ``lpips_alexnet`` does)."""
    return find_weights("lpips") is not None


@functools.lru_cache(maxsize=2)
def _cached_lpips(path: str, size: int, mtime_ns: int) -> nn.Module:
    return lpips_alexnet(path)  # size and mtime: a file replaced on disk is loaded (and verified) again


def make_lpips_distance(path: str | os.PathLike[str] | None = None):
    """(a, b) -> [N] LPIPS distances of images [N, 3, H, W] in [0, 1] (the network is built once per file)."""
    found = Path(path) if path is not None else find_weights("lpips")
    if found is None or not found.is_file():
        load_weights("lpips", found)  # raises the one-line "run `rcdm-viz weights lpips`" error
    stat = found.stat()
    net = _cached_lpips(str(found), stat.st_size, stat.st_mtime_ns)

    def lpips_distance(a: Tensor, b: Tensor) -> Tensor:
        with torch.no_grad():
            return net(a * 2 - 1, b * 2 - 1).flatten()

    return lpips_distance
