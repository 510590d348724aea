// Generation throughput with the KV cache: tokens/s of the prefill and of the
// decoding steps for a model folder (real weights) or a config.json (random
// weights of that shape), dense or with every decoder Linear factorized.
// Prints one JSON object per (batch, layers) pair. Timings only; never a
// pass/fail test.
//
//   bench_decode --model PATH | --config CONFIG.json
//                [--device cuda] [--dtype bf16] [--batch 1,16] [--prompt_len 512] [--new_tokens 256]
//                [--factorize dense,svd:0.6,cur:0.6,narrow:0.8,narrow_mlp:0.8,packed:rtn_int4] [--iters 1] [--graph 0] [--seed 0]
//                [--narrow_align 8] [--trace FILE] [--group 1] [--dense_mma 0|1]
//                [--norm_in_product 0|1] [--decode_vector 0|1] [--packed_prefill 0|1] [--cudnn_attention 0|1]
//
// Each run: a prefill of --prompt_len random tokens per row, then
// --new_tokens - 1 greedy decoding steps (the argmax stays on the device; one
// step is one forward_cached of one token per row), timed with the device
// synchronised at both ends. KIND:RATIO replaces every Linear of the decoder
// layers by a factorized one of random factors (as bench_forward). --graph 1
// adds the decoding step captured in a CUDA graph at the cache length halfway
// through the run and replayed (the step's time without the host's launch
// overheads): "graph_decode_step_s" and "graph_decode_tokens_per_s"; off CUDA,
// or if the capture fails, "graph_error" says why. packed:FORMAT (rtn_int8,
// rtn_int4) quantizes every dense Linear of the decoder layers and keeps it
// packed (quant::PackedLinear, as LoadOptions::keep_packed loads a quantized
// repository): "packed_layers" and "packed_bytes" say what it holds.
// narrow:RATIO gives every decoder layer the smaller dense shapes a module
// method leaves (MLP width and query/key/value head widths times RATIO, in
// multiples of --narrow_align); narrow_mlp:RATIO narrows the MLPs alone (what
// mlp_nystrom leaves), to RATIO of the decoder's Linear weights; narrow:RATIO@H gives the
// heads H query/key and value dimensions and the MLPs the width that makes up RATIO.
// Steps joined by '+' apply in order: narrow:0.6+packed:rtn_int4 packs the
// narrowed layers, svd:0.6+packed:rtn_int4 the factors of the SVD layers.
// Projections that read one input (q/k/v, gate/up; dense or packed) are stacked
// into one product each (CausalLM::group_projections, as the generate app loads a
// model); --group 0 keeps them apart. --dense_mma, --norm_in_product, --decode_vector and
// --packed_prefill switch cur4llm's kernels one by one (util::Kernel: dense 16-bit steps of
// up to 8 tokens on the tensor-core kernel instead of cuBLAS; LLaMA's input norms inside the
// products that follow them; decoding attention reading the cache 16 bytes a lane; a packed
// layer's prefill weight rebuilt in one launch): 1 on, 0 off, left out the library's default
// (on, unless the environment says otherwise). Each JSON line says which were on.
// Each timed decoding step is an NVTX range "decode_step" (CUDA builds), for
// per-kernel times: ncu --nvtx --nvtx-include "decode_step/" bench_decode ...
// --trace FILE saves a Chrome trace of the last timed run (PyTorch's profiler:
// the prefill and the decoding steps as user scopes "decode.prefill" and
// "decode.step") as FILE.<spec>.b<batch>.json; benchmarks/trace_summary.py reads it.
#include "bench_common.h"
#include "bench_trace.h"

#include <cur4llm/model/kv_cache.h>
#include <cur4llm/quant/packed_linear.h>
#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <fmt/format.h>

#include <iostream>
#include <map>

int main(int argc, char** argv) try {
  using namespace cur4llm;
  const bench::Args args(argc, argv);
  args.check_known({"model", "config", "device", "dtype", "batch", "prompt_len", "new_tokens", "factorize", "iters",
                    "graph", "seed", "peak_tflops", "narrow_align", "trace", "group", "dense_mma",
                    "norm_in_product", "decode_vector", "packed_prefill", "cudnn_attention"});
  const int64_t prompt_len = args.integer("prompt_len", 512);
  const int64_t new_tokens = args.integer("new_tokens", 256);
  const int iters = static_cast<int>(args.integer("iters", 1));
  if (prompt_len < 1 || new_tokens < 2 || iters < 1) {
    throw std::invalid_argument("--prompt_len must be >= 1, --new_tokens >= 2, --iters >= 1");
  }

  const int64_t narrow_align = args.integer("narrow_align", 8);
  if (narrow_align < 1) throw std::invalid_argument("--narrow_align must be at least 1");
  const bench::Tracer tracer(args.str("trace", ""));
  const std::pair<const char*, util::Kernel> switches[] = {{"dense_mma", util::Kernel::dense_mma},
                                                         {"norm_in_product", util::Kernel::norm_in_product},
                                                         {"decode_vector", util::Kernel::decode_vector},
                                                         {"packed_prefill", util::Kernel::packed_prefill}};
  for (const auto& [flag, kernel] : switches) {
    if (args.has(flag)) util::set_kernel_enabled(kernel, args.integer(flag, 0) != 0);
  }
  // --cudnn_attention 0: a prompt's causal attention left to ATen's choice instead of cuDNN's kernel.
#if TORCH_VERSION_MAJOR >= 2
  if (args.has("cudnn_attention")) at::globalContext().setSDPUseCuDNN(args.integer("cudnn_attention", 1) != 0);
  const auto cudnn_attention = [] { return at::globalContext().userEnabledCuDNNSDP(); };
#else
  if (args.has("cudnn_attention")) throw std::invalid_argument("--cudnn_attention needs LibTorch 2.x");
  const auto cudnn_attention = [] { return false; };
#endif
  std::string source;
  auto lm = bench::load_model(args, &source);
  const auto& c = lm->config();
  const c10::Device device = lm->device();
  if (c.max_position_embeddings > 0 && prompt_len + new_tokens > c.max_position_embeddings) {
    throw std::invalid_argument(fmt::format("--prompt_len {} + --new_tokens {} exceed the model's {} positions "
                                            "(max_position_embeddings)",
                                            prompt_len, new_tokens, c.max_position_embeddings));
  }
  std::map<std::string, model::LinearPtr> dense_slots;
  for (const auto& info : lm->linears()) dense_slots[info.name] = lm->linear_ptr(info.name);
  // With one configuration the dense layers it replaces are let go, so that the device
  // memory figures are the model's as it runs (with several they are kept to restore).
  const auto specs = args.list("factorize", "dense");
  const bool keep_dense = specs.size() > 1;

  for (const auto& spec : specs) {
    if (keep_dense) bench::restore_layers(*lm, dense_slots);
    nlohmann::json base = {{"benchmark", "decode"}, {"source", source}, {"layers", spec}};
    for (const auto& step : bench::split(spec, '+')) {
      if (step.rfind("packed:", 0) == 0) {
        // Packs the decoder's Linears as the steps before left them: dense (also narrowed)
        // ones as packed weights, svd/cur ones as packed factors.
        const auto format = quant::parse_quant_format(step.substr(7));
        int64_t layers = 0, bytes = 0;
        for (const auto& info : lm->linears()) {
          if (info.layer < 0) continue;
          auto packed = quant::pack_slot(lm->linear(info.name), format);
          if (const auto* p = dynamic_cast<const quant::PackedLinear*>(packed.get())) bytes += p->packed_bytes();
          if (const auto* f = dynamic_cast<const quant::PackedFactors*>(packed.get())) bytes += f->packed_bytes();
          lm->replace_linear(info.name, packed);
          ++layers;
        }
        base["packed_layers"] = layers;
        base["packed_bytes"] = bytes;
      } else if (step.rfind("narrow:", 0) == 0) {
        // narrow:R (uniform) or narrow:R@H (heads of H dimensions, the MLP width making up R).
        const auto at = step.find('@');
        const double ratio = std::stod(step.substr(7, at == std::string::npos ? std::string::npos : at - 7));
        const int64_t heads = at == std::string::npos ? -1 : std::stoll(step.substr(at + 1));
        base["narrowed_layers"] = bench::narrow_decoder(*lm, ratio, narrow_align, heads);
      } else if (step.rfind("narrow_mlp:", 0) == 0) {
        base["narrowed_layers"] = bench::narrow_decoder(*lm, std::stod(step.substr(11)), narrow_align, c.head_dim);
      } else if (step != "dense") {
        const auto colon = step.find(':');
        if (colon == std::string::npos) throw std::invalid_argument("--factorize KIND:RATIO, e.g. svd:0.6");
        base["factorized_layers"] =
            bench::factorize_decoder(*lm, step.substr(0, colon), std::stod(step.substr(colon + 1)));
      }
    }
    // As the generate app runs a model: each layer's q/k/v and gate/up as one product where they stack.
    if (args.integer("group", 1) != 0) base["grouped_projections"] = lm->group_projections();
    for (const auto& [flag, kernel] : switches) base[flag] = util::kernel_enabled(kernel);
    base["cudnn_attention"] = cudnn_attention();
    if (!keep_dense) dense_slots.clear();
    // Weights and buffers on the device before any input: what the layers hold.
    base["model_device_bytes"] = bench::device_memory(device, /*peak=*/false);
    for (const auto& batch_str : args.list("batch", "1")) {
      const int64_t batch = std::stoll(batch_str);
      c10::InferenceMode guard;
      auto prompt = at::randint(c.vocab_size, {batch, prompt_len}, at::TensorOptions().dtype(at::kLong)).to(device);
      const int64_t capacity = prompt_len + new_tokens;
      double prefill_s = 0, decode_s = 0;
      int64_t cache_bytes = 0;
      bench::reset_peak_memory(device);
      auto run_once = [&](int64_t steps, double* pre, double* dec) {
        model::KVCache cache(batch, capacity, device);
        at::Tensor next;
        *pre = bench::timed(device, [&] {
          RECORD_USER_SCOPE("decode.prefill");
          next = lm->forward_cached(prompt, cache).argmax(-1);
        });
        *dec = bench::timed(device, [&] {
          for (int64_t s = 0; s < steps; ++s) {
            bench::ProfileRange range("decode_step");
            RECORD_USER_SCOPE("decode.step");
            next = lm->forward_cached(next, cache).argmax(-1);
          }
        });
        cache_bytes = cache.bytes();
      };
      double w1 = 0, w2 = 0;
      run_once(2, &w1, &w2);  // warm-up: kernels, tables, allocator
      for (int i = 0; i < iters; ++i) {
        double pre = 0, dec = 0;
        if (i + 1 == iters) tracer.start();
        run_once(new_tokens - 1, &pre, &dec);
        if (i + 1 == iters) tracer.save(fmt::format(".{}.b{}.json", bench::file_safe(spec), batch));
        prefill_s += pre / iters;
        decode_s += dec / iters;
      }
      nlohmann::json out = base;
      out.update(bench::device_json(*lm, args.real("peak_tflops", 0)));
      out.update({{"model_type", c.model_type},
                  {"linear_params", lm->linear_weight_params()},
                  {"batch", batch},
                  {"prompt_len", prompt_len},
                  {"new_tokens", new_tokens},
                  {"iters", iters},
                  {"prefill_s", prefill_s},
                  {"prefill_tokens_per_s", static_cast<double>(batch * prompt_len) / prefill_s},
                  {"decode_s", decode_s},
                  {"decode_step_s", decode_s / static_cast<double>(new_tokens - 1)},
                  {"decode_tokens_per_s", static_cast<double>(batch * (new_tokens - 1)) / decode_s},
                  {"kv_cache_bytes", cache_bytes}});
      if (args.integer("graph", 0) != 0) {
        // One decoding step at the cache length halfway through, captured and replayed.
        model::KVCache cache(batch, capacity, device);
        (void)lm->forward_cached(prompt, cache);
        auto fill = at::randint(c.vocab_size, {batch, new_tokens / 2}, at::TensorOptions().dtype(at::kLong)).to(device);
        (void)lm->forward_cached(fill, cache);
        const int64_t length = cache.length();
        auto step_ids = at::randint(c.vocab_size, {batch, 1}, at::TensorOptions().dtype(at::kLong)).to(device);
        std::string why;
        const auto step_s = bench::graph_timed(
            device, 1, 20,
            [&] {
              cache.truncate(length);
              (void)lm->forward_cached(step_ids, cache);
            },
            &why);
        if (step_s) {
          out["graph_decode_step_s"] = *step_s;
          out["graph_decode_tokens_per_s"] = static_cast<double>(batch) / *step_s;
          out["graph_cache_length"] = length;
        } else {
          out["graph_error"] = why.empty() ? std::string("CUDA graphs need a CUDA device") : why;
        }
      }
      out["peak_device_memory_bytes"] = bench::peak_memory(device);
      out["peak_host_rss_bytes"] = bench::peak_host_rss();
      std::cout << out.dump() << std::endl;
    }
  }
  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_decode: " << e.what() << "\n";
  return 1;
}
