#!/usr/bin/env bash
# One GPU-host run for the data-aware method results (docs/results.md): builds acur
# and bench_skeleton against the host's CUDA LibTorch, runs the stories260K
# table (benchmarks/results_skeleton.sh), the skeleton forward benchmark,
# trains the small OPT (benchmarks/train_opt_tinystories.py) and runs its
# table. Everything that comes back is written to <out> (at most 8 files).
#
#   bash benchmarks/gpu_skeleton.sh <gpu-deps folder> <shared folder> <out folder> ["stories fine opt bench"]
#
# An existing <out>/../opt-model.tar (a model trained by an earlier call) is
# reused instead of training again when OPT_MODEL_TAR points at it.
set -uo pipefail
deps=${1:?gpu-deps folder}
shared=$(realpath "${2:?shared folder}")
out=${3:?output folder}
parts=${4:-stories bench opt}
mkdir -p "$out"
summary="$out/summary.txt"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)'
} 2>&1 | tee "$summary"

build=/tmp/cur4llm-build
t0=$(date +%s)
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$shared" > /tmp/configure.log 2>&1 ||
  { tail -30 /tmp/configure.log | tee -a "$summary"; exit 1; }
targets="acur bench_skeleton"
[[ " $parts " == *" tests "* ]] && targets="$targets test_skeleton test_search_lagrangian"
cmake --build $build -j16 --target $targets > /tmp/build.log 2>&1 ||
  { grep -E "error" -A5 /tmp/build.log | head -60 | tee -a "$summary"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s" | tee -a "$summary"
export ACUR=$build/apps/acur SHARED=$shared DEVICE=cuda JOBS=${JOBS:-8} OUT_DIR=/tmp/res

if [[ " $parts " == *" tests "* ]]; then
  for t in test_skeleton test_search_lagrangian; do
    $build/tests/$t 2>&1 | tail -2 | tr '\n' ' ' | sed "s/^/$t (LibTorch 2.x, CPU): /" | tee -a "$summary"; echo | tee -a "$summary"
  done
fi

if [[ " $parts " == *" stories "* ]]; then
  t0=$(date +%s)
  DEADLINE=$(( $(date +%s) + ${STORIES_S:-260} )) timeout $(( ${STORIES_S:-260} + 60 )) bash benchmarks/results_skeleton.sh "$shared/data/models/stories260K-hf" stories260k 2>&1 | tail -3 | tee -a "$summary"
  cp /tmp/res/stories260k-results.jsonl "$out/" 2>/dev/null || cat /tmp/res/stories260k/*/results.jsonl > "$out/stories260k-results.jsonl"
  echo "stories260k table: $(( $(date +%s) - t0 )) s, $(wc -l < "$out/stories260k-results.jsonl") records" | tee -a "$summary"
fi

if [[ " $parts " == *" fine "* ]]; then
  # Finer candidate ratios (0.4, 0.45, ..., 0.95): the Lagrangian search with two seeds for the best CUR and
  # whitened SVD, then results_skeleton.sh's default wave 2 with these candidates.
  t0=$(date +%s)
  CANDIDATES=0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95 WAVE1="skeleton_swap 233 lagrangian 1
svd_whiten 233 lagrangian 1
skeleton_swap 1 lagrangian 1
svd_whiten 1 lagrangian 1" DEADLINE=$(( $(date +%s) + ${FINE_S:-150} )) timeout $(( ${FINE_S:-150} + 60 )) \
    bash benchmarks/results_skeleton.sh "$shared/data/models/stories260K-hf" stories260k-fine 2>&1 | tail -3 | tee -a "$summary"
  cat /tmp/res/stories260k-fine/*/results.jsonl > "$out/stories260k-fine-results.jsonl" 2>/dev/null
  echo "stories260k fine table: $(( $(date +%s) - t0 )) s" | tee -a "$summary"
fi

if [[ " $parts " == *" opt "* ]]; then
  t0=$(date +%s)
  model=/tmp/opt-tinystories
  if [ -n "${OPT_MODEL_TAR:-}" ] && [ -f "$OPT_MODEL_TAR" ]; then
    mkdir -p $model && tar -xf "$OPT_MODEL_TAR" -C $model
  else
    timeout 240 python3 benchmarks/train_opt_tinystories.py --shared "$shared" --out $model --max_minutes "${TRAIN_MIN:-2.5}" \
      > /tmp/opt_train.log 2>&1 || tail -20 /tmp/opt_train.log | tee -a "$summary"
    tar -cf "$out/opt-model.tar" -C $model . 2>/dev/null
  fi
  cp $model/train_report.json "$out/opt_train.json" 2>/dev/null
  echo "opt model ready: $(( $(date +%s) - t0 )) s" | tee -a "$summary"
  WAVE1="svd 233 reference 0
cur 233 reference 0
svd_whiten 233 reference 0
skeleton_diag 233 reference 0
skeleton_row 233 reference 0
skeleton_col 233 reference 0
skeleton 233 reference 0
skeleton_swap 233 reference 0
cur_deim 233 reference 0" WAVE2="skeleton_swap 233 lagrangian 1
svd_whiten 233 lagrangian 1
svd_whiten 233 lagrangian 0
skeleton_swap 233 reference 1
svd_whiten 233 reference 1" DEADLINE=$(( $(date +%s) + ${OPT_S:-200} )) timeout $(( ${OPT_S:-200} + 60 )) bash benchmarks/results_skeleton.sh $model opt-tinystories 2>&1 | tail -3 | tee -a "$summary"
  cat /tmp/res/opt-tinystories/*/results.jsonl > "$out/opt-tinystories-results.jsonl" 2>/dev/null
  echo "opt table: $(( $(date +%s) - t0 )) s, $(wc -l < "$out/opt-tinystories-results.jsonl") records" | tee -a "$summary"
fi
if [[ " $parts " == *" bench "* ]]; then
  for align in ${BENCH_ALIGN:-1}; do
    timeout 60 $build/benchmarks/bench_skeleton --device cuda --dtype bf16 --tokens 2048 --iters 50 --align "$align" >> "$out/bench_skeleton.jsonl" 2>&1
    timeout 30 $build/benchmarks/bench_skeleton --device cuda --dtype bf16 --tokens 16 --iters 200 --align "$align" >> "$out/bench_skeleton.jsonl" 2>&1
  done
fi

cat /tmp/res/*/failures.txt >> "$summary" 2>/dev/null
tar -czf "$out/logs.tar.gz" -C /tmp/res --exclude='cache-*' --exclude='*.json' . /tmp/build.log /tmp/opt_train.log 2>/dev/null
ls -la "$out" | tee -a "$summary"
