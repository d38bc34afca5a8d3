#!/usr/bin/env bash
# The papers' trends, reproduced small (docs/RESULTS.md): SimCLR encoders on synthetic scenes at trunk
# widths D = 512 .. 8192 with a fixed 512-512-512 projector (E/N Figure 4 keeps the projector fixed), and
# the GR positives presets when they exist; then probes on every layer and one cross-run report.
#
# Usage: scripts/trends.sh [OUT_DIR]   (default runs/trends; re-running skips encoders already trained;
#        TRAIN_ONLY=1 stops after training; WIDTHS="512 2048" picks the widths)
# Budget: each encoder gets the same number of optimisation steps (fair across widths), sized so that the
# widest one trains in a few minutes on a 2-core CPU. Outputs: OUT_DIR/<run>/encoder/probes.json,
# OUT_DIR/<run>/report/, and the comparison in OUT_DIR/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/trends}
BIN=.venv/bin
read -r -a WIDTHS <<< "${WIDTHS:-512 1024 2048 4096 8192}"  # e.g. WIDTHS="512 2048 8192"
# Same data and schedule for every run: 2048 scenes at 32 px, batch 128, 4 epochs = 64 steps, on the
# quickstart trunk at half its stage widths (base 8), so that D = 8192 fits the CPU budget.
BUDGET=(--set data.n_train=2048 --set data.n_val=1024 --set ssl.batch_size=128 --set ssl.epochs=4
        --set ssl.warmup_epochs=0.5 --set encoder.base_width=8)

train() {  # train NAME PRESET [--set ...]
  local name=$1 preset=$2; shift 2
  if [[ -f "$OUT/$name/encoder/model.safetensors" ]]; then
    echo "== $name: encoder exists, skipped"; return
  fi
  echo "== $name: train-encoder ($preset $*)"
  /usr/bin/time -f "   $name encoder wall %e s" \
    "$BIN/rcdm-viz" train-encoder --run "$OUT/$name" --preset "$preset" "${BUDGET[@]}" "$@" --no-progress
}

runs=()
for d in "${WIDTHS[@]}"; do
  if [[ -f "configs/en-width-$d.yaml" ]]; then
    train "en-width-$d" "en-width-$d"
  else  # the width presets are not there: the quickstart recipe with only the width changed
    train "en-width-$d" quickstart --set encoder.width="$d"
  fi
  runs+=("$OUT/en-width-$d")
done
for kind in augment class neighbour; do
  if [[ -f "configs/gr-positives-$kind.yaml" ]]; then
    train "gr-positives-$kind" "gr-positives-$kind"
    runs+=("$OUT/gr-positives-$kind")
  fi
done

if [[ -n "${TRAIN_ONLY:-}" ]]; then exit 0; fi
for run in "${runs[@]}"; do
  echo "== probe $run"
  /usr/bin/time -f "   probe wall %e s" "$BIN/rcdm-viz" probe --run "$run" --no-progress
  "$BIN/rcdm-viz" report --run "$run" --no-progress
done
echo "== report across runs"
"$BIN/rcdm-viz" report --runs "${runs[@]}" --out "$OUT/report" --no-progress
