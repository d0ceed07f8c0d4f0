#!/usr/bin/env bash
# Pilot for a setting with room (validation only; the test split is not read): the judge (a recogniser
# trained on high-quality images, seed 100) scores enhancement-only's output under stronger
# degradations than the earlier settings. A setting qualifies when the judge on enhancement-only's
# output is >= 0.05 below the judge on high-quality images on its pre-registered task metric.
#   bash results/fronts/pilot.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
W=workdirs/fronts/pilot
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
REC=(--config.num_train_steps=600 --config.optim.warmup_steps=30 --config.log_every=50
     --config.eval_every=200 --config.checkpoint_every=600 --config.keep_checkpoints=1)
RUN=(--config.num_train_steps=300 --config.optim.warmup_steps=15 --config.log_every=10
     --config.eval_every=100 --config.checkpoint_every=300 --config.keep_checkpoints=1
     --config.recognizer.frozen=true)
SHRUNK_SEG=('--config.data.image_size=(96, 128)' '--config.data.patch_size=(48, 64)'
            --config.model.enhancer.features=16 --config.model.enhancer.num_blocks=2
            --config.model.recognizer.features=8)
# PneumoniaMNIST: Poisson low-dose noise at 20 (the earlier setting), 5 and 2 photons.
P=(--config configs/pneumoniamnist.py --config.data.data_dir="$DATA_DIR")
$PY experiments/compare.py "${P[@]}" "${REC[@]}" --methods recognizer_only --seeds 100 \
  --workdir "$W/pneumoniamnist/recognizers"
J=$PWD/$W/pneumoniamnist/recognizers/recognizer_only/seed_100
$PY experiments/compare.py "${P[@]}" "${RUN[@]}" --config.recognizer.init_from="$J" \
  --config.judge.workdir="$J" --seeds 0 --methods "" --workdir "$W/pneumoniamnist/enhance_only" \
  --variant "photons20:method=enhance_only,task.degradation=poisson_noise(photons=20)" \
  --variant "photons5:method=enhance_only,task.degradation=poisson_noise(photons=5)" \
  --variant "photons2:method=enhance_only,task.degradation=poisson_noise(photons=2)"
# PH2 lesion segmentation: x8 with sigma 0.05 (the earlier setting), x8 with sigma 0.1, x16.
S=(--config configs/ph2.py "${SHRUNK_SEG[@]}" --config.data.data_dir="$DATA_DIR")
$PY experiments/compare.py "${S[@]}" "${REC[@]}" --methods recognizer_only --seeds 100 \
  --workdir "$W/ph2_seg/recognizers"
J=$PWD/$W/ph2_seg/recognizers/recognizer_only/seed_100
$PY experiments/compare.py "${S[@]}" "${RUN[@]}" --config.recognizer.init_from="$J" \
  --config.judge.workdir="$J" --seeds 0 --methods "" --workdir "$W/ph2_seg/enhance_only" \
  --variant "x8_sigma0.05:method=enhance_only,task.degradation=downsample(scale=8) > gaussian_noise(sigma=0.05)" \
  --variant "x8_sigma0.1:method=enhance_only,task.degradation=downsample(scale=8) > gaussian_noise(sigma=0.1)" \
  --variant "x16_sigma0.05:method=enhance_only,task.degradation=downsample(scale=16) > gaussian_noise(sigma=0.05)"
for setting in pneumoniamnist ph2_seg; do
  for part in enhance_only recognizers; do
    $PY experiments/evidence_report.py collect "$W/$setting/$part" "results/fronts/pilot/$setting/$part"
  done
done
$PY results/fronts/pilot_table.py results/fronts/pilot > results/fronts/pilot.md
