"""Typed run records: what is written reads back equal, older files read, wrong types name the field."""

from __future__ import annotations

import pytest

from rcdm_viz.records import SampleMeta


def test_a_sample_meta_round_trips_and_drops_what_it_lacks():
    meta = SampleMeta(layers=("trunk", "head3"), n=4, sampler="ddim", steps=50, guidance=3.0, seed=0,
                      resolution=32)
    written = meta.to_json()
    assert written["format"] == 1 and written["layers"] == ["trunk", "head3"] and "alpha" not in written
    assert SampleMeta.from_json(written) == meta and not meta.is_interpolation
    interp = SampleMeta(layers=("trunk",), columns=3, alpha=(0.0, 0.5, 1.0))
    assert SampleMeta.from_json(interp.to_json()) == interp and interp.is_interpolation


def test_a_meta_written_before_the_format_key_still_reads():
    old = {"layers": ["trunk"], "n": 2, "sampler": "ddim", "steps": 3, "guidance": 1, "seed": 0}
    meta = SampleMeta.from_json(old)
    assert meta.guidance == 1.0 and meta.resolution is None


@pytest.mark.parametrize(("bad", "named"), [
    ({"layers": "trunk"}, "'layers'"), ({"layers": ["trunk"], "n": 2.5}, "'n'"),
    ({"layers": ["trunk"], "seed": False}, "'seed'"), ({"layers": ["trunk"], "format": 2}, "format"),
    ({"n": 2}, "'layers'"), ("text", "mapping"),
])
def test_a_wrong_field_is_a_value_error_naming_it(bad, named):
    with pytest.raises(ValueError, match=named):
        SampleMeta.from_json(bad)
