"""The factor oracle's targets and the factor retention score."""

from __future__ import annotations

import math

import pytest
import torch

from rcdm_viz.data.synthetic import CIRCULAR, FACTOR_RANGES, FACTORS, SHAPES
from rcdm_viz.evaluation.oracle import (
    FactorOracle,
    factor_error,
    factor_retention,
    oracle_targets,
    shape_kept,
)


def test_targets_put_every_factor_on_a_comparable_scale():
    factors = {name: torch.tensor([lo, (lo + hi) / 2, hi]) for name, (lo, hi) in FACTOR_RANGES.items()}
    targets = oracle_targets(factors)
    assert list(targets) == list(FACTORS)
    for name, t in targets.items():
        if name in CIRCULAR:  # both ends of the range are the same angle
            assert t.shape == (3, 2)
            torch.testing.assert_close(t[0], t[2], atol=1e-6, rtol=0)
            torch.testing.assert_close(t[1], torch.tensor([0.0, -1.0]), atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(t[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    out = FactorOracle(width=4)(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, sum(2 if n in CIRCULAR else 1 for n in FACTORS) + len(SHAPES))  # + shape logits


def test_factor_error_of_angles_is_the_squared_chord():
    a = torch.tensor([[0.0, 1.0]])  # angle 0 as (sin, cos)
    b = torch.tensor([[1.0, 0.0]])  # a quarter turn
    assert float(factor_error(a, b)[0]) == pytest.approx(2.0)  # chord of 90 degrees: sqrt(2)
    assert float(factor_error(a, -a)[0]) == pytest.approx(4.0)


def test_retention_is_one_when_kept_zero_at_chance_negative_when_worse():
    x = {"hue": torch.tensor([[0.0, 1.0]])}  # not a circular factor's name: compared as it is
    others = {"hue": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])}  # mean error 2
    assert factor_retention({"hue": x["hue"].repeat(4, 1)}, x, others) == {"hue": 1.0}
    assert factor_retention(others, x, others)["hue"] == pytest.approx(0.0)
    worse = {"hue": torch.tensor([[0.0, -1.0]])}  # opposite angle: error 4
    assert factor_retention(worse, x, others)["hue"] == pytest.approx(-1.0)
    assert math.isfinite(factor_retention(x, x, {"hue": x["hue"]})["hue"])  # no division by zero


def test_circular_retention_compares_angles_so_a_hedged_reading_keeps_nothing():
    x = {"floor_hue": torch.tensor([[0.0, 1.0]])}
    others = {"floor_hue": torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])}
    # Short readings at random angles (a grey, ambiguous floor): squared error ~1 to every angle as they
    # are, which would be half the chance error; on the circle they are as far as any other scene.
    angles = torch.linspace(0, 2 * math.pi, 65)[:-1]
    hedged = {"floor_hue": 0.05 * torch.stack([angles.sin(), angles.cos()], dim=1)}
    assert factor_retention(hedged, x, others)["floor_hue"] == pytest.approx(0.0, abs=1e-5)
    # A confident reading at the input's angle is kept, whatever the oracle's scale.
    assert factor_retention({"floor_hue": 0.3 * x["floor_hue"]}, x, others)["floor_hue"] == pytest.approx(1.0)
    # The same short readings under a name that is not circular earn half of chance: why angles matter.
    as_is = {"hue": hedged["floor_hue"]}, {"hue": x["floor_hue"]}, {"hue": others["floor_hue"]}
    assert factor_retention(*as_is)["hue"] == pytest.approx(0.5, abs=0.01)


def test_shape_kept_counts_the_samples_read_as_the_inputs_class():
    def probs(*classes: int) -> torch.Tensor:
        p = torch.full((len(classes), 4), 0.1)
        p[torch.arange(len(classes)), torch.tensor(classes)] = 0.7
        return p

    x = probs(2)
    assert shape_kept(probs(2, 2, 2, 2), x) == 1.0
    assert shape_kept(probs(2, 0, 2, 3), x) == 0.5
    assert shape_kept(probs(0, 1, 3, 1), x) == 0.0
    # the argmax decides, not the confidence: a hesitant reading of the right class still counts
    hesitant = torch.tensor([[0.3, 0.2, 0.31, 0.19]])
    assert shape_kept(hesitant, x) == 1.0


def test_the_oracle_is_cached_with_its_record_and_an_unreadable_record_retrains(tmp_path):
    import json

    from rcdm_viz.evaluation.oracle import load_or_train_oracle
    from rcdm_viz.records import OracleRecord
    from rcdm_viz.runs import RunDir
    from tests.conftest import tiny_config

    cfg = tiny_config("scores.oracle_n_train=32", "scores.oracle_steps=2", "scores.oracle_batch_size=8",
                      "data.n_val=16")
    run = RunDir(tmp_path / "run")
    _, quality = load_or_train_oracle(cfg, run, 16)
    record_path = run.root / "oracle" / "16px" / "config.json"
    record = OracleRecord.from_json(json.loads(record_path.read_text()))
    assert record.val_r2 == quality.r2 and record.val_shape_accuracy == quality.shape_accuracy
    assert record.key["steps"] == 2
    again = load_or_train_oracle(cfg, run, 16)[1]
    assert again == quality
    record_path.write_text('{"key": ')  # torn: a cache, so it is made again rather than a traceback
    assert load_or_train_oracle(cfg, run, 16)[1] == quality
    assert OracleRecord.from_json(json.loads(record_path.read_text())) == record
