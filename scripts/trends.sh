#!/usr/bin/env bash
# The papers' trends, reproduced small (docs/RESULTS.md): SimCLR encoders on synthetic scenes at trunk
# widths D = 512 .. 8192 with the projector held fixed (rcdm_viz/presets/en-width-*.yaml; E/N Figure 4), and the
# GR positives presets (rcdm_viz/presets/gr-positives-*.yaml; GR Figure 6); then every probe on every layer, a
# report per run and one report across runs.
#
# Usage: scripts/trends.sh [OUT_DIR]   (default runs/trends; re-running skips encoders already trained)
#   WIDTHS="512 2048 8192"  picks the widths (default 512 1024 2048 4096 8192)
#   POSITIVES=0             skips the GR positives runs;  TRAIN_ONLY=1 stops after training
#   SEED=1                  another seed of every run (ssl.seed: initialisation, data order, views)
# Budget: every run gets the same data and number of steps (2048 scenes, batch 128, 4 epochs = 64 steps)
# at half the presets' stage widths (base 8), so that the widest trunk trains in ~2-3 minutes on a quiet
# 2-core CPU; D (or the positives) is the only difference between runs.
# Outputs: OUT_DIR/<run>/encoder/probes.json, OUT_DIR/<run>/report/, and OUT_DIR/report/ (runs.md, plots).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/trends}
BIN=.venv/bin
read -r -a WIDTHS <<< "${WIDTHS:-512 1024 2048 4096 8192}"
BUDGET=(--set data.n_train=2048 --set data.n_val=1024 --set ssl.batch_size=128 --set ssl.epochs=4
        --set ssl.warmup_epochs=0.5 --set encoder.base_width=8 --set ssl.seed="${SEED:-0}")

train() {  # train NAME PRESET [--set ...]
  local name=$1 preset=$2; shift 2
  if [[ -f "$OUT/$name/encoder/model.safetensors" ]]; then
    echo "== $name: encoder exists, skipped"; return
  fi
  echo "== $name: train-encoder ($preset $*) $(date -u +%H:%M:%S)"
  /usr/bin/time -f "   $name encoder wall %e s" \
    "$BIN/rcdm-viz" train-encoder --run "$OUT/$name" --preset "$preset" "${BUDGET[@]}" "$@" --no-progress
}

runs=()
for d in "${WIDTHS[@]}"; do
  if [[ -f "rcdm_viz/presets/en-width-$d.yaml" ]]; then
    train "en-width-$d" "en-width-$d"
  else  # no preset for this width: the 512 preset with only the width changed
    train "en-width-$d" en-width-512 --set encoder.width="$d"
  fi
  runs+=("$OUT/en-width-$d")
done
if [[ "${POSITIVES:-1}" != 0 ]]; then
  # augment first: the neighbour positives come from its trunk space.
  for kind in augment class neighbour; do
    train "gr-positives-$kind" "gr-positives-$kind" \
      $([[ $kind == neighbour ]] && echo --set ssl.reference_encoder="$OUT/gr-positives-augment/encoder")
    runs+=("$OUT/gr-positives-$kind")
  done
fi
if [[ -n "${TRAIN_ONLY:-}" ]]; then exit 0; fi

for run in "${runs[@]}"; do
  echo "== probe $run $(date -u +%H:%M:%S)"
  /usr/bin/time -f "   probe wall %e s" "$BIN/rcdm-viz" probe --run "$run" --no-progress
  "$BIN/rcdm-viz" report --run "$run" --no-progress
done
echo "== report across runs"
"$BIN/rcdm-viz" report --runs "${runs[@]}" --out "$OUT/report" --no-progress
