#!/usr/bin/env bash
# The prepared GPU check: install the pinned stack with TensorFlow's CUDA libraries,
# run the precision and XLA tests on the GPU, then the accelerator benchmark. Meant for a short
# lease of one GPU: under 8 minutes on one H100 with a warm package cache.
#
#   OUT=/tmp/gpu_check bash tools/gpu_check.sh        # from the repository root
#
# Needs: an NVIDIA driver (nvidia-smi), Python 3.11 (TensorFlow 2.15 publishes wheels for
# Python 3.9-3.11 only; set PYTHON=/path/to/python3.11), and a package registry (pip). Writes
# to $OUT: environment.txt, nvidia-smi.txt, tests.log and benchmark.jsonl (one JSON object per
# line: see tools/benchmarks/precision.py). Exit status: 0 all ran; 2 this machine cannot run
# it (the reason is in environment.txt); 3 the install failed; 1 a test or the benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VENV:-.venv-gpu}
mkdir -p "$OUT"
ENV_FILE="$OUT/environment.txt"
: > "$ENV_FILE"
say() { echo "gpu_check: $*" | tee -a "$ENV_FILE"; }

if ! nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1; then
  say "nvidia-smi failed: no NVIDIA driver or GPU here."
  exit 2
fi
say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
say "Python: $PYTHON ($version)"
case "$version" in
  3.9|3.10|3.11) ;;
  *) say "TensorFlow 2.15 (our pin) has no wheel for Python $version: give PYTHON=python3.11."
     exit 2 ;;
esac

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then "$PYTHON" -m venv "$VENV" || exit 3; fi
if ! "$VENV/bin/python" -m pip install --quiet -r requirements.txt \
    "tensorflow[and-cuda]==2.15.1" pytest >> "$OUT/install.log" 2>&1 ||
   ! "$VENV/bin/python" -m pip install --quiet --no-deps -e . >> "$OUT/install.log" 2>&1; then
  say "pip install failed (no package registry?): see install.log."
  exit 3
fi
say "installed in $(( $(date +%s) - start )) s"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONWARNINGS=ignore::FutureWarning
gpus=$("$VENV/bin/python" -c \
  'import tensorflow as tf; print(len(tf.config.list_physical_devices("GPU")))' 2>>"$ENV_FILE")
say "TensorFlow sees ${gpus:-0} GPU(s)"
if [ "${gpus:-0}" -lt 1 ]; then
  say "TensorFlow sees no GPU: check the driver against CUDA 12.2 (TF 2.15's libraries)."
  exit 2
fi

status=0
# The tests that touch precision and XLA, now on the GPU (float16 and XLA on real kernels).
timeout 240 "$VENV/bin/python" -m pytest -q tests/test_precision.py > "$OUT/tests.log" 2>&1 ||
  status=1
tail -n 3 "$OUT/tests.log" | tee -a "$ENV_FILE"
# The trunk in every mode, then each task's step (bf16 + XLA, the production setting) beside
# its input pipeline on every core.
timeout 150 "$VENV/bin/python" tools/benchmark.py --device=gpu --precision_tasks= \
  --steps=10 --rounds=3 --output="$OUT/benchmark.jsonl" || status=1
timeout 200 "$VENV/bin/python" tools/benchmark.py --device=gpu --modes=mixed_bfloat16+xla \
  --steps=10 --rounds=1 --input_seconds=5 --output="$OUT/benchmark.jsonl" || status=1
say "finished in $(( $(date +%s) - start )) s, status $status"
exit $status
