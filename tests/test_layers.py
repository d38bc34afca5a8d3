"""The one layer vocabulary (rcdm_viz.layers) and the rule that layer names are spelled only there."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from rcdm_viz.layers import STAGES, TRUNK, LayerVocabulary, head_name, is_head, last_head, sort_layers


def test_resnet_three_heads() -> None:
    v = LayerVocabulary(n_heads=3)
    assert v.names == ["stage1", "stage2", "stage3", "trunk", "head1", "head2", "head3"]
    assert v.guillotine == ["trunk", "head1", "head2", "head3"]
    assert v.heads == ["head1", "head2", "head3"]
    assert v.last_head == "head3"


def test_no_heads() -> None:
    v = LayerVocabulary.from_head_dims([])
    assert v.names == [*STAGES, TRUNK]
    assert v.heads == [] and v.last_head is None


def test_efficientnet_style_stages() -> None:
    v = LayerVocabulary.from_head_dims([1000], stages=("stage1", "stage2", "stage3"))
    assert v.names == ["stage1", "stage2", "stage3", "trunk", "head1"]
    with pytest.raises(ValueError):
        LayerVocabulary(n_heads=1, stages=("stage9",))


def test_head_names_and_sorting() -> None:
    assert head_name(0) == "head1" and head_name(11) == "head12"
    assert is_head("head2") and not is_head("head") and not is_head(TRUNK) and not is_head("head0")
    names = LayerVocabulary(n_heads=12).names
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    assert sort_layers(shuffled) == names  # head10 after head9: by number, not by string
    assert LayerVocabulary(n_heads=12).sort(shuffled) == names
    assert last_head(shuffled) == "head12"
    assert last_head(["trunk", "stage1"]) is None


# A layer name used as a string literal: "trunk", "stage2", "head3", or an f-string building a head name.
# The bare word "head" is the encoder config's key (the head spec) and gather's "the last head" column, not a
# layer name, so it is allowed. Comments and docstrings may mention names; they are skipped below.
_LAYER_LITERAL = re.compile(r"""f?["'](trunk|stage\d+|head\d+|head\{[^}]*\})["']""")


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a module, without comments and docstring/triple-quoted lines."""
    out, in_doc = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        quotes = line.count('"""') + line.count("'''")
        if in_doc or quotes:
            in_doc = in_doc != (quotes % 2 == 1)
            continue
        out.append((n, line.split("#", 1)[0]))
    return out


def test_layer_names_are_spelled_only_in_layers_py() -> None:
    package = Path(__file__).resolve().parents[1] / "rcdm_viz"
    offenders = [
        f"{path.relative_to(package)}:{n}: {line.strip()}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "layers.py" or path.parent != package
        for n, line in _code_lines(path)
        if _LAYER_LITERAL.search(line)
    ]
    assert not offenders, "layer names belong in rcdm_viz/layers.py:\n" + "\n".join(offenders)
