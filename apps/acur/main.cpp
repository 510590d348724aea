// acur: activation-aware CUR (or SVD) compression of a Hugging Face causal LM.
// Flag names and defaults follow the reference pipeline (asvd.py); see
// docs/acur.md for every flag and docs/deviations.md for where we differ.
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/quantize.h>
#include <cur4llm/compress/sequential.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/cache.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>
#include <cur4llm/search/stable_rank.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/host_memory.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include "app_common.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <iostream>
#include <map>
#include <sstream>

namespace po = boost::program_options;
namespace fs = std::filesystem;
using cur4llm::app::guarded_main;

namespace {

struct Options {
  std::string model_id;
  double ppl_target = -1;
  double param_ratio_target = -1;
  bool act_aware = false;
  double alpha = 0.5;
  int64_t n_calib_samples = 32;
  std::string calib_dataset = "wikitext2";
  std::string scaling_method = "abs_mean";
  std::string sensitivity_metric = "ppl";
  bool use_cache = false;
  std::string weight_quant = "none";
  std::string eval_ppl = "wikitext2,ptb";
  std::string sigma_fuse = "UV";
  uint64_t seed = 233;
  bool compress_kv_cache = false;
  double kv_cache_ratio_target = -1;
  int64_t rank_align = 1;
  bool raw_model = false;
  bool use_bos = false;
  // cur4llm's own
  std::string method = "cur";
  std::string cur_selection = "topk";
  bool sequential = false;
  std::string search = "reference";
  std::string candidates;
  std::string device = "cpu";
  std::string dtype;
  int64_t seqlen = 2048;
  std::string data_dir;
  std::string cache_dir = "cache";
  std::string output = "output";
  int64_t batch_size = 1;
  int64_t limit = -1;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty() && item != "none") out.push_back(item);
  }
  return out;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string now_iso8601() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string fmt_double(double v) { return fmt::format("{}", v); }

// Refuses bad flag values with one line, before any work starts.
void validate(const Options& o) {
  using std::invalid_argument;
  if (!o.raw_model) {
    const int targets = (o.ppl_target > 0) + (o.param_ratio_target > 0) + (o.kv_cache_ratio_target > 0);
    if (targets == 0) {
      throw invalid_argument("give one target: --param_ratio_target, --ppl_target or --kv_cache_ratio_target "
                             "(or --raw_model to evaluate without compression)");
    }
    if (targets > 1) throw invalid_argument("give only one of --param_ratio_target, --ppl_target, --kv_cache_ratio_target");
  }
  if (o.param_ratio_target != -1 && !(o.param_ratio_target > 0 && o.param_ratio_target <= 1)) {
    throw invalid_argument(fmt::format("--param_ratio_target must be in (0, 1], not {}", o.param_ratio_target));
  }
  if (o.kv_cache_ratio_target != -1 && !(o.kv_cache_ratio_target > 0 && o.kv_cache_ratio_target <= 1)) {
    throw invalid_argument(fmt::format("--kv_cache_ratio_target must be in (0, 1], not {}", o.kv_cache_ratio_target));
  }
  if (o.ppl_target != -1 && !(o.ppl_target > 0)) {
    throw invalid_argument(fmt::format("--ppl_target must be positive, not {}", o.ppl_target));
  }
  if (o.compress_kv_cache != (o.kv_cache_ratio_target > 0) && !o.raw_model) {
    throw invalid_argument("--compress_kv_cache and --kv_cache_ratio_target go together");
  }
  if (!(o.alpha >= 0)) throw invalid_argument(fmt::format("--alpha must be >= 0, not {}", o.alpha));
  if (o.n_calib_samples <= 0) throw invalid_argument(fmt::format("--n_calib_samples must be positive, not {}", o.n_calib_samples));
  if (o.rank_align <= 0) throw invalid_argument(fmt::format("--rank_align must be positive, not {}", o.rank_align));
  if (o.seqlen < 2) throw invalid_argument(fmt::format("--seqlen must be at least 2, not {}", o.seqlen));
  if (o.batch_size < 1) throw invalid_argument("--batch_size must be at least 1");
  if (o.sensitivity_metric != "ppl" && o.sensitivity_metric != "stable_rank") {
    throw invalid_argument(fmt::format("--sensitivity_metric must be ppl or stable_rank, not \"{}\"", o.sensitivity_metric));
  }
  if (o.weight_quant != "none" && o.weight_quant != "rtn_int8" && o.weight_quant != "rtn_int6") {
    throw invalid_argument(fmt::format("--weight_quant must be none, rtn_int8 or rtn_int6, not \"{}\"", o.weight_quant));
  }
  cur4llm::calib::parse_scaling_method(o.scaling_method);
  cur4llm::compress::parse_sigma_fuse(o.sigma_fuse);
  cur4llm::compress::parse_cur_selection(o.cur_selection);
  const auto& methods = cur4llm::compress::compressor_names();
  if (std::find(methods.begin(), methods.end(), o.method) == methods.end()) {
    cur4llm::compress::make_compressor(o.method);  // throws, listing the names
  }
  for (const auto& c : split_list(o.candidates)) {
    double r = 0;
    try {
      r = std::stod(c);
    } catch (const std::exception&) {
      r = -1;
    }
    if (!(r > 0 && r < 1)) throw invalid_argument(fmt::format("--candidates: \"{}\" is not a ratio in (0, 1)", c));
  }
  if (!o.candidates.empty() && (o.sensitivity_metric != "ppl" || o.compress_kv_cache)) {
    throw invalid_argument("--candidates is for the ppl sensitivity in the weights mode");
  }
  if (o.search != "reference" && o.search != "lagrangian") {
    throw invalid_argument(fmt::format("--search must be reference or lagrangian, not \"{}\"", o.search));
  }
  if (o.search == "lagrangian" && (o.sensitivity_metric != "ppl" || o.param_ratio_target <= 0)) {
    throw invalid_argument("--search lagrangian needs --sensitivity_metric ppl and --param_ratio_target");
  }
  if (o.sequential && cur4llm::compress::make_compressor(o.method)->statistic() != cur4llm::compress::LayerStatistic::Gram) {
    throw invalid_argument(fmt::format("--sequential needs a data-aware method (on the Gram matrix), not \"{}\"", o.method));
  }
}

// Loads a cached artefact if its file exists and carries exactly `key`;
// reports a stale or corrupt file and returns nothing so that it is rebuilt.
template <typename T, typename Load>
std::optional<T> cache_lookup(const Options& o, const cur4llm::io::CacheKey& key, const fs::path& file, Load&& load) {
  if (!o.use_cache || !fs::exists(file)) return std::nullopt;
  try {
    std::map<std::string, std::string> meta;
    T value = load(file, meta);
    const std::string diff = key.mismatch(meta);
    if (diff.empty()) {
      fmt::print(stderr, "cache hit: {}\n", file.string());
      return value;
    }
    fmt::print(stderr, "cache: {} is stale ({}); recomputing\n", file.string(), diff);
  } catch (const std::exception& e) {
    fmt::print(stderr, "cache: {} is unreadable ({}); recomputing\n", file.string(), e.what());
  }
  return std::nullopt;
}

std::vector<std::vector<int64_t>> load_samples(const fs::path& file, std::map<std::string, std::string>& meta) {
  cur4llm::io::SafetensorsFile f(file);
  meta = f.metadata();
  std::vector<std::vector<int64_t>> out(f.names().size());
  for (const auto& name : f.names()) {
    const size_t i = std::stoul(name.substr(name.find('.') + 1));
    if (i >= out.size()) throw std::runtime_error("sample index out of range: " + name);
    auto t = f.load(name).contiguous();
    out[i].assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
  }
  return out;
}

void save_samples(const fs::path& file, const std::vector<std::vector<int64_t>>& samples,
                  const std::map<std::string, std::string>& meta) {
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (size_t i = 0; i < samples.size(); ++i) {
    auto t = at::empty({static_cast<int64_t>(samples[i].size())}, at::kLong);
    std::copy(samples[i].begin(), samples[i].end(), t.data_ptr<int64_t>());
    tensors.emplace_back(fmt::format("sample.{}", i), t);
  }
  cur4llm::io::save_safetensors(file, tensors, meta);
}

std::string model_label(const std::string& model_id) {
  std::string s = fs::path(model_id).filename().string();
  if (s.empty()) s = fs::path(model_id).parent_path().filename().string();
  return s.empty() ? "model" : s;
}

int run(int argc, char** argv) {
  cur4llm::util::tune_host_allocator();
  Options o;
  po::options_description ref("Options of the reference pipeline (asvd.py)");
  ref.add_options()
      ("help,h", "print this help")
      ("model_id", po::value(&o.model_id)->required(), "model folder, or an org/name id in the local Hugging Face cache")
      ("ppl_target", po::value(&o.ppl_target)->default_value(-1), "target calibration perplexity (binary search)")
      ("param_ratio_target", po::value(&o.param_ratio_target)->default_value(-1),
       "target ratio of Linear weight parameters, in (0, 1]")
      ("act_aware", po::bool_switch(&o.act_aware), "scale the weight by activation statistics (ASVD-style)")
      ("alpha", po::value(&o.alpha)->default_value(0.5), "exponent of the activation scale, >= 0")
      ("n_calib_samples", po::value(&o.n_calib_samples)->default_value(32), "calibration samples")
      ("calib_dataset", po::value(&o.calib_dataset)->default_value("wikitext2"),
       "wikitext2, ptb, c4 (train split), name:split, or a text file")
      ("scaling_method", po::value(&o.scaling_method)->default_value("abs_mean"),
       "abs_mean, abs_max, fisher or fisher_abs_mean")
      ("sensitivity_metric", po::value(&o.sensitivity_metric)->default_value("ppl"), "ppl or stable_rank")
      ("use_cache", po::bool_switch(&o.use_cache), "reuse calibration samples, statistics and sensitivity from --cache_dir")
      ("weight_quant", po::value(&o.weight_quant)->default_value("none"), "none, rtn_int8 or rtn_int6 (after compression)")
      ("eval_ppl", po::value(&o.eval_ppl)->default_value("wikitext2,ptb"),
       "datasets to evaluate, comma-separated (name, name:split, text file, or none)")
      ("sigma_fuse", po::value(&o.sigma_fuse)->default_value("UV"), "SVD: which factor takes the singular values (U, V, UV)")
      ("seed", po::value(&o.seed)->default_value(233), "seed of calibration sampling")
      ("compress_kv_cache", po::bool_switch(&o.compress_kv_cache), "compress k_proj/v_proj only, for the KV cache")
      ("kv_cache_ratio_target", po::value(&o.kv_cache_ratio_target)->default_value(-1), "target KV-cache ratio")
      ("rank_align", po::value(&o.rank_align)->default_value(1), "ranks are multiples of this")
      ("raw_model", po::bool_switch(&o.raw_model), "evaluate the model without compression")
      ("use_bos", po::bool_switch(&o.use_bos), "put BOS before each calibration sample if the tokenizer does not");
  po::options_description own("cur4llm options");
  own.add_options()
      ("method", po::value(&o.method)->default_value("cur"),
       "decomposition: cur, svd, grad_cur (CUR with trainable scales); on the input Gram matrix: svd_whiten, "
       "skeleton (row or column side per layer), skeleton_row, skeleton_col, cur_whiten, cur_deim, cur_qr; "
       "skeleton_diag (on the scale); see docs/methods.md")
      ("cur_selection", po::value(&o.cur_selection)->default_value("topk"), "CUR rows/columns: topk or sampled leverage")
      ("search", po::value(&o.search)->default_value("reference"),
       "param-ratio search on the ppl table: reference (binary search of the reference) or lagrangian "
       "(log-ppl increase against parameters saved; docs/search.md)")
      ("candidates", po::value(&o.candidates)->default_value(""),
       "ppl sensitivity: comma-separated candidate ratios in (0, 1) (default: the reference's 0.4,0.5,...,0.9)")
      ("sequential", po::bool_switch(&o.sequential),
       "data-aware methods: decompose layer by layer on the inputs of the model compressed so far, fitted to the "
       "dense outputs (docs/methods.md)")
      ("device", po::value(&o.device)->default_value("cpu"), "cpu, cuda or cuda:N")
      ("dtype", po::value(&o.dtype)->default_value(""), "fp32, fp16 or bf16 (default: fp32 on CPU, checkpoint's on CUDA)")
      ("seqlen", po::value(&o.seqlen)->default_value(2048), "tokens per sample and per evaluation window")
      ("data_dir", po::value(&o.data_dir)->default_value(""), "datasets folder (default $CUR4LLM_DATA_DIR, else ./data)")
      ("cache_dir", po::value(&o.cache_dir)->default_value("cache"), "where --use_cache keeps its files")
      ("output", po::value(&o.output)->default_value("output"), "folder for results.jsonl and plan files")
      ("batch_size", po::value(&o.batch_size)->default_value(1), "samples or windows per forward pass")
      ("limit", po::value(&o.limit)->default_value(-1), "evaluate only the first N windows (-1: all)");
  po::options_description all("acur: activation-aware CUR compression of a Hugging Face causal LM\n\n"
                              "Usage: acur --model_id MODEL (--param_ratio_target R | --ppl_target P | "
                              "--compress_kv_cache --kv_cache_ratio_target R | --raw_model) [options]");
  all.add(ref).add(own);
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, all), vm);
  if (vm.count("help") || argc == 1) {
    std::cout << all << "\n";
    return 0;
  }
  po::notify(vm);
  validate(o);

  cur4llm::model::LoadOptions load;
  load.device = cur4llm::model::parse_device(o.device);
  if (!o.dtype.empty()) load.dtype = cur4llm::model::parse_dtype(o.dtype);
  const fs::path data_dir = o.data_dir.empty() ? cur4llm::data::default_data_dir() : fs::path(o.data_dir);
  const auto eval_sets = split_list(o.eval_ppl);
  for (const auto& spec : eval_sets) cur4llm::data::resolve_dataset(spec, cur4llm::data::Purpose::Evaluation, data_dir);
  if (!o.raw_model) cur4llm::data::resolve_dataset(o.calib_dataset, cur4llm::data::Purpose::Calibration, data_dir);

  nlohmann::json timings = nlohmann::json::object();
  auto t0 = std::chrono::steady_clock::now();
  const fs::path folder = cur4llm::io::resolve_model_id(o.model_id);
  auto lm = cur4llm::model::CausalLM::load(folder, load);
  auto tokenizer = cur4llm::tokenize::load_tokenizer(folder);
  timings["load_s"] = seconds_since(t0);
  fmt::print(stderr, "loaded {} ({}, {} layers, {}) on {} in {:.1f} s; tokenizer: {}\n", folder.string(),
             lm->config().model_type, lm->num_layers(), c10::toString(lm->dtype()), lm->device().str(),
             timings["load_s"].get<double>(), tokenizer->describe());
  int64_t seqlen = o.seqlen;
  if (seqlen > lm->config().max_position_embeddings) {
    fmt::print(stderr, "warning: --seqlen {} exceeds max_position_embeddings; using {}\n", seqlen,
               lm->config().max_position_embeddings);
    seqlen = lm->config().max_position_embeddings;
  }

  // Dense sizes, before anything is replaced.
  std::vector<cur4llm::search::LayerSize> sizes;
  int64_t dense_linear = 0;
  for (const auto& info : lm->linears()) {
    sizes.push_back({info.name, info.in_features * info.out_features});
    dense_linear += info.in_features * info.out_features;
  }
  int64_t other_params = 0;
  for (const auto& [name, t] : lm->other_tensors()) other_params += t.numel();
  const bool tied = lm->config().tie_word_embeddings;  // a dense tied lm_head stores nothing of its own
  const int64_t lm_head_numel = lm->linear("lm_head").in_features() * lm->linear("lm_head").out_features();
  const int64_t dense_total = other_params + dense_linear - (tied ? lm_head_numel : 0);

  nlohmann::json record = {{"time", now_iso8601()},
                           {"model_id", o.model_id},
                           {"model_folder", folder.string()},
                           {"raw_model", o.raw_model},
                           {"method", o.raw_model ? "dense" : o.method},
                           {"seqlen", seqlen},
                           {"device", lm->device().str()},
                           {"dtype", c10::toString(lm->dtype())}};
  cur4llm::search::CompressionPlan plan;

  if (!o.raw_model) {
    const std::string fingerprint = cur4llm::io::model_fingerprint(folder);
    const fs::path cache_dir = o.cache_dir;
    if (o.use_cache) fs::create_directories(cache_dir);
    const auto scaling = cur4llm::calib::parse_scaling_method(o.scaling_method);
    std::map<std::string, std::string> base = {{"model", fs::absolute(folder).lexically_normal().string()},
                                               {"model_fingerprint", fingerprint},
                                               {"dtype", c10::toString(lm->dtype())},
                                               {"calib_dataset", o.calib_dataset},
                                               {"n_calib_samples", std::to_string(o.n_calib_samples)},
                                               {"seqlen", std::to_string(seqlen)},
                                               {"seed", std::to_string(o.seed)},
                                               {"use_bos", o.use_bos ? "1" : "0"}};

    // 1. Calibration samples.
    t0 = std::chrono::steady_clock::now();
    cur4llm::io::CacheKey calib_key{"calib", base};
    const auto calib_text = cur4llm::data::load_text(o.calib_dataset, cur4llm::data::Purpose::Calibration, data_dir);
    calib_key.fields["calib_text_fnv1a"] = cur4llm::io::hex64(cur4llm::io::fnv1a64(calib_text.text));
    const fs::path calib_file = cache_dir / calib_key.file_name("safetensors");
    auto samples = cache_lookup<std::vector<std::vector<int64_t>>>(o, calib_key, calib_file, load_samples);
    if (!samples) {
      cur4llm::data::CalibrationOptions copts;
      copts.n_samples = o.n_calib_samples;
      copts.seqlen = seqlen;
      copts.seed = o.seed;
      copts.use_bos = o.use_bos;
      samples = cur4llm::data::sample_calibration(calib_text.text, *tokenizer, copts);
      if (o.use_cache) save_samples(calib_file, *samples, calib_key.as_metadata());
    }
    timings["calib_samples_s"] = seconds_since(t0);

    // 2. Activation statistics (data-aware methods need the input Gram matrices, whatever --act_aware says).
    cur4llm::compress::CompressorOptions comp_opts;
    comp_opts.cur.rank_align = o.rank_align;
    comp_opts.cur.selection = cur4llm::compress::parse_cur_selection(o.cur_selection);
    comp_opts.cur.seed = o.seed;
    comp_opts.svd.rank_align = o.rank_align;
    comp_opts.svd.sigma_fuse = cur4llm::compress::parse_sigma_fuse(o.sigma_fuse);
    comp_opts.skeleton.rank_align = o.rank_align;
    comp_opts.data_cur.rank_align = o.rank_align;
    auto compressor = cur4llm::compress::make_compressor(o.method, comp_opts);
    const bool gram = compressor->statistic() == cur4llm::compress::LayerStatistic::Gram;
    cur4llm::calib::ActivationStatistics stats;
    cur4llm::compress::ScaleFn scale;
    auto stats_fields = calib_key.fields;
    stats_fields["scaling_method"] = o.scaling_method;
    if (gram) stats_fields["gram"] = "1";
    if (o.act_aware || gram) {
      t0 = std::chrono::steady_clock::now();
      cur4llm::io::CacheKey key{"stats", stats_fields};
      const fs::path file = cache_dir / key.file_name("safetensors");
      auto cached = cache_lookup<cur4llm::calib::ActivationStatistics>(
          o, key, file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
            return cur4llm::calib::ActivationStatistics::load(p, &meta);
          });
      if (cached) {
        stats = std::move(*cached);
      } else {
        auto copts = cur4llm::calib::CollectOptions::for_method(scaling);
        copts.gram = gram;
        copts.batch_size = o.batch_size;
        copts.show_progress = true;
        stats = cur4llm::calib::collect_statistics(*lm, *samples, copts);
        if (o.use_cache) stats.save(file, key.as_metadata());
      }
      scale = [&stats, scaling, alpha = o.alpha, gram](const std::string& layer) {
        return gram ? stats.mean_gram(layer) : stats.scale(layer, scaling, alpha);
      };
      timings["statistics_s"] = seconds_since(t0);
    }

    // 3. Sensitivity.
    cur4llm::sensitivity::SweepOptions sweep;
    sweep.mode = o.compress_kv_cache ? cur4llm::search::CompressMode::kKvCache : cur4llm::search::CompressMode::kWeights;
    sweep.batch_size = o.batch_size;
    sweep.show_progress = true;
    t0 = std::chrono::steady_clock::now();
    auto sens_fields = stats_fields;
    sens_fields["act_aware"] = o.act_aware ? "1" : "0";
    sens_fields["alpha"] = fmt_double(o.alpha);
    sens_fields["method"] = o.method;
    sens_fields["metric"] = o.sensitivity_metric;
    sens_fields["mode"] = o.compress_kv_cache ? "kv_cache" : "weights";
    sens_fields["rank_align"] = std::to_string(o.rank_align);
    sens_fields["method_options"] = o.method == "cur" ? "selection=" + o.cur_selection : "sigma_fuse=" + o.sigma_fuse;
    for (const auto& c : split_list(o.candidates)) sweep.candidates.push_back(std::stod(c));
    {
      std::string c;
      const auto cands = !sweep.candidates.empty()           ? sweep.candidates
                         : o.sensitivity_metric == "ppl" ? cur4llm::search::candidate_ratios(sweep.mode)
                                                         : cur4llm::search::stable_rank_candidate_ratios();
      for (double r : cands) c += (c.empty() ? "" : ",") + fmt_double(r);
      sens_fields["candidates"] = c;
    }
    cur4llm::io::CacheKey sens_key{"sensitivity", sens_fields};
    const fs::path sens_file = cache_dir / sens_key.file_name("json");
    auto table = cache_lookup<cur4llm::search::SensitivityTable>(
        o, sens_key, sens_file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
          auto t = cur4llm::search::SensitivityTable::load(p);
          meta = t.meta();
          return t;
        });
    if (!table) {
      table = o.sensitivity_metric == "ppl"
                  ? cur4llm::sensitivity::ppl_sensitivity(*lm, *samples, *compressor, scale, sweep)
                  : cur4llm::sensitivity::stable_rank_sensitivity(*lm, sweep);
      table->meta() = sens_key.as_metadata();
      if (o.use_cache) table->save(sens_file);
    }
    timings["sensitivity_s"] = seconds_since(t0);

    // 4. Binary search.
    t0 = std::chrono::steady_clock::now();
    cur4llm::search::SearchOptions sopts;
    sopts.mode = sweep.mode;
    sopts.final_cut = cur4llm::search::FinalCut::kReferenceLastMid;  // the reference's allocation, exactly
    sopts.show_progress = true;
    cur4llm::search::SearchResult result;
    if (o.ppl_target > 0) {
      std::map<std::pair<std::string, double>, cur4llm::model::LinearPtr> built;  // decomposed once per (layer, ratio)
      auto calib_ppl = [&](const cur4llm::search::Allocation& allocation) {
        cur4llm::model::ScopedSlots trial(*lm);  // the probe's layers are undone on return
        for (const auto& a : allocation) {
          if (!a.compressed) continue;
          auto& slot = built[{a.layer, a.ratio}];
          if (!slot) {
            const auto* dense = dynamic_cast<const cur4llm::model::DenseLinear*>(lm->linear_ptr(a.layer).get());
            slot = compressor->compress(dense->weight(), dense->bias(), scale ? scale(a.layer) : at::Tensor(), a.ratio);
          }
          trial.replace(a.layer, slot);
        }
        cur4llm::eval::PerplexityOptions popts;
        popts.batch_size = o.batch_size;
        const double ppl = cur4llm::eval::samples_perplexity(*lm, *samples, popts).perplexity;
        fmt::print(stderr, "search: calibration ppl {:.4f}\n", ppl);
        return ppl;
      };
      result = cur4llm::search::search_perplexity(*table, sizes, o.ppl_target, calib_ppl, sopts);
    } else {
      const double target = o.compress_kv_cache ? o.kv_cache_ratio_target : o.param_ratio_target;
      if (o.search == "lagrangian") {
        cur4llm::eval::PerplexityOptions popts;
        popts.batch_size = o.batch_size;
        const double dense_ppl = cur4llm::eval::samples_perplexity(*lm, *samples, popts).perplexity;
        record["dense_calibration_ppl"] = dense_ppl;
        result = cur4llm::search::search_param_ratio_lagrangian(*table, sizes, target, dense_ppl, sopts);
      } else {
        result = cur4llm::search::search_param_ratio(*table, sizes, target, sopts);
      }
    }
    timings["search_s"] = seconds_since(t0);

    // 5. Decompose and swap in.
    t0 = std::chrono::steady_clock::now();
    cur4llm::compress::ApplyOptions aopts;
    aopts.show_progress = true;
    if (o.sequential) {
      cur4llm::compress::SequentialOptions qopts;
      qopts.batch_size = o.batch_size;
      qopts.show_progress = true;
      plan = cur4llm::compress::apply_allocation_sequential(*lm, result.allocation, *compressor, *samples, qopts);
    } else {
      plan = cur4llm::compress::apply_allocation(*lm, result.allocation, *compressor, scale, aopts);
    }
    timings["decompose_s"] = seconds_since(t0);
    plan.meta() = {{"model_id", o.model_id}, {"method", o.method}, {"sequential", o.sequential ? "1" : "0"}, {"act_aware", o.act_aware ? "1" : "0"},
                   {"alpha", fmt_double(o.alpha)}, {"scaling_method", o.scaling_method}};
    std::cout << plan.table() << std::flush;
    const std::string target_label = o.ppl_target > 0 ? fmt::format("ppl{}", o.ppl_target)
                                     : o.compress_kv_cache ? fmt::format("kv{}", o.kv_cache_ratio_target)
                                                           : fmt::format("ratio{}", o.param_ratio_target);
    const fs::path plan_file = fs::path(o.output) / fmt::format("plan-{}-{}{}-{}.json", model_label(o.model_id), o.method,
                                                                  std::string(o.sequential ? "-seq" : "") +
                                                                      (o.search == "lagrangian" ? "-lagr" : ""),
                                                                  target_label);
    fs::create_directories(plan_file.parent_path().empty() ? fs::path(".") : plan_file.parent_path());
    plan.save(plan_file);
    fmt::print(stderr, "plan saved to {}\n", plan_file.string());
    record["plan_file"] = plan_file.string();
    record["search"] = {{"cut", result.cut}, {"entries", result.num_entries}, {"nominal_ratio", result.nominal_ratio}};
  }

  // Real parameter counts, after compression.
  const int64_t stored_linear = lm->linear_weight_params();
  const bool head_dense = lm->linear("lm_head").kind() == "dense";
  const int64_t stored_total = other_params + stored_linear - (tied && head_dense ? lm_head_numel : 0);
  record["param_ratio_linear"] = static_cast<double>(stored_linear) / dense_linear;
  record["param_ratio_model"] = static_cast<double>(stored_total) / dense_total;
  record["linear_params"] = {{"stored", stored_linear}, {"dense", dense_linear}};
  fmt::print("param ratio: {:.4f} of Linear weights, {:.4f} of the whole model\n",
             record["param_ratio_linear"].get<double>(), record["param_ratio_model"].get<double>());

  if (o.weight_quant != "none") {
    const int bits = o.weight_quant == "rtn_int8" ? 8 : 6;
    const auto n = cur4llm::compress::rtn_quantize_model(*lm, bits);
    fmt::print(stderr, "{}: quantized {} weight tensors of the decoder layers\n", o.weight_quant, n);
    record["weight_quant"] = o.weight_quant;
  }

  nlohmann::json results = nlohmann::json::object();
  for (const auto& spec : eval_sets) {
    t0 = std::chrono::steady_clock::now();
    auto source = cur4llm::data::load_text(spec, cur4llm::data::Purpose::Evaluation, data_dir);
    auto ids = tokenizer->encode(source.text);
    cur4llm::eval::PerplexityOptions popts;
    popts.seqlen = seqlen;
    popts.batch_size = o.batch_size;
    popts.max_windows = o.limit;
    popts.show_progress = true;
    popts.label = spec.c_str();
    auto r = cur4llm::eval::evaluate_perplexity(*lm, ids, popts);
    fmt::print("{} {:.4f}\n", spec, r.perplexity);
    std::fflush(stdout);
    results[spec] = {{"ppl", r.perplexity}, {"windows", r.windows}, {"tokens", r.tokens}};
    timings["eval_" + spec + "_s"] = seconds_since(t0);
  }
  record["ppl"] = results;
  record["timings"] = timings;
  nlohmann::json args = {{"param_ratio_target", o.param_ratio_target}, {"ppl_target", o.ppl_target},
                         {"kv_cache_ratio_target", o.kv_cache_ratio_target}, {"act_aware", o.act_aware},
                         {"alpha", o.alpha}, {"n_calib_samples", o.n_calib_samples},
                         {"calib_dataset", o.calib_dataset}, {"scaling_method", o.scaling_method},
                         {"sensitivity_metric", o.sensitivity_metric}, {"sigma_fuse", o.sigma_fuse},
                         {"seed", o.seed}, {"rank_align", o.rank_align}, {"use_bos", o.use_bos},
                         {"cur_selection", o.cur_selection}, {"sequential", o.sequential}, {"search", o.search},
                         {"candidates", o.candidates}};
  record["args"] = args;
  for (const auto& [stage, s] : timings.items()) fmt::print(stderr, "time {}: {:.2f} s\n", stage, s.get<double>());
  const fs::path results_file = fs::path(o.output) / "results.jsonl";
  cur4llm::io::append_line(results_file, record.dump());
  fmt::print(stderr, "results appended to {}\n", results_file.string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return guarded_main("acur", [&] { return run(argc, argv); }); }
