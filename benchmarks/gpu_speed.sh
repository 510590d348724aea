#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md: builds the benchmark
# targets against the host's CUDA LibTorch, checks the CUDA forward against
# transformers' logits, then runs the pipeline stages on OPT-125m- and
# LLaMA-7B-shaped models with random weights, the factorized Linear layers and
# whole-model decode/prefill. Logs and JSON lines go to $LOG_DIR (or $OUT).
#
#   bash benchmarks/gpu_speed.sh <gpu-deps folder> [PARTS]     # all parts: ~9 minutes on one H100
#
# PARTS is a comma-separated subset of check,acur,opt,opt_more,llama,linear,forward,kernels
# (default: all but kernels, the per-kernel times from Nsight Compute). Each step has its own time limit, so that a slow one
# leaves the others' results.
set -uo pipefail
deps=${1:?gpu-deps folder (holding install.sh)}
parts=",${2:-check,acur,opt,opt_more,llama,linear,forward},"
want() { [[ $parts == *",$1,"* ]]; }
out=${LOG_DIR:-${OUT:-/tmp/cur4llm-speed}}
mkdir -p "$out"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
  nproc
} 2>&1 | tee "$out/gpu.txt"

# Build only what is measured; without the CUDA kernels if they fail to build.
build=/tmp/cur4llm-speed-build
targets="acur bench_pipeline bench_linear bench_forward test_model test_compress test_sensitivity test_packed_quant"
shared=${CUR4LLM_SHARED_DIR:-$PWD/../shared}
configure() {
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$shared" "$@" >> "$out/build.log" 2>&1
}
if ! { configure && timeout 420 cmake --build "$build" -j16 --target $targets >> "$out/build.log" 2>&1; }; then
  echo "BUILD WITH KERNELS FAILED; retrying with -DCUR4LLM_CUDA_KERNELS=OFF" | tee -a "$out/gpu.txt"
  grep -E "error" -A3 "$out/build.log" | head -40
  build=/tmp/cur4llm-speed-build-nokernels
  configure -DCUR4LLM_CUDA_KERNELS=OFF
  timeout 300 cmake --build "$build" -j16 --target $targets -- -k 0 >> "$out/build.log" 2>&1
fi
grep -E "cur4llm CUDA kernels" "$out/build.log" | tail -1 | tee -a "$out/gpu.txt"
bin=$build/benchmarks
opt=benchmarks/configs/opt-125m.json
llama=benchmarks/configs/llama-7b.json

# The CUDA forward (fused kernels included) against transformers' logits on the fixtures.
# The factorized layers' padded storage and one-launch decode, and the fast sweep on CUDA against
# one sample at a time.
if want check; then
  for t in test_model test_compress test_sensitivity test_packed_quant; do
    echo "== $t [cuda]" >> "$out/tests.log"
    timeout 120 "$build/tests/$t" "[cuda]" >> "$out/tests.log" 2>&1
    echo "$t rc=$?" | tee -a "$out/tests.log"
  done
  grep -E "passed|failed|FAILED" "$out/tests.log" | head -20
fi

# The whole pipeline on a real model (stories260K, TinyStories) on CUDA: the
# perplexities to compare with the CPU's (docs/results.md).
if want acur; then
  data=$shared/data/text/tinystories
  for m in skeleton_swap svd; do
    timeout 90 "$build/apps/acur" --model_id "$shared/data/models/stories260K-hf" --act_aware --alpha 0.5 \
      --param_ratio_target 0.9 --method $m --calib_dataset $data/tinystories_calib.txt \
      --eval_ppl $data/tinystories_eval.txt --seqlen 512 --n_calib_samples 32 --seed 233 --device cuda \
      --dtype fp32 --batch_size 32 --output /tmp/cur4llm-acur > "$out/acur_$m.log" 2>&1
    echo "acur $m rc=$? $(grep -E 'tinystories_eval.txt [0-9]' "$out/acur_$m.log" | tail -1)" | tee -a "$out/tests.log"
  done
fi

run() {  # run <seconds> <output file> <command...>
  local limit=$1 file=$2
  shift 2
  echo "+ $*" >> "$out/commands.txt"
  timeout "$limit" "$@" 2>> "$out/stderr.log" | tee -a "$out/$file"
}

# OPT-125m shape, the reference's sweep: 73 Linear x 6 candidates x 16 samples x 2048 tokens.
if want opt; then
  run 150 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype bf16 --samples 16 --seqlen 2048 \
    --method cur --reference_s 51.5 --micro ce,layer,linalg
  run 150 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype bf16 --samples 16 --seqlen 2048 \
    --method cur --reference_s 51.5 --stages statistics,sensitivity --profile 0
fi

# LLaMA-7B shape, 32 samples x 2048 tokens: two decoder layers at different
# depths and lm_head (the whole sweep exceeds one command's 10 minutes; the
# per-layer profile gives the scaling, see docs/performance.md).
if want llama; then
  run 240 pipeline.jsonl "$bin/bench_pipeline" --config $llama --device cuda --dtype bf16 --samples 32 --seqlen 2048 \
    --method cur --layers L16,L31,head --profile 1 --eval_windows 32 --micro layer,ce,linalg
fi

# Factorized Linear layers against dense, decode (1 token) and prefill (2048 tokens).
if want linear; then
  run 90 linear.jsonl "$bin/bench_linear" --device cuda --dtype bf16
fi

# Whole models, batch 1: one token (decode-like, no KV cache) and 2048 tokens (prefill).
if want forward; then
  for config in $opt $llama; do
    run 150 forward.jsonl "$bin/bench_forward" --config $config --device cuda --dtype bf16 --batch 1 --seqlen 1,2048 \
      --iters 20 --graph 1 --factorize dense,cur:0.6,cur_folded:0.6,svd:0.6,cur:0.8,svd:0.8
  done
fi
if want opt_more; then
  run 60 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype fp16 --samples 16 --seqlen 2048 \
    --method cur --stages sensitivity --profile 0 --reference_s 51.5
  run 60 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype bf16 --samples 16 --seqlen 2048 \
    --method svd --stages sensitivity --profile 0 --reference_s 51.5
  # The sweep with cur4llm's CUDA kernels off, for their share of the speed-up.
  run 60 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype bf16 --samples 16 --seqlen 2048 \
    --method cur --stages sensitivity --profile 0 --fused 0 --reference_s 51.5
  # Attention through the flash kernel instead of cuDNN's (which cur4llm takes on Hopper).
  run 60 pipeline.jsonl "$bin/bench_pipeline" --config $opt --device cuda --dtype bf16 --samples 16 --seqlen 2048 \
    --method cur --stages sensitivity --profile 0 --sdpa flash --reference_s 51.5
fi
# Time per kernel of one forward (Nsight Compute, clocks not locked): OPT-125m shape on 16 x 2048
# tokens, and about one decoder layer of the LLaMA-7B shape on 32 x 2048 (after its random init).
if want kernels; then
  ncu_time="ncu --clock-control none --metrics gpu__time_duration.sum --csv --print-units base"
  timeout 150 $ncu_time --launch-count 260 "$bin/bench_forward" --config $opt --device cuda --dtype bf16 \
    --batch 16 --seqlen 2048 --warmup 0 --iters 1 > "$out/ncu_opt.csv" 2>> "$out/stderr.log"
  timeout 200 $ncu_time -k "regex:nvjet|cudnn|rms|rotary|silu|Functor_add|gemm|token_nll|embedding|index|elementwise" \
    --launch-skip 320 --launch-count 40 "$bin/bench_forward" --config $llama --device cuda --dtype bf16 \
    --batch 32 --seqlen 2048 --warmup 0 --iters 1 > "$out/ncu_llama.csv" 2>> "$out/stderr.log"
fi
echo "done"
