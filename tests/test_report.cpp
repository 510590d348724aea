// Tests for cur4llm::report: reading results.jsonl records, the runs table,
// the SVG plots and rank maps, and the report folder.
//
// Records are written by hand here; expected cells, coordinates and colours
// are worked out by hand from the documented formulas, never taken from the
// code under test.

#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/io/files.h>
#include <cur4llm/report/plots.h>
#include <cur4llm/report/report.h>
#include <cur4llm/report/results.h>
#include <cur4llm/report/svg.h>
#include <cur4llm/search/compression_plan.h>

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cur4llm::report;
using Catch::Matchers::Contains;

namespace {

// A small XML well-formedness check: balanced and properly nested tags,
// quoted attributes, known entities, no stray '<' or '&'. Returns "" when well-formed.
std::string xml_error(const std::string& doc) {
  std::vector<std::string> open;
  std::size_t i = 0;
  bool root_seen = false;
  auto name_char = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.'; };
  auto check_entities = [](const std::string& text) -> std::string {
    static const std::regex entity("^&(amp|lt|gt|quot|apos|#[0-9]+|#x[0-9a-fA-F]+);");
    for (std::size_t k = 0; k < text.size(); ++k) {
      if (text[k] == '&' && !std::regex_search(text.substr(k, 12), entity)) return "bad entity near " + text.substr(k, 12);
      if (text[k] == '<') return "stray <";
    }
    return "";
  };
  while (i < doc.size()) {
    if (doc[i] != '<') {
      const auto next = doc.find('<', i);
      const std::string text = doc.substr(i, next == std::string::npos ? std::string::npos : next - i);
      if (open.empty() && text.find_first_not_of(" \t\r\n") != std::string::npos) return "text outside the root";
      if (auto e = check_entities(text); !e.empty()) return e;
      i = next == std::string::npos ? doc.size() : next;
      continue;
    }
    if (doc.compare(i, 4, "<!--") == 0) {
      const auto end = doc.find("-->", i);
      if (end == std::string::npos) return "unclosed comment";
      i = end + 3;
      continue;
    }
    if (doc.compare(i, 2, "</") == 0) {
      const auto end = doc.find('>', i);
      if (end == std::string::npos) return "unclosed end tag";
      const std::string name = doc.substr(i + 2, end - i - 2);
      if (open.empty() || open.back() != name) return "end tag </" + name + "> does not match";
      open.pop_back();
      i = end + 1;
      continue;
    }
    std::size_t k = i + 1;
    while (k < doc.size() && name_char(doc[k])) ++k;
    const std::string name = doc.substr(i + 1, k - i - 1);
    if (name.empty()) return "empty tag name";
    if (open.empty() && root_seen) return "second root element";
    root_seen = true;
    for (;;) {
      while (k < doc.size() && std::isspace(static_cast<unsigned char>(doc[k]))) ++k;
      if (k >= doc.size()) return "unclosed tag " + name;
      if (doc[k] == '>') {
        open.push_back(name);
        ++k;
        break;
      }
      if (doc.compare(k, 2, "/>") == 0) {
        k += 2;
        break;
      }
      const std::size_t a = k;
      while (k < doc.size() && name_char(doc[k])) ++k;
      if (k == a) return "bad attribute in " + name;
      if (k >= doc.size() || doc[k] != '=') return "attribute without value in " + name;
      ++k;
      if (k >= doc.size() || (doc[k] != '"' && doc[k] != '\'')) return "unquoted attribute in " + name;
      const char q = doc[k];
      const auto end = doc.find(q, k + 1);
      if (end == std::string::npos) return "unclosed attribute in " + name;
      if (auto e = check_entities(doc.substr(k + 1, end - k - 1)); !e.empty()) return e;
      k = end + 1;
    }
    i = k;
  }
  if (!open.empty()) return "unclosed element <" + open.back() + ">";
  return root_seen ? "" : "no element";
}

std::size_t count(const std::string& hay, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

// The "points" attribute of every polyline of class "series", in document order.
std::vector<std::string> series_points(const std::string& svg) {
  std::vector<std::string> out;
  static const std::regex re(R"re(<polyline class="series"[^>]* points="([^"]*)")re");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator(); ++it) {
    out.push_back((*it)[1]);
  }
  return out;
}

// Five runs of two models, out of order on purpose.
const char* kRecords =
    R"({"model_id": "opt-a", "method": "svd", "raw_model": false, "param_ratio_linear": 0.7874, "param_ratio_model": 0.8117,)"
    R"( "args": {"param_ratio_target": 0.8, "search": "reference", "sequential": false, "act_aware": true, "seed": 233},)"
    R"( "ppl": {"wiki": {"ppl": 89.4712, "windows": 4, "tokens": 100}}, "timings": {"load_s": 1.5, "sensitivity_s": 10.25, "eval_wiki_s": 2}})"
    "\n"
    R"({"model_id": "opt-a", "method": "dense", "raw_model": true, "param_ratio_linear": 1, "param_ratio_model": 1,)"
    R"( "ppl": {"wiki": {"ppl": 5.67543}}, "timings": {"load_s": 1.25, "eval_wiki_s": 3}})"
    "\n\n"
    R"({"model_id": "opt-a", "method": "svd", "param_ratio_linear": 0.8949, "param_ratio_model": 0.9069,)"
    R"( "args": {"param_ratio_target": 0.9, "search": "reference", "act_aware": true},)"
    R"( "ppl": {"wiki": {"ppl": 12.28938}}, "bytes": 1234567})"
    "\n"
    R"({"model_id": "opt-a", "method": "skeleton_swap", "param_ratio_linear": 0.8966, "param_ratio_model": 0.9012,)"
    R"( "args": {"param_ratio_target": 0.9, "search": "lagrangian", "sequential": true},)"
    R"( "ppl": {"wiki": {"ppl": 8.0073}},)"
    R"( "tasks": {"arc_easy": {"acc": 0.45123, "acc_stderr": 0.005, "acc_norm": 0.473, "acc_norm_stderr": 0.0051, "items": 2376},)"
    R"( "mmlu": {"acc": 0.25, "acc_stderr": 0.004, "items": 14042}}})"
    "\n"
    R"({"model_id": "llama-b", "method": "cur", "param_ratio_linear": 0.9525, "param_ratio_model": 0.9579,)"
    R"( "args": {"param_ratio_target": 0.95}, "ppl": {"tiny": {"ppl": 12345.6}}})"
    "\n";

}  // namespace

TEST_CASE("report: records are read with their fields, targets and settings", "[unit][report]") {
  const auto file = parse_results(kRecords, "runs.jsonl");
  REQUIRE(file.warnings.empty());
  REQUIRE(file.records.size() == 5);
  const auto& svd = file.records[0];
  CHECK(svd.line == 1);
  CHECK(svd.model_id == "opt-a");
  CHECK(svd.target_kind == "param_ratio");
  CHECK(svd.target == 0.8);
  CHECK(svd.settings == "act_aware");
  CHECK(svd.variant() == "svd +act_aware");
  REQUIRE(svd.timings.size() == 3);
  CHECK(svd.timings[0].first == "load");
  CHECK(svd.timings[1].first == "sensitivity");
  CHECK(svd.timings[2].first == "eval_wiki");
  CHECK(file.records[1].raw_model);
  CHECK(file.records[1].line == 2);
  CHECK(file.records[2].line == 4);  // the blank line 3 is skipped silently
  CHECK(file.records[2].bytes == 1234567);
  const auto& skel = file.records[3];
  CHECK(skel.variant() == "skeleton_swap +lagrangian +sequential");
  REQUIRE(skel.tasks.size() == 2);
  CHECK(skel.tasks[0].name == "arc_easy");
  CHECK(skel.tasks[0].items == 2376);
  CHECK(std::isnan(skel.tasks[1].acc_norm));
}

TEST_CASE("report: settings name what differs from acur's defaults", "[unit][report]") {
  auto variant = [](const std::string& args) {
    return parse_record(R"({"model_id": "m", "method": "cur", "args": )" + args + "}", 1).variant();
  };
  CHECK(variant(R"({"search": "reference", "seed": 233, "alpha": 0.5, "act_aware": false, "rank_align": 1})") == "cur");
  CHECK(variant(R"({"act_aware": true, "alpha": 0.25, "scaling_method": "fisher"})") == "cur +act_aware +alpha 0.25 +fisher");
  CHECK(variant(R"({"search": "lagrangian", "candidates": "0.5,0.7,0.9"})") == "cur +lagrangian +candidates 0.5,0.7,0.9");
  CHECK(variant(R"({"candidates": "0.4,0.45,0.5,0.55,0.6"})") == "cur +candidates 0.4..0.6 (5)");
  CHECK(variant(R"({"cur_selection": "sampled", "cur_fold_u": true, "seed": 1, "rank_align": 64})") ==
        "cur +sampled +fold_u +align 64 +seed 1");
  const auto quant = parse_record(R"({"model_id": "m", "method": "dense", "raw_model": true, "weight_quant": "rtn_int8"})", 1);
  CHECK(quant.variant() == "dense +rtn_int8");
}

TEST_CASE("report: model folders and text files are shown by their last component", "[unit][report]") {
  CHECK(short_name("../shared/models/opt-tiny/") == "opt-tiny");
  CHECK(short_name("/data/text/eval.txt") == "eval.txt");
  CHECK(short_name("data/text/eval.txt") == "eval.txt");
  CHECK(short_name("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B");  // a Hub id stays whole
  CHECK(short_name("wikitext2") == "wikitext2");
  CHECK(short_name("ptb:test") == "ptb:test");
  const auto r = parse_record(
      R"({"model_id": "/m/opt", "method": "svd", "timings": {"eval_/t/eval.txt_s": 2, "decompose_s": 1}})", 1);
  REQUIRE(r.timings.size() == 2);
  CHECK(r.timings[0].first == "decompose");
  CHECK(r.timings[1].first == "eval_eval.txt");
}

TEST_CASE("report: malformed lines are skipped and reported with their line numbers", "[unit][report]") {
  const std::string text = std::string(R"({"model_id": "m", "method": "svd", "ppl": {"w": {"ppl": 5}}})") + "\n" +
                           "{ not json\n" +                                                   // 2
                           "\n" +                                                             // 3: blank
                           R"({"model_id": "m"})" + "\n" +                                    // 4: no method
                           R"({"model_id": "m", "method": "svd", "ppl": {"w": {"ppl": "x"}}})" + "\n" +  // 5
                           R"([1, 2])" + "\n" +                                               // 6
                           R"({"model_id": "m", "method": "svd", "tasks": {"mmlu": {"items": 3}}})" + "\n" +  // 7
                           R"({"model_id": "m", "method": "cur", "bytes": 1.5})" + "\n" +     // 8
                           R"({"model_id": "m", "method": "cur"})";                          // 9, no newline
  const auto file = parse_results(text, "r.jsonl");
  REQUIRE(file.records.size() == 2);
  CHECK(file.records[0].line == 1);
  CHECK(file.records[1].line == 9);
  REQUIRE(file.warnings.size() == 6);
  CHECK_THAT(file.warnings[0], Contains("r.jsonl:2: not JSON") && Contains("skipped"));
  CHECK_THAT(file.warnings[1], Contains("r.jsonl:4: \"method\" is missing"));
  CHECK_THAT(file.warnings[2], Contains("r.jsonl:5: \"ppl.w.ppl\" is not a number"));
  CHECK_THAT(file.warnings[3], Contains("r.jsonl:6: not a JSON object"));
  CHECK_THAT(file.warnings[4], Contains("r.jsonl:7: \"tasks.mmlu.acc\" is missing"));
  CHECK_THAT(file.warnings[5], Contains("r.jsonl:8: \"bytes\" is not an integer"));
  CHECK_THROWS_WITH(read_results("/nonexistent/results.jsonl"), Contains("/nonexistent/results.jsonl"));
}

TEST_CASE("report: the runs table has one row per run, grouped and ordered, with the record's values", "[unit][report]") {
  const auto models = group_runs(parse_results(kRecords, "runs.jsonl").records);
  REQUIRE(models.size() == 2);
  CHECK(models[0].model_id == "opt-a");
  CHECK(models[1].model_id == "llama-b");
  const Table t = runs_table(models);
  const std::vector<std::string> header = {
      "model", "method", "settings", "target", "ratio, Linear", "ratio, model", "ppl wiki", "ppl tiny",
      "arc_easy acc %", "mmlu acc %", "mean acc %", "bytes", "load s", "sensitivity s", "eval_wiki s", "total s"};
  CHECK(t.header == header);
  REQUIRE(t.rows.size() == 5);
  // dense first; then svd (first seen) by target, largest first; then skeleton_swap; then the next model.
  const std::vector<std::vector<std::string>> rows = {
      {"opt-a", "dense", "—", "—", "1.0000", "1.0000", "5.6754", "—", "—", "—", "—", "—", "1.25", "—", "3.00", "4.25"},
      {"opt-a", "svd", "act_aware", "0.9", "0.8949", "0.9069", "12.2894", "—", "—", "—", "—", "1,234,567", "—", "—", "—", "—"},
      {"opt-a", "svd", "act_aware", "0.8", "0.7874", "0.8117", "89.4712", "—", "—", "—", "—", "—", "1.50", "10.25", "2.00", "13.75"},
      {"opt-a", "skeleton_swap", "lagrangian, sequential", "0.9", "0.8966", "0.9012", "8.0073", "—",
       "45.12 ± 0.50 (norm 47.30)", "25.00 ± 0.40", "35.06", "—", "—", "—", "—", "—"},
      {"llama-b", "cur", "—", "0.95", "0.9525", "0.9579", "—", "12346", "—", "—", "—", "—", "—", "—", "—", "—"}};
  for (std::size_t r = 0; r < rows.size(); ++r) {
    INFO("row " << r);
    CHECK(t.rows[r] == rows[r]);
  }
  const std::string md = markdown(t);
  CHECK_THAT(md, Contains("| model | method | settings | target |"));
  CHECK_THAT(md, Contains("|---|---|---|---:|"));
  CHECK_THAT(md, Contains("| opt-a | skeleton_swap | lagrangian, sequential | 0.9 | 0.8966 |"));
  CHECK_THAT(md, Contains("opt-a: mean acc % is the mean over arc_easy, mmlu."));
  Table pipe;
  pipe.header = {"a|b"};
  pipe.rows = {{"x|y"}};
  CHECK_THAT(markdown(pipe), Contains("| a\\|b |") && Contains("| x\\|y |"));
}

TEST_CASE("report: the ratio table has a row per variant and a column per target", "[unit][report]") {
  const auto models = group_runs(parse_results(kRecords, "runs.jsonl").records);
  const Table t = ratio_table(models[0], "wiki");
  CHECK(t.header == std::vector<std::string>{"method", "0.9", "0.8"});
  REQUIRE(t.rows.size() == 3);
  CHECK(t.rows[0] == std::vector<std::string>{"dense", "5.6754", "5.6754"});
  CHECK(t.rows[1] == std::vector<std::string>{"svd +act_aware", "12.2894 (0.895)", "89.4712 (0.787)"});
  CHECK(t.rows[2] == std::vector<std::string>{"skeleton_swap +lagrangian +sequential", "8.0073 (0.897)", "—"});
  CHECK(ratio_table(models[0], "tiny").rows.empty());  // no opt-a run was evaluated on it
  const Table b = ratio_table(models[1], "tiny");
  REQUIRE(b.rows.size() == 1);
  CHECK(b.rows[0] == std::vector<std::string>{"cur", "12346 (0.953)"});
  // A run repeated with the same result is shown once, with another result both are.
  const std::string cur = R"({"model_id": "m", "method": "cur", "param_ratio_linear": 0.9, "args": {"param_ratio_target": 0.9}, "ppl": {"w": {"ppl": )";
  const auto repeated = group_runs(parse_results(cur + "7}}}\n" + cur + "7}}}\n" + cur + "8}}}\n", "r").records);
  CHECK(ratio_table(repeated[0], "w").rows[0][1] == "7.0000 (0.900) / 8.0000 (0.900)");
}

TEST_CASE("report: a line plot is well-formed SVG with one polyline per series at the computed points", "[unit][report]") {
  LinePlot plot;
  plot.title = "a <b> & \"c\"";
  plot.series = {{"a", {{0.9, 10}, {0.8, 20}}}, {"b", {{0.7, 40}, {0.9, 12}}}};
  plot.references = {{"dense", 5}};
  PlotOptions o;
  o.width = 300, o.height = 200, o.margin_left = 50, o.margin_right = 50, o.margin_top = 20, o.margin_bottom = 30;
  o.inset = 10;
  const std::string svg = line_plot_svg(plot, o);
  INFO(svg);
  CHECK(xml_error(svg) == "");
  CHECK_THAT(svg, Contains("a &lt;b&gt; &amp; &quot;c&quot;"));
  // x: 0.7..0.9 onto 60..240; y: 5..40 onto 160..30.
  // X(0.8) = 60 + 0.5*180 = 150; Y(20) = 160 - 15/35*130 = 104.2857; Y(10) = 160 - 5/35*130 = 141.4286;
  // Y(12) = 160 - 7/35*130 = 134; Y(40) = 30.
  const auto pts = series_points(svg);
  REQUIRE(pts.size() == 2);
  CHECK(pts[0] == "150.00,104.29 240.00,141.43");
  CHECK(pts[1] == "60.00,30.00 240.00,134.00");
  CHECK(count(svg, "<polyline") == 2);
  CHECK(count(svg, "<circle") == 4);
  // The dense reference at Y(5) = 160, dashed, across the plot area 50..250.
  CHECK_THAT(svg, Contains(R"(<line x1="50.00" y1="160.00" x2="250.00" y2="160.00" stroke="#333" stroke-width="1.20" stroke-dasharray="3,3"/>)"));

  // Log scale: y 10..100, so sqrt(1000) falls half way; y = 0 cannot be drawn and is left out.
  LinePlot log_plot;
  log_plot.series = {{"s", {{1, 100}, {0.5, 10}, {0.6, 0}, {0.75, 31.6227766}}}};
  o.log_y = true;
  const std::string log_svg = line_plot_svg(log_plot, o);
  CHECK(xml_error(log_svg) == "");
  const auto log_pts = series_points(log_svg);
  REQUIRE(log_pts.size() == 1);
  CHECK(log_pts[0] == "60.00,160.00 150.00,95.00 240.00,30.00");
}

TEST_CASE("report: kept-ratio colours follow the documented scale", "[unit][report]") {
  CHECK(kept_ratio_color(0) == "#800026");
  CHECK(kept_ratio_color(0.5) == "#fd8d3c");
  CHECK(kept_ratio_color(1) == "#ffffcc");
  // Half way between the stops, rounded: (128+253)/2 = 190.5 -> 191, 70.5 -> 71, 49; (253+255)/2, (141+255)/2, (60+204)/2.
  CHECK(kept_ratio_color(0.25) == "#bf4731");
  CHECK(kept_ratio_color(0.75) == "#fec684");
  CHECK(kept_ratio_color(1.7) == "#ffffcc");
  CHECK(kept_ratio_color(-1) == "#800026");
}

TEST_CASE("report: the rank map puts layers down and projections across, coloured by kept ratio", "[unit][report]") {
  cur4llm::search::CompressionPlan plan;
  plan.add({"model.decoder.layers.1.self_attn.q_proj", "svd", 0.3, 4, 256, 1024});
  plan.add({"model.decoder.layers.1.fc1", "svd", 0.9, 16, 2048, 2048});
  plan.add({"model.decoder.layers.0.self_attn.q_proj", "cur", 0.6, 8, 512, 1024});
  plan.add({"model.decoder.layers.0.fc1", "dense", 1, 0, 2048, 2048});
  plan.add({"lm_head", "dense", 1, 0, 4096, 4096});
  const std::string svg = rank_map_svg(plan, "plan <x>");
  INFO(svg);
  CHECK(xml_error(svg) == "");
  // Each cell: a rect (with a tooltip naming the layer) and a label.
  auto cell = [&](const std::string& color, const std::string& name) {
    const std::regex re("<rect x=\"([0-9.]+)\" y=\"([0-9.]+)\" width=\"[0-9.]+\" height=\"[0-9.]+\" fill=\"" + color +
                        "\" stroke=\"white\"><title>" + name + ":");
    std::smatch m;
    REQUIRE(std::regex_search(svg, m, re));
    return std::make_pair(std::stod(m[1]), std::stod(m[2]));
  };
  const auto q0 = cell("#fd8d3c", "model.decoder.layers.0.self_attn.q_proj");  // 512 / 1024
  const auto f0 = cell(kDenseCellColor, "model.decoder.layers.0.fc1");
  const auto q1 = cell("#bf4731", "model.decoder.layers.1.self_attn.q_proj");  // 256 / 1024
  const auto f1 = cell("#ffffcc", "model.decoder.layers.1.fc1");               // 2048 / 2048
  const auto head = cell(kDenseCellColor, "lm_head");
  CHECK(q0.first == q1.first);    // one column per projection
  CHECK(f0.first == f1.first);
  CHECK(q0.first < f0.first);     // in plan order
  CHECK(q0.second == f0.second);  // one row per layer
  CHECK(q0.second < q1.second);   // layer 0 above layer 1, whatever the plan order
  CHECK(head.second > q1.second); // modules outside the layers below them
  CHECK(head.first == q0.first);
  CHECK_THAT(svg, Contains(">layer 0</text>") && Contains(">layer 1</text>") && Contains(">lm_head</text>"));
  CHECK_THAT(svg, Contains(">q_proj</text>") && Contains(">fc1</text>"));
  CHECK_THAT(svg, Contains(">0.50 r8</text>") && Contains(">0.25 r4</text>") && Contains(">1.00 r16</text>"));
  CHECK(count(svg, ">dense</text>") == 3);  // two dense cells and the legend
  CHECK_THAT(svg, Contains("plan &lt;x&gt;"));
  CHECK_THAT(svg, Contains("5 layers, 8,960 of 10,240 parameters stored"));
}

TEST_CASE("report: the report holds the table, the plots inline and nothing external", "[unit][report]") {
  ReportInput input;
  input.source = "runs.jsonl";
  input.results = parse_results(std::string(kRecords) + "oops\n", "runs.jsonl");
  cur4llm::search::CompressionPlan plan;
  plan.add({"model.layers.0.mlp.up_proj", "svd", 0.5, 4, 100, 200});
  input.plans.push_back({"opt-a-svd-0.9.json", plan});
  const auto files = build_report(input, {});
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(f.name);
  // opt-a: one perplexity plot (wiki) and one accuracy plot; llama-b: one perplexity plot; one rank map.
  const std::vector<std::string> expected = {"report.md", "report.html", "ppl-opt-a-wiki.svg", "acc-opt-a.svg",
                                             "ppl-llama-b-tiny.svg", "rank-opt-a-svd-0.9.svg", "report.json"};
  CHECK(names == expected);
  const std::string& md = files[0].content;
  const std::string& html = files[1].content;
  CHECK_THAT(md, Contains("runs.jsonl:7: not JSON"));
  CHECK_THAT(md, Contains("![") && Contains("](ppl-opt-a-wiki.svg)"));
  CHECK_THAT(html, Contains("<td>skeleton_swap</td>") && Contains("runs.jsonl:7"));
  CHECK(count(html, "<svg ") == 4);
  CHECK(count(html, "<table class=\"runs\">") == 1);
  CHECK(count(html, "<table class=\"ratios\">") == 2);  // opt-a on wiki, llama-b on tiny
  CHECK_THAT(md, Contains("### Perplexity on wiki\n\n| method | 0.9 | 0.8 |"));
  for (const char* external : {"<script", "src=", "href=", "<link", "@import", "url("}) {
    INFO(external);
    CHECK(html.find(external) == std::string::npos);
  }
  // The perplexity plot of opt-a: svd and skeleton_swap, dense as a reference.
  const auto& ppl = files[2].content;
  CHECK(series_points(ppl).size() == 2);
  CHECK_THAT(ppl, Contains(">svd +act_aware</text>") && Contains(">skeleton_swap +lagrangian +sequential</text>") &&
                      Contains(">dense 5.6754</text>"));

  ReportOptions md_only;
  md_only.html = false;
  const auto md_files = build_report(input, md_only);
  CHECK(md_files[0].name == "report.md");
  CHECK(md_files[1].name != "report.html");
  ReportOptions none;
  none.html = none.markdown = false;
  CHECK_THROWS_AS(build_report(input, none), std::invalid_argument);
}

TEST_CASE("report: a report folder is written whole and never replaces another folder unasked", "[unit][report]") {
  cur4llm::test::TempDir tmp("cur4llm_report");
  ReportInput input;
  input.source = "runs.jsonl";
  input.results = parse_results(kRecords, "runs.jsonl");
  const auto files = build_report(input, {});
  const fs::path out = tmp / "report";
  write_report(files, out.string() + "/", {});
  CHECK(is_report_folder(out));
  CHECK(cur4llm::io::read_file(out / "report.html") == files[1].content);
  // An existing report is replaced without --overwrite.
  cur4llm::io::write_file_atomic(out / "stale.svg", "old");
  write_report(files, out, {});
  CHECK_FALSE(fs::exists(out / "stale.svg"));
  // Any other folder is refused, and left as it was.
  const fs::path other = tmp / "other";
  fs::create_directories(other);
  cur4llm::io::write_file_atomic(other / "keep.txt", "keep");
  CHECK_THROWS_WITH(write_report(files, other, {}), Contains("other exists and is not a report folder") &&
                                                         Contains("--overwrite"));
  CHECK(cur4llm::io::read_file(other / "keep.txt") == "keep");
  CHECK_FALSE(fs::exists(other / "report.html"));
  write_report(files, other, {true});
  CHECK(is_report_folder(other));
  CHECK_FALSE(fs::exists(other / "keep.txt"));
  // No temporary siblings are left behind.
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) {
    (void)e;
    ++entries;
  }
  CHECK(entries == 2);
}
