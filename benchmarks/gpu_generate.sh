#!/usr/bin/env bash
# Generation on the GPU host: greedy references from transformers' generate()
# (scripts/generate_reference.py), test_generate with them (its CUDA test
# included), and decoding throughput (bench_decode) on the LLaMA-7B and
# OPT-1.3B shapes, batch 1 and 16, prompt 512, 256 new tokens, dense and
# factorized. Logs, the reference JSON files and JSON lines go to $OUT:
#   bash benchmarks/gpu_generate.sh <deps-folder> <shared-folder>
# where <deps-folder> holds ../shared/gpu-deps and <shared-folder> holds data/.
set -uo pipefail
deps=${1:?gpu-deps folder}
shared=${2:?shared folder}
out=${LOG_DIR:-${OUT:-/tmp/cur4llm-out}}
mkdir -p "$out"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$out/gpu.txt"

build=/tmp/cur4llm-build
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$(realpath "$shared")" \
  > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build $build -j16 --target test_generate generate bench_decode > "$out/build.log" 2>&1 ||
  { grep -E "error|Error" -A5 "$out/build.log" | head -60; exit 1; }
echo "built"

# References (CPU, float32), then the test that compares with them.
python3 scripts/generate_reference.py --models tests/data/models --extra "$shared/data/models/stories260K-hf" \
  --out "$out/generate_reference" 2>&1 | tee "$out/generate_reference.log"
mkdir -p tests/data/generate_reference && cp "$out"/generate_reference/*.json tests/data/generate_reference/
$build/tests/test_generate -r compact 2>&1 | tail -20 | tee "$out/test_generate.log"

bench=$build/benchmarks/bench_decode
{
  timeout 300 $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1,16 \
    --prompt_len 512 --new_tokens 256 --factorize dense,svd:0.6,cur:0.6,packed:rtn_int8,packed:rtn_int4 --graph 1
  timeout 300 $bench --config benchmarks/configs/opt-1.3b.json --device cuda --dtype fp16 --batch 1,16 \
    --prompt_len 512 --new_tokens 256 --factorize dense,svd:0.6,cur:0.6,packed:rtn_int8,packed:rtn_int4 --graph 1
} 2>&1 | tee "$out/bench_decode.jsonl"
