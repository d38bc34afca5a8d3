"""Do two run directories hold the same results? For a refactor's before/after check (issue 25).

Run the same command with the same seeds at two commits (e.g. ``PYTHONPATH=<checkout of the old commit>
python -m rcdm_viz quickstart --run before/run ...`` and the same with this checkout), then:

    python scripts/same_outputs.py before/run after/run

JSON files compare by value (throughput, which is timing, is left out; keys the newer file adds are listed,
not counted as a difference), metrics.jsonl line by line, CSV files row by row as dicts, safetensors tensor
by tensor (bit-exact), everything else (PNGs, YAML) byte for byte. Prints one line per difference and ends
with the counts; exits 1 when anything differs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = {"images_per_s"}  # measured, not computed: differs between any two runs


def _values(obj):
    if isinstance(obj, dict):
        return {k: _values(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_values(v) for v in obj]
    return obj


def _compare(a: Path, b: Path) -> tuple[bool, str]:
    """(same, note) for one file present in both runs."""
    if a.suffix == ".json":
        old, new = _values(json.loads(a.read_text())), _values(json.loads(b.read_text()))
        added = sorted(set(new) - set(old)) if isinstance(old, dict) and isinstance(new, dict) else []
        new = {k: v for k, v in new.items() if k not in added} if added else new
        return old == new, f"the newer file adds {added}" if added else ""
    if a.suffix == ".jsonl":
        lines = [[_values(json.loads(x)) for x in p.read_text().splitlines()] for p in (a, b)]
        return lines[0] == lines[1], ""
    if a.suffix == ".csv":
        rows = [list(csv.DictReader(p.open())) for p in (a, b)]
        return rows[0] == rows[1], ""
    if a.suffix == ".safetensors":
        old, new = load_file(a), load_file(b)
        return old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old), ""
    return a.read_bytes() == b.read_bytes(), ""


def main() -> int:
    before, after = Path(sys.argv[1]), Path(sys.argv[2])
    files = [{p.relative_to(root) for p in root.rglob("*") if p.is_file()} for root in (before, after)]
    for label, only in (("only before", files[0] - files[1]), ("only after", files[1] - files[0])):
        for rel in sorted(only):
            print(f"{label}: {rel}")
    same = different = 0
    for rel in sorted(files[0] & files[1]):
        ok, note = _compare(before / rel, after / rel)
        same, different = same + ok, different + (not ok)
        if not ok or note:
            print(f"{'same' if ok else 'DIFFERENT'}: {rel}" + (f" ({note})" if note else ""))
    print(f"{same} files the same, {different} different")
    return 1 if different else 0


if __name__ == "__main__":
    sys.exit(main())
