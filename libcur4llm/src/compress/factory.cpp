#include <cur4llm/compress/factory.h>

#include <cur4llm/compress/optimize_scale.h>
#include <cur4llm/compress/whiten_svd.h>

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
  static const std::vector<std::string> names{"cur",          "svd",          "grad_cur",      "svd_whiten",
                                              "skeleton",     "skeleton_row", "skeleton_col",  "skeleton_diag", "skeleton_swap",
                                              "cur_whiten",   "cur_deim",     "cur_qr"};
  return names;
}

CompressorPtr make_compressor(const std::string& method, const CompressorOptions& options) {
  if (method == "cur") return std::make_unique<CURCompressor>(options.cur);
  if (method == "svd") return std::make_unique<SVDCompressor>(options.svd);
  if (method == "grad_cur") return std::make_unique<GradCURCompressor>(options.cur);
  if (method == "svd_whiten") return std::make_unique<WhitenedSVDCompressor>(options.svd);
  auto skeleton = [&](SkeletonSide side, LayerStatistic statistic) {
    SkeletonOptions o = options.skeleton;
    o.side = side;
    return std::make_unique<SkeletonCompressor>(method, o, statistic);
  };
  if (method == "skeleton") return skeleton(SkeletonSide::Auto, LayerStatistic::Gram);
  if (method == "skeleton_row") return skeleton(SkeletonSide::Row, LayerStatistic::Gram);
  if (method == "skeleton_col") return skeleton(SkeletonSide::Column, LayerStatistic::Gram);
  if (method == "skeleton_diag") return skeleton(SkeletonSide::Row, LayerStatistic::Scale);
  if (method == "skeleton_swap") {
    SkeletonOptions o = options.skeleton;
    o.side = SkeletonSide::Row;
    if (o.exchange <= 0) o.exchange = 1;
    return std::make_unique<SkeletonCompressor>(method, o, LayerStatistic::Gram);
  }
  auto data_cur = [&](SubsetSelection selection) {
    DataCUROptions o = options.data_cur;
    o.selection = selection;
    return std::make_unique<DataCURCompressor>(o);
  };
  if (method == "cur_whiten") return data_cur(SubsetSelection::Leverage);
  if (method == "cur_deim") return data_cur(SubsetSelection::DEIM);
  if (method == "cur_qr") return data_cur(SubsetSelection::PivotedQR);
  throw std::invalid_argument(
      fmt::format("unknown compression method \"{}\" (valid: {})", method, fmt::join(compressor_names(), ", ")));
}

}  // namespace cur4llm::compress
