#!/usr/bin/env bash
# AWQ against RTN at int4 (and int8), the rows of docs/results.md: a model,
# dense and compressed by build_acur_repo at param ratio 0.9 (cur, svd and
# skeleton_swap; act_aware, alpha 0.5, abs_mean), each packed by quantize to
# rtn_int4 / awq_int4 / rtn_int8 / awq_int8 (AWQ's scales searched on the same
# calibration text, 32 samples, seed 233) and evaluated. Prints one line
# "<folder> <format> <ppl>" per model and format (and the unquantized ppl as
# format "none").
#
#   BIN=build/apps SHARED=../shared bash benchmarks/results_awq.sh          # stories260K, TinyStories text
#   BIN=build/apps MODEL=M CALIB=calib.txt EVAL=eval.txt SEQLEN=512 bash benchmarks/results_awq.sh
# EXTRA adds flags to build_acur_repo (e.g. EXTRA="--sensitivity_metric stable_rank --search reference"
# for a run without the perplexity sweep); METHODS and FORMATS pick the rows; DEVICE=cuda runs on a GPU.
set -euo pipefail
bin=${BIN:?folder of the build_acur_repo and quantize binaries}
shared=${SHARED:-}
model=${MODEL:-$shared/data/models/stories260K-hf}
calib=${CALIB:-$shared/data/text/tinystories/tinystories_calib.txt}
eval_text=${EVAL:-$shared/data/text/tinystories/tinystories_eval.txt}
seqlen=${SEQLEN:-512}
methods=${METHODS:-cur svd skeleton_swap}
formats=${FORMATS:-rtn_int4 awq_int4 rtn_int8 awq_int8}
out=${OUT_DIR:-output/awq}
mkdir -p "$out"
common=(--seqlen "$seqlen" --batch_size 8 --n_calib_samples 32 --seed 233 --device "${DEVICE:-cpu}")
ppl_of() { awk -v t="$eval_text" '$1 == t {print $2}'; }

sources=("$model")
for method in $methods; do
  suffix=$([ "$method" = cur ] && echo "" || echo "-$method")
  folder="$out/$(basename "$model")-acur90$suffix"
  ppl=$("$bin/build_acur_repo" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean \
    --calib_dataset "$calib" --param_ratio_target 0.9 --method "$method" --eval_ppl "$eval_text" --use_cache \
    --cache_dir "$out/cache" --output "$out" --overwrite ${EXTRA:-} "${common[@]}" 2>/dev/null | ppl_of)
  echo "$(basename "$folder") none $ppl"
  sources+=("$folder")
done
for source in "${sources[@]}"; do
  for format in $formats; do
    calib_flags=()
    case "$format" in awq_*) calib_flags=(--calib_dataset "$calib") ;; esac
    ppl=$("$bin/quantize" --model_id "$source" --format "$format" --output "$out/$(basename "$source")-$format" \
      --overwrite --eval_ppl "$eval_text" "${calib_flags[@]}" "${common[@]}" 2>/dev/null | ppl_of)
    echo "$(basename "$source") $format $ppl"
  done
done
