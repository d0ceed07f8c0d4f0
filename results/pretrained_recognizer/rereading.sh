#!/usr/bin/env bash
# Re-reads the committed PneumoniaMNIST runs (no new runs) on the metrics that see the cost: balanced
# accuracy beside AUC for GradProm against every chosen row (threshold_metrics.md), and the random gate
# against joint training, the control for the amount of task gradient added (amount_control.md).
#   bash results/pretrained_recognizer/rereading.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
METRICS=psnr,ssim,balanced_accuracy,judge_balanced_accuracy,auc,judge_auc
SHOWN=judge_no_enhancement_balanced_accuracy,judge_high_quality_balanced_accuracy
for regime in frozen finetuned; do
  D=results/pretrained_recognizer/pneumoniamnist_denoise_cls_${regime}_300steps
  chosen() {   # the rows at the λ chosen on validation, from selection.json
    $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(','.join(f'{m}_l{w:g}' for m, w in s.items() if m in sys.argv[2:]))" "$D/selection.json" "$@"
  }
  rows="enhance_only,random_gate,$(chosen joint pcgrad gp_norm)"
  [ "$regime" = finetuned ] && rows="$rows,two_stage"
  $PY experiments/evidence_report.py paired "$D" --reference "$(chosen gradprom)" --rows "$rows" \
    --metrics $METRICS --show $SHOWN --output threshold_metrics.md \
    --title "Balanced accuracy beside AUC: GradProm against the chosen rows (PneumoniaMNIST, $regime recogniser)" > /dev/null
  $PY experiments/evidence_report.py paired "$D" --reference random_gate --rows "$(chosen joint)" \
    --metrics $METRICS --show $SHOWN --output amount_control.md \
    --title "The amount of task gradient: the random gate (GradProm's λ and open rate, steps at random) against joint training (PneumoniaMNIST, $regime recogniser)" > /dev/null
done
echo "Wrote threshold_metrics.md and amount_control.md in both PneumoniaMNIST settings."
