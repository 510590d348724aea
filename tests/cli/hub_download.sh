#!/bin/sh
# acur --model_id org/name from a fake Hub on 127.0.0.1 (tests/support/fake_hub.py):
# downloaded and evaluated, then evaluated again offline from the cache without a
# request; a revision the Hub lacks is a one-line error naming it (exit 2).
# Usage: hub_download.sh ACUR FAKE_HUB MODEL_FOLDER TEXT WORK_FOLDER
set -u
ACUR=$1 FAKE_HUB=$2 MODEL=$3 TEXT=$4 WORK=$5
if ! command -v python3 > /dev/null 2>&1; then
  echo "SKIPPED: python3 is not available to run the fake Hub"
  exit 77
fi
fail() {
  echo "FAILED: $1"
  [ -n "${2:-}" ] && cat "$2"
  exit 1
}
rm -rf "$WORK" && mkdir -p "$WORK" || fail "cannot make $WORK"
python3 "$FAKE_HUB" --model "$MODEL" --repo acme/tiny --port-file "$WORK/port" --log "$WORK/requests.jsonl" \
  --lifetime 300 &
HUB=$!
trap 'kill $HUB 2> /dev/null' EXIT
i=0
while [ ! -f "$WORK/port" ]; do
  i=$((i + 1))
  [ $i -gt 300 ] && fail "the fake Hub did not start"
  sleep 0.1
done
HF_ENDPOINT="http://127.0.0.1:$(cat "$WORK/port")"
HF_HUB_CACHE="$WORK/cache"
HF_TOKEN_PATH="$WORK/no-token"
no_proxy=127.0.0.1
NO_PROXY=127.0.0.1
export HF_ENDPOINT HF_HUB_CACHE HF_TOKEN_PATH no_proxy NO_PROXY
unset HF_TOKEN HUGGING_FACE_HUB_TOKEN HF_HUB_OFFLINE TRANSFORMERS_OFFLINE

# transformers gives 43.5499 for this model and text (tests/data/tiny_opt_reference.json).
"$ACUR" --model_id acme/tiny --raw_model --eval_ppl "$TEXT" --seqlen 128 --output "$WORK/out" \
  > "$WORK/online.txt" 2>&1 || fail "acur with a download exited $?" "$WORK/online.txt"
grep -q "shakespeare_tail.txt 43\.5[0-9]" "$WORK/online.txt" || fail "perplexity after the download" "$WORK/online.txt"
# stderr is no terminal here: one line per downloaded file.
[ "$(grep -c '^downloaded acme/tiny ' "$WORK/online.txt")" -eq 5 ] || fail "one line per file" "$WORK/online.txt"
served=$(wc -l < "$WORK/requests.jsonl")

HF_HUB_OFFLINE=1 "$ACUR" --model_id acme/tiny --raw_model --eval_ppl "$TEXT" --seqlen 128 --output "$WORK/out" \
  > "$WORK/offline.txt" 2>&1 || fail "acur offline exited $?" "$WORK/offline.txt"
grep -q "shakespeare_tail.txt 43\.5[0-9]" "$WORK/offline.txt" || fail "perplexity offline" "$WORK/offline.txt"
[ "$(wc -l < "$WORK/requests.jsonl")" -eq "$served" ] || fail "the offline run made requests"

"$ACUR" --model_id acme/tiny --revision v9 --raw_model --eval_ppl "$TEXT" --output "$WORK/out" \
  > "$WORK/revision.txt" 2>&1
rc=$?
[ $rc -eq 2 ] || fail "a missing revision exited $rc, not 2" "$WORK/revision.txt"
grep -q "^acur: .*revision v9.*HTTP 404" "$WORK/revision.txt" || fail "the missing revision's message" "$WORK/revision.txt"
echo "passed"
