#!/usr/bin/env bash
# Whole seeds of the PneumoniaMNIST fronts study on the device machine's CPU cores (JAX_PLATFORMS=cpu),
# at the same absolute paths as the main checkout so the stored configs match; finished runs come back
# in $OUT/runs.tgz (without checkpoints), plus a replica of one seed-0 run to measure the platform's
# effect. Usage: SEEDS="8 9" DEADLINE=540 bash .devcarry/fronts_seeds.sh
# Run from the repository copy on the lent machine, with, beside the tracked files: .whl/ (the wheels
# of the packages that machine lacks), .devcarry/ (this script, the built TFDS medmnist folder, the
# PneumoniaMNIST .npz as .devcarry/shared/data/pneumoniamnist/) and the recognisers' workdirs of
# seeds 0, 8, 9 and the judge (workdirs/fronts/pneumoniamnist/recognizers/recognizer_only/seed_*).
# The call that made the committed runs: SEEDS="8 9" DEADLINE=530, 540 s on the machine (that version
# stopped leftover runs with pkill; the process-group stop below is the only change since).
set -uo pipefail
SEEDS=${SEEDS:-"8 9"}
DEADLINE=${DEADLINE:-540}          # seconds from the start of this script until the studies stop
ROOT=${ROOT:-/work/main}
OUT=${OUT:-/tmp/devout}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [[ "${INSTALL:-1}" == 1 && -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
if [[ "$PWD" != "$ROOT" ]]; then
  mkdir -p "$(dirname "$ROOT")" && cp -a "$PWD" "$ROOT" || exit 1
fi
SHARED="$(dirname "$ROOT")/shared/data"
mkdir -p "$SHARED" /root/tensorflow_datasets
[[ -e "$SHARED/pneumoniamnist" ]] || cp -a "$ROOT/.devcarry/shared/data/pneumoniamnist" "$SHARED/"
[[ -e /root/tensorflow_datasets/medmnist ]] || cp -a "$ROOT/.devcarry/tfds/medmnist" /root/tensorflow_datasets/
cd "$ROOT" || exit 1
export JAX_PLATFORMS=cpu PYTHONUNBUFFERED=1
W=${STUDY_DIR:-workdirs/fronts/pneumoniamnist}
{ echo "host: $(lscpu | grep 'Model name' | sed 's/.*: *//'), $(nproc) cores"
  $PY -c 'import sys, jax, jaxlib, flax, optax, orbax.checkpoint as o, numpy; print("python", sys.version.split()[0], "jax", jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax", o.__version__, "numpy", numpy.__version__, "backend", jax.default_backend())'
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
NCPU=$(nproc); set -- $SEEDS; PER=$(( NCPU / $# ))
ARGS=(--config configs/pneumoniamnist.py --config.data.data_dir=/root/tensorflow_datasets
      --workdir "$W" --regime frozen --lambdas 0.001,0.003,0.01,0.03,0.1,0.3,1
      --methods joint,gradprom,pcgrad,gp_norm --variant "gradprom_ema:gradprom.gradient_ema=0.9"
      --steps 300 --recognizer_steps 600 --probe_lambda 0.01 --probe_every 3
      --setting "PneumoniaMNIST 28×28, Poisson denoising (20 photons) + classification, frozen recogniser, 300 steps"
      --task_metric balanced_accuracy,auc --probe_batches 8,32,128
      --task_gains balanced_accuracy=0.05,0.1,0.2 --task_gains auc=0.005,0.01,0.02
      --workers "${WORKERS:-$PER}" ${EXTRA_ARGS:-})
# The platform's effect: one seed-0 run again, as the main checkout ran it.
REPLICA=/tmp/replica/gradprom_l0.01_seed_0
REC=$PWD/$W/recognizers/recognizer_only
( XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" taskset -c $(( $(nproc) - 1 )) timeout $((DEADLINE - SECONDS)) $PY -m gradprom_jax.training.main --config=configs/pneumoniamnist.py \
    --config.num_train_steps=300 --config.optim.warmup_steps=15 --config.log_every=10 \
    --config.eval_every=100 --config.checkpoint_every=300 --config.keep_checkpoints=1 \
    "--config.recognizer.init_from=$REC/seed_{seed}" --config.recognizer.frozen=true \
    --config.judge.workdir=$REC/seed_100 --config.data.data_dir=/root/tensorflow_datasets \
    --config.method=gradprom --config.seed=0 --config.task_weight=0.01 --workdir=$REPLICA \
    > "$OUT/replica.log" 2>&1; cp $REPLICA/results.json "$OUT/replica_results.json" ) &
# Each study on its own cores, one core per worker, as on the 2-core main machine (results depend on
# the cores a worker sees, in the last digits).
i=0; GROUPS_TO_STOP=()
for s in $SEEDS; do
  CORES="$((i * PER))-$(( (i + 1) * PER - 1 ))"; i=$((i + 1))
  # Each study in its own process group, so that only its runs are stopped at the deadline.
  setsid taskset -c "$CORES" timeout -s TERM $((DEADLINE - SECONDS)) $PY experiments/study.py "${ARGS[@]}" --seeds "$s" \
      > "$OUT/study_seed_$s.log" 2>&1 &
  GROUPS_TO_STOP+=($!)
done
# Meanwhile on the GPU: every combination method on the default config (embedded data), 3 seeds.
if [[ "${COMPARE:-1}" == 1 ]]; then
  ( env -u JAX_PLATFORMS XLA_PYTHON_CLIENT_PREALLOCATE=false taskset -c ${COMPARE_CORES:-$(( $(nproc) - 3 )),$(( $(nproc) - 2 ))} timeout $((DEADLINE - SECONDS)) \
      $PY experiments/compare.py --config ${COMPARE_CONFIG:-configs/default.py} ${COMPARE_ARGS:-} --workdir /tmp/cmp \
      --methods cagrad,enhance_only,gradprom,gradvac,imtl_g,joint,mgda,pcgrad,random_gate \
      --seeds 0,1,2 --workers "${COMPARE_WORKERS:-2}" > "$OUT/compare.log" 2>&1
    env -u JAX_PLATFORMS $PY experiments/compare.py --config ${COMPARE_CONFIG:-configs/default.py} ${COMPARE_ARGS:-} \
      --workdir /tmp/cmp --norun --methods cagrad,enhance_only,gradprom,gradvac,imtl_g,joint,mgda,pcgrad,random_gate \
      --seeds 0,1,2 >> "$OUT/compare.log" 2>&1
    (cd /tmp && tar czf "$OUT/compare.tgz" --exclude=checkpoints --exclude=run.lock --exclude=jax_cache cmp) ) &
fi
wait
# The runs a stopped study leaves behind (not `pkill -f gradprom_jax.training.main`, which stopped
# every run on the machine when this script was tried beside a running study).
for g in "${GROUPS_TO_STOP[@]}"; do kill -- -"$g" 2>/dev/null; done; sleep 2
# Finished runs only (results.json at the planned step), without checkpoints and lock files.
$PY - "$W" "$SEEDS" > "$OUT/finished.txt" <<'PY'
import json, sys
from pathlib import Path
root, seeds = Path(sys.argv[1]), sys.argv[2].split()
for seed in seeds:
  for run in sorted((root / "frozen").glob(f"*/seed_{seed}")):
    results = run / "results.json"
    if results.exists() and json.loads(results.read_text()).get("num_train_steps") == 300:
      print(run)
PY
tar czf "$OUT/runs.tgz" --exclude=checkpoints --exclude=run.lock -T "$OUT/finished.txt"
echo "finished runs: $(wc -l < "$OUT/finished.txt"); seconds: $SECONDS"
tail -n 3 "$OUT"/study_seed_*.log
