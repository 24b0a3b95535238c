#!/usr/bin/env bash
# The accelerator suite and the step's profile on one GPU, in one go, in about 8 minutes:
#   python -m barlow_jax.benchmark suite  (ResNet-50 + 8192-8192-8192, bf16, 224 px, device batch
#   256: the JAX step with MFU from the analytic FLOP count, the PyTorch peers, the on-device
#   augmentations' share, the profile by op class, the loss; torch.compile if the budget allows)
# Results: $OUT (when set) and experiments/results/accelerator/ (suite.{json,md,log},
# profile/profile.{json,md}; the raw trace stays in $OUT/profile/trace only).
#
# Run from the repository root on the GPU machine:
#   bash experiments/gpu_check.sh            # or: BUDGET=300 bash experiments/gpu_check.sh
#   TINY=1 BUDGET=900 bash experiments/gpu_check.sh   # tiny shapes: a CPU check of the script
# On the lent machine only $OUT comes back: copy $OUT/suite.* and $OUT/profile/profile.* into
# experiments/results/accelerator/ of the checkout afterwards.
#
# The GPU image has jax, flax, optax, orbax and torch but no TensorFlow, TFDS, clu or
# ml_collections. The suite's code paths import none of the first three
# (tests/test_benchmark_step.py runs them with those blocked); they do import ml_collections
# (the config), a pure-Python package. Carry it from a machine that has it, before the run:
#   mkdir -p .carry/site && cp -r "$(python -c 'import ml_collections, os;
#     print(os.path.dirname(ml_collections.__file__))')" .carry/site/
# .carry/ is not ignored by git, so it travels with the working tree (or name it in `carry`);
# this script puts .carry/site on PYTHONPATH when it exists. (PyYAML, which ml_collections
# imports, comes with flax.)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
if [ -d "$ROOT/.carry/site" ]; then
  export PYTHONPATH="$ROOT/.carry/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
RESULTS="$ROOT/experiments/results/accelerator"
BUDGET="${BUDGET:-420}"  # Seconds for all the suite's parts; start-up and copies come on top.
mkdir -p "$OUT_DIR" "$RESULTS"

echo "=== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python - <<'PY' || { echo "missing packages: see the top of this script"; exit 3; }
import importlib
for name in ("jax", "flax", "optax", "orbax.checkpoint", "torch", "ml_collections"):
  module = importlib.import_module(name)
  print(name, getattr(module, "__version__", ""))
import jax
print("devices:", jax.devices())
PY

echo "=== suite (budget ${BUDGET} s)"
timeout $((BUDGET + 60)) python -m barlow_jax.benchmark suite --out_dir="$OUT_DIR" \
  --budget="$BUDGET" ${TINY:+--tiny}
status=$?

echo "=== copying the results into $RESULTS"
cp -f "$OUT_DIR"/suite.json "$OUT_DIR"/suite.md "$OUT_DIR"/suite.log "$RESULTS"/ 2>/dev/null
if [ -f "$OUT_DIR/profile/profile.json" ]; then
  mkdir -p "$RESULTS/profile"
  cp -f "$OUT_DIR"/profile/profile.json "$OUT_DIR"/profile/profile.md "$RESULTS/profile/"
fi
cat "$OUT_DIR/suite.md" 2>/dev/null
exit $status
