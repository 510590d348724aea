#pragma once
/// Compressors by method name.
///
///   auto c = cur4llm::compress::make_compressor("cur");
///   auto slot = c->compress(w, b, s, 0.8);

#include <cur4llm/compress/compressor.h>
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/data_cur.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>

#include <string>
#include <vector>

namespace cur4llm::compress {

/// The fixed options of every method; each compressor reads its own.
struct CompressorOptions {
  CUROptions cur;  // for "cur" (param_ratio and scale are given per call)
  SVDOptions svd;  // for "svd" and "svd_whiten" (param_ratio and scale are given per call)
  SkeletonOptions skeleton;  // for the skeleton methods (each method sets the side)
  DataCUROptions data_cur;   // for "cur_whiten", "cur_deim", "cur_qr" (each method sets the selection)
};

/// The method names make_compressor knows: "cur", "svd", "grad_cur" (scale),
/// "svd_whiten", "skeleton", "skeleton_row", "skeleton_col", "skeleton_swap",
/// "cur_whiten", "cur_deim", "cur_qr" (Gram), "skeleton_diag" (scale); docs/methods.md.
const std::vector<std::string>& compressor_names();

/// The compressor for `method`; std::invalid_argument listing the valid names otherwise.
CompressorPtr make_compressor(const std::string& method, const CompressorOptions& options = {});

}  // namespace cur4llm::compress
