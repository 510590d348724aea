#pragma once
/// Compressors by method name.
///
///   auto c = cur4llm::compress::make_compressor("cur");
///   auto slot = c->compress(w, b, s, 0.8);

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/svd_linear.h>

#include <string>
#include <vector>

namespace cur4llm::compress {

/// The fixed options of every method; each compressor reads its own.
struct CompressorOptions {
  CUROptions cur;  // for "cur" (param_ratio and scale are given per call)
  SVDOptions svd;  // for "svd" (param_ratio and scale are given per call)
};

/// The method names make_compressor knows: {"cur", "svd", "grad_cur"}.
const std::vector<std::string>& compressor_names();

/// The compressor for `method`; std::invalid_argument listing the valid names otherwise.
CompressorPtr make_compressor(const std::string& method, const CompressorOptions& options = {});

}  // namespace cur4llm::compress
