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
DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}
W=workdirs/fronts/$setting
COMMON=(--regime frozen --seeds 0,1,2,3,4,5,6,7,8,9 --lambdas 0.001,0.003,0.01,0.03,0.1,0.3,1
        --methods joint,gradprom,pcgrad,gp_norm --variant "gradprom_ema:gradprom.gradient_ema=0.9"
        --steps 300 --recognizer_steps 600 --probe_lambda 0.01 --probe_every 3 --extend_grid)
case $setting in
  pneumoniamnist)
    CONFIG=(--config configs/pneumoniamnist.py --config.data.data_dir="$DATA_DIR")
    SETTING=(--setting "PneumoniaMNIST 28×28, Poisson denoising (20 photons) + classification, frozen recogniser, 300 steps"
             --task_metric balanced_accuracy,auc --probe_batches 8,32,128
             --task_gains balanced_accuracy=0.05,0.1,0.2 --task_gains auc=0.005,0.01,0.02) ;;
  ph2_sr8_noisy_seg)
    CONFIG=(--config configs/ph2.py --config.data.data_dir="$DATA_DIR"
            '--config.data.image_size=(96, 128)' '--config.data.patch_size=(48, 64)'
            --config.model.enhancer.features=16 --config.model.enhancer.num_blocks=2
            --config.model.recognizer.features=8
            '--config.task.degradation=downsample(scale=8) > gaussian_noise(sigma=0.1)')
    SETTING=(--setting "PH2 96×128, ×8 super-resolution + noise σ 0.1 + lesion segmentation, frozen recogniser, 300 steps"
             --task_metric dice --probe_batches 8,32 --task_gains dice=0.01,0.02,0.03) ;;
  *) echo "unknown setting $setting" >&2; exit 2 ;;
esac
$PY experiments/study.py "${CONFIG[@]}" --workdir "$W" "${COMMON[@]}" "${SETTING[@]}" "$@"
D=results/fronts/$setting
$PY experiments/evidence_report.py collect "$W/frozen" "$D"
$PY experiments/evidence_report.py collect "$W/recognizers" "$D/recognizers"
cp "$W/frozen/fronts.md" "$W/frozen/fronts.json" "$W/frozen/study.md" "$D/"
mkdir -p "$D/plots" && cp "$W"/frozen/plots/fronts_*.png "$D/plots/"
