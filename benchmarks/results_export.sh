#!/usr/bin/env bash
# The export and quantization rows of docs/results.md and docs/export.md.
# stories260K: build_acur_repo at param ratio 0.9 (cur and svd; act_aware,
# alpha 0.5, abs_mean, 32 calibration samples of 512 tokens from TinyStories,
# seed 233), quantize of the dense model and of both repositories to rtn_int8,
# rtn_int6 and rtn_int4 (packed), and acur's in-memory --weight_quant for
# comparison. Perplexity on the TinyStories eval text, seqlen 512. The tiny
# OPT fixture: cur and svd at 0.8 (calibrated and evaluated on the carried
# Shakespeare tail, seqlen 128), cur + rtn_int4 in three shards, the dense
# model in rtn_int8, svd in rtn_int6. The skeleton part: stories260K with
# skeleton_swap at 0.9 (skeleton_row layers; same flags as cur and svd) and
# that repository packed to rtn_int4, the tiny OPT with skeleton_col at 0.8
# (skeleton_col layers with biases). The folded part (ONLY=folded only): cur with
# --cur_fold_u, stories260K at 0.9 and the tiny OPT at 0.8. Every skeleton and
# folded folder's C++ perplexity is appended to $OUT_DIR/expected_ppl.txt
# ("folder name=ppl"), which scripts/check_export_gpu.sh reads. Everything goes to
# $OUT_DIR; scripts/check_export_gpu.sh then checks the folders in transformers.
#
#   BIN=build/apps SHARED=../shared bash benchmarks/results_export.sh     # from the repository root
#   ONLY=skeleton BIN=build/apps SHARED=../shared bash benchmarks/results_export.sh   # the skeleton part only
#   ONLY=folded BIN=build/apps SHARED=../shared bash benchmarks/results_export.sh     # the folded part only
set -euo pipefail
bin=${BIN:?folder of the acur, build_acur_repo and quantize binaries}
shared=${SHARED:?the shared/ folder with data/}
out=${OUT_DIR:-output/export}
model="$shared/data/models/stories260K-hf"
eval_text="$shared/data/text/tinystories/tinystories_eval.txt"
only=${ONLY:-}
case "$only" in "" | skeleton | folded) ;; *) echo "results_export.sh: ONLY is \"skeleton\", \"folded\" or unset, not \"$only\"" >&2; exit 2 ;; esac
mkdir -p "$out"
common=(--seqlen 512 --batch_size 32)
opt=tests/data/models/tiny-shakespeare-opt
tail_text=tests/data/text/shakespeare_tail.txt
opt_flags=(--act_aware --param_ratio_target 0.8 --calib_dataset "$tail_text" --eval_ppl "$tail_text" --seqlen 128
           --n_calib_samples 8 --batch_size 4 --output "$out" --overwrite)

# expect FOLDER TEXT: prints the app's output (stdin) and records FOLDER's name and perplexity on TEXT.
expect() {
  local folder=$1 text=$2 line
  while IFS= read -r line; do
    echo "$line"
    set -- $line
    if [ "${1:-}" = "$text" ]; then echo "$(basename "$folder")=$2" >>"$out/expected_ppl.txt"; fi
  done
}

if [ "$only" = folded ]; then
  rm -f "$out/expected_ppl.txt"
  s="$out/stories260K-hf-acur90-folded"
  "$bin/build_acur_repo" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean --n_calib_samples 32 \
    --seed 233 --calib_dataset "$shared/data/text/tinystories/tinystories_calib.txt" --param_ratio_target 0.9 \
    --method cur --cur_fold_u --eval_ppl "$eval_text" --use_cache --cache_dir "$out/cache" --output "$out" --overwrite \
    "${common[@]}" 2>/dev/null | grep -v "model.layers\|^-\|^layer" | expect "$s" "$eval_text"
  "$bin/build_acur_repo" --model_id "$opt" --method cur --cur_fold_u "${opt_flags[@]}" 2>/dev/null | tail -2 |
    expect "$out/tiny-shakespeare-opt-acur80-folded" "$tail_text"
  exit 0
fi

if [ "$only" = skeleton ] || [ -z "$only" ]; then
  rm -f "$out/expected_ppl.txt"
  s="$out/stories260K-hf-acur90-skeleton_swap"
  "$bin/build_acur_repo" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean --n_calib_samples 32 \
    --seed 233 --calib_dataset "$shared/data/text/tinystories/tinystories_calib.txt" --param_ratio_target 0.9 \
    --method skeleton_swap --eval_ppl "$eval_text" --use_cache --cache_dir "$out/cache" --output "$out" --overwrite \
    "${common[@]}" 2>/dev/null | grep -v "model.layers\|^-\|^layer" | expect "$s" "$eval_text"
  "$bin/quantize" --model_id "$s" --format rtn_int4 --output "$s-rtn_int4" --overwrite --eval_ppl "$eval_text" \
    "${common[@]}" 2>/dev/null | expect "$s-rtn_int4" "$eval_text"
  "$bin/build_acur_repo" --model_id "$opt" --method skeleton_col "${opt_flags[@]}" 2>/dev/null | tail -2 |
    expect "$out/tiny-shakespeare-opt-acur80-skeleton_col" "$tail_text"
  [ "$only" = skeleton ] && exit 0
fi

for method in cur svd; do
  "$bin/build_acur_repo" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean --n_calib_samples 32 \
    --seed 233 --calib_dataset "$shared/data/text/tinystories/tinystories_calib.txt" --param_ratio_target 0.9 \
    --method "$method" --eval_ppl "$eval_text" --use_cache --cache_dir "$out/cache" --output "$out" --overwrite \
    "${common[@]}" 2>/dev/null | grep -v "model.layers\|^-\|^layer"
done
for source in "$model" "$out/stories260K-hf-acur90" "$out/stories260K-hf-acur90-svd"; do
  for format in rtn_int8 rtn_int6 rtn_int4; do
    "$bin/quantize" --model_id "$source" --format "$format" --output "$out/$(basename "$source")-$format" --overwrite \
      --eval_ppl "$eval_text" "${common[@]}" 2>/dev/null
    if [ "$format" != rtn_int4 ]; then  # the reference's in-memory arithmetic (fp32 scales)
      "$bin/acur" --model_id "$source" --raw_model --weight_quant "$format" --eval_ppl "$eval_text" --output "$out/acur" \
        "${common[@]}" 2>/dev/null | grep -v "param ratio" | sed "s|^|in memory, $format, $(basename "$source"): |"
    fi
  done
done

for method in cur svd; do
  "$bin/build_acur_repo" --model_id "$opt" --method "$method" "${opt_flags[@]}" 2>/dev/null | tail -2
done
"$bin/build_acur_repo" --model_id "$opt" --method cur --weight_quant rtn_int4 --max_shard_size 200KB "${opt_flags[@]}" \
  2>/dev/null | tail -3
"$bin/quantize" --model_id "$opt" --format rtn_int8 --output "$out/tiny-shakespeare-opt-rtn_int8" --overwrite \
  --eval_ppl "$tail_text" --seqlen 128 2>/dev/null
"$bin/quantize" --model_id "$out/tiny-shakespeare-opt-acur80-svd" --format rtn_int6 --overwrite \
  --output "$out/tiny-shakespeare-opt-acur80-svd-rtn_int6" --eval_ppl "$tail_text" --seqlen 128 2>/dev/null
