#include <cur4llm/compress/factory.h>

#include <cur4llm/compress/optimize_scale.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace cur4llm::compress {

const std::vector<std::string>& compressor_names() {
  static const std::vector<std::string> names{"cur", "svd", "grad_cur"};
  return names;
}

CompressorPtr make_compressor(const std::string& method, const CompressorOptions& options) {
  if (method == "cur") return std::make_unique<CURCompressor>(options.cur);
  if (method == "svd") return std::make_unique<SVDCompressor>(options.svd);
  if (method == "grad_cur") return std::make_unique<GradCURCompressor>(options.cur);
  throw std::invalid_argument(
      fmt::format("unknown compression method \"{}\" (valid: {})", method, fmt::join(compressor_names(), ", ")));
}

}  // namespace cur4llm::compress
