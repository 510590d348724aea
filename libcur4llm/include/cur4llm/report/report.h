#pragma once
/// A results report: the runs of a results.jsonl as a table (Markdown and
/// HTML), perplexity and accuracy plots, and rank maps of plan files, written
/// into one folder as a whole or not at all.
///
///   auto results = report::read_results("output/results.jsonl");
///   report::ReportInput input{"output/results.jsonl", results, {}};
///   auto files = report::build_report(input, {});
///   report::write_report(files, "report", {});

#include <cur4llm/report/results.h>
#include <cur4llm/search/compression_plan.h>

#include <filesystem>
#include <string>
#include <vector>

namespace cur4llm::report {

/// A plan file to draw as a rank map.
struct PlanSource {
  std::string name;               ///< label and file-name stem (the plan file's name)
  search::CompressionPlan plan;   ///< the plan
};

/// What a report is made of.
struct ReportInput {
  std::string source;              ///< where the records came from (shown in the report)
  ResultsFile results;             ///< the records and the warnings of skipped lines
  std::vector<PlanSource> plans;   ///< rank maps to draw, in order
};

/// What a report contains.
struct ReportOptions {
  bool markdown = true;                   ///< write report.md (SVGs beside it)
  bool html = true;                       ///< write report.html (SVGs inline)
  bool log_y = false;                     ///< perplexity on a log scale
  std::string title = "cur4llm results";  ///< page title
};

/// A table as rows of text cells; `numeric[c]` aligns column c to the right.
struct Table {
  std::vector<std::string> header;           ///< column titles
  std::vector<bool> numeric;                 ///< per column
  std::vector<std::vector<std::string>> rows;  ///< cells, as printed
  std::vector<std::string> notes;            ///< sentences printed under the table
};

/// The runs table: one row per run, models in order of first appearance, dense runs
/// first, then variants in order of first appearance, each by target (largest first).
/// Columns: model, method, settings, target, real ratio of Linear weights and of the
/// whole model, perplexity per dataset, then (when any run has them) accuracy per task
/// and their mean, bytes, then seconds per stage and in all.
Table runs_table(const std::vector<ModelRuns>& models);

/// Perplexity on `dataset` by parameter-ratio target, one row per variant (dense runs
/// first, their value in every column), one column per target (largest first); a cell
/// is "ppl (real Linear ratio)", runs repeated at one target joined by " / ".
/// No rows when the model has no run with a parameter-ratio target.
Table ratio_table(const ModelRuns& model, const std::string& dataset);

/// The table as GitHub Markdown ('|' in cells escaped), notes as paragraphs after it.
std::string markdown(const Table& table);

/// A picture of the report.
struct Figure {
  std::string file;     ///< file name in the report folder ("ppl-opt-125m-wikitext2.svg")
  std::string caption;  ///< one line
  std::string svg;      ///< the SVG document
  std::string section;  ///< heading it goes under (the model, or "Plans")
  std::string dataset;  ///< the perplexity dataset it plots ("" for others)
};

/// Perplexity against the real Linear ratio per model and dataset (one line per
/// variant, dense runs as dashed references), and mean task accuracy against it
/// per model when runs have tasks. Models with no compressed run get none.
std::vector<Figure> result_figures(const std::vector<ModelRuns>& models, const ReportOptions& options);

/// A file of the report.
struct ReportFile {
  std::string name;     ///< plain file name, no folders
  std::string content;  ///< its bytes
};

/// Every file of the report: report.md and/or report.html, the SVGs, and report.json
/// (which marks the folder as a report); std::invalid_argument if both formats are off.
std::vector<ReportFile> build_report(const ReportInput& input, const ReportOptions& options);

/// How write_report treats an existing folder.
struct WriteOptions {
  bool overwrite = false;  ///< replace an existing folder that is not a report
};

/// True if `folder` holds a report (its report.json says so).
bool is_report_folder(const std::filesystem::path& folder);

/// Writes the files into `folder` as a whole (a temporary sibling renamed into place).
/// An existing report folder or empty folder is replaced; any other existing path
/// only with options.overwrite, else std::invalid_argument naming it and --overwrite.
void write_report(const std::vector<ReportFile>& files, const std::filesystem::path& folder,
                  const WriteOptions& options);

}  // namespace cur4llm::report
