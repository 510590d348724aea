// libFuzzer target: a safetensors file (length prefix, JSON header, data).
#include <cur4llm/io/safetensors.h>

#include "fuzz_common.h"

#include <exception>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = cur4llm::fuzz::scratch() / "x.safetensors";
  cur4llm::fuzz::write(path, data, size);
  try {
    cur4llm::io::SafetensorsFile file(path);
    for (const auto& name : file.names()) (void)file.load(name);
    try {
      file.verify_data_checksum();
    } catch (const std::exception&) {
    }
  } catch (const std::exception&) {
  }
  return 0;
}
