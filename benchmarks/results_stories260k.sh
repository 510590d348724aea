#!/usr/bin/env bash
# The stories260K rows of docs/results.md: acur with --method cur and svd at
# param ratios 0.95, 0.9, 0.85, 0.8 (act_aware, alpha 0.5, abs_mean, 32
# calibration samples of 512 tokens from TinyStories, seed 233), perplexity on
# the TinyStories eval text and wikitext2 test. Results go to $OUT_DIR/results.jsonl.
#
#   ACUR=build/apps/acur SHARED=../shared DEVICE=cpu bash benchmarks/results_stories260k.sh
set -euo pipefail
acur=${ACUR:?path of the acur binary}
shared=${SHARED:?the shared/ folder with data/}
out=${OUT_DIR:-output/results-stories260k}
device=${DEVICE:-cpu}
mkdir -p "$out"
for method in ${METHODS:-svd cur}; do
  for ratio in ${RATIOS:-0.95 0.9 0.85 0.8}; do
    "$acur" --model_id "$shared/data/models/stories260K-hf" --act_aware --alpha 0.5 --scaling_method abs_mean \
      --n_calib_samples 32 --seqlen 512 --seed 233 \
      --calib_dataset "$shared/data/text/tinystories/tinystories_calib.txt" \
      --eval_ppl "$shared/data/text/tinystories/tinystories_eval.txt,wikitext2" --data_dir "$shared/data/text" \
      --param_ratio_target "$ratio" --method "$method" --use_cache --cache_dir "$out/cache" --output "$out" \
      --device "$device" --dtype fp32 --batch_size "${BATCH:-32}" 2>&1 | grep -v "ETA\|model.layers" 
  done
done
