#include <cur4llm/pipeline/pipeline.h>

#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/compress/sequential.h>
#include <cur4llm/data/selfgen.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/dist/group.h>
#include <cur4llm/dist/work.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/cache.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/modules/modules.h>
#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>
#include <cur4llm/search/stable_rank.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/ATen.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

namespace cur4llm::pipeline {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr const char* kBestModuleMethod = "mixed+svd_whiten";

// Ends a stage: its seconds and memory peaks go into the result, and the next stage starts here.
void end_stage(PipelineResult& result, const char* stage, Clock::time_point& t0) {
  result.timings.emplace_back(stage, seconds_since(t0));
  result.memory.emplace_back(stage, util::memory_peaks());
  util::reset_memory_peaks();
  t0 = Clock::now();
}

std::string fmt_double(double v) { return fmt::format("{}", v); }

fs::path data_dir_of(const PipelineOptions& o) { return o.data_dir.empty() ? data::default_data_dir() : o.data_dir; }

// Loads a cached artefact if its file exists and carries exactly `key`;
// reports a stale or corrupt file and returns nothing so that it is rebuilt.
template <typename T, typename Load>
std::optional<T> cache_lookup(const PipelineOptions& o, const io::CacheKey& key, const fs::path& file, Load&& load) {
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

// Writes a cache file through `save`; a write that fails (a full disk, a
// read-only folder) is reported and the run goes on without that cache file.
template <typename Save>
void cache_store(const fs::path& file, Save&& save) {
  try {
    save();
  } catch (const std::exception& e) {
    fmt::print(stderr, "cache: cannot write {} ({}); going on without it\n", file.string(), e.what());
  }
}

// A cached artefact is used only when every rank found it (each rank reads the
// cache; rank 0 alone writes it), so that all ranks take the same path.
template <typename T>
std::optional<T> agreed(dist::Group& group, std::optional<T> found) {
  if (!group.all_true(found.has_value())) found.reset();
  return found;
}

// Rank 0's single group when the options name none.
dist::Group& group_of(const PipelineOptions& o, std::shared_ptr<dist::Group>& holder) {
  if (o.group) return *o.group;
  holder = dist::Group::single();
  return *holder;
}

std::vector<std::vector<int64_t>> load_samples(const fs::path& file, std::map<std::string, std::string>& meta) {
  io::SafetensorsFile f(file);
  f.verify_data_checksum();
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
  io::save_safetensors_checked(file, tensors, meta);
}

// Self-generated samples (data/selfgen.h): each rank generates every world_size-th sample, and
// the ranks exchange them, so that every rank holds the same set (the one rank 0 alone would make).
std::vector<std::vector<int64_t>> selfgen_samples(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                                  const PipelineOptions& o, const data::CalibrationOptions& copts,
                                                  const fs::path& data_dir, dist::Group& group) {
  const auto rows = data::load_rows(o.calib_dataset, data::Purpose::Calibration, data_dir);
  const auto prompts = data::selfgen_prompts(rows, tokenizer, copts);
  const auto world = static_cast<size_t>(group.world_size());
  std::vector<data::SelfGenPrompt> mine;
  for (size_t k = static_cast<size_t>(group.rank()); k < prompts.size(); k += world) mine.push_back(prompts[k]);
  data::SelfGenOptions sopts;
  sopts.show_progress = o.show_progress;
  auto part = data::generate_selfgen(lm, mine, copts, sopts);
  if (!group.distributed()) return part;
  std::string bytes;
  for (const auto& sample : part) {
    const auto len = static_cast<int64_t>(sample.size());
    bytes.append(reinterpret_cast<const char*>(&len), sizeof len);
    bytes.append(reinterpret_cast<const char*>(sample.data()), sample.size() * sizeof(int64_t));
  }
  const auto gathered = group.all_gather(bytes);
  std::vector<std::vector<int64_t>> samples(prompts.size());
  for (size_t r = 0; r < gathered.size(); ++r) {
    size_t pos = 0;
    for (size_t k = r; k < prompts.size(); k += world) {
      int64_t len = 0;
      if (pos + sizeof len > gathered[r].size()) {
        throw std::runtime_error(fmt::format("selfgen: rank {} sent too few samples", r));
      }
      std::copy_n(gathered[r].data() + pos, sizeof len, reinterpret_cast<char*>(&len));
      pos += sizeof len;
      const size_t n_bytes = static_cast<size_t>(len) * sizeof(int64_t);
      if (len < 0 || pos + n_bytes > gathered[r].size()) {
        throw std::runtime_error(fmt::format("selfgen: a truncated sample from rank {}", r));
      }
      samples[k].resize(static_cast<size_t>(len));
      std::copy_n(gathered[r].data() + pos, n_bytes, reinterpret_cast<char*>(samples[k].data()));
      pos += n_bytes;
    }
  }
  return samples;
}

// The calibration samples of `o` (read from its cache when use_cache is set) and their cache key,
// whose fields the later stages' keys extend.
struct CalibrationStage {
  io::CacheKey key;
  std::vector<std::vector<int64_t>> samples;
};
std::string describe_for_ranks(const PipelineOptions& o);
CalibrationStage calibration_stage(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                   const PipelineOptions& o, int64_t seqlen, const fs::path& data_dir,
                                   dist::Group& group) {
  const fs::path folder = lm.folder();
  const std::string fingerprint = folder.empty() ? std::string("random") : io::model_fingerprint(folder);
  const fs::path& cache_dir = o.cache_dir;
  if (o.use_cache) fs::create_directories(cache_dir);
  std::map<std::string, std::string> base = {{"model", fs::absolute(folder).lexically_normal().string()},
                                             {"model_fingerprint", fingerprint},
                                             {"dtype", c10::toString(lm.dtype())},
                                             {"calib_dataset", o.calib_dataset},
                                             {"n_calib_samples", std::to_string(o.n_calib_samples)},
                                             {"seqlen", std::to_string(seqlen)},
                                             {"seed", std::to_string(o.seed)},
                                             {"use_bos", o.use_bos ? "1" : "0"}};
  if (group.distributed()) {
    // Every rank must run the same model (by its fingerprint: the folder may sit elsewhere on
    // another host) with the same options.
    std::string same;
    for (const auto& [k, v] : base) {
      if (k != "model") same += k + "=" + v + "\n";
    }
    same += describe_for_ranks(o);
    group.check_same("the model and the pipeline options", same);
  }
  io::CacheKey calib_key{"calib", base};
  const auto calib_text = data::load_text(o.calib_dataset, data::Purpose::Calibration, data_dir);
  calib_key.fields["calib_text_fnv1a"] = io::hex64(io::fnv1a64(calib_text.text));
  const fs::path calib_file = cache_dir / calib_key.file_name("safetensors");
  auto samples = agreed(group, cache_lookup<std::vector<std::vector<int64_t>>>(o, calib_key, calib_file, load_samples));
  if (!samples) {
    data::CalibrationOptions copts;
    copts.n_samples = o.n_calib_samples;
    copts.seqlen = seqlen;
    copts.seed = o.seed;
    copts.use_bos = o.use_bos;
    const auto resolved = data::resolve_dataset(o.calib_dataset, data::Purpose::Calibration, data_dir);
    if (resolved.selfgen) {
      samples = selfgen_samples(lm, tokenizer, o, copts, data_dir, group);
    } else if (resolved.format == data::DatasetFile::Format::Alpaca) {
      samples = data::sample_alpaca(data::parse_alpaca(calib_text.text, calib_text.files.at(0).string()), tokenizer,
                                    copts);
    } else {
      samples = data::sample_calibration(calib_text.text, tokenizer, copts);
    }
    if (o.use_cache && group.is_root()) {
      cache_store(calib_file, [&] { save_samples(calib_file, *samples, calib_key.as_metadata()); });
    }
  }
  return {std::move(calib_key), std::move(*samples)};
}

// The allocation a saved plan describes, checked against the model and the options.
search::Allocation allocation_from_plan(const model::CausalLM& lm, const search::CompressionPlan& plan,
                                        const PipelineOptions& o) {
  const auto& meta = plan.meta();
  auto expect = [&](const char* key, const std::string& value, const char* flag) {
    auto it = meta.find(key);
    if (it != meta.end() && it->second != value) {
      throw std::invalid_argument(fmt::format("{}: the plan was made with {} {}, but {} is {}", o.plan_file.string(),
                                              flag, it->second, flag, value));
    }
  };
  expect("method", o.method, "--method");
  expect("sequential", *o.sequential ? "1" : "0", "--sequential");
  expect("act_aware", *o.act_aware ? "1" : "0", "--act_aware");
  if (*o.act_aware) {
    expect("alpha", fmt_double(o.alpha), "--alpha");
    expect("scaling_method", o.scaling_method, "--scaling_method");
  }
  search::Allocation allocation;
  for (const auto& layer : plan.layers()) {
    if (!lm.has_linear(layer.name)) {
      throw std::invalid_argument(fmt::format("{}: layer \"{}\" is not in the model", o.plan_file.string(), layer.name));
    }
    const auto& slot = lm.linear(layer.name);
    if (slot.in_features() * slot.out_features() != layer.dense_params) {
      throw std::invalid_argument(fmt::format("{}: layer \"{}\" has {} parameters in the plan but {} in the model",
                                              o.plan_file.string(), layer.name, layer.dense_params,
                                              slot.in_features() * slot.out_features()));
    }
    const bool compressed = layer.method != "dense";
    if (compressed && layer.method != o.method) {
      throw std::invalid_argument(fmt::format("{}: layer \"{}\" is {} in the plan, but --method is {}",
                                              o.plan_file.string(), layer.name, layer.method, o.method));
    }
    allocation.push_back({layer.name, compressed ? layer.ratio : 1.0, compressed});
  }
  return allocation;
}

// Module methods (modules/modules.h): Gram statistics, then the modules' own allocation and decomposition.
PipelineResult compress_modules_stage(model::CausalLM& lm, const std::vector<std::vector<int64_t>>& samples,
                                      const io::CacheKey& calib_key, const PipelineOptions& o, PipelineResult result) {
  util::reset_memory_peaks();
  auto t0 = Clock::now();
  auto stats_fields = calib_key.fields;
  stats_fields["scaling_method"] = o.scaling_method;
  stats_fields["gram"] = "1";
  io::CacheKey key{"stats", stats_fields};
  const fs::path file = o.cache_dir / key.file_name("safetensors");
  std::shared_ptr<dist::Group> single;
  dist::Group& group = group_of(o, single);
  auto stats = agreed(group, cache_lookup<calib::ActivationStatistics>(
      o, key, file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
        return calib::ActivationStatistics::load(p, &meta);
      }));
  if (!stats) {
    auto copts = calib::CollectOptions::for_method(calib::parse_scaling_method(o.scaling_method));
    copts.gram = true;
    copts.batch_size = o.batch_size;
    copts.show_progress = o.show_progress;
    stats = dist::collect_statistics(lm, samples, copts, group);
    if (o.use_cache && group.is_root()) cache_store(file, [&] { stats->save(file, key.as_metadata()); });
  }
  end_stage(result, "statistics_s", t0);

  t0 = Clock::now();
  modules::ModuleOptions mopts;
  mopts.method = o.method;
  mopts.nystrom.selection = modules::parse_channel_selection(o.channel_selection);
  mopts.nystrom.ridge = o.ridge;
  mopts.nystrom.channel_align = o.rank_align;
  mopts.head_align = o.head_align;
  mopts.allocation = o.search == "lagrangian" ? "lagrangian" : "uniform";
  mopts.candidates = o.candidates;
  mopts.batch_size = o.batch_size;
  mopts.show_progress = o.show_progress;
  mopts.compress_lm_head = o.lm_head == LmHeadPolicy::kCompress || o.lm_head == LmHeadPolicy::kReference;
  // The lagrangian allocation's per-module table, cached like the per-layer sensitivity.
  std::optional<search::SensitivityTable> cached_table;
  auto sens_fields = stats_fields;
  sens_fields["method"] = o.method;
  sens_fields["method_options"] = method_cache_options(o);
  sens_fields["rank_align"] = std::to_string(o.rank_align);
  if (mopts.compress_lm_head) sens_fields["lm_head"] = "candidate";  // a tied head's points join the table
  std::string cands;
  for (double r : o.candidates) cands += (cands.empty() ? "" : ",") + fmt_double(r);
  sens_fields["candidates"] = cands.empty() ? "default" : cands;
  io::CacheKey sens_key{"module_sensitivity", sens_fields};
  const fs::path sens_file = o.cache_dir / sens_key.file_name("json");
  if (mopts.allocation == "lagrangian") {
    cached_table = agreed(group, cache_lookup<search::SensitivityTable>(
        o, sens_key, sens_file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
          auto t = search::SensitivityTable::load(p);
          meta = t.meta();
          return t;
        }));
    if (cached_table) mopts.sensitivity = &*cached_table;
  }
  auto done = modules::compress_modules(lm, *stats, samples, o.param_ratio_target, mopts);
  if (mopts.allocation == "lagrangian" && !cached_table && o.use_cache && group.is_root()) {
    done.sensitivity.meta() = sens_key.as_metadata();
    cache_store(sens_file, [&] { done.sensitivity.save(sens_file); });
  }
  end_stage(result, "decompose_s", t0);
  result.plan = std::move(done.plan);
  result.dense_calibration_ppl = done.dense_calibration_ppl;
  result.searched = true;
  result.nominal_ratio = result.plan.param_ratio();
  result.target_label = fmt::format("ratio{}", o.param_ratio_target);
  result.plan.meta() = {{"model_id", lm.folder().string()}, {"method", o.method},
                        {"allocation", mopts.allocation},   {"channel_selection", o.channel_selection},
                        {"ridge", fmt_double(o.ridge)},     {"sequential", "0"},
                        {"preset", preset_name(o.preset)},  {"head_align", std::to_string(o.head_align)}};
  // The budget is the plan's layers, counted by what they store.
  for (const auto& layer : result.plan.layers()) result.budget_layers.push_back(layer.name);
  result.budget_ratio = result.plan.param_ratio();
  result.target_met = result.budget_ratio <= o.param_ratio_target + 1e-3;
  if (!result.target_met) {
    result.target_note = fmt::format(
        "--param_ratio_target {} not reached: the layers store {:.4f} of their weights{}", o.param_ratio_target,
        result.budget_ratio,
        mopts.allocation == "lagrangian" ? " (even the smallest candidate ratios do not reach it; add smaller --candidates)"
                                         : " (even the narrowest modules do not reach it)");
    if (o.show_progress) fmt::print(stderr, "warning: {}\n", result.target_note);
  }
  return result;
}

// The resolved options that decide a run's results, one "name=value" a line.
std::string describe_for_ranks(const PipelineOptions& o) {
  std::string cands;
  for (double r : o.candidates) cands += fmt_double(r) + ",";
  return fmt::format(
      "preset={}\nparam_ratio_target={}\nppl_target={}\nkv_cache_ratio_target={}\ncompress_kv_cache={}\nplan_file={}\n"
      "act_aware={}\nalpha={}\nn_calib_samples={}\ncalib_dataset={}\nscaling_method={}\nsensitivity_metric={}\n"
      "method={}\ncur_selection={}\ncur_fold_u={}\nsigma_fuse={}\nchannel_selection={}\nridge={}\nhead_align={}\nsearch={}\n"
      "candidates={}\nsequential={}\nfinal_cut={}\nlm_head={}\nseed={}\nrank_align={}\nuse_bos={}\nseqlen={}\n"
      "batch_size={}\nsweep_batch_size={}\nuse_cache={}\n",
      preset_name(o.preset), o.param_ratio_target, o.ppl_target, o.kv_cache_ratio_target, o.compress_kv_cache,
      o.plan_file.string(), o.act_aware.value_or(false), o.alpha, o.n_calib_samples, o.calib_dataset, o.scaling_method,
      o.sensitivity_metric, o.method, o.cur_selection, o.cur_fold_u, o.sigma_fuse, o.channel_selection, o.ridge,
      o.head_align, o.search, cands, o.sequential.value_or(false), static_cast<int>(o.final_cut), static_cast<int>(o.lm_head), o.seed,
      o.rank_align, o.use_bos, o.seqlen, o.batch_size, o.sweep_batch_size, o.use_cache);
}

}  // namespace

Preset parse_preset(const std::string& name) {
  if (name == "best") return Preset::kBest;
  if (name == "reference") return Preset::kReference;
  throw std::invalid_argument(fmt::format("--preset must be best or reference, not \"{}\"", name));
}

std::string preset_name(Preset preset) { return preset == Preset::kBest ? "best" : "reference"; }

PipelineOptions resolve(const PipelineOptions& options) {
  PipelineOptions o = options;
  const bool best = o.preset == Preset::kBest;
  const bool ppl_weights = o.sensitivity_metric == "ppl" && !o.compress_kv_cache;
  if (o.method.empty()) {
    // The best measured configurations (docs/results.md): for a parameter target, each MLP,
    // value-output and query-key pair narrowed or its Linears factorized by whitened SVD, as one
    // Lagrangian allocation prices them; otherwise (a perplexity target, a plan file, another
    // sensitivity) skeleton_swap with the sequential pass.
    const bool module_default = best && ppl_weights && o.param_ratio_target > 0 && o.plan_file.empty();
    o.method = !best ? "cur" : module_default ? kBestModuleMethod : "skeleton_swap";
  }
  // Methods on the Gram matrix read no activation scale: act_aware would change nothing for them.
  bool gram = false;
  if (best) {
    try {
      gram = !modules::is_module_method(o.method) &&
             compress::make_compressor(o.method)->statistic() == compress::LayerStatistic::Gram;
    } catch (const std::invalid_argument&) {
      // An unknown method: validate() names it.
    }
  }
  if (!o.act_aware) o.act_aware = best && !gram && !modules::is_module_method(o.method);
  if (!o.sequential) o.sequential = gram;
  if (o.search.empty()) {
    o.search = best && ppl_weights && o.param_ratio_target > 0 && o.plan_file.empty() ? "lagrangian" : "reference";
  }
  if (o.candidates.empty() && best && ppl_weights) {
    if (modules::is_module_method(o.method)) {
      o.candidates = {0.5, 0.6, 0.7, 0.8, 0.9, 0.95};  // the grid the module results were measured on
    } else {
      for (int i = 8; i <= 19; ++i) o.candidates.push_back(i / 20.0);  // 0.4, 0.45, ..., 0.95
    }
  }
  if (!best) {
    o.final_cut = search::FinalCut::kReferenceLastMid;
    if (o.lm_head == LmHeadPolicy::kAuto) o.lm_head = LmHeadPolicy::kReference;
  }
  return o;
}

std::string method_cache_options(const PipelineOptions& options) {
  const PipelineOptions o = resolve(options);
  // What compress_model's CompressorOptions give each method (compress/factory.cpp): CUROptions::selection
  // and fold_u, SVDOptions::sigma_fuse; the skeleton and DataCUR options set there are rank_align only.
  if (o.method == "cur" || o.method == "grad_cur") {
    return "selection=" + o.cur_selection + (o.cur_fold_u ? ",fold_u" : "");
  }
  if (o.method == "svd" || o.method == "svd_whiten") return "sigma_fuse=" + o.sigma_fuse;
  if (modules::is_module_method(o.method)) {
    // head_align named only where it is not 1, so that tables cached before it existed still match.
    return fmt::format("selection={},ridge={}", o.channel_selection, o.ridge) +
           (o.head_align != 1 ? fmt::format(",head_align={}", o.head_align) : "");
  }
  static const std::set<std::string> no_options{"skeleton",      "skeleton_row", "skeleton_col", "skeleton_diag",
                                                "skeleton_swap", "cur_whiten",   "cur_deim",     "cur_qr"};
  if (no_options.count(o.method)) return "";
  // A new method must be listed above (tests/test_pipeline.cpp asks for every compressor name).
  throw std::invalid_argument(fmt::format("method_cache_options: unknown method \"{}\"", o.method));
}

// Far above any calibration set in use (the reference pipeline takes 32 to 256).
constexpr int64_t kMaxCalibSamples = 1000000;

void validate_settings(const PipelineOptions& options) {
  using std::invalid_argument;
  const PipelineOptions o = resolve(options);
  if (!(o.alpha >= 0)) throw invalid_argument(fmt::format("--alpha must be >= 0, not {}", o.alpha));
  if (o.n_calib_samples <= 0) throw invalid_argument(fmt::format("--n_calib_samples must be positive, not {}", o.n_calib_samples));
  if (o.n_calib_samples > kMaxCalibSamples) {
    throw invalid_argument(fmt::format("--n_calib_samples {} is more than cur4llm takes (at most {}; each sample is a "
                                       "window of --seqlen tokens held in memory)",
                                       o.n_calib_samples, kMaxCalibSamples));
  }
  if (o.rank_align <= 0) throw invalid_argument(fmt::format("--rank_align must be positive, not {}", o.rank_align));
  if (o.head_align <= 0) throw invalid_argument(fmt::format("--head_align must be positive, not {}", o.head_align));
  if (o.seqlen < 2) throw invalid_argument(fmt::format("--seqlen must be at least 2, not {}", o.seqlen));
  if (o.batch_size < 1) throw invalid_argument("--batch_size must be at least 1");
  if (o.sweep_batch_size < 0) throw invalid_argument("--sweep_batch_size must be 0 (automatic) or positive");
  if (o.sensitivity_metric != "ppl" && o.sensitivity_metric != "stable_rank") {
    throw invalid_argument(fmt::format("--sensitivity_metric must be ppl or stable_rank, not \"{}\"", o.sensitivity_metric));
  }
  calib::parse_scaling_method(o.scaling_method);
  compress::parse_sigma_fuse(o.sigma_fuse);
  compress::parse_cur_selection(o.cur_selection);
  if (o.cur_fold_u && o.method != "cur" && o.method != "grad_cur") {
    throw invalid_argument(fmt::format("--cur_fold_u applies to --method cur or grad_cur, not {}", o.method));
  }
  const auto& methods = compress::compressor_names();
  const bool module_method = modules::is_module_method(o.method);
  if (module_method) {
    modules::parse_channel_selection(o.channel_selection);
    if (!(o.ridge >= 0)) throw invalid_argument(fmt::format("--ridge must be >= 0, not {}", o.ridge));
    if (*o.sequential) throw invalid_argument(fmt::format("--sequential does not apply to the module method {}", o.method));
    if (o.compress_kv_cache) throw invalid_argument(fmt::format("--compress_kv_cache does not apply to {}", o.method));
  } else if (std::find(methods.begin(), methods.end(), o.method) == methods.end()) {
    compress::make_compressor(o.method);  // throws, listing the names
  }
  for (double r : o.candidates) {
    if (!(r > 0 && r < 1)) throw invalid_argument(fmt::format("--candidates: {} is not a ratio in (0, 1)", r));
  }
  if (!o.candidates.empty() && (o.sensitivity_metric != "ppl" || o.compress_kv_cache)) {
    throw invalid_argument("--candidates is for the ppl sensitivity in the weights mode");
  }
  if (o.search != "reference" && o.search != "lagrangian") {
    throw invalid_argument(fmt::format("--search must be reference or lagrangian, not \"{}\"", o.search));
  }
  if (*o.sequential && !module_method &&
      compress::make_compressor(o.method)->statistic() != compress::LayerStatistic::Gram) {
    throw invalid_argument(fmt::format("--sequential needs a data-aware method (on the Gram matrix), not \"{}\"", o.method));
  }
}

void validate(const PipelineOptions& options) {
  using std::invalid_argument;
  const PipelineOptions o = resolve(options);
  const int targets = (o.ppl_target > 0) + (o.param_ratio_target > 0) + (o.kv_cache_ratio_target > 0);
  if (!o.plan_file.empty()) {
    if (targets > 0) throw invalid_argument("give either a target or a plan file, not both");
    if (o.compress_kv_cache) throw invalid_argument("--compress_kv_cache does not apply to a plan file");
  } else {
    if (targets == 0) {
      throw invalid_argument("give one target: --param_ratio_target, --ppl_target or --kv_cache_ratio_target");
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
  if (o.plan_file.empty() && o.compress_kv_cache != (o.kv_cache_ratio_target > 0)) {
    throw invalid_argument("--compress_kv_cache and --kv_cache_ratio_target go together");
  }
  if (o.search == "lagrangian" && (o.sensitivity_metric != "ppl" || o.param_ratio_target <= 0)) {
    throw invalid_argument("--search lagrangian needs --sensitivity_metric ppl and --param_ratio_target");
  }
  validate_settings(o);
  if (modules::is_module_method(o.method) && (o.param_ratio_target <= 0 || !o.plan_file.empty())) {
    throw invalid_argument(fmt::format("--method {} needs --param_ratio_target (no ppl target or plan file)", o.method));
  }
  const auto calib = data::resolve_dataset(o.calib_dataset, data::Purpose::Calibration, data_dir_of(o));
  if (calib.format == data::DatasetFile::Format::Alpaca) {  // a broken record is reported now, not after the work
    const auto text = data::load_text(o.calib_dataset, data::Purpose::Calibration, data_dir_of(o));
    data::parse_alpaca(text.text, calib.file.string());
  }
  if (!o.plan_file.empty() && !fs::is_regular_file(o.plan_file)) {
    throw invalid_argument(fmt::format("plan file {} does not exist", o.plan_file.string()));
  }
}

eval::PerplexityResult evaluate_dataset(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                        const std::string& spec, const EvalOptions& options) {
  const fs::path data_dir = options.data_dir.empty() ? data::default_data_dir() : options.data_dir;
  const auto source = data::load_text(spec, data::Purpose::Evaluation, data_dir);
  const auto ids = tokenizer.encode(source.text);
  eval::PerplexityOptions popts;
  popts.seqlen = options.seqlen;
  popts.batch_size = options.batch_size;
  popts.max_windows = options.max_windows;
  popts.show_progress = options.show_progress;
  popts.label = spec.c_str();
  return eval::evaluate_perplexity(lm, ids, popts);
}

std::string plan_file_name(const std::string& model_label, const PipelineOptions& options,
                           const std::string& target_label) {
  const PipelineOptions o = resolve(options);
  return fmt::format("plan-{}-{}{}{}-{}.json", model_label, o.method, *o.sequential ? "-seq" : "",
                     o.search == "lagrangian" ? "-lagr" : "", target_label);
}

std::vector<double> parse_candidates(const std::string& text) {
  std::vector<double> out;
  std::stringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    if (item.empty()) continue;
    double r = -1;
    try {
      size_t used = 0;
      r = std::stod(item, &used);
      if (used != item.size()) r = -1;
    } catch (const std::exception&) {
      r = -1;
    }
    if (!(r > 0 && r < 1)) throw std::invalid_argument(fmt::format("--candidates: \"{}\" is not a ratio in (0, 1)", item));
    out.push_back(r);
  }
  return out;
}

int64_t effective_seqlen(const model::CausalLM& lm, int64_t requested) {
  const int64_t limit = lm.config().max_position_embeddings;
  if (requested <= limit) return requested;
  fmt::print(stderr, "warning: --seqlen {} exceeds max_position_embeddings; using {}\n", requested, limit);
  return limit;
}

std::string model_label(const std::string& model_id) {
  std::string s = fs::path(model_id).filename().string();
  if (s.empty()) s = fs::path(model_id).parent_path().filename().string();
  return s.empty() ? "model" : s;
}

std::vector<std::vector<int64_t>> calibration_samples(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                                      const PipelineOptions& options) {
  const PipelineOptions o = resolve(options);
  validate_settings(o);
  const int64_t seqlen = std::min(o.seqlen, lm.config().max_position_embeddings);
  std::shared_ptr<dist::Group> single;
  return calibration_stage(lm, tokenizer, o, seqlen, data_dir_of(o), group_of(o, single)).samples;
}

PipelineResult compress_model(model::CausalLM& lm, const tokenize::Tokenizer& tokenizer, const PipelineOptions& options) {
  const PipelineOptions o = resolve(options);
  validate(o);
  PipelineResult result;
  const int64_t seqlen = std::min(o.seqlen, lm.config().max_position_embeddings);
  result.seqlen = seqlen;
  const fs::path data_dir = data_dir_of(o);
  std::optional<search::CompressionPlan> saved_plan;
  if (!o.plan_file.empty()) saved_plan = search::CompressionPlan::load(o.plan_file);

  // The budget: every Linear, except a tied lm_head that stays dense (it stores nothing of its own).
  const bool tied_head = lm.config().tie_word_embeddings && lm.has_linear("lm_head");
  const bool keep_head = tied_head && o.lm_head == LmHeadPolicy::kAuto;
  std::vector<search::LayerSize> sizes;
  for (const auto& info : lm.linears()) {
    if (keep_head && info.name == "lm_head") continue;
    const bool shared = tied_head && info.name == "lm_head" && o.lm_head == LmHeadPolicy::kCompress;
    sizes.push_back({info.name, info.in_features * info.out_features, shared});
    result.budget_layers.push_back(info.name);
  }

  std::shared_ptr<dist::Group> single;
  dist::Group& group = group_of(o, single);

  // 1. Calibration samples (every rank of a distributed run checked to run the same model and options).
  util::reset_memory_peaks();
  auto t0 = Clock::now();
  auto calib = calibration_stage(lm, tokenizer, o, seqlen, data_dir, group);
  const io::CacheKey& calib_key = calib.key;
  const std::optional<std::vector<std::vector<int64_t>>> samples = std::move(calib.samples);
  const fs::path& cache_dir = o.cache_dir;
  const auto scaling = calib::parse_scaling_method(o.scaling_method);
  end_stage(result, "calib_samples_s", t0);

  if (modules::is_module_method(o.method)) return compress_modules_stage(lm, *samples, calib_key, o, std::move(result));

  // 2. Activation statistics (data-aware methods need the input Gram matrices, whatever act_aware says).
  compress::CompressorOptions comp_opts;
  comp_opts.cur.rank_align = o.rank_align;
  comp_opts.cur.selection = compress::parse_cur_selection(o.cur_selection);
  comp_opts.cur.fold_u = o.cur_fold_u;
  comp_opts.cur.seed = o.seed;
  comp_opts.svd.rank_align = o.rank_align;
  comp_opts.svd.sigma_fuse = compress::parse_sigma_fuse(o.sigma_fuse);
  comp_opts.skeleton.rank_align = o.rank_align;
  comp_opts.data_cur.rank_align = o.rank_align;
  auto compressor = compress::make_compressor(o.method, comp_opts);
  const bool gram = compressor->statistic() == compress::LayerStatistic::Gram;
  calib::ActivationStatistics stats;
  compress::ScaleFn scale;
  auto stats_fields = calib_key.fields;
  stats_fields["scaling_method"] = o.scaling_method;
  if (gram) stats_fields["gram"] = "1";
  if (*o.act_aware || gram) {
    t0 = Clock::now();
    io::CacheKey key{"stats", stats_fields};
    const fs::path file = cache_dir / key.file_name("safetensors");
    auto cached = agreed(group, cache_lookup<calib::ActivationStatistics>(
        o, key, file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
          return calib::ActivationStatistics::load(p, &meta);
        }));
    if (cached) {
      stats = std::move(*cached);
    } else {
      auto copts = calib::CollectOptions::for_method(scaling);
      copts.gram = gram;
      copts.batch_size = o.batch_size;
      copts.show_progress = o.show_progress;
      stats = dist::collect_statistics(lm, *samples, copts, group);
      if (o.use_cache && group.is_root()) cache_store(file, [&] { stats.save(file, key.as_metadata()); });
    }
    scale = [&stats, scaling, alpha = o.alpha, gram](const std::string& layer) {
      return gram ? stats.mean_gram(layer) : stats.scale(layer, scaling, alpha);
    };
    end_stage(result, "statistics_s", t0);
  }

  search::Allocation allocation;
  double found_ratio = 1;
  bool found_ratio_met = true;
  std::size_t found_cut = 0;
  if (saved_plan) {
    allocation = allocation_from_plan(lm, *saved_plan, o);
    result.target_label = "plan";
  } else {
    // 3. Sensitivity.
    sensitivity::SweepOptions sweep;
    sweep.mode = o.compress_kv_cache ? search::CompressMode::kKvCache : search::CompressMode::kWeights;
    sweep.batch_size = o.sweep_batch_size;
    sweep.show_progress = o.show_progress;
    sweep.candidates = o.candidates;
    if (keep_head && !o.compress_kv_cache) {
      for (const auto& size : sizes) sweep.layers.push_back(size.name);
    }
    t0 = Clock::now();
    auto sens_fields = stats_fields;
    sens_fields["act_aware"] = *o.act_aware ? "1" : "0";
    sens_fields["alpha"] = fmt_double(o.alpha);
    sens_fields["method"] = o.method;
    sens_fields["metric"] = o.sensitivity_metric;
    sens_fields["mode"] = o.compress_kv_cache ? "kv_cache" : "weights";
    sens_fields["rank_align"] = std::to_string(o.rank_align);
    // Raised when a decomposition's algorithm changes its results, so that older tables are rebuilt
    // (2: on CUDA, matrices up to 1024 wide take the exact Gram subspace instead of the range finder).
    sens_fields["decomposition_version"] = "2";
    sens_fields["method_options"] = method_cache_options(o);
    if (keep_head) sens_fields["lm_head"] = "kept";  // the sweep skipped it
    {
      std::string c;
      const auto cands = !sweep.candidates.empty()         ? sweep.candidates
                         : o.sensitivity_metric == "ppl" ? search::candidate_ratios(sweep.mode)
                                                         : search::stable_rank_candidate_ratios();
      for (double r : cands) c += (c.empty() ? "" : ",") + fmt_double(r);
      sens_fields["candidates"] = c;
    }
    io::CacheKey sens_key{"sensitivity", sens_fields};
    const fs::path sens_file = cache_dir / sens_key.file_name("json");
    auto table = agreed(group, cache_lookup<search::SensitivityTable>(
        o, sens_key, sens_file, [](const fs::path& p, std::map<std::string, std::string>& meta) {
          auto t = search::SensitivityTable::load(p);
          meta = t.meta();
          return t;
        }));
    if (!table) {
      // ppl: each rank sweeps a share of the layers; stable_rank is cheap enough for every rank to compute.
      table = o.sensitivity_metric == "ppl" ? dist::ppl_sensitivity(lm, *samples, *compressor, scale, sweep, group)
                                            : sensitivity::stable_rank_sensitivity(lm, sweep);
      table->meta() = sens_key.as_metadata();
      if (o.use_cache && group.is_root()) cache_store(sens_file, [&] { table->save(sens_file); });
    }
    end_stage(result, "sensitivity_s", t0);

    // 4. Binary search.
    t0 = Clock::now();
    search::SearchOptions sopts;
    sopts.mode = sweep.mode;
    sopts.final_cut = o.final_cut;
    if (o.preset != Preset::kReference && !o.compress_kv_cache) {
      // Count what each compressed layer really stores (the reference counts numel * ratio).
      std::map<std::string, std::pair<int64_t, int64_t>> shapes;
      for (const auto& info : lm.linears()) shapes[info.name] = {info.out_features, info.in_features};
      sopts.stored_params = [shapes, c = compressor.get()](const std::string& layer, double ratio) {
        const auto& [out, in] = shapes.at(layer);
        return c->stored_params(out, in, ratio);
      };
    }
    sopts.show_progress = o.show_progress;
    search::SearchResult found;
    if (o.ppl_target > 0) {
      std::map<std::pair<std::string, double>, model::LinearPtr> built;  // decomposed once per (layer, ratio)
      auto calib_ppl = [&](const search::Allocation& trial_allocation) {
        model::ScopedSlots trial(lm);  // the probe's layers are undone on return
        for (const auto& a : trial_allocation) {
          if (!a.compressed) continue;
          auto& slot = built[{a.layer, a.ratio}];
          if (!slot) {
            const auto& dense = lm.dense_linear(a.layer);  // a cached sensitivity table skips the sweep's own check
            slot = compressor->compress(dense.weight(), dense.bias(), scale ? scale(a.layer) : at::Tensor(), a.ratio);
          }
          trial.replace(a.layer, slot);
        }
        eval::PerplexityOptions popts;
        popts.batch_size = o.batch_size;
        const double ppl = eval::samples_perplexity(lm, *samples, popts).perplexity;
        fmt::print(stderr, "search: calibration ppl {:.4f}\n", ppl);
        return ppl;
      };
      found = search::search_perplexity(*table, sizes, o.ppl_target, calib_ppl, sopts);
      result.target_label = fmt::format("ppl{}", o.ppl_target);
    } else {
      const double target = o.compress_kv_cache ? o.kv_cache_ratio_target : o.param_ratio_target;
      if (o.search == "lagrangian") {
        eval::PerplexityOptions popts;
        popts.batch_size = o.batch_size;
        result.dense_calibration_ppl = eval::samples_perplexity(lm, *samples, popts).perplexity;
        found = search::search_param_ratio_lagrangian(*table, sizes, target, result.dense_calibration_ppl, sopts);
      } else {
        found = search::search_param_ratio(*table, sizes, target, sopts);
      }
      result.target_label = o.compress_kv_cache ? fmt::format("kv{}", o.kv_cache_ratio_target)
                                                : fmt::format("ratio{}", o.param_ratio_target);
    }
    end_stage(result, "search_s", t0);
    result.searched = true;
    result.search_cut = found.cut;
    result.search_entries = found.num_entries;
    result.nominal_ratio = found.nominal_ratio;
    found_ratio = found.ratio;
    found_ratio_met = found.target_met;
    found_cut = found.cut;
    allocation = std::move(found.allocation);
  }

  // 5. Decompose and swap in.
  t0 = Clock::now();
  if (*o.sequential) {
    compress::SequentialOptions qopts;
    qopts.batch_size = o.batch_size;
    qopts.show_progress = o.show_progress;
    result.plan = compress::apply_allocation_sequential(lm, allocation, *compressor, *samples, qopts);
  } else {
    compress::ApplyOptions aopts;
    aopts.show_progress = o.show_progress;
    result.plan = compress::apply_allocation(lm, allocation, *compressor, scale, aopts);
  }
  end_stage(result, "decompose_s", t0);
  result.plan.meta() = {{"model_id", lm.folder().string()},     {"method", o.method},
                        {"sequential", *o.sequential ? "1" : "0"}, {"act_aware", *o.act_aware ? "1" : "0"},
                        {"alpha", fmt_double(o.alpha)},           {"scaling_method", o.scaling_method},
                        {"preset", preset_name(o.preset)}};
  if (keep_head) result.plan.meta()["lm_head"] = "tied, kept dense";

  // 6. Was the target reached? Counted as the search counts, on what the layers really store now.
  search::Allocation applied;
  for (const auto& size : sizes) {
    const std::optional<search::PlannedLayer> planned = result.plan.find(size.name);
    const bool compressed = planned && planned->method != "dense";
    applied.push_back({size.name, compressed ? planned->ratio : 1.0, compressed});
  }
  result.budget_ratio = search::whole_model_ratio(
      applied, sizes, search::CompressMode::kWeights,
      [&](const std::string& layer, double) { return result.plan.find(layer)->stored_params; });
  if (saved_plan) {
    // A plan states its ratios; there is no target to miss.
  } else if (o.ppl_target > 0) {
    eval::PerplexityOptions popts;
    popts.batch_size = o.batch_size;
    result.final_calibration_ppl = eval::samples_perplexity(lm, *samples, popts).perplexity;
    result.target_met = result.final_calibration_ppl < o.ppl_target;
    if (!result.target_met) {
      result.target_note = fmt::format("--ppl_target {} not reached: the calibration perplexity is {:.4f}", o.ppl_target,
                                       result.final_calibration_ppl);
    }
  } else if (o.compress_kv_cache) {
    result.target_met = found_ratio_met;
    if (!result.target_met) {
      result.target_note = fmt::format("--kv_cache_ratio_target {} not reached: the smallest candidates give {:.4f}",
                                       o.kv_cache_ratio_target, found_ratio);
    }
  } else {
    // A small tolerance: the search counts parameters as the compressors predict them.
    result.target_met = result.budget_ratio <= o.param_ratio_target + 1e-3;
    const char* miss_hint =
        found_cut == 0 || o.search == "lagrangian"
            ? " (even the smallest candidate ratios do not reach it; add smaller --candidates)"
            : " (the reference's binary search stops at the first cut above the target; --search lagrangian meets it)";
    if (!result.target_met) {
      result.target_note = fmt::format(
          "--param_ratio_target {} not reached: the layers store {:.4f} of their weights{}", o.param_ratio_target,
          result.budget_ratio,
          miss_hint);
    }
  }
  if (!result.target_met && o.show_progress) fmt::print(stderr, "warning: {}\n", result.target_note);
  return result;
}

}  // namespace cur4llm::pipeline
