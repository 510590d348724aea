// libFuzzer target: the config.json of an acur repository (its "acur" section
// describes the stored layers), over the tiny OPT checkpoint of tests/data.
#include <cur4llm/model/causal_lm.h>

#include "fuzz_common.h"

#include <exception>
#include <filesystem>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace fs = std::filesystem;
  const fs::path folder = cur4llm::fuzz::scratch() / "repo";
  static const bool ready = [&] {
    fs::create_directories(folder);
    std::error_code ec;
    fs::create_symlink(fs::path(CUR4LLM_FUZZ_MODEL) / "model.safetensors", folder / "model.safetensors", ec);
    return true;
  }();
  (void)ready;
  cur4llm::fuzz::write(folder / "config.json", data, size);
  try {
    (void)cur4llm::model::CausalLM::load(folder);
  } catch (const std::exception&) {
  }
  return 0;
}
