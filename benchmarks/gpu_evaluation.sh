#!/usr/bin/env bash
# On a GPU host with PyTorch and transformers: the reference fixtures of the
# zero-shot tasks, the small OPT trained on TinyStories, the CUR-vs-SVD
# comparison (benchmarks/compare.sh) on stories260K and that OPT, the task
# scorer's speed against the Python reference, and the transformers check of
# exported module-method folders. Into OUT, at most a few files: summary.txt,
# logs.tar.gz, tasks_reference.tar (fixtures), opt-model.tar, compare.tar.gz.
#
#   bash benchmarks/gpu_evaluation.sh DEPS DATA OUT [parts]
#
# DEPS holds the build dependencies (install.sh, see README "Build against CUDA
# LibTorch"), DATA the data/ folder (models/, text/, tasks.tar.xz,
# tokenizers-real.tar.xz). The whole run ends by $BUDGET seconds (default 540): later
# steps get what is left, and the outputs are written however it ends. With
# $PREBUILT (a build.tar.xz an earlier run wrote to OUT) the build is skipped;
# $OPT_MODEL names an OPT an earlier run trained; $MODELS the models compared;
# $BUILD_TARGETS what to build (default: the apps, bench_tasks and test_tasks).
# parts (default "fixtures opt compare timing export awq"):
#   fixtures  scripts/tasks_reference.py on stories260K-hf and the tiny OPT
#   opt       train benchmarks/train_opt_tinystories.py's OPT (opt-model.tar in OUT)
#   compare   compare.sh on both models ($METHODS, $RATIOS, seeds $SEEDS), in parallel
#   timing    bench_tasks against tasks_reference.py --time, LLaMA-7B shape, fp16
#             ($TIMING_RUNS: which of "cpp cpp_unshared cpp_one_row python", default all but cpp_unshared,
#             and "cpp@ARG@ARG..." / "python@ARG@ARG..." for bench_tasks / tasks_reference.py with those arguments;
#             $TIMING_ARGS: the items, default "--limit 200 --mmlu_limit 4";
#             TIMING_TRACE=1: each bench_tasks run twice, the second traced and summarised by trace_summary.py;
#             TIMING_REPEAT=N: each run N times, the first reported as items_per_s, the fastest later one as
#             items_per_s_warm)
#   export    build_acur_repo of module-method folders, loaded by scripts/check_hf_repo.py
#   awq       benchmarks/results_awq.sh on the TinyStories OPT (RTN against AWQ, packed by quantize),
#             in parallel with export
set -uo pipefail
deps=${1:?deps folder}
data=$(realpath "${2:?data folder}")
final=$(realpath -m "${3:?output folder}")
parts=" ${4:-fixtures opt compare timing export awq} "
out=/tmp/cur4llm-gpu-out
rm -rf "$out"; mkdir -p "$out" "$final"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start )); }
budget=${BUDGET:-540}
left() { local l=$(( budget - 45 - $(elapsed) )); (( l > 5 )) && echo $l || echo 5; }  # seconds a step may take
build=/tmp/cur4llm-build
finish() {
  note "done at $(elapsed) s"
  cp "$summary" "$final/"
  [[ -d $out/tasks_reference ]] && tar -cf "$final/tasks_reference.tar" -C "$out" tasks_reference
  [[ -f $out/opt-model.tar ]] && cp "$out/opt-model.tar" "$final/"
  [[ -d /tmp/compare ]] && tar -czf "$final/compare.tar.gz" --exclude=cache --exclude="*.safetensors" -C /tmp compare
  tar -czf "$final/logs.tar.gz" -C "$out" --exclude='*.tar' --exclude=tasks_reference .
}
trap finish EXIT

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$summary"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' | tee -a "$summary"

tasks=/tmp/cur4llm-taskdata
mkdir -p $tasks /tmp/cur4llm-tok
tar -xJf "$data/tasks.tar.xz" -C $tasks
tar -xJf "$data/tokenizers-real.tar.xz" -C /tmp/cur4llm-tok

# Python work that needs no build, started at once.
if [[ $parts == *" fixtures "* ]]; then
  (
    mkdir -p "$out/tasks_reference"
    for m in "$data/models/stories260K-hf" tests/data/models/tiny-shakespeare-opt; do
      timeout 240 python3 scripts/tasks_reference.py --model "$m" --data_dir $tasks --out "$out/tasks_reference" --device cuda
    done
  ) > "$out/fixtures.log" 2>&1 &
  fixtures_pid=$!
fi
opt=${OPT_MODEL:-/tmp/opt-tinystories}  # OPT_MODEL: an OPT trained by an earlier run (opt-model.tar unpacked)
if [[ $parts == *" opt "* || ( ( $parts == *" compare "* || $parts == *" awq "* ) && ! -f $opt/model.safetensors ) ]]; then
  timeout 300 python3 benchmarks/train_opt_tinystories.py --shared "$(dirname "$data")" --out $opt --max_minutes 2.5 \
    > "$out/opt_train.log" 2>&1 &
  train_pid=$!
fi

source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
if [[ -n ${PREBUILT:-} && -f ${PREBUILT:-} ]]; then
  mkdir -p $build && tar -xJf "$PREBUILT" -C $build
  note "prebuilt binaries from $PREBUILT"
else
[[ -f $build/CMakeCache.txt ]] || cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$(dirname "$data")" \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build $build -j16 --target ${BUILD_TARGETS:-acur acur_report build_acur_repo quantize bench_tasks test_tasks} > "$out/build.log" 2>&1 \
  || { grep -E "error|Error" -A5 "$out/build.log" | head -60; exit 1; }
note "built at $(elapsed) s"
# The binaries, for a later run's $PREBUILT (same paths: their RPATH names the build folder).
[[ -z ${BUILD_TARGETS:-} ]] && (cd $build && strip -g libcur4llm/libcur4llm.so* 2>/dev/null
 tar -cJf "$final/build.tar.xz" libcur4llm/libcur4llm.so* apps/acur apps/acur_report apps/build_acur_repo apps/quantize \
   benchmarks/bench_tasks tests/test_tasks) && note "binaries: $(du -h "$final/build.tar.xz" | cut -f1)"
fi

if [[ -n ${fixtures_pid:-} ]]; then
  timeout $(left) tail --pid=$fixtures_pid -f /dev/null; kill $fixtures_pid 2>/dev/null; wait $fixtures_pid; note "fixtures rc=$? at $(elapsed) s"; tail -25 "$out/fixtures.log" >> "$summary"
  mkdir -p tests/data/tasks_reference && cp "$out"/tasks_reference/*.json tests/data/tasks_reference/ 2>/dev/null
  $build/tests/test_tasks "per-item*" 2>&1 | tail -4 | tee -a "$summary"
  $build/tests/test_tasks 2>&1 | tail -2 | tee -a "$summary"
fi
if [[ -n ${train_pid:-} ]]; then
  wait $train_pid; note "opt trained rc=$? at $(elapsed) s"
  cp $opt/train_report.json "$out/opt_train.json" 2>/dev/null
  tar -cf "$out/opt-model.tar" -C $opt . 2>/dev/null
fi

if [[ $parts == *" compare "* ]]; then
  # One compare.sh per (model, seed, method), all at once: the models are tiny, so the GPU has room
  # and each process is mostly its own host work (one thread each).
  export ACUR=$build/apps/acur ACUR_REPORT=$build/apps/acur_report OMP_NUM_THREADS=1
  ratios=${RATIOS:-0.95,0.9,0.85,0.8,0.7}
  # "@" stands for a space inside one method's flags.
  read -ra methods <<<"${METHODS:-svd:--act_aware@--preset@reference cur:--act_aware@--preset@reference svd_whiten skeleton_swap mlp_nystrom:--search@reference mlp_nystrom modular mlp_nystrom+svd_whiten}"
  read -ra methods_seed1 <<<"${METHODS_SEED1:-svd_whiten skeleton_swap mlp_nystrom:--search@reference mlp_nystrom mlp_nystrom+svd_whiten}"
  tasks_flag=${TASKS_FLAGS:---eval_tasks piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa --limit 1000}
  common=(--seqlen 512 --n_calib_samples 32 --device cuda --dtype fp32 --batch_size 16 --data_dir $tasks)
  pids=()
  run_compare() {  # model seed method extra...
    local model=$1 seed=$2 method=$3; shift 3
    local path=$data/models/$model name=${method%%:*}
    [[ $model == opt-tinystories ]] && path=$opt
    local tag=$model-$seed-$(echo "$method" | tr -c 'A-Za-z0-9_\n' '_')
    timeout $(left) bash benchmarks/compare.sh --model "$path" --method "${method//@/ }" --ratios "$ratios" \
      --calib "$data/text/tinystories/tinystories_calib.txt" --eval "$data/text/tinystories/tinystories_eval.txt" \
      --out /tmp/compare/$tag -- "${common[@]}" --seed $seed "$@" > "$out/compare-$tag.log" 2>&1
  }
  for model in ${MODELS:-stories260K-hf opt-tinystories}; do
    path=$data/models/$model; [[ $model == opt-tinystories ]] && path=$opt
    mkdir -p /tmp/compare/$model-dense/runs
    timeout $(left) $ACUR --model_id "$path" --raw_model --eval_ppl "$data/text/tinystories/tinystories_eval.txt" "${common[@]}" \
      $tasks_flag --output /tmp/compare/$model-dense/runs > "$out/compare-$model-dense.log" 2>&1 &
    for m in "${methods[@]}"; do run_compare $model 233 "$m" $tasks_flag & pids+=($!); done
    for m in "${methods_seed1[@]}"; do run_compare $model 1 "$m" & pids+=($!); done
  done
  for p in "${pids[@]}"; do wait "$p"; done
  wait
  cat /tmp/compare/*/runs/results.jsonl > "$out/compare-results.jsonl" 2>/dev/null
  note "compare: $(wc -l < "$out/compare-results.jsonl") records at $(elapsed) s"
  grep -h "failed\|rror" "$out"/compare-*.log | head -20 >> "$summary"
fi

if [[ $parts == *" timing "* ]]; then
  tok=/tmp/cur4llm-tok/tokenizers/llama2
  bench=($build/benchmarks/bench_tasks --config benchmarks/configs/llama-7b.json --tokenizer $tok)
  for what in ${TIMING_RUNS:-cpp cpp_one_row python}; do
    runs=()  # --repeat (and --trace) of this run
    case $what in
      cpp) cmd=("${bench[@]}") ;;
      cpp_one_row) cmd=("${bench[@]}" --max_batch_tokens 1) ;;
      cpp_unshared) cmd=("${bench[@]}" --share_prefixes 0) ;;
      cpp@*) IFS=@ read -ra extra <<< "${what#cpp@}"; cmd=("${bench[@]}" "${extra[@]}") ;;
      python) cmd=(python3 scripts/tasks_reference.py --time --tokenizer $tok) ;;
      python@*) IFS=@ read -ra extra <<< "${what#python@}"; cmd=(python3 scripts/tasks_reference.py --time --tokenizer $tok "${extra[@]}") ;;
      *) note "timing: unknown run $what"; continue ;;
    esac
    log=timing-$(echo "$what" | tr -c 'A-Za-z0-9_.,=\n-' '_')
    if [[ ${TIMING_TRACE:-0} == 1 && $what == cpp* ]]; then
      runs=(--repeat 2 --trace /tmp/$log)
    elif [[ ${TIMING_REPEAT:-1} != 1 ]]; then
      runs=(--repeat "$TIMING_REPEAT")
    fi
    timeout $(( $(left) < 150 ? $(left) : 150 )) "${cmd[@]}" "${runs[@]}" --data_dir $tasks --tasks hellaswag,mmlu \
      ${TIMING_ARGS:---limit 200 --mmlu_limit 4} --device cuda --dtype fp16 > "$out/$log.log" 2>&1
    note "timing $what rc=$? at $(elapsed) s: $(tail -3 "$out/$log.log" | tr '\n' ' ')"
    for t in /tmp/$log.*.json; do
      [[ -f $t ]] && timeout 120 python3 benchmarks/trace_summary.py "$t" --label "$what" >> "$out/traces.jsonl" 2>&1
      rm -f "$t"
    done
  done
fi

if [[ $parts == *" awq "* ]]; then
  BIN=$build/apps MODEL=$opt CALIB="$data/text/tinystories/tinystories_calib.txt" EVAL="$data/text/tinystories/tinystories_eval.txt" \
    DEVICE=cuda OUT_DIR=/tmp/awq timeout $(left) bash benchmarks/results_awq.sh > "$out/awq.txt" 2> "$out/awq.log" &
  awq_pid=$!
fi

EXPORT_METHODS=${EXPORT_METHODS-mlp_nystrom modular qk_cr mlp_nystrom+svd_whiten}
if [[ $parts == *" export "* && -n ${EXPORT_METHODS} ]]; then
  for model in ${EXPORT_MODELS:-$data/models/stories260K-hf $opt}; do
  for m in $EXPORT_METHODS; do
    tag=$(basename "$model")-$m
    timeout $(left) $build/apps/build_acur_repo --model_id "$model" --method "$m" --param_ratio_target 0.8 --seqlen 512 \
      --n_calib_samples 32 --calib_dataset "$data/text/tinystories/tinystories_calib.txt" --device cuda --dtype fp32 \
      --eval_ppl "$data/text/tinystories/tinystories_eval.txt" --output /tmp/export-$tag > "$out/export-$tag.log" 2>&1
    note "export $tag rc=$?: $(grep -E 'tinystories_eval.txt|wrote' "$out/export-$tag.log" | tr '\n' ' ')"
    for repo in /tmp/export-$tag/*/; do
      timeout $(left) python3 scripts/check_hf_repo.py "$repo" --text "$data/text/tinystories/tinystories_eval.txt" --seqlen 512 \
        --resave > "$out/check-$tag.log" 2>&1
      note "transformers $tag rc=$?: $(tail -4 "$out/check-$tag.log" | tr '\n' ' ')"
    done
  done
  done
fi
if [[ -n ${awq_pid:-} ]]; then
  wait $awq_pid; note "awq rc=$? at $(elapsed) s"; cat "$out/awq.txt" >> "$summary"
fi
