#!/usr/bin/env bash
# The commands behind results/fronts/ (PROTOCOL.md), one setting at a time, each a single call of
# experiments/study.py (it resumes: run the same command again after an interruption), then the runs
# copied into results/fronts/<setting>/ (configs, results, gzip-compressed metrics).
#   bash results/fronts/reproduce.sh pneumoniamnist|ph2_sr8_noisy_seg [--workers N]
# The study's runs are made by the code of commit 4a7c925 (f7af346 and the random-gate open-rate fix
# of experiments/tools/study.py; its whole study, every setting, runs from a
# checkout of it: `git worktree add --detach ../study 4a7c925`, then this script from there with
# PYTHON=<this checkout>/.venv/bin/python): later code refuses to resume those workdirs in one line,
# since their config.json holds recognizer.pretrain_steps, which it no longer has.
set -euo pipefail
cd "$(dirname "$0")/../.."
setting=${1:?pneumoniamnist or ph2_sr8_noisy_seg}; shift
PY=${PYTHON:-.venv/bin/python}
W=workdirs/fronts/$setting
source results/fronts/settings.sh
$PY experiments/study.py "${CONFIG[@]}" --workdir "$W" "${COMMON[@]}" "${REPORT[@]}" "${PROBES[@]}" "$@"
D=results/fronts/$setting
$PY experiments/evidence_report.py collect "$W/frozen" "$D"
$PY experiments/evidence_report.py collect "$W/recognizers" "$D/recognizers"
cp "$W/frozen/fronts.md" "$W/frozen/fronts.json" "$W/frozen/study.md" "$D/"
if [[ -f $W/frozen/grid_extension.json ]]; then cp "$W/frozen/grid_extension.json" "$D/"; fi
mkdir -p "$D/plots" && cp "$W"/frozen/plots/fronts_*.png "$D/plots/"
# Post hoc, from the collected runs: on which logged steps the gate opened; the pre-registered
# seeds 0–7 check; and, once every setting has its report, the claims spanning them as one family.
$PY results/fronts/gate_steps.py "$D"
$PY results/fronts/machines.py "$setting"
bash results/fronts/sensitivity.sh "$setting"
SETTINGS=(results/fronts/pneumoniamnist results/fronts/ph2_sr8_noisy_seg)
if [[ -f ${SETTINGS[0]}/fronts.json && -f ${SETTINGS[1]}/fronts.json ]]; then
  $PY experiments/evidence_report.py across "${SETTINGS[@]}" --output results/fronts
fi
