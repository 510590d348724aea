#include <cur4llm/compress/factory.h>

#include <cur4llm/compress/optimize_scale.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <stdexcept>

namespace cur4llm::compress {

std::vector<model::LinearPtr> PreparedLayer::build_many(const std::vector<double>& ratios,
                                                       std::vector<std::string>* errors) const {
  std::vector<model::LinearPtr> out;
  if (errors) errors->assign(ratios.size(), std::string());
  for (size_t i = 0; i < ratios.size(); ++i) {
    try {
      out.push_back(build(ratios[i]));
    } catch (const CompressionError& e) {
      out.push_back(nullptr);
      if (errors) (*errors)[i] = e.what();
    }
  }
  return out;
}

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
