#!/usr/bin/env bash
# The data-aware method tables of docs/results.md: perplexity vs parameter ratio for the
# reference-style CUR, ASVD-style SVD, whitened SVD and the data-aware CUR
# variants, all through acur's ppl sensitivity and search (act_aware, alpha
# 0.5, abs_mean; 32 calibration samples of 512 tokens from
# tinystories_calib.txt; perplexity on tinystories_eval.txt as a plain file,
# seqlen 512). Each job is one (method, seed, search, sequential) at every
# ratio; jobs run in parallel, ratios of a job in order so that they share the
# cached sensitivity table. Writes $OUT_DIR/<label>-results.jsonl (acur's records).
#
#   ACUR=build/apps/acur SHARED=../shared OUT_DIR=/tmp/res DEVICE=cuda JOBS=8 \
#     bash benchmarks/results_skeleton.sh ../shared/data/models/stories260K-hf stories260k
#
# Optional: RATIOS (default "0.95 0.9 0.85 0.8 0.7"), LIMIT (eval windows, -1: all),
# WAVE1 / WAVE2 (lines "method seed search sequential"; defaults below when unset,
# an empty value runs nothing: wave 1 fills the caches, wave 2 reuses them), JOBS (parallel jobs, default 8), BATCH (default 32),
# DEADLINE (epoch seconds after which no new run starts), CANDIDATES (acur --candidates).
set -uo pipefail
acur=${ACUR:?path of the acur binary}
shared=${SHARED:?the shared/ folder with data/}
out=${OUT_DIR:?output folder}
model=${1:?model folder}
label=${2:?label of the result files}
device=${DEVICE:-cuda}
ratios=${RATIOS:-0.95 0.9 0.85 0.8 0.7}
text="$shared/data/text/tinystories"
work="$out/$label"
mkdir -p "$work"

wave1=${WAVE1-"svd 233 reference 0
cur 233 reference 0
svd_whiten 233 reference 0
skeleton_diag 233 reference 0
skeleton_row 233 reference 0
skeleton_col 233 reference 0
skeleton 233 reference 0
skeleton_swap 233 reference 0
cur_whiten 233 reference 0
cur_deim 233 reference 0
cur_qr 233 reference 0
svd 1 reference 0
svd_whiten 1 reference 0
skeleton_swap 1 reference 0"}
wave2=${WAVE2-"skeleton_swap 233 reference 1
svd_whiten 233 reference 1
skeleton_swap 233 lagrangian 1
svd_whiten 233 lagrangian 1
svd_whiten 233 lagrangian 0
skeleton_swap 233 lagrangian 0
svd 233 lagrangian 0
skeleton_row 233 lagrangian 1
skeleton_swap 1 lagrangian 1
svd_whiten 1 lagrangian 1"}


run_job() {  # method seed search sequential
  local method=$1 seed=$2 search=$3 seq=$4
  local dir="$work/$method-s$seed-$search-q$seq"
  mkdir -p "$dir"
  for ratio in $ratios; do
    if [ -n "${DEADLINE:-}" ] && [ "$(date +%s)" -ge "$DEADLINE" ]; then
      echo "SKIPPED (deadline): $method seed $seed $search seq $seq ratio $ratio" >> "$work/failures.txt"
      continue
    fi
    local extra=()
    [ "$seq" = 1 ] && extra+=(--sequential)
    [ -n "${CANDIDATES:-}" ] && extra+=(--candidates "$CANDIDATES")
    "$acur" --model_id "$model" --act_aware --alpha 0.5 --scaling_method abs_mean \
      --n_calib_samples 32 --seqlen 512 --seed "$seed" --calib_dataset "$text/tinystories_calib.txt" \
      --eval_ppl "$text/tinystories_eval.txt" --data_dir "$shared/data/text" --limit "${LIMIT:--1}" \
      --param_ratio_target "$ratio" --method "$method" --search "$search" "${extra[@]}" \
      --use_cache --cache_dir "$work/cache-s$seed" --output "$dir" \
      --device "$device" --dtype fp32 --batch_size "${BATCH:-32}" > "$dir/log-$ratio.txt" 2>&1 ||
      echo "FAILED: $method seed $seed $search seq $seq ratio $ratio (see $dir/log-$ratio.txt)" | tee -a "$work/failures.txt"
  done
}
export -f run_job
export acur shared model ratios text work device LIMIT BATCH DEADLINE CANDIDATES

# The dense row.
"$acur" --model_id "$model" --raw_model --seqlen 512 --eval_ppl "$text/tinystories_eval.txt" \
  --data_dir "$shared/data/text" --device "$device" --dtype fp32 --batch_size "${BATCH:-32}" \
  --output "$work/dense" > "$work/dense.log" 2>&1 || echo "FAILED: dense" | tee -a "$work/failures.txt"

for wave in "$wave1" "$wave2"; do
  printf '%s\n' "$wave" | grep -v '^ *$' | xargs -r -P "${JOBS:-8}" -L 1 bash -c 'run_job "$@"' _
done
cat "$work"/*/results.jsonl > "$out/$label-results.jsonl" 2>/dev/null
echo "$label: $(wc -l < "$out/$label-results.jsonl") results in $out/$label-results.jsonl"
