#!/usr/bin/env bash
# The commands behind results/multitask/ (PROTOCOL.md): three compare.py calls into one directory
# (one per config: the multi-task rows, then each single-task GradProm row), then the paired report.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
X=workdirs/multitask/ph2_sr4_seg_cls
COMMON=('--config.data.image_size=(96, 128)' --config.model.enhancer.features=16
        --config.model.enhancer.num_blocks=2 --config.task_weight=0.1 --config.num_train_steps=300
        --config.optim.warmup_steps=15 --config.log_every=10 --config.eval_every=100
        --config.checkpoint_every=300 --config.keep_checkpoints=1 --workdir "$X" --seeds 0,1,2
        --methods "")
$PY experiments/compare.py --config configs/ph2.py:multitask "${COMMON[@]}" \
  --config.model.recognizers.segmentation.features=8 --variant "gradprom_multitask:method=gradprom" \
  --variant "joint_multitask:method=joint" --variant "enhance_only_multitask:method=enhance_only"
$PY experiments/compare.py --config configs/ph2.py "${COMMON[@]}" '--config.data.patch_size=(96, 128)' \
  --config.model.recognizer.features=8 --variant "gradprom_segmentation_only:method=gradprom"
$PY experiments/compare.py --config configs/ph2.py:classification "${COMMON[@]}" \
  --variant "gradprom_classification_only:method=gradprom"
D=results/multitask/ph2_sr4_seg_cls_300steps
$PY experiments/evidence_report.py collect "$X" "$D"
$PY experiments/evidence_report.py paired "$D" --reference gradprom_multitask \
  --metrics "psnr,ssim,dice/segmentation|dice,accuracy/classification|accuracy" \
  --title "PH2 96×128, ×4 super-resolution + lesion segmentation + 3-class diagnosis on one enhancer, 300 steps, 3 seeds"
