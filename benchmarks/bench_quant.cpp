// Packed RTN quantization (compress/packed_quant.h): time to quantize (and
// pack), dequantize and fake-quantize one weight per format, with the error
// and the stored size; optionally the perplexity of a model dense, with the
// reference's fp32-scale RTN (rtn_int8 / rtn_int6) and with each packed
// format's fake quantization. Prints one JSON object per line. Never pass/fail.
//
//   bench_quant [OUTxIN ...] [--device cuda] [--dtype fp32|fp16|bf16] [--repeat 3] [--threads N]
//               [--model DIR --eval TEXT [--seqlen 512]]
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/quant/quantize.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>

#include "bench_common.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void sync(const at::Device& device) {
  // A device-to-host copy waits for the queued kernels on every backend.
  if (!device.is_cpu()) at::zeros({1}, at::TensorOptions().device(device)).cpu();
}

// The fastest of `repeat` runs, in seconds.
template <class F>
double best_seconds(const at::Device& device, int repeat, F&& f) {
  double best = 1e300;
  for (int i = 0; i < repeat; ++i) {
    sync(device);
    auto t0 = Clock::now();
    f();
    sync(device);
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

double ppl(const cur4llm::model::CausalLM& lm, const std::vector<int64_t>& ids, int64_t seqlen) {
  cur4llm::eval::PerplexityOptions o;
  o.seqlen = seqlen;
  return cur4llm::eval::evaluate_perplexity(lm, ids, o).perplexity;
}

}  // namespace

int main(int argc, char** argv) try {
  namespace compress = cur4llm::compress;
  namespace quant = cur4llm::quant;
  const cur4llm::bench::Args args(argc, argv);
  args.check_known({"device", "dtype", "repeat", "threads", "model", "eval", "seqlen"});
  const std::string device_name = args.str("device", "cpu"), dtype_name = args.str("dtype", "fp32");
  const std::string model_dir = args.str("model", ""), eval_text = args.str("eval", "");
  const int repeat = static_cast<int>(args.integer("repeat", 3));
  const int64_t seqlen = args.integer("seqlen", 512);
  if (args.has("threads")) at::set_num_threads(static_cast<int>(args.integer("threads", 1)));
  const auto shapes = cur4llm::bench::parse_shapes(
      args.positional(), model_dir.empty() ? std::vector<std::pair<int64_t, int64_t>>{{4096, 11008}}
                                           : std::vector<std::pair<int64_t, int64_t>>{});
  const at::Device device(device_name);
  const auto dtype = cur4llm::model::parse_dtype(dtype_name);
  at::manual_seed(0);

  for (auto [m, n] : shapes) {
    const auto w = (at::randn({m, n}) * 0.02).to(at::TensorOptions().dtype(dtype).device(device));
    const auto wd = w.to(at::kDouble);
    for (const auto& name : quant::quant_format_names()) {
      const auto format = quant::parse_quant_format(name);
      quant::QuantizedTensor q;
      at::Tensor back, fake;
      nlohmann::json j{{"shape", {m, n}}, {"device", device_name}, {"dtype", dtype_name}, {"format", name},
                       {"threads", at::get_num_threads()}, {"repeat", repeat}};
      j["quantize_s"] = best_seconds(device, repeat, [&] { q = quant::quantize_tensor(w, format); });
      j["dequantize_s"] = best_seconds(device, repeat, [&] { back = quant::dequantize_tensor(q, dtype); });
      j["fake_quantize_s"] = best_seconds(device, repeat, [&] { fake = quant::fake_quantize(w, format); });
      if (format.group_size == 0) {  // the reference's fp32-scale version of the same bits
        j["rtn_fake_quantize_fp32_scales_s"] =
            best_seconds(device, repeat, [&] { quant::rtn_fake_quantize(w, format.bits); });
      }
      const auto err = (back.to(at::kDouble) - wd).abs();
      j["max_abs_err"] = err.max().item<double>();
      j["rms_err_over_rms_w"] = (err.pow(2).mean().sqrt() / wd.pow(2).mean().sqrt()).item<double>();
      j["nbytes"] = q.nbytes();
      j["bits_per_weight"] = 8.0 * static_cast<double>(q.nbytes()) / static_cast<double>(m * n);
      std::cout << j.dump() << std::endl;
    }
  }

  if (!model_dir.empty()) {
    if (eval_text.empty()) throw std::invalid_argument("--model needs --eval TEXT");
    const auto text = cur4llm::data::load_text(eval_text, cur4llm::data::Purpose::Evaluation, ".");
    const auto ids = cur4llm::tokenize::load_tokenizer(model_dir)->encode(text.text);
    auto run = [&](const std::string& label, const std::function<int64_t(cur4llm::model::CausalLM&)>& quantize) {
      auto lm = cur4llm::model::CausalLM::load(model_dir);
      const int64_t tensors = quantize ? quantize(*lm) : 0;
      std::cout << nlohmann::json{{"model", model_dir}, {"eval", eval_text}, {"seqlen", seqlen}, {"weights", label},
                                  {"tensors_quantized", tensors}, {"ppl", ppl(*lm, ids, seqlen)}}
                       .dump()
                << std::endl;
    };
    run("dense", {});
    for (int bits : {8, 6}) {
      run(fmt::format("rtn_int{} fp32 scales (PROTOCOL, acur --weight_quant)", bits),
          [bits](cur4llm::model::CausalLM& lm) { return quant::rtn_quantize_model(lm, bits); });
    }
    for (const auto& name : quant::quant_format_names()) {
      run(name + " packed (fp16 scales)", [name](cur4llm::model::CausalLM& lm) {
        return quant::rtn_quantize_model(lm, quant::parse_quant_format(name));
      });
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_quant: " << e.what() << "\n";
  return 1;
}
