// Time to compress one Linear layer by CUR and SVD (ASVD), and a sensitivity
// sweep (one decomposition, six ratios), for random weights with a power-law
// spectrum. Prints one JSON object per line. Timings only; never pass/fail.
//
//   bench_compress [OUTxIN ...] [--device cuda] [--dtype fp32|bf16] [--ratio 0.8] [--threads N]
#include <cur4llm/compress/factory.h>

#include "bench_common.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void sync(const at::Device& device) {
  // A device-to-host copy waits for the queued kernels on every backend.
  if (!device.is_cpu()) at::zeros({1}, at::TensorOptions().device(device)).cpu();
}

template <class F>
double seconds(const at::Device& device, F&& f) {
  sync(device);
  auto t0 = Clock::now();
  f();
  sync(device);
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A [m, n] weight with singular values 1/i (trained weights decay roughly so).
at::Tensor make_weight(int64_t m, int64_t n, const at::TensorOptions& opts) {
  const int64_t r = std::min(m, n);
  auto q1 = std::get<0>(at::linalg_qr(at::randn({m, r}), "reduced"));
  auto q2 = std::get<0>(at::linalg_qr(at::randn({n, r}), "reduced"));
  auto s = at::pow(at::arange(1, r + 1, at::kFloat), -1.0);
  return at::matmul(q1 * s.unsqueeze(0), q2.transpose(0, 1)).to(opts);
}

}  // namespace

int main(int argc, char** argv) try {
  const cur4llm::bench::Args args(argc, argv);
  args.check_known({"device", "dtype", "ratio", "threads"});
  const std::string device_name = args.str("device", "cpu"), dtype_name = args.str("dtype", "fp32");
  const double ratio = args.real("ratio", 0.8);
  if (args.has("threads")) at::set_num_threads(static_cast<int>(args.integer("threads", 1)));
  const auto shapes = cur4llm::bench::parse_shapes(args.positional(), {{768, 768}, {3072, 768}, {768, 3072}});
  const at::Device device(device_name);
  const auto dtype = cur4llm::model::parse_dtype(dtype_name);
  const std::vector<double> sweep{0.4, 0.5, 0.6, 0.7, 0.8, 0.9};
  at::manual_seed(0);

  for (auto [m, n] : shapes) {
    auto w = make_weight(m, n, at::TensorOptions().dtype(dtype).device(device));
    auto scale = (at::rand({n}, at::TensorOptions().device(device)) + 0.1).pow(0.5) + 1e-6;
    for (const auto& method : cur4llm::compress::compressor_names()) {
      auto c = cur4llm::compress::make_compressor(method);
      cur4llm::model::LinearPtr slot;
      const double t_one = seconds(device, [&] { slot = c->compress(w, at::Tensor(), scale, ratio); });
      const double err = ((slot->reconstruct_weight().to(at::kFloat) - w.to(at::kFloat)) * scale.unsqueeze(0))
                             .norm().item<double>() / (w.to(at::kFloat) * scale.unsqueeze(0)).norm().item<double>();
      double t_prepare = 0, t_builds = 0;
      t_prepare = seconds(device, [&] {
        auto p = c->prepare(w, at::Tensor(), scale, sweep);
        t_builds = seconds(device, [&] {
          for (double r : sweep) p->build(r);
        });
      });
      nlohmann::json j{{"method", method}, {"out", m}, {"in", n}, {"dtype", dtype_name}, {"device", device_name},
                       {"threads", at::get_num_threads()}, {"ratio", ratio}, {"rank", c->rank_for(m, n, ratio)},
                       {"weight_params", slot->weight_params()}, {"rel_err_scaled", err},
                       {"compress_s", t_one}, {"sweep6_s", t_prepare}, {"sweep6_builds_s", t_builds}};
      std::cout << j.dump() << std::endl;
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_compress: " << e.what() << "\n";
  return 1;
}
