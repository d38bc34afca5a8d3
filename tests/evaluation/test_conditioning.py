"""The decoder's loss under the true, a shuffled and the null condition (rcdm_viz.evaluation.conditioning)."""

from __future__ import annotations

import pytest
import torch

from rcdm_viz.decoder.model import RCDMDecoder
from rcdm_viz.evaluation.conditioning import conditional_losses, format_losses

TINY = dict(resolution=16, block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=8)


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 24, 24, generator=gen)  # fitted to the decoder's 16 px
    return images, {"trunk": torch.randn(6, 8, generator=gen), "head3": torch.randn(6, 4, generator=gen)}


def shared_decoder(trained_conditioning: bool) -> RCDMDecoder:
    torch.manual_seed(0)
    dec = RCDMDecoder(layer_dims={"trunk": 8, "head3": 4}, **TINY)
    if trained_conditioning:  # the zero-initialised last layer of each MLP made non-zero, as training does
        with torch.no_grad():
            for mlp in dec.rep_mlps.values():
                mlp[-1].weight.normal_(0, 1.0)
    return dec.eval()


def test_a_decoder_that_ignores_the_representation_scores_true_equal_to_shuffled(data):
    images, reps = data
    dec = shared_decoder(trained_conditioning=False)
    bands = ((0, 500), (500, 1000))
    losses = conditional_losses({"trunk": dec, "head3": dec}, images, reps, bands=bands)
    assert set(losses) == {"trunk", "head3"} and set(losses["trunk"]) == {"0-500", "500-1000"}
    for by_band in losses.values():
        for v in by_band.values():
            assert v["true"] == v["shuffled"]  # a zero MLP output: the representation cannot matter
            assert v["null"] == v["true"]  # untrained, the null and layer embeddings are zero too
    # Every layer sees the same t and noise: the null condition gives the same loss for both layers.
    assert losses["trunk"]["0-500"]["null"] == losses["head3"]["0-500"]["null"]
    again = conditional_losses({"trunk": dec, "head3": dec}, images, reps, bands=bands)
    assert again == losses
    table = format_losses(losses)
    assert len(table.splitlines()) == 1 + 2 * 2 and "500-1000" in table


def test_a_decoder_that_reads_the_representation_scores_them_apart(data):
    images, reps = data
    dec = shared_decoder(trained_conditioning=True)
    losses = conditional_losses({"trunk": dec, "head3": dec}, images, reps, bands=((800, 1000),))
    v = losses["trunk"]["800-1000"]
    assert v["true"] != v["shuffled"] and v["true"] != v["null"]
    assert losses["trunk"]["800-1000"]["true"] != losses["head3"]["800-1000"]["true"]


def test_bad_input_is_named(data):
    images, reps = data
    dec = shared_decoder(trained_conditioning=False)
    with pytest.raises(ValueError, match="N >= 2"):
        conditional_losses({"trunk": dec}, images[:1], {"trunk": reps["trunk"][:1]})
    with pytest.raises(ValueError, match="0 <= lo < hi <= 1000"):
        conditional_losses({"trunk": dec}, images, {"trunk": reps["trunk"]}, bands=((900, 1200),))
    with pytest.raises(ValueError, match="no decoder for layers \\['head3'\\]"):
        conditional_losses({"trunk": dec}, images, reps)


def test_script_prints_and_saves_the_table(tiny_run, tmp_path, monkeypatch, capsys):
    import runpy
    import shutil
    from pathlib import Path

    from rcdm_viz.runs import read_json

    _, run = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    script = Path(__file__).parents[2] / "scripts" / "conditioning_gap.py"
    argv = ["conditioning_gap.py", "--run", str(copy), "--n", "4", "--layers", "trunk"]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(script), run_name="__main__")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["layer", "t", "true", "shuffled", "null", "true/null"]
    bands = ["0-200", "200-500", "500-800", "800-1000"]
    assert [ln.split()[:2] for ln in lines[1:]] == [["trunk", b] for b in bands]
    saved = read_json(copy / "decoders" / "conditioning.json")
    assert saved["n"] == 4 and list(saved["losses"]["trunk"]) == bands
