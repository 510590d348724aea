// libFuzzer target: a tokenizer.json, loaded and used on a short text.
#include <cur4llm/tokenize/tokenizer.h>

#include "fuzz_common.h"

#include <exception>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = cur4llm::fuzz::scratch() / "tokenizer.json";
  cur4llm::fuzz::write(path, data, size);
  try {
    auto tok = cur4llm::tokenize::load_tokenizer_json(path);
    (void)tok->decode(tok->encode("Hello world, <s> it's 2024!\n"));
  } catch (const std::exception&) {
  }
  return 0;
}
