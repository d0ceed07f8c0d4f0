#!/usr/bin/env bash
# The protocol's pre-registered sensitivity check (PROTOCOL.md): the fronts and matched comparisons
# computed again on seeds 0–7 alone (every run of them made on this project's machine; seeds 8–9
# were made on two), from the committed runs of results/fronts/<setting>/, by the same
# `evidence_report.py fronts` call the study makes, into results/fronts/<setting>/seeds_0-7/, and
# the verdicts that change against every seed (seeds_0-7/verdicts.md).
#   bash results/fronts/sensitivity.sh pneumoniamnist|ph2_sr8_noisy_seg [RUNS_DIR]
# (RUNS_DIR: the setting's runs, default results/fronts/<setting>.)
set -euo pipefail
cd "$(dirname "$0")/../.."
setting=${1:?pneumoniamnist or ph2_sr8_noisy_seg}
PY=${PYTHON:-.venv/bin/python}
SEEDS=(0 1 2 3 4 5 6 7)
source results/fronts/settings.sh
D=$(realpath "${2:-results/fronts/$setting}")
OUT=$D/seeds_0-7
# The seeds' runs, linked into a directory of their own (the report reads every run it finds).
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
for row in "$D"/*/; do
  row=$(basename "$row")
  [[ $row == recognizers || $row == plots || $row == seeds_0-7 ]] && continue
  for seed in "${SEEDS[@]}"; do
    if [[ -d $D/$row/seed_$seed ]]; then
      mkdir -p "$RUNS/$row" && ln -s "$D/$row/seed_$seed" "$RUNS/$row/seed_$seed"
    fi
  done
done
# study.py's flags as evidence_report.py fronts takes them: one --task_metric per metric.
args=()
for ((i = 0; i < ${#REPORT[@]}; i += 2)); do
  flag=${REPORT[i]} value=${REPORT[i + 1]}
  case $flag in
    --task_metric) IFS=, read -ra metrics <<< "$value"
                   for m in "${metrics[@]}"; do args+=(--task_metric "$m"); done ;;
    --setting) args+=(--setting "$value (seeds 0–7 only: the sensitivity check)") ;;
    *) args+=("$flag" "$value") ;;
  esac
done
$PY experiments/evidence_report.py fronts "$RUNS" "${args[@]}"
mkdir -p "$OUT/plots"
cp "$RUNS/fronts.md" "$RUNS/fronts.json" "$OUT/"
cp "$RUNS"/plots/fronts_*.png "$OUT/plots/"
$PY results/fronts/sensitivity_verdicts.py "$D"
echo "Wrote $OUT/fronts.md and verdicts.md (seeds ${SEEDS[*]})."
