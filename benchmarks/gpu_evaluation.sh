#!/usr/bin/env bash
# On a GPU host with PyTorch and transformers: the reference fixtures of the
# zero-shot tasks, the small OPT trained on TinyStories, the CUR-vs-SVD
# comparison (benchmarks/compare.sh) on stories260K and that OPT, the task
# scorer's speed against the Python reference, and the transformers check of
# exported module-method folders. Logs, fixtures and results go to $OUT.
#
#   bash benchmarks/gpu_evaluation.sh DEPS DATA OUT [parts]
#
# DEPS holds the build dependencies (install.sh, see README "Build against CUDA
# LibTorch"), DATA the data/ folder (models/, text/, tasks.tar.xz,
# tokenizers-real.tar.xz). parts (default "fixtures opt compare timing export"):
#   fixtures  scripts/tasks_reference.py on stories260K-hf and the tiny OPT
#   opt       train benchmarks/train_opt_tinystories.py's OPT (opt-model.tar in OUT)
#   compare   compare.sh on both models ($METHODS, $RATIOS, seeds $SEEDS), in parallel
#   timing    bench_tasks against tasks_reference.py --time, LLaMA-7B shape, fp16
#   export    build_acur_repo of module-method folders, loaded by scripts/check_hf_repo.py
set -uo pipefail
deps=${1:?deps folder}
data=$(realpath "${2:?data folder}")
out=$(realpath -m "${3:?output folder}")
parts=" ${4:-fixtures opt compare timing export} "
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
t_start=$(date +%s)
elapsed() { echo $(( $(date +%s) - t_start )); }

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
      python3 scripts/tasks_reference.py --model "$m" --data_dir $tasks --out "$out/tasks_reference" --device cuda
    done
  ) > "$out/fixtures.log" 2>&1 &
  fixtures_pid=$!
fi
opt=/tmp/opt-tinystories
if [[ $parts == *" opt "* || $parts == *" compare "* ]]; then
  timeout 300 python3 benchmarks/train_opt_tinystories.py --shared "$(dirname "$data")" --out $opt --max_minutes 2.5 \
    > "$out/opt_train.log" 2>&1 &
  train_pid=$!
fi

source "$deps/install.sh" /tmp/cur4llm-deps > /dev/null
build=/tmp/cur4llm-build
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DCUR4LLM_SHARED_DIR="$(dirname "$data")" \
  > "$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
cmake --build $build -j16 --target acur acur_report build_acur_repo bench_tasks test_tasks > "$out/build.log" 2>&1 \
  || { grep -E "error|Error" -A5 "$out/build.log" | head -60; exit 1; }
note "built at $(elapsed) s"

if [[ -n ${fixtures_pid:-} ]]; then
  wait $fixtures_pid; note "fixtures rc=$? at $(elapsed) s"; tail -25 "$out/fixtures.log" >> "$summary"
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
  export ACUR=$build/apps/acur ACUR_REPORT=$build/apps/acur_report
  ratios=${RATIOS:-0.95,0.9,0.85,0.8,0.7}
  read -ra methods <<<"${METHODS:-svd:--act_aware svd_whiten skeleton_swap cur:--preset@reference}"
  method_args=()
  for m in "${methods[@]}"; do method_args+=(--method "${m//@/ }"); done
  tasks_flag=${TASKS_FLAGS:---eval_tasks piqa,arc_easy,arc_challenge,hellaswag,winogrande,boolq,openbookqa --limit 1000}
  common=(--seqlen 512 --n_calib_samples 32 --device cuda --dtype fp32 --batch_size 16 --data_dir $tasks $tasks_flag)
  pids=()
  for seed in ${SEEDS:-233 1}; do
    for model in stories260K-hf opt-tinystories; do
      path=$data/models/$model
      [[ $model == opt-tinystories ]] && path=$opt
      dense=; [[ $seed == 233 ]] && dense=--dense
      bash benchmarks/compare.sh --model "$path" "${method_args[@]}" --ratios "$ratios" \
        --calib "$data/text/tinystories/tinystories_calib.txt" --eval "$data/text/tinystories/tinystories_eval.txt" \
        --out /tmp/compare/$model-$seed $dense -- "${common[@]}" --seed $seed > "$out/compare-$model-$seed.log" 2>&1 &
      pids+=($!)
    done
  done
  for p in "${pids[@]}"; do wait "$p"; done
  cat /tmp/compare/*/runs/results.jsonl > "$out/compare-results.jsonl" 2>/dev/null
  note "compare: $(wc -l < "$out/compare-results.jsonl") records at $(elapsed) s"
  grep -h "failed\|error" "$out"/compare-*.log | head -20 >> "$summary"
fi

if [[ $parts == *" timing "* ]]; then
  tok=/tmp/cur4llm-tok/tokenizers/llama2
  for what in cpp cpp_one_row python; do
    case $what in
      cpp) cmd=($build/benchmarks/bench_tasks --config benchmarks/configs/llama-7b.json --tokenizer $tok) ;;
      cpp_one_row) cmd=($build/benchmarks/bench_tasks --config benchmarks/configs/llama-7b.json --tokenizer $tok --max_batch_tokens 1) ;;
      python) cmd=(python3 scripts/tasks_reference.py --time --tokenizer $tok) ;;
    esac
    timeout 240 "${cmd[@]}" --data_dir $tasks --tasks hellaswag,mmlu --limit 200 --mmlu_limit 4 --device cuda --dtype fp16 \
      > "$out/timing-$what.log" 2>&1
    note "timing $what rc=$? at $(elapsed) s: $(tail -3 "$out/timing-$what.log" | tr '\n' ' ')"
  done
fi

if [[ $parts == *" export "* && -n ${EXPORT_METHODS:-} ]]; then
  stories=$data/models/stories260K-hf
  for m in $EXPORT_METHODS; do
    $build/apps/build_acur_repo --model_id "$stories" --method "$m" --param_ratio_target 0.8 --seqlen 512 \
      --n_calib_samples 32 --calib_dataset "$data/text/tinystories/tinystories_calib.txt" --device cuda --dtype fp32 \
      --eval_ppl "$data/text/tinystories/tinystories_eval.txt" --output /tmp/export-$m > "$out/export-$m.log" 2>&1
    note "export $m rc=$?: $(grep -E 'tinystories_eval.txt|wrote' "$out/export-$m.log" | tr '\n' ' ')"
    for repo in /tmp/export-$m/*/; do
      python3 scripts/check_hf_repo.py "$repo" --text "$data/text/tinystories/tinystories_eval.txt" --seqlen 512 \
        --resave > "$out/check-$m.log" 2>&1
      note "transformers $m rc=$?: $(tail -4 "$out/check-$m.log" | tr '\n' ' ')"
    done
  done
fi
note "done at $(elapsed) s"
