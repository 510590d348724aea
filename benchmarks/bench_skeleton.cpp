// Forward time of a skeleton layer against the two-GEMM low-rank layer (SVDLinear)
// and the dense Linear at the same parameter ratio: row and column side, each
// through the stored factors with a gather ("gather") and through the
// materialized interpolation matrix ("materialized", two plain GEMMs). Random
// factors of the right shapes (speed does not depend on the values). Prints
// one JSON object per (shape, ratio, layer form). Timings only; never pass/fail.
//
//   bench_skeleton [OUTxIN ...] [--device cuda] [--dtype bf16] [--tokens 2048] [--ratios 0.9,0.7] [--iters 50]
//                  [--align 64]   (ranks rounded down to a multiple: GEMM speed depends on alignment)
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/model/linear.h>

#include "bench_common.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

void sync(const at::Device& device) {
  if (!device.is_cpu()) at::zeros({1}, at::TensorOptions().device(device)).cpu();
}

double ms_per_call(const cur4llm::model::LinearSlot& slot, const at::Tensor& x, int iters) {
  for (int i = 0; i < 3; ++i) slot.forward(x);
  sync(x.device());
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) slot.forward(x);
  sync(x.device());
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
}

}  // namespace

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"device", "dtype", "tokens", "iters", "align", "ratios"});
  const std::string device_name = args.str("device", "cpu"), dtype_name = args.str("dtype", "fp32");
  const std::vector<double> ratios = args.reals("ratios", "0.9,0.7");
  const int64_t tokens = args.integer("tokens", 2048);
  const int iters = static_cast<int>(args.integer("iters", 50));
  const int64_t align = args.integer("align", 1);
  const auto shapes = bench::parse_shapes(args.positional(), {{4096, 4096}, {11008, 4096}, {4096, 11008}});
  const at::Device device(device_name);
  const auto dtype = model::parse_dtype(dtype_name);
  const auto opts = at::TensorOptions().device(device).dtype(dtype);
  c10::InferenceMode guard;
  for (auto [m, n] : shapes) {
    auto x = at::randn({tokens, n}, opts);
    model::DenseLinear dense(at::randn({m, n}, opts) * 0.02, at::Tensor());
    const double dense_ms = ms_per_call(dense, x, iters);
    for (double r : ratios) {
      const int64_t kv = std::max<int64_t>(align, compress::svd_rank_for_ratio(m, n, r, 1) / align * align);
      const int64_t ks = compress::skeleton_rank_for_ratio(m, n, r, align);
      compress::SVDLinear svd(at::randn({m, kv}, opts) * 0.02, at::randn({kv, n}, opts) * 0.02, at::Tensor());
      auto emit = [&](const std::string& form, int64_t k, double ms) {
        nlohmann::json j = {{"shape", {m, n}}, {"ratio", r}, {"form", form}, {"rank", k}, {"tokens", tokens},
                            {"dtype", dtype_name}, {"device", device_name}, {"align", align}, {"ms", ms},
                            {"dense_ms", dense_ms}};
        std::cout << j.dump() << std::endl;
      };
      emit("svd", kv, ms_per_call(svd, x, iters));
      for (auto side : {compress::SkeletonSide::Row, compress::SkeletonSide::Column}) {
        const bool row = side == compress::SkeletonSide::Row;
        const int64_t full = row ? m : n;
        auto perm = at::randperm(full, at::kLong);
        compress::SkeletonLinear s(side, row ? at::randn({ks, n}, opts) * 0.02 : at::randn({m, ks}, opts) * 0.02,
                                   row ? at::randn({m - ks, ks}, opts) * 0.02 : at::randn({ks, n - ks}, opts) * 0.02,
                                   perm, at::Tensor());
        emit(std::string(row ? "row" : "col") + "_gather", ks, ms_per_call(s, x, iters));
        s.set_materialized(true);
        emit(std::string(row ? "row" : "col") + "_materialized", ks, ms_per_call(s, x, iters));
      }
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_skeleton: " << e.what() << "\n";
  return 1;
}
