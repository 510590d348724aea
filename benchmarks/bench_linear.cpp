// Forward time of one Linear layer, dense against its factorized forms (CUR,
// CUR with U folded into C, SVD) at the same parameter ratios, for decoding
// (1 token) and prefill (2048 tokens). Random values: the time does not depend
// on them. One JSON line per measurement; timings only.
//
//   bench_linear [--device cuda] [--dtype bf16]
//                [--shapes 768x768,768x3072,3072x768,4096x4096,4096x11008,11008x4096]   (IN x OUT)
//                [--ratios 0.9,0.8,0.6,0.4] [--tokens 1,2048] [--kinds cur,cur_folded,svd]
//                [--decode_iters 2000] [--prefill_iters 50] [--graph 1] [--packed rtn_int8,rtn_int4]
//
// --packed: the dense weight quantized and kept packed (quant::PackedLinear; kinds
// "packed_rtn_int8", ...; "weight_gb_per_s" then counts the packed bytes). Empty: none.
//
// Where cur4llm's CUDA kernels are built, factorized layers decode (<= 8 tokens)
// in one kernel launch; each factorized measurement is also repeated with the
// kernels off ("fused": false: the plain at::linear chain).
// Each measurement is the mean over back-to-back calls (launch overheads
// included, as in an eager decoding loop), with the device synchronised once
// around them. On CUDA, --graph 1 (default) also reports "graph_us": the same
// calls captured in a CUDA graph and replayed, i.e. the device's time without
// the host's launch overheads (as in a decoding loop under CUDA graphs).
#include "bench_common.h"

#include <cur4llm/quant/packed_linear.h>
#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <iostream>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  const auto device = model::parse_device(args.str("device", "cpu"));
  const auto dtype = model::parse_dtype(args.str("dtype", device.is_cuda() ? "bf16" : "fp32"));
  const auto options = at::TensorOptions().device(device).dtype(dtype);
  const int64_t decode_iters = args.integer("decode_iters", 2000);
  const int64_t prefill_iters = args.integer("prefill_iters", 50);
  const std::string name = bench::device_name(device);
  c10::InferenceMode guard;

  for (const auto& shape : args.list("shapes", "768x768,768x3072,3072x768,4096x4096,4096x11008,11008x4096")) {
    const auto x_at = shape.find('x');
    if (x_at == std::string::npos) throw std::invalid_argument("shape " + shape + " is not INxOUT");
    const int64_t in = std::stoll(shape.substr(0, x_at)), out = std::stoll(shape.substr(x_at + 1));
    auto dense = std::make_shared<model::DenseLinear>(at::randn({out, in}, options) / std::sqrt(double(in)), at::Tensor());
    for (const auto& tokens_str : args.list("tokens", "1,2048")) {
      const int64_t tokens = std::stoll(tokens_str);
      const int64_t iters = tokens <= 16 ? decode_iters : prefill_iters;
      auto x = at::randn({tokens, in}, options);
      auto time_of = [&](const model::LinearSlot& slot) {
        for (int i = 0; i < 10; ++i) (void)slot.forward(x);
        return bench::timed(device, [&] {
                 for (int64_t i = 0; i < iters; ++i) (void)slot.forward(x);
               }) /
               static_cast<double>(iters);
      };
      const bool graphs = args.integer("graph", 1) != 0 && device.is_cuda();
      auto graph_of = [&](const model::LinearSlot& slot) -> std::optional<double> {
        if (!graphs) return std::nullopt;
        const int calls = tokens <= 16 ? 200 : 10;
        std::string why;
        auto t = bench::graph_timed(device, calls, tokens <= 16 ? 20 : 5, [&] { (void)slot.forward(x); }, &why);
        if (!t) std::cerr << "bench_linear: no graph timing (" << why << ")\n";
        return t;
      };
      const double dense_s = time_of(*dense);
      const auto dense_graph = graph_of(*dense);
      auto record = [&](const std::string& kind, double ratio, const model::LinearSlot& slot, double seconds,
                        std::optional<double> stored_bytes = std::nullopt) {
        nlohmann::json j = {{"benchmark", "linear"},    {"device_name", name},
                            {"fused", util::fused_kernels_enabled()},
                            {"dtype", c10::toString(dtype)}, {"in", in},
                            {"out", out},               {"tokens", tokens},
                            {"kind", kind},             {"ratio", ratio},
                            {"params", slot.weight_params()},
                            {"us", seconds * 1e6},      {"speedup_vs_dense", dense_s / seconds}};
        const double bytes = stored_bytes ? *stored_bytes
                                          : static_cast<double>(slot.weight_params()) *
                                                static_cast<double>(at::elementSize(dtype));
        j["weight_gb_per_s"] = bytes / seconds / 1e9;
        if (const auto g = graph_of(slot)) {
          j["graph_us"] = *g * 1e6;
          if (dense_graph) j["graph_speedup_vs_dense"] = *dense_graph / *g;
        }
        j["tflops"] = 2.0 * static_cast<double>(slot.weight_params()) * static_cast<double>(tokens) / seconds / 1e12;
        std::cout << j.dump() << std::endl;
      };
      record("dense", 1.0, *dense, dense_s);
      for (const auto& format : args.list("packed", "rtn_int8,rtn_int4")) {
        const quant::PackedLinear packed(quant::quantize_tensor(dense->weight(), quant::parse_quant_format(format)),
                                         at::Tensor());
        record("packed_" + format, 1.0, packed, time_of(packed), static_cast<double>(packed.packed_bytes()));
        std::cout << nlohmann::json{{"benchmark", "linear_check"}, {"kind", "packed_" + format}, {"in", in},
                                    {"out", out}, {"tokens", tokens}, {"fused", packed.fused_for(x)},
                                    {"max_abs_diff", (packed.forward(x) - at::linear(x, packed.reconstruct_weight().to(dtype)))
                                                         .abs().max().item<double>()}}
                         .dump()
                  << std::endl;
      }
      for (const auto& ratio_str : args.list("ratios", "0.9,0.8,0.6,0.4")) {
        const double ratio = std::stod(ratio_str);
        for (const auto& kind : args.list("kinds", "cur,cur_folded,svd")) {
          auto slot = bench::random_factorized(kind, out, in, ratio, at::Tensor(), options);
          record(kind, ratio, *slot, time_of(*slot));
          if (util::fused_kernels_enabled()) {
            auto fused_y = slot->forward(x).to(at::kFloat);
            util::set_fused_kernels_enabled(false);
            auto plain_y = slot->forward(x).to(at::kFloat);
            record(kind, ratio, *slot, time_of(*slot));
            util::set_fused_kernels_enabled(true);
            // The two paths' largest difference, against the output's scale (a correctness check).
            std::cout << nlohmann::json{{"benchmark", "linear_check"}, {"kind", kind}, {"in", in}, {"out", out},
                                        {"tokens", tokens}, {"ratio", ratio},
                                        {"max_abs_diff", (fused_y - plain_y).abs().max().item<double>()},
                                        {"max_abs", plain_y.abs().max().item<double>()}}
                             .dump()
                      << std::endl;
          }
        }
      }
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_linear: " << e.what() << "\n";
  return 1;
}
