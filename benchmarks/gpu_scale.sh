#!/usr/bin/env bash
# Models larger than a device's share, on the GPU host (one card):
#   bash benchmarks/gpu_scale.sh <deps-folder> [parts]
# parts (default "offload shares"):
#   offload  the pipeline's stages (statistics, a sensitivity sweep of a subset
#            of layers, evaluation) on random weights of the LLaMA-2-13B shape in
#            bf16, resident and then with --device_map auto --max_memory
#            cuda:0=$OFFLOAD_CAP (default 12GiB: the layers beyond it stay in host
#            memory), same arguments otherwise; each stage's record has its wall
#            time, the device and host peaks and the bytes of offloaded weights
#            copied in (offload_bytes). $OFFLOAD_ORDER: "offloaded resident" runs them
#            the other way round; OFFLOAD_PROFILE=2 times the sweep's phases instead
#            (bench_pipeline --profile 2: decompositions, forward passes, per layer).
#   shares   each rank's share of a LLaMA-7B-shape sweep of a subset of layers
#            for 2, 4 and 8 ranks, timed one after another on the one card
#            (benchmarks/share_balance.py).
# JSON lines go to $OUT/scale.jsonl, a log to $OUT/scale_log.txt. The build is
# incremental; the whole run ends by $BUDGET seconds (default 560).
set -uo pipefail
deps=${1:?gpu-deps folder}
parts=" ${2:-offload shares} "
out=${LOG_DIR:-${OUT:-/tmp/cur4llm-out}}
mkdir -p "$out"
log="$out/scale_log.txt"
source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$log"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$log"; }
budget=${BUDGET:-560}
left() { local l=$(( budget - $(date +%s) + t0 )); (( l > ${1:-999999} )) && l=$1; (( l > 3 )) && echo $l || echo 3; }

build=/tmp/cur4llm-build
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release > /tmp/cur4llm-scale-configure.log 2>&1 ||
  { tail -40 /tmp/cur4llm-scale-configure.log | tee -a "$log"; exit 1; }
cmake --build $build -j16 --target bench_pipeline > /tmp/cur4llm-scale-build.log 2>&1 ||
  { grep -E "error|Error" -A5 /tmp/cur4llm-scale-build.log | head -60 | tee -a "$log"; exit 1; }
stamp "built"
bench=$build/benchmarks/bench_pipeline

if [[ $parts == *" offload "* ]]; then
  # Swept: every Linear of layer 1 (resident in both runs; the candidates then pass
  # every later layer, the offloaded ones among them) and of layer 39 (offloaded:
  # staged once per candidate), and lm_head.
  args=(--config benchmarks/configs/llama-13b.json --device cuda --dtype bf16 --samples "${OFFLOAD_SAMPLES:-8}"
        --seqlen 2048 --method svd --layers "${OFFLOAD_LAYERS:-L1,L39,head}" --profile "${OFFLOAD_PROFILE:-0}" --eval_windows 8
        --stages statistics,sensitivity,evaluation)
  for placement in ${OFFLOAD_ORDER:-resident offloaded}; do
    extra=()
    [[ $placement == offloaded ]] && extra=(--device_map auto --max_memory "cuda:0=${OFFLOAD_CAP:-12GiB}")
    echo "{\"placement\": \"$placement\"}" >> "$out/scale.jsonl"
    timeout "$(left 200)" $bench "${args[@]}" "${extra[@]}" 2> "/tmp/cur4llm-scale-$placement.err" |
      tee -a "$out/scale.jsonl" | grep -v '"setup"' | cut -c1-400 >> "$log"
    tail -3 "/tmp/cur4llm-scale-$placement.err" | tr '\r' '\n' | tail -3 >> "$log"
    stamp "offload: $placement"
  done
fi
if [[ $parts == *" shares "* ]]; then
  timeout "$(left 300)" python3 benchmarks/share_balance.py --bench $bench --ranks 2,4,8 -- \
    --config benchmarks/configs/llama-7b.json --device cuda --dtype bf16 --samples "${SHARE_SAMPLES:-4}" --seqlen 2048 \
    --method svd --layers "${SHARE_LAYERS:-L0,L8,L16,L24,L31,head}" 2>&1 | tee -a "$out/scale.jsonl" >> "$log"
  stamp "shares"
fi
