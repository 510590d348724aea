// acur_report: a readable report of acur's results.jsonl (a table in Markdown
// and HTML, perplexity and accuracy plots, rank maps of plan files); see
// docs/results.md ("Reports").
#include <cur4llm/report/report.h>
#include <cur4llm/search/compression_plan.h>

#include "app_common.h"

#include <filesystem>
#include <iostream>

namespace po = boost::program_options;
namespace fs = std::filesystem;
using cur4llm::app::guarded_main;
using cur4llm::app::split_list;

namespace {

int run(int argc, char** argv) {
  std::vector<std::string> results;
  std::string output;
  std::string formats = "md,html";
  std::vector<std::string> plans;
  std::string title;
  bool log_y = false;
  bool overwrite = false;
  po::options_description opts(
      "acur_report: tables and plots of acur's results\n\n"
      "Usage: acur_report --results output/results.jsonl [more.jsonl ...] --output report [--format md,html] "
      "[--plan plan.json ...] [--log_y]\n\nOptions");
  opts.add_options()
      ("results", po::value(&results)->multitoken()->required(),
       "results.jsonl written by acur (several files: their records together)")
      ("output", po::value(&output)->required(),
       "report folder (written as a whole; an existing report is replaced, any other folder only with --overwrite)")
      ("format", po::value(&formats)->default_value("md,html"), "md, html or md,html")
      ("plan", po::value(&plans)->multitoken(), "plan JSON files of acur to draw as rank maps (repeatable)")
      ("title", po::value(&title)->default_value("cur4llm results"), "title of the report")
      ("log_y", po::bool_switch(&log_y), "perplexity on a log scale")
      ("overwrite", po::bool_switch(&overwrite), "replace an existing --output that is not a report folder")
      ("version", "print the version and exit")
      ("help,h", "print this help");
  po::variables_map vm;
  int exit_code = 0;
  if (!cur4llm::app::parse_command_line("acur_report", argc, argv, opts, vm, exit_code)) return exit_code;

  cur4llm::report::ReportOptions options;
  options.markdown = options.html = false;
  options.log_y = log_y;
  options.title = title;
  for (const auto& f : split_list(formats)) {
    if (f == "md") {
      options.markdown = true;
    } else if (f == "html") {
      options.html = true;
    } else {
      throw std::invalid_argument(fmt::format("--format takes md and/or html, not \"{}\"", f));
    }
  }
  if (!options.markdown && !options.html) throw std::invalid_argument("--format takes md and/or html");
  cur4llm::report::ReportInput input;
  for (const auto& file : results) {
    if (!fs::is_regular_file(file)) throw std::invalid_argument(fmt::format("--results: no file {}", file));
    auto part = cur4llm::report::read_results(file);
    for (auto& r : part.records) input.results.records.push_back(std::move(r));
    for (auto& w : part.warnings) input.results.warnings.push_back(std::move(w));
    input.source += (input.source.empty() ? "" : ", ") + file;
  }
  for (const auto& w : input.results.warnings) fmt::print(stderr, "acur_report: warning: {}\n", w);
  if (input.results.records.empty()) {
    throw std::runtime_error(fmt::format("{} holds no readable record", input.source));
  }
  for (const auto& p : plans) {
    input.plans.push_back({fs::path(p).filename().string(), cur4llm::search::CompressionPlan::load(p)});
  }
  const auto files = cur4llm::report::build_report(input, options);
  cur4llm::report::write_report(files, output, {overwrite});
  fmt::print("report of {} runs ({} files) written to {}\n", input.results.records.size(), files.size(),
             (fs::path(output) / (options.html ? "report.html" : "report.md")).string());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return guarded_main("acur_report", [&] { return run(argc, argv); }); }
