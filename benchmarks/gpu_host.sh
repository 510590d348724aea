#!/usr/bin/env bash
# Builds cur4llm against the host's CUDA LibTorch and runs the test suite, the
# CUDA tests and the forward benchmarks, writing logs and JSON to $OUT.
# Used through the device tool on the GPU host (see docs/performance.md):
#   bash benchmarks/gpu_host.sh <deps-folder> <shared-folder>
# where <deps-folder> holds ../shared/gpu-deps and <shared-folder> holds data/.
set -uo pipefail
deps=${1:?gpu-deps folder}
shared=${2:?shared folder}
out=${LOG_DIR:-/tmp/cur4llm-out}
mkdir -p "$out"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"

build=/tmp/cur4llm-build
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$(realpath "$shared")" \
  > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build $build -j16 > "$out/build.log" 2>&1 || { grep -E "error|Error" -A5 "$out/build.log" | head -60; exit 1; }
echo "built"

ctest --test-dir $build --output-on-failure -j8 > "$out/ctest.log" 2>&1
echo "ctest rc=$?"; tail -15 "$out/ctest.log"
$build/tests/test_model "[cuda]" -s -r compact 2>&1 | tail -5 | tee "$out/cuda_tests.log"

bench=$build/benchmarks/bench_forward
stories="$shared/data/models/stories260K-hf"
{
  $bench --model "$stories" --device cuda --dtype bf16 --batch 16 --seqlen 512 --iters 20
  $bench --model "$stories" --device cuda --dtype fp32 --batch 16 --seqlen 512 --iters 20
  $bench --config benchmarks/configs/opt-125m.json --device cuda --dtype bf16 --batch 1 --seqlen 2048 --iters 20
  $bench --config benchmarks/configs/opt-125m.json --device cuda --dtype bf16 --batch 16 --seqlen 2048 --iters 10
  $bench --config benchmarks/configs/opt-125m.json --device cuda --dtype fp16 --batch 16 --seqlen 2048 --iters 10
} 2>&1 | tee "$out/bench_forward.jsonl"

# Perplexity through the app on the GPU, against transformers' 5.67 (fp32 CPU).
for dtype in fp32 bf16; do
  $build/apps/acur --model_id "$stories" --raw_model --device cuda --dtype $dtype --seqlen 512 --batch_size 32 \
    --eval_ppl "$shared/data/text/tinystories/tinystories_eval.txt,wikitext2" --data_dir "$shared/data/text" \
    --results_file "$out/acur_results.jsonl" 2>&1 | grep -v "windows/s" | tee -a "$out/acur.log"
done
