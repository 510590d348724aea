#!/usr/bin/env bash
# Compare compression methods on one model in one command: acur once per
# (method, ratio) into one results file, then acur_report (docs/results.md, "Reports").
#
#   bash benchmarks/compare.sh --model facebook/opt-125m \
#     --method "svd:--act_aware" --method "svd_whiten" \
#     --method "skeleton_swap:--search lagrangian --sequential" \
#     --ratios 0.95,0.9,0.8 --calib wikitext2 --eval wikitext2,ptb --out compare/opt-125m \
#     --dense -- --device cuda --batch_size 8
#
# --method NAME[:FLAGS]  a method of acur --method and acur flags for it only (repeatable)
# --ratios R,R,...       --param_ratio_target values, each run for every method
# --calib TEXT           acur --calib_dataset (a dataset name or a text file)
# --eval TEXT[,TEXT]     acur --eval_ppl
# --out DIR              runs in DIR/runs (results.jsonl, plans), the report in DIR/report
#                        (default: compare/<model's last path component>)
# --dense                also evaluate the uncompressed model (the plots' reference line)
# --append               add to an existing DIR/runs/results.jsonl instead of refusing it
# --no_cache             do not share calibration, statistics and sensitivity between the
#                        ratios of a method (acur --use_cache --cache_dir DIR/cache otherwise)
# --log_y                perplexity on a log scale in the report
# -- FLAGS...            acur flags for every run (--seqlen, --device, --n_calib_samples, ...)
#
# Binaries: $ACUR and $ACUR_REPORT, default build/apps/acur and build/apps/acur_report.
# A failed run is reported and the others go on; the exit status is then 1.
set -uo pipefail

die() { echo "compare.sh: $*" >&2; exit 2; }

acur=${ACUR:-build/apps/acur}
report=${ACUR_REPORT:-build/apps/acur_report}
model= ratios= calib= eval_sets= out= dense=0 append=0 cache=1 log_y=0
methods=()
common=()
while (($#)); do
  case $1 in
    --model) model=${2:?--model needs a value}; shift 2 ;;
    --method) methods+=("${2:?--method needs a value}"); shift 2 ;;
    --ratios) ratios=${2:?--ratios needs a value}; shift 2 ;;
    --calib) calib=${2:?--calib needs a value}; shift 2 ;;
    --eval) eval_sets=${2:?--eval needs a value}; shift 2 ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --dense) dense=1; shift ;;
    --append) append=1; shift ;;
    --no_cache) cache=0; shift ;;
    --log_y) log_y=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; common=("$@"); break ;;
    *) die "unknown argument \"$1\" (see --help)" ;;
  esac
done
[[ -n $model ]] || die "give --model"
((${#methods[@]})) || die "give at least one --method"
[[ -n $ratios ]] || die "give --ratios"
[[ -n $calib ]] || die "give --calib"
[[ -n $eval_sets ]] || die "give --eval"
[[ -x $acur ]] || die "no acur at $acur (build it, or set ACUR)"
[[ -x $report ]] || die "no acur_report at $report (build it, or set ACUR_REPORT)"
IFS=', ' read -ra ratio_list <<<"$ratios"
for r in "${ratio_list[@]}"; do
  [[ $r =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || die "--ratios: \"$r\" is not a ratio in (0, 1]"
done
name=${model%/}
out=${out:-compare/${name##*/}}
runs="$out/runs"
if [[ -e $runs/results.jsonl && $append == 0 ]]; then
  die "$runs/results.jsonl exists (pass --append to add to it, or choose another --out)"
fi
mkdir -p "$runs" || die "cannot create $runs"
cache_flags=()
((cache)) && cache_flags=(--use_cache --cache_dir "$out/cache")

failed=0
run_acur() {  # label, then acur flags
  local label=$1 log
  shift
  log="$runs/$(printf '%s' "$label" | tr -cs 'A-Za-z0-9.-' '_').log"
  echo "compare.sh: $label" >&2
  if ! "$acur" --model_id "$model" --eval_ppl "$eval_sets" --output "$runs" "$@" >"$log" 2>&1; then
    echo "compare.sh: $label failed: $(tail -n 1 "$log") (log: $log)" >&2
    failed=$((failed + 1))
  fi
}

((dense)) && run_acur "dense" --raw_model "${common[@]}"
for spec in "${methods[@]}"; do
  method=${spec%%:*}
  flags=()
  [[ $spec == *:* ]] && read -ra flags <<<"${spec#*:}"
  [[ -n $method ]] || die "--method \"$spec\" has no method name"
  for r in "${ratio_list[@]}"; do
    run_acur "$method ${flags[*]} at $r" --method "$method" --param_ratio_target "$r" --calib_dataset "$calib" \
      "${cache_flags[@]}" "${flags[@]}" "${common[@]}"
  done
done

plans=()
while IFS= read -r p; do plans+=("$p"); done < <(ls "$runs"/plan-*.json 2>/dev/null)
report_flags=()
((log_y)) && report_flags+=(--log_y)
((${#plans[@]})) && report_flags+=(--plan "${plans[@]}")
[[ -s $runs/results.jsonl ]] || { echo "compare.sh: no run succeeded" >&2; exit 1; }
"$report" --results "$runs/results.jsonl" --output "$out/report" --title "Comparison on ${name##*/}" "${report_flags[@]}" ||
  exit 1
echo "report: $out/report/report.html (and report.md)"
((failed == 0)) || { echo "compare.sh: $failed run(s) failed" >&2; exit 1; }
