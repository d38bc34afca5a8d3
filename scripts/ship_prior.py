"""Ship a trained prior with the package: its weights in bfloat16 under ``rcdm_viz/priors/<name>/``.

    python scripts/ship_prior.py RUN_DIR NAME --command "rcdm-viz train-decoder ..." [--commit SHA]

Reads ``RUN_DIR/decoders/prior`` (the EMA weights a ``--layer prior`` training saved), writes
``config.json``, ``diffusion_pytorch_model.safetensors`` (bfloat16: half the bytes; a warm start casts
back to float32, and bf16 keeps float32's range) and ``README.md`` (command, commit, sha256), then prints
the ``ShippedPrior`` entry to add to ``rcdm_viz/decoder/priors.py`` (``PRIORS``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rcdm_viz.decoder.model import load_decoder
from rcdm_viz.decoder.priors import WEIGHTS_FILE, file_sha256

PACKAGE = Path(__file__).resolve().parents[1] / "rcdm_viz" / "priors"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--commit", help="the commit it ran on (default: HEAD)")
    ap.add_argument("--summary", default="")
    args = ap.parse_args()
    source = args.run / "decoders" / "prior"
    decoder = load_decoder(source)  # refuses what is not a loadable decoder
    if not decoder.is_prior:
        raise SystemExit(f"{source} is not a prior (it is conditioned on {decoder.layers})")
    commit = args.commit or subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                           check=True).stdout.strip()
    out = PACKAGE / args.name
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(source / WEIGHTS_FILE).items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    shutil.copyfile(source / "config.json", out / "config.json")
    digest = file_sha256(out / WEIGHTS_FILE)
    steps = [json.loads(line)["step"] for line in (source / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    (out / "README.md").write_text(
        f"# {args.name}\n\n{args.summary}\n\nTrained for {max(steps)} steps by\n\n    {args.command}\n\n"
        f"on commit {commit}, then shipped in bfloat16 by\n\n"
        f"    python scripts/ship_prior.py <run> {args.name} --command ...\n\n"
        f"sha256 of {WEIGHTS_FILE}: {digest}\n"
    )
    size = (out / WEIGHTS_FILE).stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB); add to PRIORS in rcdm_viz/decoder/priors.py:")
    print(f'    "{args.name}": ShippedPrior(\n        "{args.name}",\n        "{digest}",\n'
          f'        "{args.command}",\n        "{commit}",\n        "{args.summary}",\n    ),')


if __name__ == "__main__":
    main()
