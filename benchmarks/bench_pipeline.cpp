// The compression pipeline stage by stage on one model, dtype and device:
// calibration statistics, the ppl sensitivity sweep, the binary search, the
// decomposition of the chosen layers, and evaluation. One JSON line per stage:
// wall seconds, tokens processed, achieved TFLOP/s against the device's peak,
// peak device memory. Random token ids stand in for text (throughput does not
// depend on them); --config gives random weights of a model's shape.
//
//   bench_pipeline --config benchmarks/configs/opt-125m.json | --model DIR
//                  [--device cuda] [--dtype bf16] [--samples 16] [--seqlen 2048]
//                  [--candidates 0.4,0.5,0.6,0.7,0.8,0.9] [--method cur|svd]
//                  [--layers all | L0,L31,head,NAME,PREFIX*] [--batch 0] [--target_ratio 0.9]
//                  [--eval_windows 8] [--stages statistics,sensitivity,search,decompose,evaluation]
//                  [--profile 0|1|2] [--overlap 1] [--fused 1] [--reference_s 51.5] [--peak_tflops X]
//                  [--micro ce,layer,linalg] [--linalg_dense 0] [--sdpa default|flash|cudnn|efficient]
//                  [--share R/N] [--warmup 0|1] [--device_map auto --max_memory cuda:0=12GiB]
//
// --layers restricts the sweep (and so the search and the decomposition) to a
// subset, for models whose whole sweep exceeds a time limit: Li is every Linear
// of decoder layer i, "head" is lm_head. --profile 1 (default) runs the sweep a
// second time with a device synchronisation at each phase, for the time per
// phase and per layer; 2 runs only that profiled sweep; 0 none. --overlap 0
// decomposes each layer in series with the forward passes (no second stream).
// --fused 0 turns cur4llm's CUDA kernels off. --micro adds
// measurements of single steps: the cross-entropy ("ce"), one decoder layer
// ("layer", with the kernels on and off and their largest output difference),
// and one decomposition per distinct layer shape ("linalg"; --linalg_dense 1
// also times the dense-SVD algorithms the CPU uses, slow on a GPU). --sdpa
// leaves only that attention backend of at::scaled_dot_product_attention on.
// --share R/N keeps the layers rank R of N sweeps in a distributed run (the
// cost-balanced split of dist/work.h), to time one rank's share on one device;
// the setup record says its predicted cost and the split's max/mean cost.
// --warmup 1 sweeps one entry on one sample before the timed sweep (its time:
// the sensitivity record's "warmup_s"), so that what a process pays once is left out.
// --device_map / --max_memory place the model as acur's flags do (layers over
// devices, those beyond a cap in host memory); each stage's record then has the
// peaks of every device and the host, and offload_bytes, the offloaded weights
// copied in during the stage.
#include "bench_common.h"

#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/dist/work.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/util/fused_kernels.h>
#include <cur4llm/util/memory.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/version.h>
#include <c10/core/InferenceMode.h>

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <numeric>
#include <set>

namespace {

using namespace cur4llm;
using nlohmann::json;

std::vector<std::vector<int64_t>> random_samples(int64_t count, int64_t seqlen, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto ids = at::randint(vocab, {count, seqlen}, gen, at::TensorOptions().dtype(at::kLong));
  std::vector<std::vector<int64_t>> out;
  for (int64_t i = 0; i < count; ++i) out.emplace_back(ids[i].data_ptr<int64_t>(), ids[i].data_ptr<int64_t>() + seqlen);
  return out;
}

// --layers items: "all", "Li" (decoder layer i), "head", an exact name, or "PREFIX*".
std::vector<std::string> select_layers(const model::CausalLM& lm, const std::vector<std::string>& items) {
  std::vector<std::string> out;
  for (const auto& info : lm.linears()) {
    bool take = false;
    for (const auto& item : items) {
      if (item == "all" || item == info.name || (item == "head" && info.name == "lm_head")) take = true;
      if (item.size() > 1 && item[0] == 'L' && std::isdigit(static_cast<unsigned char>(item[1])) &&
          info.layer == std::stoll(item.substr(1))) {
        take = true;
      }
      if (!item.empty() && item.back() == '*' && info.name.rfind(item.substr(0, item.size() - 1), 0) == 0) take = true;
    }
    if (take) out.push_back(info.name);
  }
  if (out.empty()) throw std::invalid_argument("--layers selects no Linear layer");
  return out;
}

// A stage's JSON record: the machine, wall time, tokens, rate, peak memory.
json stage_record(const std::string& stage, const json& machine, double seconds, double tokens, double flops,
                  c10::Device device) {
  json j = machine;
  j["stage"] = stage;
  j["wall_s"] = seconds;
  j["tokens"] = tokens;
  j["tokens_per_s"] = seconds > 0 ? tokens / seconds : 0.0;
  bench::add_rate(j, flops, seconds);
  j["peak_device_memory_bytes"] = bench::peak_memory(device);
  // Every device's and the host's peaks, and with layers offloaded (--max_memory) the
  // bytes of their weights copied in during the stage.
  const util::MemoryPeaks peaks = util::memory_peaks();
  for (const auto& [name, bytes] : peaks.devices) j["peak_memory"][name] = bytes;
  if (peaks.host_bytes >= 0) j["peak_memory"]["host"] = peaks.host_bytes;
  j["peak_host_since_reset"] = peaks.host_since_reset;
  j["offload_bytes"] = peaks.offload_bytes;
  return j;
}


void emit(const json& j) { std::cout << j.dump() << std::endl; }

// The matrix FLOPs of one sweep entry: the forward from the entry's first layer
// with the candidate in place (its stored parameters), then lm_head.
double entry_flops(const model::CausalLM& lm, const model::LinearInfo& info, double stored, int64_t first_layer,
                   int64_t batch, int64_t seqlen, const std::vector<double>& layer_flops, double outside) {
  double total = outside;
  for (int64_t i = std::max<int64_t>(first_layer, 0); i < lm.num_layers(); ++i) total += layer_flops[i];
  const double dense = static_cast<double>(info.in_features * info.out_features);
  return total - 2.0 * (dense - stored) * static_cast<double>(batch * seqlen);
}

}  // namespace

int main(int argc, char** argv) try {
  const bench::Args args(argc, argv);
  std::string source;
  auto lm = bench::load_model(args, &source);
  const auto device = lm->device();
  if (args.integer("fused", 1) == 0) util::set_fused_kernels_enabled(false);
  const std::string sdpa = args.str("sdpa", "default");
  if (sdpa != "default") {
#if TORCH_VERSION_MAJOR >= 2
    // Only the named attention backend (and the math fallback) stays enabled.
    at::globalContext().setSDPUseFlash(sdpa == "flash");
    at::globalContext().setSDPUseMemEfficient(sdpa == "efficient");
    at::globalContext().setSDPUseCuDNN(sdpa == "cudnn");
#else
    throw std::invalid_argument("--sdpa needs LibTorch 2.x");
#endif
  }
  const int64_t num_samples = args.integer("samples", 16);
  const int64_t seqlen = args.integer("seqlen", 2048);
  const std::string method = args.str("method", "cur");
  std::vector<double> candidates;
  for (const auto& c : args.list("candidates", "0.4,0.5,0.6,0.7,0.8,0.9")) candidates.push_back(std::stod(c));
  const auto stages_list = args.list("stages", "statistics,sensitivity,search,decompose,evaluation");
  const std::set<std::string> stages(stages_list.begin(), stages_list.end());
  const auto micro_list = args.list("micro", "");
  const std::set<std::string> micro(micro_list.begin(), micro_list.end());
  const auto& config = lm->config();

  json machine = bench::device_json(*lm, args.real("peak_tflops", 0));
  machine["benchmark"] = "pipeline";
  machine["source"] = source;
  machine["model_type"] = config.model_type;
  machine["samples"] = num_samples;
  machine["seqlen"] = seqlen;
  machine["method"] = method;
  machine["fused_kernels"] = util::fused_kernels_enabled();
  machine["sdpa"] = sdpa;
  emit(json{{"benchmark", "pipeline"}, {"setup", machine}, {"linear_layers", lm->linears().size()},
            {"linear_params", lm->linear_weight_params()}, {"fused_kernels_built", util::fused_kernels_built()}});

  const auto samples = random_samples(num_samples, seqlen, config.vocab_size, 233);
  const double calib_tokens = static_cast<double>(num_samples * seqlen);
  const auto compressor = compress::make_compressor(method);
  auto layers = select_layers(*lm, args.list("layers", "all"));
  if (const auto share = args.str("share", ""); !share.empty()) {
    // R/N: the layers rank R of N sweeps in a distributed run (dist::ppl_sensitivity's split).
    const auto slash = share.find('/');
    const int rank = slash == std::string::npos ? -1 : std::stoi(share.substr(0, slash));
    const int world = slash == std::string::npos ? 0 : std::stoi(share.substr(slash + 1));
    if (world < 1 || rank < 0 || rank >= world) throw std::invalid_argument("--share R/N with 0 <= R < N");
    dist::SweepCostOptions cost;
    cost.calibration_tokens = num_samples * seqlen;
    cost.candidates = static_cast<int64_t>(candidates.size());
    cost.prepare_cost = compressor->prepare_cost();
    const auto costs = dist::sweep_costs(*lm, layers, cost);
    const auto rank_of = dist::balance(costs, world);
    std::vector<double> per_rank(static_cast<size_t>(world), 0.0);
    std::vector<std::string> mine;
    for (size_t i = 0; i < layers.size(); ++i) {
      per_rank[static_cast<size_t>(rank_of[i])] += costs[i];
      if (rank_of[i] == rank) mine.push_back(layers[i]);
    }
    const double mean = std::accumulate(per_rank.begin(), per_rank.end(), 0.0) / world;
    machine["share"] = share;
    machine["share_layers"] = mine.size();
    machine["share_cost"] = per_rank[static_cast<size_t>(rank)];
    machine["share_cost_max_over_mean"] = *std::max_element(per_rank.begin(), per_rank.end()) / mean;
    if (mine.empty()) throw std::invalid_argument("--share " + share + ": this rank has no layer to sweep");
    layers = mine;
  }

  // Dense FLOPs per decoder layer and outside them, before anything is compressed.
  std::vector<double> dense_layer_flops;
  for (int64_t i = 0; i < lm->num_layers(); ++i) dense_layer_flops.push_back(bench::layer_flops(*lm, i, num_samples, seqlen));
  const double dense_outside = bench::outside_flops(*lm, num_samples, seqlen);
  const double dense_forward = bench::forward_flops(*lm, num_samples, seqlen);

  // 1. Activation statistics (abs_mean, the reference's default scaling).
  calib::ActivationStatistics stats;
  compress::ScaleFn scale;
  if (stages.count("statistics")) {
    calib::CollectOptions copts;
    copts.batch_size = std::max<int64_t>(1, std::min<int64_t>(num_samples, 65536 / seqlen));
    copts.show_progress = true;
    util::reset_memory_peaks();  // every device's and the host's (stage_record reads them)
    const double s = bench::timed(device, [&] { stats = calib::collect_statistics(*lm, samples, copts); });
    emit(stage_record("statistics", machine, s, calib_tokens, dense_forward, device));
    scale = [&stats](const std::string& layer) { return stats.scale(layer, calib::ScalingMethod::AbsMean, 0.5); };
  }

  // 2. The sensitivity sweep.
  search::SensitivityTable table("ppl");
  if (stages.count("sensitivity")) {
    sensitivity::SweepOptions sweep;
    sweep.candidates = candidates;
    sweep.layers = layers;
    sweep.batch_size = args.integer("batch", 0);
    sweep.overlap = args.integer("overlap", 1) != 0;
    sweep.show_progress = true;
    // --profile 0: one plain sweep; 1: a plain sweep, then a profiled one; 2: only a profiled one.
    const int64_t profile_mode = args.integer("profile", 1);
    sensitivity::SweepProfile profile;
    if (profile_mode == 2) sweep.profile = &profile;
    double warmup_s = -1;
    if (args.integer("warmup", 0) != 0 && !layers.empty()) {
      // One entry on one sample first: a forward through every layer, a decomposition and the
      // loss, so that what a process does once (libraries' handles, kernels loaded, the
      // allocator's pools) is not in the timed sweep.
      sensitivity::SweepOptions once = sweep;
      once.layers = {layers.front()};
      once.candidates = {candidates.front()};
      once.show_progress = false;
      once.profile = nullptr;
      warmup_s = bench::timed(device, [&] {
        (void)sensitivity::ppl_sensitivity(*lm, {samples.front()}, *compressor, scale, once);
      });
    }
    util::reset_memory_peaks();  // every device's and the host's (stage_record reads them)
    const double s = bench::timed(device, [&] { table = sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, sweep); });

    std::map<std::string, const model::LinearInfo*> info_of;
    for (const auto& info : lm->linears()) info_of[info.name] = &info;
    double flops = 0;
    int64_t entries = 0;
    for (const auto& name : layers) {
      const auto& info = *info_of.at(name);
      const int64_t first = info.layer >= 0 ? info.layer : (name.find("project_in") == std::string::npos ? lm->num_layers() : -1);
      for (double r : candidates) {
        const double stored = static_cast<double>(compressor->stored_params(info.out_features, info.in_features, r));
        flops += entry_flops(*lm, info, stored, first, num_samples, seqlen, dense_layer_flops, dense_outside);
        ++entries;
      }
    }
    // Moving the hidden states forward: every decoder layer once.
    double advance = 0;
    for (double f : dense_layer_flops) advance += f;
    json j = stage_record("sensitivity", machine, s, calib_tokens * static_cast<double>(entries), flops + advance, device);
    j["entries"] = entries;
    if (warmup_s >= 0) j["warmup_s"] = warmup_s;
    j["overlap"] = sweep.overlap;
    j["swept_layers"] = layers.size();
    j["candidates"] = candidates;
    if (args.has("reference_s")) {
      const double ref = args.real("reference_s", 0);
      j["reference_s"] = ref;
      j["speedup_vs_reference"] = ref / s;
    }
    double min_ppl = 1e300, max_ppl = 0;
    for (const auto& e : table.entries()) {
      min_ppl = std::min(min_ppl, e.score);
      max_ppl = std::max(max_ppl, e.score);
    }
    j["ppl_range"] = {min_ppl, max_ppl};
    emit(j);

    if (profile_mode != 0) {
      double ps = s;
      if (profile_mode == 1) {
        sweep.profile = &profile;
        sweep.show_progress = false;
        ps = bench::timed(device, [&] { (void)sensitivity::ppl_sensitivity(*lm, samples, *compressor, scale, sweep); });
      }
      json p = machine;
      p["stage"] = "sensitivity_profile";
      p["wall_s"] = ps;
      p["advance_s"] = profile.advance_s;
      p["decompose_s"] = profile.decompose_s;
      p["forward_s"] = profile.forward_s;
      p["entries"] = profile.entries;
      p["batches_per_entry"] = profile.batches;
      p["batch_size"] = profile.batch_size;
      json per_layer = json::array();
      for (const auto& l : profile.layers) {
        per_layer.push_back({{"name", l.name}, {"first_layer", l.first_layer}, {"decompose_s", l.decompose_s},
                             {"forward_s", l.forward_s}, {"entries", l.entries}});
      }
      p["layers"] = per_layer;
      bench::add_rate(p, flops, profile.forward_s);  // the forward passes' own rate
      emit(p);
    }
  }

  // Micro measurements, on the model as loaded (before the decomposition stage changes it).
  {
    c10::InferenceMode guard;
    const auto options = at::TensorOptions().device(device).dtype(lm->dtype());
    const bool fused_before = util::fused_kernels_enabled();

    // Micro: the cross-entropy over the vocabulary for every calibration token.
    if (micro.count("ce")) {
      const auto& head = lm->linear("lm_head");
      auto hidden = at::randn({num_samples * seqlen, head.in_features()}, options);
      auto labels = at::randint(config.vocab_size, {num_samples * seqlen}, at::TensorOptions().dtype(at::kLong).device(device));
      json j = machine;
      j["stage"] = "micro_ce";
      j["tokens"] = num_samples * seqlen;
      auto run = [&](const char* key, auto&& fn) {
        (void)fn();
        j[key] = bench::timed(device, [&] { (void)fn(); });
      };
      at::Tensor fused_nll, plain_nll;
      util::set_fused_kernels_enabled(true);
      run("fused_s", [&] { return fused_nll = eval::token_nll(head, hidden, labels); });
      util::set_fused_kernels_enabled(false);
      run("log_softmax_s", [&] { return plain_nll = eval::token_nll(head, hidden, labels); });
      // What sequence_nll did before: float32 logits in 64M-element chunks, then logsumexp.
      run("float_logsumexp_s", [&] {
        const int64_t n = hidden.size(0), chunk = std::max<int64_t>(1, (int64_t{64} << 20) / config.vocab_size);
        auto total = at::empty({n}, options.dtype(at::kFloat));
        for (int64_t start = 0; start < n; start += chunk) {
          const int64_t m = std::min(chunk, n - start);
          auto logits = head.forward(hidden.narrow(0, start, m)).to(at::kFloat);
          total.narrow(0, start, m).copy_(at::logsumexp(logits, -1) -
                                          logits.gather(1, labels.narrow(0, start, m).unsqueeze(1)).squeeze(1));
        }
        return total;
      });
      run("head_gemm_only_s", [&] {
        const int64_t n = hidden.size(0), chunk = std::max<int64_t>(1, (int64_t{1} << 30) / lm->config().vocab_size / 2);
        at::Tensor last;
        for (int64_t start = 0; start < n; start += chunk) last = head.forward(hidden.narrow(0, start, std::min(chunk, n - start)));
        return last;
      });
      j["fused_vs_log_softmax_max_abs_diff"] = (fused_nll - plain_nll).abs().max().item<double>();
      bench::add_rate(j, 2.0 * head.weight_params() * static_cast<double>(num_samples * seqlen), j["fused_s"].get<double>());
      util::set_fused_kernels_enabled(fused_before);
      emit(j);
    }

    // Micro: one decoder layer on every calibration token, kernels on and off.
    if (micro.count("layer")) {
      auto ids = at::randint(config.vocab_size, {num_samples, seqlen}, at::TensorOptions().dtype(at::kLong).device(device));
      auto h = lm->embed(ids);
      json j = machine;
      j["stage"] = "micro_layer";
      j["tokens"] = num_samples * seqlen;
      at::Tensor on, off;
      util::set_fused_kernels_enabled(true);
      on = lm->layer(0, h);
      j["fused_s"] = bench::timed(device, [&] { on = lm->layer(0, h); });
      util::set_fused_kernels_enabled(false);
      off = lm->layer(0, h);
      j["plain_s"] = bench::timed(device, [&] { off = lm->layer(0, h); });
      util::set_fused_kernels_enabled(fused_before);
#if TORCH_VERSION_MAJOR >= 2
      // Attention without cuDNN's kernel (which the library takes on Hopper for half/bfloat16).
      if (at::globalContext().userEnabledCuDNNSDP()) {
        at::globalContext().setSDPUseCuDNN(false);
        (void)lm->layer(0, h);
        j["no_cudnn_attention_s"] = bench::timed(device, [&] { (void)lm->layer(0, h); });
        at::globalContext().setSDPUseCuDNN(true);
      }
#endif
      j["max_abs_diff"] = (on.to(at::kFloat) - off.to(at::kFloat)).abs().max().item<double>();
      j["max_abs"] = off.to(at::kFloat).abs().max().item<double>();
      bench::add_rate(j, bench::layer_flops(*lm, 0, num_samples, seqlen), j["fused_s"].get<double>());
      emit(j);
    }

    // Micro: one decomposition (prepare + every candidate) per distinct layer shape.
    if (micro.count("linalg")) {
      std::set<std::pair<int64_t, int64_t>> seen;
      const bool dense_too = args.integer("linalg_dense", 0) != 0;
      for (const auto& info : lm->linears()) {
        if (!seen.insert({info.out_features, info.in_features}).second) continue;
        const auto* dense = dynamic_cast<const model::DenseLinear*>(lm->linear_ptr(info.name).get());
        if (!dense) continue;
        const at::Tensor s = scale ? scale(info.name) : at::Tensor();
        json j = machine;
        j["stage"] = "micro_linalg";
        j["layer"] = info.name;
        j["out"] = info.out_features;
        j["in"] = info.in_features;
        auto time_method = [&](const char* key, const compress::CompressorOptions& copts, const std::string& m) {
          auto c = compress::make_compressor(m, copts);
          auto once = [&] { (void)c->prepare(dense->weight(), dense->bias(), s, candidates)->build_many(candidates); };
          once();
          j[key] = bench::timed(device, once);
        };
        compress::CompressorOptions fast;
        time_method("cur_s", fast, "cur");
        time_method("svd_s", fast, "svd");
        if (dense_too && std::max(info.out_features, info.in_features) <= 8192) {
          compress::CompressorOptions old;
          old.cur.link_solver = compress::CURLinkSolver::SVD;
          old.cur.svd.algorithm = compress::SVDAlgorithm::Full;
          old.svd.svd.algorithm = compress::SVDAlgorithm::Full;
          time_method("cur_dense_svd_s", old, "cur");
          time_method("svd_dense_svd_s", old, "svd");
        }
        emit(j);
      }
    }
  }

  // 3. The binary search for a whole-model parameter ratio.
  search::SearchResult result;
  const bool searched = stages.count("search") && table.size() > 0;
  if (searched) {
    std::vector<search::LayerSize> sizes;
    for (const auto& info : lm->linears()) sizes.push_back({info.name, info.in_features * info.out_features});
    const double s = bench::timed(device, [&] {
      result = search::search_param_ratio(table, sizes, args.real("target_ratio", 0.9));
    });
    json j = stage_record("search", machine, s, 0, 0, device);
    j["cut"] = result.cut;
    j["entries"] = result.num_entries;
    j["nominal_ratio"] = result.nominal_ratio;
    emit(j);
  }

  // 4. Decomposing and swapping in the allocation's layers.
  if (stages.count("decompose") && searched) {
    compress::ApplyOptions aopts;
    aopts.show_progress = true;
    util::reset_memory_peaks();  // every device's and the host's (stage_record reads them)
    search::CompressionPlan plan;
    const double s = bench::timed(device, [&] { plan = compress::apply_allocation(*lm, result.allocation, *compressor, scale, aopts); });
    json j = stage_record("decompose", machine, s, 0, 0, device);
    j["compressed_layers"] = compress::count_layers(plan, method);
    j["linear_params_after"] = lm->linear_weight_params();
    emit(j);
  }

  // 5. Perplexity evaluation over windows of random tokens.
  if (stages.count("evaluation")) {
    const int64_t windows = args.integer("eval_windows", 8);
    auto text = random_samples(1, windows * seqlen, config.vocab_size, 7).front();
    eval::PerplexityOptions popts;
    popts.seqlen = seqlen;
    popts.batch_size = std::max<int64_t>(1, std::min<int64_t>(windows, 65536 / seqlen));
    popts.show_progress = true;
    popts.label = "evaluation";
    util::reset_memory_peaks();  // every device's and the host's (stage_record reads them)
    eval::PerplexityResult r;
    const double s = bench::timed(device, [&] { r = eval::evaluate_perplexity(*lm, text, popts); });
    json j = stage_record("evaluation", machine, s, static_cast<double>(windows * seqlen),
                          bench::forward_flops(*lm, windows, seqlen), device);
    j["windows"] = r.windows;
    j["perplexity"] = r.perplexity;
    emit(j);
  }

  return 0;
} catch (const std::exception& e) {
  std::cerr << "bench_pipeline: " << e.what() << "\n";
  return 1;
}
