#pragma once
/// acur's results.jsonl records, read for reports: one RunRecord per line,
/// malformed lines skipped with a warning that names the line.
///
///   auto file = report::read_results("output/results.jsonl");
///   for (const auto& w : file.warnings) std::cerr << w << "\n";
///   for (const auto& model : report::group_runs(file.records)) ...

#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::report {

/// One task's accuracy (lm-evaluation-harness style); NaN where the record has no value.
struct TaskResult {
  std::string name;                                           ///< task name ("mmlu", "arc_easy", ...)
  double acc = std::numeric_limits<double>::quiet_NaN();      ///< accuracy in [0, 1]
  double acc_stderr = std::numeric_limits<double>::quiet_NaN();       ///< its standard error
  double acc_norm = std::numeric_limits<double>::quiet_NaN();         ///< length-normalised accuracy, optional
  double acc_norm_stderr = std::numeric_limits<double>::quiet_NaN();  ///< its standard error, optional
  std::int64_t items = 0;                                     ///< number of items scored (0: not given)
};

/// What a report needs from one acur run (one line of results.jsonl).
struct RunRecord {
  std::size_t line = 0;          ///< 1-based line number in its file
  std::string model_id;          ///< as given to acur
  std::string method;            ///< "dense" for --raw_model runs
  bool raw_model = false;        ///< an uncompressed run
  std::string search;            ///< "reference", "lagrangian", ... ("" when not recorded)
  bool sequential = false;       ///< --sequential
  std::string settings;          ///< the non-default settings that set this run apart ("lagrangian, sequential")
  std::string target_kind;       ///< "param_ratio", "ppl", "kv_cache" or "" (dense, or not recorded)
  double target = std::numeric_limits<double>::quiet_NaN();        ///< the target's value
  double ratio_linear = std::numeric_limits<double>::quiet_NaN();  ///< real param ratio of Linear weights
  double ratio_model = std::numeric_limits<double>::quiet_NaN();   ///< real param ratio of the whole model
  std::vector<std::pair<std::string, double>> ppl;      ///< dataset -> perplexity, in the record's order
  std::vector<TaskResult> tasks;                        ///< task accuracies, in the record's order
  std::optional<std::int64_t> bytes;                    ///< bytes on disk of an exported model
  std::vector<std::pair<std::string, double>> timings;  ///< stage ("load", "eval_<short_name>", ...) -> seconds
  std::string plan_file;         ///< the plan acur wrote ("" for dense)

  /// The line label of plots: method, then settings ("skeleton_swap +lagrangian +sequential").
  std::string variant() const;
  /// The perplexity on `dataset`, if the record has it.
  std::optional<double> perplexity(const std::string& dataset) const;
  /// The task named `name`, if the record has it.
  const TaskResult* task(const std::string& name) const;
};

/// A model id or dataset as a report shows it: the last component of a file path that
/// starts with '/', '.' or '~' or has two or more '/' ("../models/opt-tiny/" -> "opt-tiny");
/// other names ("Qwen/Qwen2.5-7B", "wikitext2", "data.txt") as given.
std::string short_name(const std::string& name);

/// Records of a results file and the lines that could not be read.
struct ResultsFile {
  std::vector<RunRecord> records;     ///< in file order
  std::vector<std::string> warnings;  ///< "<source>:<line>: <why>; skipped", one per skipped line
};

/// Parses one record (a JSON object's text); std::runtime_error naming the missing or mistyped key.
RunRecord parse_record(const std::string& json_text, std::size_t line);

/// Parses results.jsonl text: blank lines are ignored, malformed ones skipped with a warning.
ResultsFile parse_results(const std::string& text, const std::string& source);

/// Reads a results.jsonl file; std::runtime_error if it cannot be read.
ResultsFile read_results(const std::filesystem::path& path);

/// The runs of one method variant of one model, ordered by target (largest first).
struct VariantRuns {
  std::string variant;          ///< RunRecord::variant()
  std::vector<RunRecord> runs;  ///< target descending, then real ratio descending, then line
};

/// All runs of one model: dense runs, then variants in order of first appearance.
struct ModelRuns {
  std::string model_id;
  std::vector<RunRecord> dense;         ///< --raw_model runs, in file order
  std::vector<VariantRuns> variants;    ///< compressed runs
  std::vector<std::string> datasets;    ///< perplexity datasets, in order of first appearance
  std::vector<std::string> tasks;       ///< task names, in order of first appearance
};

/// Groups records by model (order of first appearance) and method variant.
std::vector<ModelRuns> group_runs(const std::vector<RunRecord>& records);

}  // namespace cur4llm::report
