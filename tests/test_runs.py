"""The run directory: which decoder serves a layer, atomic writes, metrics files."""

from __future__ import annotations

import json
import os
import stat

import pytest

from rcdm_viz.errors import RcdmVizError
from rcdm_viz.runs import ALL_LAYERS, MetricsLog, RunDir, atomic_write, atomic_write_bytes, read_metrics


def _decoder(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")


def test_decoder_for_prefers_the_layers_own_decoder_then_the_shared_one(tmp_path):
    run = RunDir(tmp_path)
    assert run.decoder_for("trunk") is None
    (run.decoder("trunk")).mkdir(parents=True)  # a decoder directory without config.json is not trained
    assert run.decoder_for("trunk") is None
    _decoder(run.shared_decoder)
    assert run.shared_decoder == tmp_path / "decoders" / ALL_LAYERS
    assert run.decoder_for("trunk") == run.shared_decoder
    _decoder(run.decoder("head2"))
    assert run.decoder_for("head2") == run.decoder("head2")
    assert run.decoder_layers() == sorted([ALL_LAYERS, "head2"])


def test_missing_encoder_error_names_the_trained_runs_beside_it(tmp_path):
    alone = r"has no encoder \(expected .*\); run `rcdm-viz train-encoder --run DIR` first$"
    with pytest.raises(RcdmVizError, match=alone):
        RunDir(tmp_path / "default").require_encoder()
    for name, files in (("quickstart", ("config.json", "model.safetensors")), ("torn", ("config.json",))):
        (tmp_path / name / "encoder").mkdir(parents=True)
        for f in files:
            (tmp_path / name / "encoder" / f).write_text("{}")
    with pytest.raises(RcdmVizError) as err:
        RunDir(tmp_path / "default").require_encoder()
    assert str(err.value).endswith(f"runs beside it with an encoder: {tmp_path / 'quickstart'} (pass --run)")
    assert RunDir(tmp_path / "quickstart").require_encoder() == tmp_path / "quickstart" / "encoder"


def test_atomic_writes_get_the_permissions_of_an_ordinary_write(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "shared.json", b"{}")
        (tmp_path / "plain.json").write_bytes(b"{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "shared.json").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain.json").stat().st_mode) == 0o644


def test_atomic_write_keeps_the_old_file_and_no_temp_file_when_writing_fails(tmp_path):
    path = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old"

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]


def test_metrics_log_truncates_on_resume_and_reading_skips_a_torn_last_line(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (1, 2, 3):
        log.log(step=step, loss=1.0 / step)
    log.truncate_after(2)
    with log.path.open("a") as fh:
        fh.write('{"step": 3, "lo')  # a training still writing its next record
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2]
    assert read_metrics(tmp_path / "missing.jsonl") == []
    MetricsLog(tmp_path / "other.jsonl", enabled=False).log(step=1)  # not the main process: no file
    assert not (tmp_path / "other.jsonl").exists()
    assert json.loads(log.path.read_text().splitlines()[0]) == {"step": 1, "loss": 1.0}
    log.truncate_after(5)  # a resume after a kill mid-record: the torn line goes, nothing raises
    assert [r["step"] for r in read_metrics(log.path)] == [1, 2] and log.path.read_text().endswith("}\n")


def test_steps_recording_at_once_lose_no_section(tmp_path, monkeypatch):
    """Two steps of one run merge their sections into config.yaml at once (threads: each opens its own
    lock, which flock serialises like two processes). A pause between reading and writing back makes
    every interleaving likely; each section still ends at its writer's last value."""
    import threading
    import time

    import yaml

    from rcdm_viz import runs
    from rcdm_viz.config import load_config

    write_back = runs.atomic_write_text
    monkeypatch.setattr(runs, "atomic_write_text", lambda *a: (time.sleep(0.002), write_back(*a)))
    run = RunDir(tmp_path)
    cfgs = {s: [load_config(None, [f"{s}.seed={i}"]) for i in range(20)] for s in ("ssl", "decoder")}

    def write(section):
        for cfg in cfgs[section]:
            runs.record_config(run, cfg, (section,))

    threads = [threading.Thread(target=write, args=(s,)) for s in cfgs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = yaml.safe_load(run.config.read_text())
    assert recorded["ssl"]["seed"] == 19 and recorded["decoder"]["seed"] == 19


def test_sweep_temp_removes_only_the_temps_of_killed_writes(tmp_path):
    from rcdm_viz.runs import sweep_temp

    names = [".model.safetensors.a1.tmp", ".metrics.jsonl.b2.tmp", ".trunk.safetensors.c3.tmp", "keep.tmp",
             ".hidden", "model.safetensors"]
    for name in names:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.tmp").mkdir()
    sweep_temp(tmp_path, ["trunk.safetensors"])
    assert not (tmp_path / ".trunk.safetensors.c3.tmp").exists()
    assert (tmp_path / ".metrics.jsonl.b2.tmp").exists()
    sweep_temp(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".dir.tmp", ".hidden", "keep.tmp", "model.safetensors"]
    sweep_temp(tmp_path / "missing")  # nothing to sweep is no error
