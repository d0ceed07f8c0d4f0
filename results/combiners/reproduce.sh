#!/usr/bin/env bash
# The four gradient-combination methods a reviewer asks GradProm to beat (MGDA, CAGrad, IMTL-G,
# GradVac) beside GradProm, joint training, PCGrad and enhancement-only, in the fronts study's
# PneumoniaMNIST setting (frozen recognisers of the fronts study, 300 steps) at λ = 0.01, seeds 0–2.
# Exploratory, not pre-registered: one λ (the fronts' probe λ), not chosen on validation per method.
# The rows the fronts study already ran with the same config (gradprom, joint, pcgrad at λ = 0.01)
# are copied from its workdir, not run again; the four new ones and enhance_only (whose fronts runs
# hold the default λ) are run by compare.py.
# Like the fronts study, run from a checkout of its code (4a7c925; see results/fronts/reproduce.sh),
# after the fronts' PneumoniaMNIST recognisers exist:
#   bash results/combiners/reproduce.sh [--workers N]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
FRONTS=workdirs/fronts/pneumoniamnist
W=workdirs/combiners/pneumoniamnist
REC=$(cd "$FRONTS/recognizers/recognizer_only" && pwd -P)   # as the study resolves it
for seed in 0 1 2; do
  for pair in gradprom:gradprom_l0.01 joint:joint_l0.01 pcgrad:pcgrad_l0.01; do
    row=${pair%%:*}; source=$FRONTS/frozen/${pair#*:}/seed_$seed
    if [[ -f $source/results.json && ! -e $W/$row/seed_$seed ]]; then
      mkdir -p "$W/$row" && cp -a "$source" "$W/$row/seed_$seed" && rm -rf "$W/$row/seed_$seed/checkpoints"
    fi
  done
done
$PY experiments/compare.py --config configs/pneumoniamnist.py --config.data.data_dir="$DATA_DIR" \
    --config.num_train_steps=300 --config.optim.warmup_steps=15 --config.log_every=10 \
    --config.eval_every=100 --config.checkpoint_every=300 --config.keep_checkpoints=1 \
    "--config.recognizer.init_from=$REC/seed_{seed}" --config.recognizer.frozen=true \
    --config.judge.workdir="$REC/seed_100" --config.task_weight=0.01 \
    --methods mgda,cagrad,imtl_g,gradvac,gradprom,joint,pcgrad,enhance_only --seeds 0,1,2 \
    --task_metric balanced_accuracy --workdir "$W" "$@"
D=results/combiners/pneumoniamnist
$PY experiments/evidence_report.py collect "$W" "$D"
$PY experiments/evidence_report.py paired "$D" --reference gradprom \
    --metrics psnr,balanced_accuracy,judge_balanced_accuracy,auc \
    --title "Each method − GradProm, PneumoniaMNIST frozen, λ = 0.01, test split (exploratory)"
cp "$W/summary.md" "$W/summary.csv" "$W/runs.csv" "$D/" && mkdir -p "$D/plots" && cp "$W"/plots/*.png "$D/plots/"
