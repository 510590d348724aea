// libFuzzer target: a config.json.
#include <cur4llm/model/config.h>

#include "fuzz_common.h"

#include <exception>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    (void)cur4llm::model::ModelConfig::from_json(std::string(reinterpret_cast<const char*>(data), size), "config.json");
  } catch (const std::exception&) {
  }
  return 0;
}
