#!/usr/bin/env bash
# The export and quantization rows of docs/results.md and docs/export.md, on
# stories260K: build_acur_repo at param ratio 0.9 (cur and svd; act_aware,
# alpha 0.5, abs_mean, 32 calibration samples of 512 tokens from TinyStories,
# seed 233), quantize of the dense model and of both repositories to rtn_int8,
# rtn_int6 and rtn_int4 (packed), and acur's in-memory --weight_quant for
# comparison. Perplexity on the TinyStories eval text, seqlen 512. Everything
# goes to $OUT_DIR (repositories, logs); scripts/check_hf_repo.py then checks
# the repositories in transformers (docs/export.md).
#
#   BIN=build/apps SHARED=../shared bash benchmarks/results_export_stories260k.sh
set -euo pipefail
bin=${BIN:?folder of the acur, build_acur_repo and quantize binaries}
shared=${SHARED:?the shared/ folder with data/}
out=${OUT_DIR:-output/export-stories260k}
model="$shared/data/models/stories260K-hf"
eval_text="$shared/data/text/tinystories/tinystories_eval.txt"
mkdir -p "$out"
common=(--seqlen 512 --batch_size 32)
for method in cur svd; do
  "$bin/build_acur_repo" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean --n_calib_samples 32 \
    --seed 233 --calib_dataset "$shared/data/text/tinystories/tinystories_calib.txt" --param_ratio_target 0.9 \
    --method "$method" --eval_ppl "$eval_text" --use_cache --cache_dir "$out/cache" --output "$out" --overwrite \
    "${common[@]}" 2>/dev/null | grep -v "model.layers\|^-\|^layer"
done
for source in "$model" "$out/stories260K-hf-acur90" "$out/stories260K-hf-acur90-svd"; do
  for format in rtn_int8 rtn_int6 rtn_int4; do
    "$bin/quantize" --model "$source" --format "$format" --output "$out/$(basename "$source")-$format" --overwrite \
      --eval_ppl "$eval_text" "${common[@]}" 2>/dev/null
    if [ "$format" != rtn_int4 ]; then  # the reference's in-memory arithmetic (fp32 scales)
      "$bin/acur" --model_id "$source" --raw_model --weight_quant "$format" --eval_ppl "$eval_text" --output "$out/acur" \
        "${common[@]}" 2>/dev/null | grep -v "param ratio" | sed "s|^|in memory, $format, $(basename "$source"): |"
    fi
  done
done
