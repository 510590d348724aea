#!/usr/bin/env bash
# The library and the fast tests built with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer (CUR4LLM_FUZZ=ON, which also builds the libFuzzer
# targets of tests/fuzz over the same instrumented library); the fast tests run,
# then each fuzz target for a bounded time from its seed corpus.
#   scripts/sanitize_and_fuzz.sh [BUILD_DIR] [SECONDS_PER_FUZZ_TARGET]
# Needs Debian's clang and libclang-rt-dev (its sanitizer and libFuzzer runtimes).
# Exits non-zero on any test failure, sanitizer report or fuzzer finding (a crash-*
# file in BUILD_DIR/fuzz-findings).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=${1:-build-asan}
seconds=${2:-30}

# The fast tests: file parsing, caches, tokenizers.
tests=(test_io test_io_cache test_tokenize test_tokenize_real test_data)
fuzzers=(fuzz_safetensors fuzz_config fuzz_tokenizer_json fuzz_vocab_merges fuzz_acur_config)

cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCUR4LLM_FUZZ=ON -DCUR4LLM_BUILD_APPS=OFF -DCUR4LLM_BUILD_BENCHMARKS=OFF
cmake --build "$build" -j2 --target "${tests[@]}" "${fuzzers[@]}"

# Leak detection is off (tests/support/sanitizer_defaults.h says why: LibTorch
# and OpenBLAS are not instrumented); tests/sanitizers/ubsan.supp lists the
# UBSan reports of third-party headers, each with its reason.
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$root/tests/sanitizers/ubsan.supp
regex="^($(IFS='|'; echo "${tests[*]}")):"
# libsentencepiece must be opened with RTLD_DEEPBIND, which ASan refuses: the tests that load a
# tokenizer.model through it are left out.
ctest --test-dir "$build" --output-on-failure -j2 -R "$regex" -E 'tokenizer[.]model|load_tokenizer: bad inputs'

findings="$build/fuzz-findings"
rm -rf "$findings" && mkdir -p "$findings"
for f in "${fuzzers[@]}"; do
  work="$findings/$f"
  mkdir -p "$work/corpus"
  echo "== $f: ${seconds} s"
  status=0
  (cd "$work" && "$root/$build/tests/fuzz/$f" -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=30 -max_len=32768 \
    -print_final_stats=1 corpus "$root/$build/tests/fuzz/fuzz_corpus/$f" > log 2>&1) || status=$?
  grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::average_exec_per_sec)' "$work/log" || true
  if [ $status -ne 0 ] || ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* > /dev/null 2>&1; then
    tail -n 40 "$work/log"
    echo "$f: exit status $status; finding(s) in $work"
    exit 1
  fi
done
echo "sanitizers and fuzzers: no report"
