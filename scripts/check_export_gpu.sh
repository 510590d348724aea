#!/usr/bin/env bash
# Loads the folders of benchmarks/results_export.sh in transformers
# (scripts/check_hf_repo.py) and checks each against the C++ perplexity of
# docs/results.md and docs/export.md (relative 1e-3; the figures agreed to
# 1e-7 when measured). Run on a host with PyTorch and transformers, e.g. the
# GPU host, after building the folders on any machine:
#
#   BIN=build/apps SHARED=../shared OUT_DIR=out bash benchmarks/results_export.sh         # CPU, ~9 min
#   REPOS=out SHARED=../shared LOG_DIR=logs bash scripts/check_export_gpu.sh           # transformers
#
# The skeleton folders (skeleton_row / skeleton_col layers) and the folded CUR
# folders are checked against the C++ perplexities results_export.sh wrote to
# $REPOS/expected_ppl.txt; ONLY=skeleton or ONLY=folded checks those folders
# alone (after results_export.sh with the same ONLY).
#
# Exit status 0 only if every folder loads with no missing or unexpected key,
# generates, and matches.
set -uo pipefail
repos=${REPOS:?folder of the repositories}
shared=${SHARED:?the shared/ folder with data/}
logs=${LOG_DIR:-.}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$logs"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
s=stories260K-hf
declare -A stories=(
  ["$shared/data/models/$s"]=5.675418706 ["$repos/$s-acur90"]=45.420910 ["$repos/$s-acur90-svd"]=12.289423
  ["$repos/$s-rtn_int8"]=5.681826 ["$repos/$s-rtn_int6"]=5.722003 ["$repos/$s-rtn_int4"]=6.264041
  ["$repos/$s-acur90-rtn_int8"]=45.663221 ["$repos/$s-acur90-rtn_int6"]=46.670789 ["$repos/$s-acur90-rtn_int4"]=50.480391
  ["$repos/$s-acur90-svd-rtn_int8"]=12.296453 ["$repos/$s-acur90-svd-rtn_int6"]=12.476738
  ["$repos/$s-acur90-svd-rtn_int4"]=14.810259)
o=tiny-shakespeare-opt
fixture="$here/../tests/data"
declare -A opt=(
  ["$fixture/models/$o"]=43.549866675 ["$repos/$o-acur80"]=273.913567 ["$repos/$o-acur80-svd"]=74.582105
  ["$repos/$o-acur80-rtn_int4"]=293.113202 ["$repos/$o-rtn_int8"]=43.655550 ["$repos/$o-acur80-svd-rtn_int6"]=75.077082)

only=${ONLY:-}
if [ -n "$only" ]; then stories=() opt=(); fi
if [ -f "$repos/expected_ppl.txt" ]; then
  while IFS== read -r folder ppl; do
    case "$folder" in
      "$s"-*) stories["$repos/$folder"]=$ppl ;;
      "$o"-*) opt["$repos/$folder"]=$ppl ;;
    esac
  done <"$repos/expected_ppl.txt"
elif [ -n "$only" ]; then
  echo "check_export_gpu: no $repos/expected_ppl.txt (run ONLY=$only benchmarks/results_export.sh first)" >&2
  exit 1
fi

run() {  # run NAME ARRAY-NAME ARGS...
  local name=$1 table=$2
  shift 2
  local -n expected=$table
  local paths=() expects=()
  for p in "${!expected[@]}"; do
    paths+=("$p")
    expects+=(--expect "$p=${expected[$p]}")
  done
  python3 "$here/check_hf_repo.py" "${paths[@]}" "$@" --resave "${expects[@]}" 2>"$logs/$name.err" | tee "$logs/$name.jsonl"
}
status=0
run stories stories --text "$shared/data/text/tinystories/tinystories_eval.txt" --seqlen 512 --batch_size 64 \
  --sentencepiece || status=1
run opt opt --text "$fixture/text/shakespeare_tail.txt" --seqlen 128 --prompt "ROMEO:" || status=1
echo "check_export_gpu: $([ $status = 0 ] && echo all passed || echo FAILED)"
exit $status
