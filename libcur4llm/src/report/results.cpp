#include <cur4llm/report/results.h>

#include <cur4llm/io/files.h>

#include "report/stages.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

namespace cur4llm::detail {

// Stages in acur's run order; per-dataset evaluations of older records and unknown stages after.
int stage_rank(const std::string& stage) {
  static const char* const order[] = {"load",   "dense_eval", "calib_samples", "statistics", "sensitivity",
                                      "search", "decompose",  "quantize",      "eval",       "eval_tasks"};
  constexpr int n = static_cast<int>(sizeof order / sizeof order[0]);
  for (int i = 0; i < n; ++i) {
    if (stage == order[i]) return i;
  }
  return stage.rfind("eval_", 0) == 0 ? n : n + 1;
}

}  // namespace cur4llm::detail

namespace cur4llm::report {
namespace {

using Json = nlohmann::ordered_json;

[[noreturn]] void bad(const std::string& key, const std::string& why) {
  throw std::runtime_error(fmt::format("\"{}\" {}", key, why));
}

std::string get_string(const Json& j, const char* key, const std::string& path, bool required) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) bad(path + key, "is missing");
    return {};
  }
  if (!it->is_string()) bad(path + key, "is not a string");
  return it->get<std::string>();
}

double get_number(const Json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::numeric_limits<double>::quiet_NaN();
  if (!it->is_number()) bad(path + key, "is not a number");
  return it->get<double>();
}

bool get_bool(const Json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return false;
  if (!it->is_boolean()) bad(path + key, "is not true or false");
  return it->get<bool>();
}

const Json* get_object(const Json& j, const char* key, const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  if (!it->is_object()) bad(path + key, "is not an object");
  return &*it;
}

// "%g" without exponent surprises for the small numbers of flags.
std::string short_number(double v) { return fmt::format("{:g}", v); }

// "0.4,0.45,0.5,...,0.95" -> "0.4..0.95 (12)": long candidate lists would swamp the table.
std::string short_list(const std::string& list) {
  const auto n = std::count(list.begin(), list.end(), ',') + 1;
  if (n <= 4) return list;
  return fmt::format("{}..{} ({})", list.substr(0, list.find(',')), list.substr(list.rfind(',') + 1), n);
}

// The settings that set a run apart from the defaults of acur, in a fixed order.
std::string settings_of(const Json* args, const std::string& method, bool raw_model, const std::string& weight_quant) {
  std::vector<std::string> parts;
  if (args && !raw_model) {
    const Json& a = *args;
    const std::string p = "args.";
    if (get_bool(a, "act_aware", p)) {
      parts.push_back("act_aware");
      const double alpha = get_number(a, "alpha", p);
      if (std::isfinite(alpha) && alpha != 0.5) parts.push_back("alpha " + short_number(alpha));
      const auto scaling = get_string(a, "scaling_method", p, false);
      if (!scaling.empty() && scaling != "abs_mean") parts.push_back(scaling);
    }
    const auto search = get_string(a, "search", p, false);
    if (!search.empty() && search != "reference") parts.push_back(search);
    if (get_bool(a, "sequential", p)) parts.push_back("sequential");
    const auto metric = get_string(a, "sensitivity_metric", p, false);
    if (!metric.empty() && metric != "ppl") parts.push_back(metric);
    const auto candidates = get_string(a, "candidates", p, false);
    if (!candidates.empty()) parts.push_back("candidates " + short_list(candidates));
    const auto selection = get_string(a, "cur_selection", p, false);
    if (!selection.empty() && selection != "topk" &&
        (method == "cur" || method == "grad_cur" || method == "cur_whiten")) {
      parts.push_back(selection);
    }
    if (get_bool(a, "cur_fold_u", p)) parts.push_back("fold_u");
    const double align = get_number(a, "rank_align", p);
    if (std::isfinite(align) && align != 1) parts.push_back("align " + short_number(align));
    const double seed = get_number(a, "seed", p);
    if (std::isfinite(seed) && seed != 233) parts.push_back("seed " + short_number(seed));
  }
  if (!weight_quant.empty() && weight_quant != "none") parts.push_back(weight_quant);
  std::string out;
  for (const auto& s : parts) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string stage_name(const std::string& key) {
  std::string stage = key;
  if (stage.size() > 2 && stage.compare(stage.size() - 2, 2, "_s") == 0) stage.resize(stage.size() - 2);
  if (stage.rfind("eval_", 0) == 0) stage = "eval_" + short_name(stage.substr(5));
  return stage;
}

}  // namespace

std::string short_name(const std::string& name) {
  std::string s = name;
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  const bool path = !s.empty() && (s[0] == '/' || s[0] == '.' || s[0] == '~' ||
                                   std::count(s.begin(), s.end(), '/') >= 2);
  if (!path) return s;
  const auto slash = s.rfind('/');
  return slash == std::string::npos || slash + 1 == s.size() ? s : s.substr(slash + 1);
}

std::string RunRecord::variant() const {
  // Settings are joined by ", "; a value (a candidate list) may hold a bare ','.
  std::string out = method;
  for (std::size_t start = 0; start < settings.size();) {
    auto end = settings.find(", ", start);
    if (end == std::string::npos) end = settings.size();
    out += " +" + settings.substr(start, end - start);
    start = end + 2;
  }
  return out;
}

std::optional<double> RunRecord::perplexity(const std::string& dataset) const {
  for (const auto& [name, value] : ppl) {
    if (name == dataset) return value;
  }
  return std::nullopt;
}

const TaskResult* RunRecord::task(const std::string& name) const {
  for (const auto& t : tasks) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

RunRecord parse_record(const std::string& json_text, std::size_t line) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::parse_error& e) {
    // nlohmann's message starts with "[json.exception.parse_error.101] parse error at ..."
    std::string what = e.what();
    const auto pos = what.find("] ");
    throw std::runtime_error("not JSON: " + (pos == std::string::npos ? what : what.substr(pos + 2)));
  }
  if (!j.is_object()) throw std::runtime_error("not a JSON object");
  RunRecord r;
  r.line = line;
  r.model_id = get_string(j, "model_id", "", true);
  r.method = get_string(j, "method", "", true);
  r.raw_model = get_bool(j, "raw_model", "") || r.method == "dense";
  if (r.raw_model) r.method = "dense";
  r.ratio_linear = get_number(j, "param_ratio_linear", "");
  r.ratio_model = get_number(j, "param_ratio_model", "");
  if (r.raw_model) {
    if (!std::isfinite(r.ratio_linear)) r.ratio_linear = 1;
    if (!std::isfinite(r.ratio_model)) r.ratio_model = 1;
  }
  r.plan_file = get_string(j, "plan_file", "", false);
  const auto weight_quant = get_string(j, "weight_quant", "", false);
  const Json* args = get_object(j, "args", "");
  if (args && !r.raw_model) {
    r.search = get_string(*args, "search", "args.", false);
    r.sequential = get_bool(*args, "sequential", "args.");
    const double pr = get_number(*args, "param_ratio_target", "args.");
    const double pt = get_number(*args, "ppl_target", "args.");
    const double kv = get_number(*args, "kv_cache_ratio_target", "args.");
    if (pr > 0) {
      r.target_kind = "param_ratio", r.target = pr;
    } else if (pt > 0) {
      r.target_kind = "ppl", r.target = pt;
    } else if (kv > 0) {
      r.target_kind = "kv_cache", r.target = kv;
    }
  }
  r.settings = settings_of(args, r.method, r.raw_model, weight_quant);
  if (const Json* ppl = get_object(j, "ppl", "")) {
    for (const auto& [name, entry] : ppl->items()) {
      if (!entry.is_object()) bad("ppl." + name, "is not an object");
      const double v = get_number(entry, "ppl", "ppl." + name + ".");
      if (std::isnan(v)) bad("ppl." + name + ".ppl", "is missing");
      r.ppl.emplace_back(name, v);
    }
  }
  if (const Json* tasks = get_object(j, "tasks", "")) {
    for (const auto& [name, entry] : tasks->items()) {
      const std::string p = "tasks." + name + ".";
      if (!entry.is_object()) bad("tasks." + name, "is not an object");
      TaskResult t;
      t.name = name;
      t.acc = get_number(entry, "acc", p);
      if (std::isnan(t.acc)) bad(p + "acc", "is missing");
      t.acc_stderr = get_number(entry, "acc_stderr", p);
      t.acc_norm = get_number(entry, "acc_norm", p);
      t.acc_norm_stderr = get_number(entry, "acc_norm_stderr", p);
      const double items = get_number(entry, "items", p);
      if (std::isfinite(items)) t.items = static_cast<std::int64_t>(items);
      r.tasks.push_back(t);
    }
  }
  if (auto it = j.find("bytes"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer()) bad("bytes", "is not an integer");
    r.bytes = it->get<std::int64_t>();
  }
  if (const Json* timings = get_object(j, "timings", "")) {
    for (const auto& [key, value] : timings->items()) {
      if (!value.is_number()) bad("timings." + key, "is not a number");
      r.timings.emplace_back(stage_name(key), value.get<double>());
    }
    std::stable_sort(r.timings.begin(), r.timings.end(),
                     [](const auto& a, const auto& b) { return detail::stage_rank(a.first) < detail::stage_rank(b.first); });
  }
  return r;
}

ResultsFile parse_results(const std::string& text, const std::string& source) {
  ResultsFile out;
  std::stringstream in(text);
  std::size_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    try {
      out.records.push_back(parse_record(line, number));
    } catch (const std::exception& e) {
      out.warnings.push_back(fmt::format("{}:{}: {}; skipped", source, number, e.what()));
    }
  }
  return out;
}

ResultsFile read_results(const std::filesystem::path& path) { return parse_results(io::read_file(path), path.string()); }

std::vector<ModelRuns> group_runs(const std::vector<RunRecord>& records) {
  std::vector<ModelRuns> models;
  auto add_unique = [](std::vector<std::string>& list, const std::string& name) {
    if (std::find(list.begin(), list.end(), name) == list.end()) list.push_back(name);
  };
  for (const auto& r : records) {
    auto m = std::find_if(models.begin(), models.end(), [&](const ModelRuns& x) { return x.model_id == r.model_id; });
    if (m == models.end()) {
      models.push_back({r.model_id, {}, {}, {}, {}});
      m = models.end() - 1;
    }
    for (const auto& [name, value] : r.ppl) add_unique(m->datasets, name);
    for (const auto& t : r.tasks) add_unique(m->tasks, t.name);
    if (r.raw_model) {
      m->dense.push_back(r);
      continue;
    }
    const auto name = r.variant();
    auto v = std::find_if(m->variants.begin(), m->variants.end(), [&](const VariantRuns& x) { return x.variant == name; });
    if (v == m->variants.end()) {
      m->variants.push_back({name, {}});
      v = m->variants.end() - 1;
    }
    v->runs.push_back(r);
  }
  // NaN sorts last: a run without a target or ratio still gets a stable place.
  auto desc = [](double a, double b) {
    if (std::isnan(a) || std::isnan(b)) return !std::isnan(a) && std::isnan(b);
    return a > b;
  };
  for (auto& m : models) {
    for (auto& v : m.variants) {
      std::stable_sort(v.runs.begin(), v.runs.end(), [&](const RunRecord& a, const RunRecord& b) {
        if (a.target_kind != b.target_kind) return a.target_kind < b.target_kind;
        if (desc(a.target, b.target)) return true;
        if (desc(b.target, a.target)) return false;
        if (desc(a.ratio_linear, b.ratio_linear)) return true;
        if (desc(b.ratio_linear, a.ratio_linear)) return false;
        return a.line < b.line;
      });
    }
  }
  return models;
}

}  // namespace cur4llm::report
