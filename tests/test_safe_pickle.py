"""The restricted unpickler: a pickle that runs code is refused and runs nothing; numeric arrays load."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from rcdm_viz import weights
from rcdm_viz.errors import RcdmVizError
from rcdm_viz.safe_pickle import load_array_pickle


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [_RunsCode, _ExecsCode])
def test_pickle_that_runs_code_is_refused_and_runs_nothing(payload, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    data = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": payload(marker)}}})
    with pytest.raises(RcdmVizError, match=r"refused to load 'alexnet.ckpt': it names the global") as err:
        weights.convert_lpips_alexnet(data, "alexnet.ckpt")
    assert "\n" not in str(err.value)
    assert not marker.exists()


def test_unpickler_admits_numeric_arrays_only() -> None:
    tree = {"a": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.array([1, 2], dtype=np.int64)}
    loaded = load_array_pickle(pickle.dumps(tree), "ok.ckpt")
    assert np.array_equal(loaded["a"]["w"], tree["a"]["w"]) and loaded["b"].dtype == np.int64
    with pytest.raises(RcdmVizError, match="dtype '|O' is not a numeric"):
        load_array_pickle(pickle.dumps({"x": np.array([1, "two"], dtype=object)}), "objects.ckpt")
    with pytest.raises(RcdmVizError, match="holds a str, not a numeric array"):
        load_array_pickle(pickle.dumps({"x": "text"}), "text.ckpt")
    with pytest.raises(RcdmVizError, match="top level is a list"):
        load_array_pickle(pickle.dumps([np.zeros(2)]), "list.ckpt")
