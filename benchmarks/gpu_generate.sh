#!/usr/bin/env bash
# Generation on the GPU host: the CUDA tests of generation and packed layers,
# greedy references from transformers' generate() (scripts/generate_reference.py),
# and decoding throughput (bench_decode, batch 1 and 16, prompt 512, 256 new
# tokens, CUDA graphs) on the LLaMA-7B and OPT-1.3B shapes: dense, factorized,
# module-narrowed and packed, with transformers' generate() on the same card
# (benchmarks/hf_decode.py). Logs and JSON lines go to $OUT:
#   bash benchmarks/gpu_generate.sh <deps-folder> <shared-folder> [parts]
# parts (default "tests refs llama prefill hf opt"; "shapes" narrowed shapes at a long prompt;
# "kernels" measures the switchable
# decoding kernels (util::Kernel), all off against the defaults; "profile" adds per-kernel
# times of one decoding step through Nsight Compute, last; "trace" the kernels
# of 16 decoding steps of the whole LLaMA-7B shape through PyTorch's profiler,
# for each of $TRACE_SPECS, summed by benchmarks/trace_summary.py); $EXTRA_TARGETS are
# built too; the build is incremental,
# so a second call on the same machine skips it. The whole run ends by $BUDGET
# seconds (default 580): each step gets at most what is left.
set -uo pipefail
deps=${1:?gpu-deps folder}
shared=${2:?shared folder}
parts=" ${3:-tests refs llama prefill hf opt} "
out=${LOG_DIR:-${OUT:-/tmp/cur4llm-out}}
mkdir -p "$out"
# A device call returns at most 8 files from $out: every log goes to log.txt, the
# references into one refs.tar.gz, the raw profiles stay in $work.
work=/tmp/cur4llm-gen
rm -rf "$work"; mkdir -p "$work"
log="$out/log.txt"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' | tee -a "$log"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$log"; }
budget=${BUDGET:-580}
left() { local l=$(( budget - $(date +%s) + t0 )); (( l > ${1:-999999} )) && l=$1; (( l > 3 )) && echo $l || echo 3; }

if [[ $parts == *" refs "* ]]; then  # CPU, float32: runs beside the build
  python3 scripts/generate_reference.py --models tests/data/models --extra "$shared/data/models/stories260K-hf" \
    --out "$work/refs/generate_reference" > "$work/generate_reference.log" 2>&1 &
  refs_pid=$!
  # And the tokenizers' reference ids (tests/data/tokenizer_reference), one tarball.
  ( python3 scripts/tokenizer_reference.py --tarball "$shared/data/tokenizers-real.tar.xz" \
      --wikitext "$shared/data/text/wikitext-2-raw/wiki.test.raw" --out "$work/refs/tokenizer_reference" ) \
    > "$work/tokenizer_reference.log" 2>&1 &
  tok_pid=$!
fi
build=/tmp/cur4llm-build
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$(realpath "$shared")" \
  > "$work/configure.log" 2>&1 || { tail -40 "$work/configure.log" | tee -a "$log"; exit 1; }
cmake --build $build -j16 --target test_generate test_packed_quant test_model test_placement generate bench_decode bench_linear \
  ${EXTRA_TARGETS:-} > "$work/build.log" 2>&1 ||
  { grep -E "error|Error" -A5 "$work/build.log" | head -60 | tee -a "$log"; exit 1; }
stamp "built"

if [[ $parts == *" tests "* ]]; then
  for t in test_packed_quant test_generate test_model test_placement; do
    timeout "$(left 120)" $build/tests/$t "[cuda]" -r compact 2>&1 | tail -4 | tee -a "$log"
  done
  stamp "cuda tests"
fi
if [[ -n ${refs_pid:-} ]]; then
  timeout "$(left 60)" tail --pid=$refs_pid -f /dev/null; kill $refs_pid 2>/dev/null
  timeout "$(left 60)" tail --pid=$tok_pid -f /dev/null; kill $tok_pid 2>/dev/null
  tail -3 "$work/generate_reference.log" "$work/tokenizer_reference.log" | tee -a "$log"
  tar -czf "$out/refs.tar.gz" -C "$work" refs
  mkdir -p tests/data/generate_reference && cp "$work"/refs/generate_reference/*.json tests/data/generate_reference/
  $build/tests/test_generate -r compact 2>&1 | tail -6 | tee -a "$log"
  stamp "references"
fi

bench=$build/benchmarks/bench_decode
run() { timeout "$(left "$1")" "${@:2}" 2>&1 | tee -a "$out/bench_decode.jsonl"; }
# One process per configuration: one that fails leaves the others measured.
each() {
  local limit=$1 specs=$2
  shift 2
  for spec in ${specs//,/ }; do run "$limit" $bench "$@" --factorize "$spec"; done
}
if [[ $parts == *" llama "* ]]; then
  each 45 ${LLAMA_SPECS:-dense,packed:rtn_int4,narrow:0.6,svd:0.6,packed:rtn_int8,narrow:0.6+packed:rtn_int4,svd:0.6+packed:rtn_int4,narrow:0.8,svd:0.8,cur:0.6,cur_folded:0.6,cur:0.8} \
    --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1,16 --prompt_len 512 \
    --new_tokens 256 --graph 1
  # Where a decoding step's time goes: each LLaMA-7B Linear shape alone, 1 token, graph-replayed.
  timeout "$(left 60)" $build/benchmarks/bench_linear --device cuda --dtype bf16 --shapes 4096x4096,4096x11008,11008x4096 \
    --ratios 0.8,0.6 --tokens 1 --packed rtn_int8,rtn_int4 --decode_iters 300 2>&1 | tee -a "$out/bench_linear.jsonl"
  stamp "llama"
fi
if [[ $parts == *" hf "* ]]; then
  timeout "$(left 100)" python3 benchmarks/hf_decode.py --config benchmarks/configs/llama-7b.json --dtype bf16 --batch 1,16 \
    --prompt_len 512 --new_tokens 256 --cache dynamic,static 2>&1 | grep -v Warning | tee -a "$out/hf_decode.jsonl"
  stamp "hf"
fi
shapes=" ${PREFILL_SHAPES:-llama-7b opt-125m} "  # which shapes the prefill part runs ($PREFILL_SPECS: which models)
if [[ $parts == *" prefill "* && $shapes == *" llama-7b "* ]]; then
  each 40 ${PREFILL_SPECS:-dense,narrow:0.8,narrow:0.7,svd:0.8} --config benchmarks/configs/llama-7b.json --device cuda \
    --dtype bf16 --batch 1 --prompt_len 2048 --new_tokens 64 --graph 1 --iters "${PREFILL_ITERS:-3}" ${PREFILL_ARGS:-}
fi
if [[ $parts == *" prefill "* && $shapes == *" opt-125m "* ]]; then
  # OPT-125m has 2048 learned positions: the prompt leaves room for the new tokens.
  each 30 ${PREFILL_SPECS:-dense,narrow:0.8,narrow:0.7,svd:0.8} --config benchmarks/configs/opt-125m.json --device cuda --dtype bf16 \
    --batch 1,16 --prompt_len 1984 --new_tokens 64 --graph 1 --iters "${PREFILL_ITERS:-3}" ${PREFILL_ARGS:-}
  stamp "prefill"
fi
if [[ $parts == *" opt "* ]]; then
  each 40 dense,narrow:0.8,narrow:0.6,svd:0.8,svd:0.6,cur:0.6,packed:rtn_int8,packed:rtn_int4 \
    --config benchmarks/configs/opt-1.3b.json --device cuda --dtype fp16 --batch 1,16 --prompt_len 512 \
    --new_tokens 256 --graph 1
  # Its 2,048-row layers on cuBLAS instead of the tensor-core kernel (on by default, measured on
  # LLaMA-7B's 4,096 rows and more).
  run 40 $bench --config benchmarks/configs/opt-1.3b.json --device cuda --dtype fp16 --batch 1 --prompt_len 512 \
    --new_tokens 256 --graph 1 --factorize dense --dense_mma 0
  stamp "opt"
fi
if [[ $parts == *" kernels "* ]]; then
  # The switchable decoding kernels (util::Kernel), one process each: the packed int4 products
  # of one token alone, then whole LLaMA-7B steps with every switch off and with the defaults
  # (dense layers on the tensor-core kernel, the input norms inside the products, 16-byte
  # decoding attention, packed prefill weights rebuilt in one launch) at prompts of 512 and 2048.
  timeout "$(left 40)" $build/benchmarks/bench_linear --device cuda --dtype bf16 \
    --shapes 4096x4096,4096x11008,11008x4096,4096x12288,4096x22016 --tokens 1 --ratios "" --packed rtn_int4 \
    --decode_iters 300 2>&1 | tee -a "$out/bench_linear.jsonl"
  off="--dense_mma 0 --norm_in_product 0 --decode_vector 0 --packed_prefill 0"
  for spec in dense packed:rtn_int4; do
    for flags in "$off" ""; do
      run 45 $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1 --prompt_len 512 \
        --new_tokens 128 --graph 1 --factorize $spec $flags
    done
  done
  for spec in ${KERNEL_SPECS:-dense narrow:0.8 narrow:0.7}; do
    for flags in "$off" ""; do
      run 50 $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1 --prompt_len 2048 \
        --new_tokens 64 --graph 1 --narrow_align 128 --factorize $spec $flags
    done
  done
  python3 benchmarks/kernels_summary.py "$out/bench_linear.jsonl" "$out/bench_decode.jsonl" | tee -a "$log"
  stamp "kernels"
fi
if [[ $parts == *" int4 "* ]]; then
  # The int4 kernel: its tensor-core test, one-token products of the LLaMA-7B shapes, then
  # whole steps at a 512-token prompt, dense bf16 and int4, in one process.
  timeout "$(left 30)" $build/tests/test_packed_quant "CUDA: int4 on the tensor cores*" -r compact 2>&1 | tail -1 |
    sed "s/^/int4 kernel: /" | tee -a "$log"
  timeout "$(left 30)" $build/benchmarks/bench_linear --device cuda --dtype bf16 \
    --shapes 4096x4096,4096x11008,11008x4096,4096x12288,4096x22016 --tokens 1 --ratios "" --packed rtn_int4 \
    --decode_iters 300 2>&1 | sed 's/^{/{"int4_shape": "16,1,1", /' | tee -a "$out/bench_linear.jsonl"
  timeout "$(left 60)" $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1 \
    --prompt_len 512 --new_tokens 128 --graph 1 --factorize dense,packed:rtn_int4 2>&1 |
    sed 's/^{/{"int4_shape": "16,1,1", /' | tee -a "$out/bench_decode.jsonl"
  python3 benchmarks/shapes_summary.py "$out/bench_linear.jsonl" "$out/bench_decode.jsonl" | tee -a "$log"
  stamp "int4"
fi
if [[ $parts == *" shapes "* ]]; then
  # Shapes of about the same Linear weights at a 2,048-token prompt, default kernels: uniform
  # narrowing, heads of a given width (narrow:R@H) and MLPs alone; each also with the prompt's
  # attention left to ATen's choice ($SHAPE_FLAGS, default --cudnn_attention 0).
  for spec in ${SHAPE_SPECS:-dense narrow:0.8 narrow:0.8@96 narrow_mlp:0.8 narrow:0.7 narrow:0.7@96 narrow:0.7@64 narrow_mlp:0.7}; do
    for flags in "" "${SHAPE_FLAGS:---cudnn_attention 0}"; do
      run 40 $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1 --prompt_len 2048 \
        --new_tokens 64 --graph 1 --iters 3 --narrow_align 128 --factorize $spec $flags
    done
  done
  python3 benchmarks/shapes_summary.py "$out/bench_linear.jsonl" "$out/bench_decode.jsonl" | tee -a "$log"
  stamp "shapes"
fi
if [[ $parts == *" trace "* ]]; then
  # $TRACE_PROMPT (default 512) tokens, then 16 traced steps; both phases summed.
  for spec in ${TRACE_SPECS:-dense narrow:0.8 packed:rtn_int4}; do
    run 45 $bench --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --batch 1 \
      --prompt_len "${TRACE_PROMPT:-512}" --new_tokens 17 --factorize "$spec" --trace "$work/trace" ${TRACE_ARGS:-}
    f="$work/trace.${spec//[:+@]/_}.b1.json"
    for phase in decode.prefill decode.step; do
      [[ -f $f ]] && python3 benchmarks/trace_summary.py "$f" --phase $phase --top 40 \
        --label "llama-7b bf16 b1 p${TRACE_PROMPT:-512} $spec $phase" | tee -a "$out/trace_summary.jsonl"
    done
  done
  stamp "trace"
fi
if [[ $parts == *" profile "* ]]; then
  # ncu runs each kernel of the 3 "decode_step" ranges alone (--new_tokens 2: 2 warm-up steps, 1 timed),
  # on a 2-layer copy of the LLaMA-7B shape: every layer runs the same kernels, and ncu's replay of
  # each kernel is slow. A layer's time is (step - lm_head and final norm) / 2.
  python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c["num_hidden_layers"]=2; json.dump(c, open(sys.argv[2], "w"))' \
    benchmarks/configs/llama-7b.json "$work/llama-7b-2layers.json"
  # The same 2 layers timed as a CUDA graph: kernel sums against the step's wall time show the gaps.
  # $PROFILE_RUNS: BATCH/SPEC words.
  runs=${PROFILE_RUNS:-1/dense 1/packed:rtn_int4 1/narrow:0.6 1/svd:0.6}
  for r in $runs; do
    run 30 $bench --config "$work/llama-7b-2layers.json" --device cuda --dtype bf16 --batch "${r%%/*}" \
      --prompt_len 512 --new_tokens 256 --graph 1 --factorize "${r#*/}"
  done
  for r in $runs; do
    b=${r%%/*} spec=${r#*/}
    f="$work/ncu_b${b}_${spec//[:+]/_}"
    timeout "$(left 90)" ncu --clock-control none --cache-control none --nvtx --nvtx-include "decode_step/" \
      --metrics gpu__time_duration.sum --print-units base --csv \
      $bench --config "$work/llama-7b-2layers.json" --device cuda --dtype bf16 --batch "$b" \
      --prompt_len 512 --new_tokens 2 --factorize "$spec" > "$f.csv" 2> "$f.log"
    tail -2 "$f.log" >> "$log"
    python3 benchmarks/kernel_times.py "$f.csv" --steps 3 --top 40 \
      --label "llama-7b (2 layers) bf16 b$b $spec" | tee -a "$out/kernel_times.jsonl"
  done
  stamp "profile"
fi
