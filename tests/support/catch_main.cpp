#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cur4llm/util/host_memory.h>

#include "sanitizer_defaults.h"

int main(int argc, char* argv[]) {
  cur4llm::util::tune_host_allocator();  // as the apps do
  return Catch::Session().run(argc, argv);
}
