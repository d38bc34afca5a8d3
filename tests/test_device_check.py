"""benchmarks/device_check.py --tiny: the device check's code paths stay working on the CPU, in seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_check.py"


def test_device_check_tiny_writes_its_json_and_grids(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("ratio: ")
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    for stage in ("ssl_step", "decoder_step"):
        got = report[stage]
        assert got["images_per_s"] > 0 and got["achieved_tflop_s"] > 0 and got["peak_memory_gib"] > 0, got
    training = report["training"]
    assert training["steps"] >= 1 and training["scores"] and len(training["grids"]) == 2
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
