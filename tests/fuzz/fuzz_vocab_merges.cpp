// libFuzzer target: GPT-2 vocab.json and merges.txt (the input holds both, split at its first NUL byte).
#include <cur4llm/tokenize/tokenizer.h>

#include "fuzz_common.h"

#include <algorithm>
#include <exception>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = std::find(data, data + size, uint8_t(0));
  const auto vocab = cur4llm::fuzz::scratch() / "vocab.json";
  const auto merges = cur4llm::fuzz::scratch() / "merges.txt";
  cur4llm::fuzz::write(vocab, data, nul - data);
  cur4llm::fuzz::write(merges, nul == data + size ? nul : nul + 1, nul == data + size ? 0 : data + size - nul - 1);
  try {
    auto tok = cur4llm::tokenize::load_gpt2_bpe(vocab, merges);
    (void)tok->decode(tok->encode("Hello world, it's 2024!\n"));
  } catch (const std::exception&) {
  }
  return 0;
}
