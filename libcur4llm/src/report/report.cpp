#include <cur4llm/report/report.h>

#include <cur4llm/io/atomic_folder.h>
#include <cur4llm/io/files.h>
#include <cur4llm/report/plots.h>
#include <cur4llm/report/svg.h>

#include "report/stages.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <stdexcept>
#include <system_error>

namespace fs = std::filesystem;

namespace cur4llm::report {
namespace {

constexpr const char* kDash = "—";
constexpr const char* kMarkerFile = "report.json";
constexpr const char* kMarkerFormat = "cur4llm.report";

std::string ppl_cell(double v) {
  if (!std::isfinite(v)) return fmt::format("{}", v);
  if (v < 100) return fmt::format("{:.4f}", v);
  if (v < 10000) return fmt::format("{:.2f}", v);
  return fmt::format("{:.0f}", v);
}

std::string ratio_cell(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : kDash; }

std::string target_cell(const RunRecord& r) {
  if (r.target_kind == "param_ratio") return fmt::format("{:g}", r.target);
  if (r.target_kind == "ppl") return fmt::format("ppl {:g}", r.target);
  if (r.target_kind == "kv_cache") return fmt::format("kv {:g}", r.target);
  return kDash;
}

std::string grouped_integer(std::int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (std::size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return v < 0 ? "-" + out : out;
}

std::string acc_cell(const TaskResult& t) {
  std::string s = fmt::format("{:.2f}", 100 * t.acc);
  if (std::isfinite(t.acc_stderr)) s += fmt::format(" ± {:.2f}", 100 * t.acc_stderr);
  if (std::isfinite(t.acc_norm)) s += fmt::format(" (norm {:.2f})", 100 * t.acc_norm);
  return s;
}

// Tasks that every run of the model with tasks has: the mean accuracy is taken over these.
std::vector<std::string> common_tasks(const ModelRuns& m) {
  std::vector<std::string> common = m.tasks;
  auto check = [&](const RunRecord& r) {
    if (r.tasks.empty()) return;
    common.erase(std::remove_if(common.begin(), common.end(), [&](const std::string& t) { return !r.task(t); }),
                 common.end());
  };
  for (const auto& r : m.dense) check(r);
  for (const auto& v : m.variants) {
    for (const auto& r : v.runs) check(r);
  }
  return common;
}

double mean_accuracy(const RunRecord& r, const std::vector<std::string>& tasks) {
  if (tasks.empty()) return NAN;
  double sum = 0;
  for (const auto& name : tasks) {
    const TaskResult* t = r.task(name);
    if (!t) return NAN;
    sum += t->acc;
  }
  return sum / static_cast<double>(tasks.size());
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

std::string file_stem(const std::string& text) {
  // The last path component of a model folder or plan file, in safe characters.
  std::string base = text;
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (const auto slash = base.rfind('/'); slash != std::string::npos) base = base.substr(slash + 1);
  std::string out;
  for (unsigned char c : base) {
    const bool ok = std::isalnum(c) || c == '-' || c == '_' || c == '.';
    if (ok) {
      out += static_cast<char>(c);
    } else if (out.empty() || out.back() != '_') {
      out += '_';
    }
  }
  while (!out.empty() && out.front() == '.') out.erase(out.begin());
  if (out.size() > 80) out.resize(80);
  return out.empty() ? "x" : out;
}

// A file name not yet taken.
std::string unique_name(std::set<std::string>& taken, const std::string& stem, const std::string& ext) {
  std::string name = stem + ext;
  for (int i = 2; taken.count(name); ++i) name = fmt::format("{}-{}{}", stem, i, ext);
  taken.insert(name);
  return name;
}

std::string html_escape(const std::string& s) { return xml_escape(s); }

std::string markdown_cell(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') out += "\\|";
    else if (c == '\n') out += ' ';
    else out += c;
  }
  return out;
}

std::string html_table(const Table& t, const std::string& css_class) {
  std::string out = "<div class=\"wrap\"><table class=\"" + css_class + "\">\n<thead><tr>";
  for (const auto& h : t.header) out += "<th>" + html_escape(h) + "</th>";
  out += "</tr></thead>\n<tbody>\n";
  for (const auto& row : t.rows) {
    out += "<tr>";
    for (std::size_t c = 0; c < row.size(); ++c) {
      out += (c < t.numeric.size() && t.numeric[c] ? "<td class=\"n\">" : "<td>") + html_escape(row[c]) + "</td>";
    }
    out += "</tr>\n";
  }
  out += "</tbody></table></div>\n";
  for (const auto& n : t.notes) out += "<p class=\"note\">" + html_escape(n) + "</p>\n";
  return out;
}

// Dense runs repeated (one per results file, say) give one reference line.
void add_reference(LinePlot& plot, const std::string& name, double y) {
  for (const auto& r : plot.references) {
    if (r.name == name) return;
  }
  plot.references.push_back({name, y});
}

}  // namespace

Table runs_table(const std::vector<ModelRuns>& models) {
  std::vector<std::string> datasets, tasks, stages;
  bool any_bytes = false;
  auto add_unique = [](std::vector<std::string>& list, const std::string& name) {
    if (std::find(list.begin(), list.end(), name) == list.end()) list.push_back(name);
  };
  std::vector<std::pair<const ModelRuns*, const RunRecord*>> runs;
  for (const auto& m : models) {
    for (const auto& d : m.datasets) add_unique(datasets, d);
    for (const auto& t : m.tasks) add_unique(tasks, t);
    for (const auto& r : m.dense) runs.emplace_back(&m, &r);
    for (const auto& v : m.variants) {
      for (const auto& r : v.runs) runs.emplace_back(&m, &r);
    }
  }
  for (const auto& [m, r] : runs) {
    for (const auto& [stage, s] : r->timings) add_unique(stages, stage);
    any_bytes = any_bytes || r->bytes.has_value();
  }
  std::stable_sort(stages.begin(), stages.end(),
                   [](const std::string& a, const std::string& b) { return detail::stage_rank(a) < detail::stage_rank(b); });

  Table t;
  auto column = [&](const std::string& title, bool numeric) {
    t.header.push_back(title);
    t.numeric.push_back(numeric);
  };
  column("model", false);
  column("method", false);
  column("settings", false);  // the HTML page lets this third column wrap
  column("target", true);
  column("ratio, Linear", true);
  column("ratio, model", true);
  for (const auto& d : datasets) column("ppl " + short_name(d), true);
  for (const auto& name : tasks) column(name + " acc %", true);
  if (!tasks.empty()) column("mean acc %", true);
  if (any_bytes) column("bytes", true);
  for (const auto& s : stages) column(s + " s", true);
  if (!stages.empty()) column("total s", true);

  for (const auto& [m, r] : runs) {
    std::vector<std::string> row = {short_name(r->model_id), r->method, r->settings.empty() ? kDash : r->settings, target_cell(*r),
                                    ratio_cell(r->ratio_linear), ratio_cell(r->ratio_model)};
    for (const auto& d : datasets) {
      const auto v = r->perplexity(d);
      row.push_back(v ? ppl_cell(*v) : kDash);
    }
    for (const auto& name : tasks) {
      const TaskResult* task = r->task(name);
      row.push_back(task ? acc_cell(*task) : kDash);
    }
    if (!tasks.empty()) {
      const double mean = mean_accuracy(*r, common_tasks(*m));
      row.push_back(std::isfinite(mean) ? fmt::format("{:.2f}", 100 * mean) : kDash);
    }
    if (any_bytes) row.push_back(r->bytes ? grouped_integer(*r->bytes) : kDash);
    double total = 0;
    for (const auto& s : stages) {
      auto it = std::find_if(r->timings.begin(), r->timings.end(), [&](const auto& p) { return p.first == s; });
      if (it == r->timings.end()) {
        row.push_back(kDash);
      } else {
        row.push_back(fmt::format("{:.2f}", it->second));
        total += it->second;
      }
    }
    if (!stages.empty()) row.push_back(r->timings.empty() ? kDash : fmt::format("{:.2f}", total));
    t.rows.push_back(std::move(row));
  }
  t.notes.push_back(
      "Ratios are real: the parameters the compressed model stores over the dense model's, for its Linear weights "
      "and for the whole model. Times are wall-clock seconds per stage of acur.");
  if (!tasks.empty()) {
    for (const auto& m : models) {
      const auto common = common_tasks(m);
      if (m.tasks.empty()) continue;
      t.notes.push_back(common.empty() ? fmt::format("{}: no task is common to all its runs with tasks; no mean.", short_name(m.model_id))
                                       : fmt::format("{}: mean acc % is the mean over {}.", short_name(m.model_id), join(common, ", ")));
    }
  }
  return t;
}

std::string markdown(const Table& t) {
  std::string out = "|";
  for (const auto& h : t.header) out += " " + markdown_cell(h) + " |";
  out += "\n|";
  for (std::size_t c = 0; c < t.header.size(); ++c) out += c < t.numeric.size() && t.numeric[c] ? "---:|" : "---|";
  out += "\n";
  for (const auto& row : t.rows) {
    out += "|";
    for (const auto& cell : row) out += " " + markdown_cell(cell) + " |";
    out += "\n";
  }
  for (const auto& n : t.notes) out += "\n" + n + "\n";
  return out;
}

Table ratio_table(const ModelRuns& m, const std::string& dataset) {
  std::vector<double> targets;
  for (const auto& v : m.variants) {
    for (const auto& r : v.runs) {
      if (r.target_kind == "param_ratio" && std::find(targets.begin(), targets.end(), r.target) == targets.end()) {
        targets.push_back(r.target);
      }
    }
  }
  Table t;
  if (targets.empty()) return t;
  std::sort(targets.rbegin(), targets.rend());
  t.header.push_back("method");
  t.numeric.push_back(false);
  for (double x : targets) {
    t.header.push_back(fmt::format("{:g}", x));
    t.numeric.push_back(true);
  }
  std::vector<std::string> dense_seen;
  for (const auto& r : m.dense) {
    const auto p = r.perplexity(dataset);
    if (!p || std::find(dense_seen.begin(), dense_seen.end(), r.variant()) != dense_seen.end()) continue;
    dense_seen.push_back(r.variant());
    std::vector<std::string> row = {r.variant()};
    row.resize(targets.size() + 1, ppl_cell(*p));
    t.rows.push_back(std::move(row));
  }
  for (const auto& v : m.variants) {
    std::vector<std::string> row = {v.variant};
    bool any = false;
    for (double x : targets) {
      std::string cell;
      for (const auto& r : v.runs) {
        const auto p = r.perplexity(dataset);
        if (r.target_kind != "param_ratio" || r.target != x || !p) continue;
        const std::string value =
            ppl_cell(*p) + (std::isfinite(r.ratio_linear) ? fmt::format(" ({:.3f})", r.ratio_linear) : "");
        if (cell != value && cell.find(value + " / ") != 0 && cell.find(" / " + value) == std::string::npos) {
          cell += (cell.empty() ? "" : " / ") + value;  // a run repeated with the same result is shown once
        }
        any = true;
      }
      row.push_back(cell.empty() ? kDash : cell);
    }
    if (any) t.rows.push_back(std::move(row));
  }
  t.notes.push_back(fmt::format("Perplexity on {} (real parameter ratio of Linear weights) by target ratio.",
                                short_name(dataset)));
  return t;
}

std::vector<Figure> result_figures(const std::vector<ModelRuns>& models, const ReportOptions& options) {
  std::vector<Figure> figures;
  std::set<std::string> taken;
  for (const auto& m : models) {
    if (m.variants.empty()) continue;
    const std::string stem = file_stem(m.model_id);
    for (const auto& d : m.datasets) {
      LinePlot plot;
      plot.title = fmt::format("{}: perplexity on {}", short_name(m.model_id), short_name(d));
      plot.x_label = "real parameter ratio (Linear weights)";
      plot.y_label = "perplexity";
      for (const auto& v : m.variants) {
        Series s{v.variant, {}};
        for (const auto& r : v.runs) {
          if (auto p = r.perplexity(d)) s.points.emplace_back(r.ratio_linear, *p);
        }
        if (!s.points.empty()) plot.series.push_back(std::move(s));
      }
      if (plot.series.empty()) continue;
      for (const auto& r : m.dense) {
        if (auto p = r.perplexity(d)) add_reference(plot, fmt::format("{} {}", r.variant(), ppl_cell(*p)), *p);
      }
      PlotOptions po;
      po.log_y = options.log_y;
      figures.push_back({unique_name(taken, "ppl-" + stem + "-" + file_stem(d), ".svg"),
                         fmt::format("Perplexity on {} against the real parameter ratio of Linear weights{}.", short_name(d),
                                     options.log_y ? " (log scale)" : ""),
                         line_plot_svg(plot, po), short_name(m.model_id), d});
    }
    const auto common = common_tasks(m);
    if (common.empty()) continue;
    LinePlot plot;
    plot.title = fmt::format("{}: mean accuracy over {} task{}", short_name(m.model_id), common.size(), common.size() > 1 ? "s" : "");
    plot.x_label = "real parameter ratio (Linear weights)";
    plot.y_label = "mean accuracy %";
    for (const auto& v : m.variants) {
      Series s{v.variant, {}};
      for (const auto& r : v.runs) {
        const double mean = mean_accuracy(r, common);
        if (std::isfinite(mean)) s.points.emplace_back(r.ratio_linear, 100 * mean);
      }
      if (!s.points.empty()) plot.series.push_back(std::move(s));
    }
    if (plot.series.empty()) continue;
    for (const auto& r : m.dense) {
      const double mean = mean_accuracy(r, common);
      if (std::isfinite(mean)) add_reference(plot, fmt::format("{} {:.2f}", r.variant(), 100 * mean), 100 * mean);
    }
    figures.push_back({unique_name(taken, "acc-" + stem, ".svg"),
                       fmt::format("Mean accuracy over {} against the real parameter ratio of Linear weights.", join(common, ", ")),
                       line_plot_svg(plot, {}), short_name(m.model_id), ""});
  }
  return figures;
}

std::vector<ReportFile> build_report(const ReportInput& input, const ReportOptions& options) {
  if (!options.markdown && !options.html) throw std::invalid_argument("report: choose at least one format (md, html)");
  const auto models = group_runs(input.results.records);
  const Table table = runs_table(models);
  auto figures = result_figures(models, options);
  std::set<std::string> taken = {"report.md", "report.html", kMarkerFile};
  for (const auto& f : figures) taken.insert(f.file);
  for (const auto& p : input.plans) {
    std::string stem = p.name;
    if (stem.size() > 5 && stem.compare(stem.size() - 5, 5, ".json") == 0) stem.resize(stem.size() - 5);
    figures.push_back({unique_name(taken, "rank-" + file_stem(stem), ".svg"),
                       fmt::format("Kept ratio and rank of each layer in {} ({} layers, {:.4f} of Linear weights kept).",
                                   p.name, p.plan.layers().size(), p.plan.param_ratio()),
                       rank_map_svg(p.plan, "Rank map: " + p.name), "Plans", ""});
  }

  const std::string summary = fmt::format("{} runs of {} model{} from {}.", input.results.records.size(), models.size(),
                                          models.size() == 1 ? "" : "s", input.source);
  // Sections: one per model (for each dataset its ratio table and plot, then the other
  // plots), then the plans. A block is a table or a figure.
  struct Block {
    const Table* table = nullptr;
    const Figure* figure = nullptr;
    std::string heading;  // a sub-heading before a table
  };
  std::vector<std::pair<std::string, std::vector<Block>>> sections;
  std::vector<Table> ratio_tables;
  ratio_tables.reserve(models.size() * 8);
  for (const auto& m : models) {
    for (const auto& d : m.datasets) ratio_tables.push_back(ratio_table(m, d));
  }
  std::size_t next_table = 0;
  std::set<const Figure*> placed;
  for (const auto& m : models) {
    std::vector<Block> blocks;
    const std::string heading = short_name(m.model_id);
    for (const auto& d : m.datasets) {
      const Table& rt = ratio_tables[next_table++];
      if (!rt.rows.empty()) blocks.push_back({&rt, nullptr, "Perplexity on " + short_name(d)});
      for (const auto& f : figures) {
        if (f.section == heading && f.dataset == d && placed.insert(&f).second) blocks.push_back({nullptr, &f, ""});
      }
    }
    for (const auto& f : figures) {
      if (f.section == heading && placed.insert(&f).second) blocks.push_back({nullptr, &f, ""});
    }
    if (!blocks.empty()) sections.emplace_back(heading, std::move(blocks));
  }
  std::vector<Block> plan_blocks;
  for (const auto& f : figures) {
    if (placed.insert(&f).second) plan_blocks.push_back({nullptr, &f, ""});
  }
  if (!plan_blocks.empty()) sections.emplace_back("Plans", std::move(plan_blocks));

  std::vector<ReportFile> files;
  if (options.markdown) {
    std::string md = "# " + options.title + "\n\n" + summary + "\n";
    if (!input.results.warnings.empty()) {
      md += "\nSkipped lines:\n\n";
      for (const auto& w : input.results.warnings) md += "- " + markdown_cell(w) + "\n";
    }
    md += "\n## Runs\n\n" + markdown(table);
    for (const auto& [heading, blocks] : sections) {
      md += "\n## " + heading + "\n";
      for (const auto& b : blocks) {
        if (b.table) md += "\n### " + b.heading + "\n\n" + markdown(*b.table);
        if (b.figure) md += fmt::format("\n![{}]({})\n\n{}\n", b.figure->caption, b.figure->file, b.figure->caption);
      }
    }
    files.push_back({"report.md", md});
  }
  if (options.html) {
    std::string html =
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>" + html_escape(options.title) +
        "</title>\n<style>\n"
        "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1400px;padding:0 16px;"
        "color:#222;line-height:1.4}\n"
        "h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ddd}h3{font-size:15px}\n"
        ".wrap{overflow-x:auto}\n"
        "table{border-collapse:collapse;font-size:13px}\n"
        "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;white-space:nowrap}\n"
        "table.runs td:nth-child(3){white-space:normal;min-width:14em;max-width:24em}\n"
        "th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}\n"
        "tbody tr:nth-child(even){background:#fafafa}\n"
        "figure{margin:16px 0}figcaption{font-size:13px;color:#555}svg{max-width:100%;height:auto}\n"
        ".warn{color:#a40000}.note{font-size:13px;color:#555}\n"
        "</style>\n</head>\n<body>\n<h1>" +
        html_escape(options.title) + "</h1>\n<p>" + html_escape(summary) + "</p>\n";
    if (!input.results.warnings.empty()) {
      html += "<p class=\"warn\">Skipped lines:</p>\n<ul class=\"warn\">\n";
      for (const auto& w : input.results.warnings) html += "<li>" + html_escape(w) + "</li>\n";
      html += "</ul>\n";
    }
    html += "<h2>Runs</h2>\n" + html_table(table, "runs");
    for (const auto& [heading, blocks] : sections) {
      html += "<h2>" + html_escape(heading) + "</h2>\n";
      for (const auto& b : blocks) {
        if (b.table) html += "<h3>" + html_escape(b.heading) + "</h3>\n" + html_table(*b.table, "ratios");
        if (b.figure) {
          html += "<figure>\n" + b.figure->svg + "<figcaption>" + html_escape(b.figure->caption) +
                  "</figcaption>\n</figure>\n";
        }
      }
    }
    html += "</body>\n</html>\n";
    files.push_back({"report.html", html});
  }
  nlohmann::json names = nlohmann::json::array();
  for (const auto& f : figures) {
    files.push_back({f.file, f.svg});
    names.push_back(f.file);
  }
  for (const auto& f : files) {
    if (f.name == "report.md" || f.name == "report.html") names.push_back(f.name);
  }
  nlohmann::json marker = {{"format", kMarkerFormat}, {"version", 1},
                           {"results", input.source}, {"records", input.results.records.size()},
                           {"skipped_lines", input.results.warnings.size()}, {"files", names}};
  files.push_back({kMarkerFile, marker.dump(2) + "\n"});
  return files;
}

bool is_report_folder(const fs::path& folder) {
  std::error_code ec;
  if (!fs::is_regular_file(folder / kMarkerFile, ec)) return false;
  try {
    const auto j = nlohmann::json::parse(io::read_file(folder / kMarkerFile));
    return j.is_object() && j.value("format", std::string()) == kMarkerFormat;
  } catch (const std::exception&) {
    return false;
  }
}

void write_report(const std::vector<ReportFile>& files, const fs::path& folder_in, const WriteOptions& options) {
  fs::path folder = folder_in;
  while (!folder.empty() && !folder.has_filename() && folder.has_parent_path() && folder != folder.root_path()) {
    folder = folder.parent_path();  // "report/" -> "report"
  }
  if (folder.empty()) throw std::invalid_argument("report: the output folder is empty");
  for (const auto& f : files) {
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name == "." || f.name == "..") {
      throw std::invalid_argument(fmt::format("report: \"{}\" is not a plain file name", f.name));
    }
  }
  std::error_code ec;
  const auto status = fs::symlink_status(folder, ec);
  bool replace = false;
  if (fs::exists(status)) {
    const bool empty_dir = fs::is_directory(status) && fs::is_empty(folder, ec) && !ec;
    replace = empty_dir || (fs::is_directory(fs::status(folder, ec)) && is_report_folder(folder));
    if (!replace && !options.overwrite) {
      throw std::invalid_argument(fmt::format(
          "{} exists and is not a report folder (pass --overwrite to replace it)", folder.string()));
    }
  }
  io::AtomicFolder out(folder, {replace || options.overwrite});
  for (const auto& f : files) io::write_file_atomic(out.path() / f.name, f.content);
  out.commit();
}

}  // namespace cur4llm::report
