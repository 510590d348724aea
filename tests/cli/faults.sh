#!/bin/sh
# Faults while the apps work:
#  1. two acur runs share one --cache_dir at the same time: both succeed with the
#     same perplexity, and a third run reuses every cache file they left;
#  2. a full disk (file size limit) while acur writes its cache files: the run
#     goes on, no partial cache file or temporary is left, the next run succeeds;
#  3. every kind of cache file corrupted (calibration samples, statistics,
#     sensitivity table, dense perplexity; truncated, and the checksummed
#     safetensors ones also with a byte changed): reported, recomputed, the same
#     perplexity;
#  4. build_acur_repo and quantize killed (SIGKILL) at points spread over their
#     run: no folder at the final name, the source model untouched, and the next
#     run succeeds.
# Usage: faults.sh ACUR BUILD_ACUR_REPO QUANTIZE MODEL_FOLDER TEXT WORK_FOLDER
set -u
ACUR=$1 BUILD=$2 QUANTIZE=$3 MODEL=$4 TEXT=$5 WORK=$6
fail() {
  echo "FAILED: $1"
  [ -n "${2:-}" ] && [ -f "$2" ] && cat "$2"
  exit 1
}
rm -rf "$WORK" && mkdir -p "$WORK" || fail "cannot make $WORK"
sum_of() { sha256sum "$@" | cut -d' ' -f1 | tr '\n' ' '; }
source_sum=$(sum_of "$MODEL/model.safetensors" "$MODEL/config.json")
ppl_of() { grep -o 'shakespeare_tail.txt [0-9.]*' "$1" | head -n1; }

acur_cached() {  # acur_cached LOG [extra flags]: a compression run with --use_cache in $WORK/cache
  log=$1
  shift
  "$ACUR" --model_id "$MODEL" --method skeleton_swap --act_aware --param_ratio_target 0.8 --calib_dataset "$TEXT" --eval_ppl "$TEXT" \
    --seqlen 64 --n_calib_samples 6 --limit 4 --candidates 0.5,0.7,0.9 --use_cache --cache_dir "$WORK/cache" \
    --output "$WORK/out_$(basename "$log" .log)" "$@" > "$log" 2>&1
}

# 1. Two runs at once on one cache folder.
acur_cached "$WORK/a.log" &
a=$!
acur_cached "$WORK/b.log" &
b=$!
wait $a || fail "the first of two concurrent runs failed" "$WORK/a.log"
wait $b || fail "the second of two concurrent runs failed" "$WORK/b.log"
ppl=$(ppl_of "$WORK/a.log")
[ -n "$ppl" ] || fail "no perplexity printed" "$WORK/a.log"
[ "$(ppl_of "$WORK/b.log")" = "$ppl" ] || fail "concurrent runs differ: $ppl" "$WORK/b.log"
acur_cached "$WORK/c.log" || fail "the run after the concurrent ones failed" "$WORK/c.log"
for kind in calib stats sensitivity dense_ppl; do
  grep -q "cache hit: .*/$kind-" "$WORK/c.log" || fail "the $kind cache of the concurrent runs was not reused" "$WORK/c.log"
done
grep -q "unreadable" "$WORK/c.log" && fail "concurrent runs left an unreadable cache file" "$WORK/c.log"
[ "$(ppl_of "$WORK/c.log")" = "$ppl" ] || fail "the cached run differs from $ppl" "$WORK/c.log"

# 2. A full disk while the cache is written: writes fail beyond 16 blocks (8 or 16 KiB).
rm -rf "$WORK/cache"
(ulimit -f 16 && acur_cached "$WORK/full.log") || fail "a cache write that fails must not fail the run" "$WORK/full.log"
grep -q "cache: cannot write .*File too large" "$WORK/full.log" || fail "the failed cache write was not reported" "$WORK/full.log"
[ "$(ppl_of "$WORK/full.log")" = "$ppl" ] || fail "the run with a full disk differs from $ppl" "$WORK/full.log"
if [ -d "$WORK/cache" ]; then
  left=$(find "$WORK/cache" -mindepth 1 -name '.*')
  [ -z "$left" ] || fail "temporary files left in the cache folder: $left"
fi
acur_cached "$WORK/after_full.log" || fail "the run after a full disk failed" "$WORK/after_full.log"
grep -q "unreadable" "$WORK/after_full.log" && fail "a full disk left an unreadable cache file" "$WORK/after_full.log"
[ "$(ppl_of "$WORK/after_full.log")" = "$ppl" ] || fail "the run after a full disk differs" "$WORK/after_full.log"

# 3. Every kind of cache file corrupted: truncated to half; the safetensors ones
#    (which carry a checksum of their data) also with one byte changed in their middle.
for kind in calib stats sensitivity dense_ppl; do
  hows=truncate
  case $kind in calib|stats) hows="truncate flip" ;; esac
  for how in $hows; do
    acur_cached "$WORK/fill.log" || fail "refilling the cache failed" "$WORK/fill.log"
    file=$(ls "$WORK/cache/$kind"-* 2> /dev/null | head -n1)
    [ -n "$file" ] || fail "no $kind cache file was written" "$WORK/fill.log"
    size=$(stat -c %s "$file")
    if [ "$how" = truncate ]; then
      truncate -s $((size / 2)) "$file"
    else
      # A digit or letter in the middle of the file becomes another one.
      python3 - "$file" << 'EOF' || fail "cannot change $file"
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
i = len(b) // 2
while not chr(b[i]).isalnum():
    i += 1
b[i] = ord("7") if b[i] != ord("7") else ord("3")
open(p, "wb").write(b)
EOF
    fi
    acur_cached "$WORK/corrupt.log" || fail "a $how $kind cache file made the run fail" "$WORK/corrupt.log"
    grep -q "cache: .*/$kind-.* is \(unreadable\|stale\)" "$WORK/corrupt.log" ||
      fail "a $how $kind cache file was not reported" "$WORK/corrupt.log"
    grep -q "cache hit: .*/$kind-" "$WORK/corrupt.log" && fail "a $how $kind cache file was used" "$WORK/corrupt.log"
    [ "$(ppl_of "$WORK/corrupt.log")" = "$ppl" ] || fail "a $how $kind cache file changed the result" "$WORK/corrupt.log"
  done
done

# 4. SIGKILL at points spread over the run, then a run that completes.
kill_at() {  # kill_at DELAY FINAL LOG COMMAND...: starts COMMAND, kills it after DELAY seconds
  delay=$1 final=$2 log=$3
  shift 3
  "$@" > "$log" 2>&1 &
  pid=$!
  sleep "$delay"
  kill -9 $pid 2> /dev/null
  # The exit status tells whether the kill landed: a run that had already finished (a zombie
  # not yet reaped still accepts the signal) exits with its own status, a killed one with 137.
  wait $pid 2> /dev/null
  if [ $? -eq 137 ]; then
    landed=$((landed + 1))
    # A kill that lands after the folder's final rename (before the process exits) leaves the
    # whole folder; anything at the final name must be complete.
    if [ -e "$final" ] && ! { [ -f "$final/config.json" ] && [ -f "$final/model.safetensors" ]; }; then
      fail "a killed run left an incomplete $final" "$log"
    fi
  fi
  rm -rf "$final"  # a finished run's folder: nothing to check
  return 0
}
build_flags="--act_aware --param_ratio_target 0.8 --method svd --calib_dataset $TEXT --seqlen 64 --n_calib_samples 4"
killed=0 landed=0
for delay in 0.2 0.5 1 1.5 2 3 4 6; do
  # shellcheck disable=SC2086
  kill_at $delay "$WORK/repos/tiny-shakespeare-opt-acur80-svd" "$WORK/kill_build.log" \
    "$BUILD" --model_id "$MODEL" $build_flags --output "$WORK/repos"
  kill_at $delay "$WORK/q8" "$WORK/kill_quantize.log" "$QUANTIZE" --model_id "$MODEL" --format rtn_int8 --output "$WORK/q8"
  killed=$((killed + 1))
done
[ $landed -ge 2 ] || fail "only $landed of the kills came before the app finished"
[ "$(sum_of "$MODEL/model.safetensors" "$MODEL/config.json")" = "$source_sum" ] || fail "a killed run changed the source model"
# shellcheck disable=SC2086
"$BUILD" --model_id "$MODEL" $build_flags --output "$WORK/repos" > "$WORK/build.log" 2>&1 ||
  fail "build_acur_repo after the killed runs failed" "$WORK/build.log"
[ -f "$WORK/repos/tiny-shakespeare-opt-acur80-svd/config.json" ] || fail "no repository after the killed runs" "$WORK/build.log"
"$QUANTIZE" --model_id "$MODEL" --format rtn_int8 --output "$WORK/q8" > "$WORK/quantize.log" 2>&1 ||
  fail "quantize after the killed runs failed" "$WORK/quantize.log"
[ -f "$WORK/q8/config.json" ] || fail "no quantized model after the killed runs" "$WORK/quantize.log"
echo "faults ok ($killed kill points per app, $landed kills while running)"
