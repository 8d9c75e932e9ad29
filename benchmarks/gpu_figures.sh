#!/usr/bin/env bash
# The GPU checks and figures of benchmarks/README.md in one run (about 5 minutes on one H100), most important
# first: the GPU tests, the update's bf16 utilisation at Qwen3-0.6B's shape (cuDNN, then XLA attention), the
# sampler vs transformers.generate on the GPU (0.6B bf16, then 29M float32).
#
#     bash benchmarks/gpu_figures.sh OUT_DIR     # python3 with jax[cuda], flax, optax, torch, transformers, pytest
#
# Each step has its own time limit, so one that fails or hangs does not take the others with it; everything
# goes to OUT_DIR/log.txt, and each benchmark's JSON line also to OUT_DIR/results.jsonl.
set -u
out=${1:-gpu_out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.7}  # leave torch room (sampling.py)
py=${PYTHON:-python3}
log="$out/log.txt"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/step.txt" 2>&1
  local rc=$?
  cat "$out/step.txt" >> "$log"
  grep '^{"machine"' "$out/step.txt" >> "$out/results.jsonl"
  echo "-- $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
  tail -n 4 "$out/step.txt" | cut -c 1-1500
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
$py -c "import jax, flax, optax, torch, transformers; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, jax.devices())" \
  2>&1 | tee -a "$log"

step gpu_tests 150 env JAX_PLATFORMS=cuda,cpu $py -m pytest -q -rs tests/model/test_gpu.py
# 4 x 2048 tokens: without remat the update's activations take about 33 GB (XLA's memory analysis on the CPU)
upd="benchmarks/update_step.py --sizes 0.6b --dtype bfloat16 --init random --scan-layers --row-len 2048 --peak-n 8192"
step update_0.6b_cudnn 150 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 $py $upd --rows 4 --attention auto --reps 5
# the best of the 2026-12-05 H100 runs: layers unrolled, 8 x 2,048 tokens (23 GB of temporaries there)
step update_0.6b_cudnn_unrolled 150 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 $py benchmarks/update_step.py \
  --sizes 0.6b --dtype bfloat16 --init random --row-len 2048 --peak-n 8192 --rows 8 --reps 5 --torch-peak
step sampling_0.6b_bf16 150 $py benchmarks/sampling.py --size 0.6b --dtype bfloat16 --batch 64 --prompt 128 \
  --new 256 --reps 3
step update_0.6b_xla 120 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 $py $upd --rows 4 --attention xla --reps 5
step update_29m_bf16 80 $py benchmarks/update_step.py --sizes 29m --dtype bfloat16 --rows 8 --row-len 512 \
  --peak-n 8192 --reps 5
step sampling_29m_f32 80 env JAX_DEFAULT_MATMUL_PRECISION=float32 $py benchmarks/sampling.py --size 29m --reps 3
step update_0.6b_cudnn_remat 120 env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 $py $upd --rows 8 --remat --reps 5
rm -f "$out/step.txt"
