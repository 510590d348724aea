// Task definitions (documents -> requests, results -> metrics) following
// lm-evaluation-harness 0.4.x's task configurations, and their data readers.
#include <cur4llm/eval/tasks.h>

#include <cur4llm/io/files.h>
#include <cur4llm/tokenize/tokenizer.h>

#include "python_text.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <map>
#include <cmath>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace cur4llm::eval {

namespace {

using Json = nlohmann::json;

std::string strip(const std::string& s) { return detail::python_strip(s); }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  size_t at = 0;
  while ((at = s.find(from, at)) != std::string::npos) {
    s.replace(at, from.size(), to);
    at += to.size();
  }
  return s;
}

// Python's len() of a UTF-8 string: code points.
int64_t code_points(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Python's str.capitalize() for ASCII letters: the first upper, the rest lower.
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    s[i] = static_cast<char>(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

fs::path require_file(const std::string& task, const fs::path& path) {
  if (!fs::is_regular_file(path)) {
    throw std::invalid_argument(fmt::format("task \"{}\": no data at {}", task, path.string()));
  }
  return path;
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::istringstream in(io::read_file(path));
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

// Non-empty lines of a JSON-lines file, parsed; `limit` < 0: all.
std::vector<Json> read_jsonl(const fs::path& path, int64_t limit) {
  std::vector<Json> out;
  const auto lines = read_lines(path);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (limit >= 0 && static_cast<int64_t>(out.size()) >= limit) break;
    if (strip(lines[i]).empty()) continue;
    try {
      out.push_back(Json::parse(lines[i]));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}:{}: not JSON ({})", path.string(), i + 1, e.what()));
    }
  }
  return out;
}

template <typename T>
T field(const Json& doc, const char* key, const fs::path& path, size_t index) {
  try {
    return doc.at(key).get<T>();
  } catch (const std::exception&) {
    throw std::runtime_error(fmt::format("{}: record {} lacks a valid \"{}\"", path.string(), index + 1, key));
  }
}

// Integer labels, one per line (PIQA's .lst).
std::vector<int64_t> read_labels(const fs::path& path) {
  std::vector<int64_t> out;
  for (const auto& line : read_lines(path)) {
    const auto t = strip(line);
    if (t.empty()) continue;
    try {
      out.push_back(std::stoll(t));
    } catch (const std::exception&) {
      throw std::runtime_error(fmt::format("{}: label \"{}\" is not an integer", path.string(), t));
    }
  }
  return out;
}

// A multiple-choice item: the same context, " " + choice as continuations.
TaskItem choice_item(const std::string& context, std::vector<std::string> choices, int64_t gold) {
  TaskItem item;
  for (const auto& c : choices) item.requests.push_back({context, " " + c});
  item.choices = std::move(choices);
  item.gold = gold;
  return item;
}

// RFC 4180 CSV (no header) with CRLF or LF record ends; CRLF inside quoted
// fields becomes LF, as the universal-newline reading of the originals gave.
std::vector<std::vector<std::string>> read_csv(const fs::path& path) {
  const std::string text = io::read_file(path);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string cell;
  bool quoted = false, any = false;
  auto end_cell = [&] {
    row.push_back(replace_all(cell, "\r\n", "\n"));
    cell.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          cell += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        cell += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      end_cell();
      any = true;
    } else if (c == '\n' || (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n')) {
      if (c == '\r') ++i;
      if (any || !cell.empty()) {
        end_cell();
        rows.push_back(std::move(row));
      }
      row.clear();
      any = false;
    } else {
      cell += c;
      any = true;
    }
  }
  if (quoted) throw std::runtime_error(fmt::format("{}: unterminated quoted field", path.string()));
  if (any || !cell.empty()) {
    end_cell();
    rows.push_back(std::move(row));
  }
  return rows;
}

bool within(int64_t limit, size_t n) { return limit < 0 || static_cast<int64_t>(n) < limit; }

Task load_piqa(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"piqa", TaskKind::MultipleChoice, true, {}, dir};
  const auto docs_path = require_file(t.name, dir / "valid.jsonl");
  const auto labels_path = require_file(t.name, dir / "valid-labels.lst");
  const auto docs = read_jsonl(docs_path, o.limit);
  const auto labels = read_labels(labels_path);
  if (labels.size() < docs.size())
    throw std::runtime_error(fmt::format("{}: fewer labels than documents", labels_path.string()));
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto& d = docs[i];
    t.items.push_back(choice_item(
        "Question: " + field<std::string>(d, "goal", docs_path, i) + "\nAnswer:",
        {field<std::string>(d, "sol1", docs_path, i), field<std::string>(d, "sol2", docs_path, i)}, labels[i]));
  }
  return t;
}

Task load_hellaswag(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"hellaswag", TaskKind::MultipleChoice, true, {}, dir};
  // The original validation JSON lines, when present: exactly the harness's documents.
  const auto jsonl = dir / "hellaswag_val.jsonl";
  if (fs::is_regular_file(jsonl)) {
    t.source = jsonl;
    const auto docs = read_jsonl(jsonl, o.limit);
    for (size_t i = 0; i < docs.size(); ++i) {
      const auto& d = docs[i];
      const std::string ctx =
          field<std::string>(d, "ctx_a", jsonl, i) + " " + capitalize(field<std::string>(d, "ctx_b", jsonl, i));
      std::vector<std::string> choices;
      for (const auto& e : field<std::vector<std::string>>(d, "endings", jsonl, i))
        choices.push_back(hellaswag_preprocess(e));
      const Json& label = d.at("label");
      const int64_t gold = label.is_string() ? std::stoll(label.get<std::string>()) : label.get<int64_t>();
      t.items.push_back(
          choice_item(hellaswag_preprocess(field<std::string>(d, "activity_label", jsonl, i) + ": " + ctx),
                      std::move(choices), gold));
    }
    return t;
  }
  // The pre-processed text form: 6 lines per item (context, label, 4 endings).
  const auto path = require_file(t.name, dir / "hellaswag_val_full.txt");
  t.source = path;
  auto lines = read_lines(path);
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  if (lines.size() % 6 != 0)
    throw std::runtime_error(fmt::format("{}: {} lines, not 6 per item", path.string(), lines.size()));
  for (size_t i = 0; i + 6 <= lines.size() && within(o.limit, t.items.size()); i += 6) {
    int64_t gold = -1;
    try {
      gold = std::stoll(lines[i + 1]);
    } catch (const std::exception&) {
    }
    if (gold < 0 || gold > 3) throw std::runtime_error(fmt::format("{}:{}: label is not 0-3", path.string(), i + 2));
    std::vector<std::string> choices;
    for (size_t k = 2; k < 6; ++k) choices.push_back(hellaswag_preprocess(lines[i + k]));
    t.items.push_back(choice_item(hellaswag_preprocess(lines[i]), std::move(choices), gold));
  }
  return t;
}

Task load_winogrande(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"winogrande", TaskKind::MultipleChoice, false, {}, dir};
  const auto path = require_file(t.name, dir / "dev.jsonl");
  const auto docs = read_jsonl(path, o.limit);
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto& d = docs[i];
    const auto sentence = field<std::string>(d, "sentence", path, i);
    const auto blank = sentence.find('_');
    if (blank == std::string::npos)
      throw std::runtime_error(fmt::format("{}: record {} has no blank", path.string(), i + 1));
    const auto answer = field<std::string>(d, "answer", path, i);
    if (answer != "1" && answer != "2")
      throw std::runtime_error(fmt::format("{}: record {}: answer is not 1 or 2", path.string(), i + 1));
    // Partial scoring: each option fills the blank in the context; the rest of the sentence is scored.
    const std::string target = " " + strip(sentence.substr(blank + 1));
    TaskItem item;
    for (const char* key : {"option1", "option2"}) {
      const std::string context = sentence.substr(0, blank) + field<std::string>(d, key, path, i);
      item.requests.push_back({context, target});
      item.choices.push_back(context);
    }
    item.gold = answer == "1" ? 0 : 1;
    t.items.push_back(std::move(item));
  }
  return t;
}

// ARC and OpenBookQA: choices {text: [...], label: [...]} and answerKey.
TaskItem lettered_item(const std::string& context, const Json& choices, std::string key, const fs::path& path,
                       size_t i) {
  std::vector<std::string> texts, labels;
  if (choices.is_array()) {  // OpenBookQA's original [{"text", "label"}]
    for (const auto& c : choices) {
      texts.push_back(field<std::string>(c, "text", path, i));
      labels.push_back(field<std::string>(c, "label", path, i));
    }
  } else {
    texts = field<std::vector<std::string>>(choices, "text", path, i);
    labels = field<std::vector<std::string>>(choices, "label", path, i);
  }
  while (size_t n = detail::python_space_at(key, 0)) key.erase(0, n);  // answerKey.lstrip()
  const auto at = std::find(labels.begin(), labels.end(), key);
  if (at == labels.end())
    throw std::runtime_error(fmt::format("{}: record {}: answerKey \"{}\" is not a label", path.string(), i + 1, key));
  return choice_item(context, std::move(texts), at - labels.begin());
}

Task load_arc(const std::string& name, const fs::path& dir, const std::string& file, const TaskLoadOptions& o) {
  Task t{name, TaskKind::MultipleChoice, true, {}, dir};
  const auto path = require_file(name, dir / file);
  const auto docs = read_jsonl(path, o.limit);
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto& d = docs[i];
    t.items.push_back(lettered_item("Question: " + field<std::string>(d, "question", path, i) + "\nAnswer:",
                                    d.at("choices"), field<std::string>(d, "answerKey", path, i), path, i));
  }
  return t;
}

Task load_openbookqa(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"openbookqa", TaskKind::MultipleChoice, true, {}, dir};
  const auto path = require_file(t.name, dir / "test.jsonl");
  const auto docs = read_jsonl(path, o.limit);
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto& d = docs[i];
    const Json& q = d.at("question");
    t.items.push_back(lettered_item(field<std::string>(q, "stem", path, i), q.at("choices"),
                                    field<std::string>(d, "answerKey", path, i), path, i));
  }
  return t;
}

Task load_boolq(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"boolq", TaskKind::MultipleChoice, false, {}, dir};
  const auto path = require_file(t.name, dir / "val_superglue_derived.jsonl");
  const auto docs = read_jsonl(path, o.limit);
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto& d = docs[i];
    const Json& label = d.at("label");
    const int64_t gold = label.is_boolean() ? (label.get<bool>() ? 1 : 0) : label.get<int64_t>();
    t.items.push_back(choice_item(field<std::string>(d, "passage", path, i) +
                                      "\nQuestion: " + field<std::string>(d, "question", path, i) + "?\nAnswer:",
                                  {"no", "yes"}, gold));
  }
  return t;
}

Task load_lambada(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"lambada_openai", TaskKind::LastWord, false, {}, dir};
  const auto path = require_file(t.name, dir / "lambada_test.jsonl");
  const auto docs = read_jsonl(path, o.limit);
  for (size_t i = 0; i < docs.size(); ++i) {
    const auto text = field<std::string>(docs[i], "text", path, i);
    // Python's text.split(' '): the last single-space-separated word is the target.
    const auto cut = text.rfind(' ');
    TaskItem item;
    const std::string word = cut == std::string::npos ? text : text.substr(cut + 1);
    item.requests.push_back({cut == std::string::npos ? std::string() : text.substr(0, cut), " " + word});
    item.choices.push_back(" " + word);
    t.items.push_back(std::move(item));
  }
  return t;
}

Task load_mathqa(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"mathqa", TaskKind::MultipleChoice, true, {}, dir};
  const auto path = require_file(t.name, dir / "test.json");
  Json docs;
  try {
    docs = Json::parse(io::read_file(path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(fmt::format("{}: not JSON ({})", path.string(), e.what()));
  }
  if (!docs.is_array()) throw std::runtime_error(fmt::format("{}: not a JSON array", path.string()));
  // The harness's choice pattern: "a ) x , b ) y , ... e ) z".
  static const std::regex pattern(R"([abcd] \) .*?, |e \) .*?$)");
  for (size_t i = 0; i < docs.size() && within(o.limit, t.items.size()); ++i) {
    const auto& d = docs[i];
    const auto options = field<std::string>(d, "options", path, i);
    std::vector<std::string> choices;
    for (std::sregex_iterator it(options.begin(), options.end(), pattern), end; it != end; ++it) {
      std::string c = it->str().substr(4);
      c.erase(c.find_last_not_of(" ,") + 1);
      choices.push_back(c);
    }
    const auto correct = field<std::string>(d, "correct", path, i);
    const std::string letters = "abcde";
    const auto gold = correct.size() == 1 ? letters.find(correct[0]) : std::string::npos;
    if (gold == std::string::npos)
      throw std::runtime_error(fmt::format("{}: record {}: correct is not a-e", path.string(), i + 1));
    t.items.push_back(choice_item("Question: " + field<std::string>(d, "Problem", path, i) + "\nAnswer:",
                                  std::move(choices), static_cast<int64_t>(gold)));
  }
  return t;
}

std::string mmlu_question(const std::vector<std::string>& row) {
  return strip(row[0]) + "\nA. " + row[1] + "\nB. " + row[2] + "\nC. " + row[3] + "\nD. " + row[4] + "\nAnswer:";
}

int64_t mmlu_answer(const std::vector<std::string>& row, const fs::path& path, size_t i) {
  if (row.size() != 6 || row[5].size() != 1 || row[5][0] < 'A' || row[5][0] > 'D') {
    throw std::runtime_error(fmt::format("{}: row {} is not question,A,B,C,D,answer(A-D)", path.string(), i + 1));
  }
  return row[5][0] - 'A';
}

Task load_mmlu(const fs::path& dir, const TaskLoadOptions& o) {
  Task t{"mmlu", TaskKind::MultipleChoice, false, {}, dir};
  const auto& subjects = o.mmlu_subjects.empty() ? mmlu_subjects() : o.mmlu_subjects;
  const std::vector<std::string> letters = {"A", "B", "C", "D"};
  for (const auto& s : subjects) {
    if (std::find(mmlu_subjects().begin(), mmlu_subjects().end(), s) == mmlu_subjects().end()) {
      throw std::invalid_argument(fmt::format("task \"mmlu\": unknown subject \"{}\"", s));
    }
    const auto dev_path = require_file(t.name, dir / "dev" / (s + "_dev.csv"));
    const auto test_path = require_file(t.name, dir / "test" / (s + "_test.csv"));
    const auto dev = read_csv(dev_path);
    const auto test = read_csv(test_path);
    if (dev.size() < 5) throw std::runtime_error(fmt::format("{}: fewer than 5 rows", dev_path.string()));
    // The description, then the first 5 dev rows answered, each followed by a blank line.
    std::string prefix =
        "The following are multiple choice questions (with answers) about " + replace_all(s, "_", " ") + ".\n\n";
    for (size_t i = 0; i < 5; ++i) {
      prefix += mmlu_question(dev[i]) + " " + letters[static_cast<size_t>(mmlu_answer(dev[i], dev_path, i))] + "\n\n";
    }
    for (size_t i = 0; i < test.size() && within(o.limit, i); ++i) {
      auto item = choice_item(prefix + mmlu_question(test[i]), letters, mmlu_answer(test[i], test_path, i));
      item.subject = s;
      t.items.push_back(std::move(item));
    }
  }
  return t;
}

// numpy.argmax: the first maximum; a NaN wins at once.
int64_t argmax(const std::vector<double>& v) {
  int64_t best = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    if (std::isnan(v[i])) return static_cast<int64_t>(i);
    if (v[i] > v[static_cast<size_t>(best)]) best = static_cast<int64_t>(i);
  }
  return best;
}

MetricValue metric(const std::vector<double>& values) {
  MetricValue m;
  for (double v : values) m.value += v;
  m.value = values.empty() ? std::nan("") : m.value / static_cast<double>(values.size());
  m.std_error = mean_stderr(values);
  return m;
}

TaskResult score_items(const std::string& name, const Task& task, const std::vector<size_t>& indices,
                       const std::vector<std::vector<LoglikelihoodResult>>& results) {
  TaskResult r;
  r.name = name;
  r.kind = task.kind;
  r.has_acc_norm = task.acc_norm;
  r.items = static_cast<int64_t>(indices.size());
  std::vector<double> acc, acc_norm, ll;
  for (size_t i : indices) {
    const auto& item = task.items[i];
    const auto& res = results[i];
    if (res.size() != item.requests.size()) {
      throw std::invalid_argument(fmt::format("task \"{}\" item {}: {} results for {} requests", task.name, i,
                                              res.size(), item.requests.size()));
    }
    ItemScore s;
    s.results = res;
    if (task.kind == TaskKind::LastWord) {
      s.acc = res[0].is_greedy ? 1 : 0;
      ll.push_back(res[0].logprob);
    } else {
      std::vector<double> lls, norm;
      for (size_t k = 0; k < res.size(); ++k) {
        lls.push_back(res[k].logprob);
        norm.push_back(res[k].logprob / static_cast<double>(code_points(item.choices[k])));
      }
      s.pred = argmax(lls);
      s.pred_norm = argmax(norm);
      s.acc = s.pred == item.gold ? 1 : 0;
      s.acc_norm = s.pred_norm == item.gold ? 1 : 0;
    }
    acc.push_back(s.acc);
    acc_norm.push_back(s.acc_norm);
    r.item_scores.push_back(std::move(s));
  }
  r.acc = metric(acc);
  if (task.acc_norm) r.acc_norm = metric(acc_norm);
  if (task.kind == TaskKind::LastWord) r.perplexity = std::exp(-metric(ll).value);
  return r;
}

// The harness's MMLU groups: each subject's category (mmlu_<category> in its configuration).
const std::string& mmlu_category(const std::string& subject) {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> categories = {
      {"stem",
       {"abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
        "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
        "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
        "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning"}},
      {"humanities",
       {"formal_logic", "high_school_european_history", "high_school_us_history", "high_school_world_history",
        "international_law", "jurisprudence", "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
        "prehistory", "professional_law", "world_religions"}},
      {"social_sciences",
       {"econometrics", "high_school_geography", "high_school_government_and_politics", "high_school_macroeconomics",
        "high_school_microeconomics", "high_school_psychology", "human_sexuality", "professional_psychology",
        "public_relations", "security_studies", "sociology", "us_foreign_policy"}},
      {"other",
       {"business_ethics", "clinical_knowledge", "college_medicine", "global_facts", "human_aging", "management",
        "marketing", "medical_genetics", "miscellaneous", "nutrition", "professional_accounting",
        "professional_medicine", "virology"}},
  };
  for (const auto& [category, subjects] : categories) {
    if (std::find(subjects.begin(), subjects.end(), subject) != subjects.end()) return category;
  }
  throw std::invalid_argument("unknown MMLU subject \"" + subject + "\"");
}

std::string fmt_metric(const MetricValue& m) {
  return std::isnan(m.std_error) ? fmt::format("{:.4f}", m.value)
                                 : fmt::format("{:.4f} ± {:.4f}", m.value, m.std_error);
}

Json number(double v) { return std::isfinite(v) ? Json(v) : Json(nullptr); }

}  // namespace

std::string hellaswag_preprocess(const std::string& text) {
  std::string s = replace_all(strip(text), " [title]", ". ");
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '[') {
      const auto close = s.find(']', i + 1);
      if (close != std::string::npos) {
        i = close;
        continue;
      }
    }
    out += s[i];
  }
  return replace_all(out, "  ", " ");
}

const std::vector<std::string>& task_names() {
  static const std::vector<std::string> names = {"piqa",          "hellaswag",  "winogrande", "arc_easy",
                                                 "arc_challenge", "openbookqa", "boolq",      "lambada_openai",
                                                 "mathqa",        "mmlu"};
  return names;
}

const std::vector<std::string>& mmlu_subjects() {
  static const std::vector<std::string> subjects = {"abstract_algebra",
                                                    "anatomy",
                                                    "astronomy",
                                                    "business_ethics",
                                                    "clinical_knowledge",
                                                    "college_biology",
                                                    "college_chemistry",
                                                    "college_computer_science",
                                                    "college_mathematics",
                                                    "college_medicine",
                                                    "college_physics",
                                                    "computer_security",
                                                    "conceptual_physics",
                                                    "econometrics",
                                                    "electrical_engineering",
                                                    "elementary_mathematics",
                                                    "formal_logic",
                                                    "global_facts",
                                                    "high_school_biology",
                                                    "high_school_chemistry",
                                                    "high_school_computer_science",
                                                    "high_school_european_history",
                                                    "high_school_geography",
                                                    "high_school_government_and_politics",
                                                    "high_school_macroeconomics",
                                                    "high_school_mathematics",
                                                    "high_school_microeconomics",
                                                    "high_school_physics",
                                                    "high_school_psychology",
                                                    "high_school_statistics",
                                                    "high_school_us_history",
                                                    "high_school_world_history",
                                                    "human_aging",
                                                    "human_sexuality",
                                                    "international_law",
                                                    "jurisprudence",
                                                    "logical_fallacies",
                                                    "machine_learning",
                                                    "management",
                                                    "marketing",
                                                    "medical_genetics",
                                                    "miscellaneous",
                                                    "moral_disputes",
                                                    "moral_scenarios",
                                                    "nutrition",
                                                    "philosophy",
                                                    "prehistory",
                                                    "professional_accounting",
                                                    "professional_law",
                                                    "professional_medicine",
                                                    "professional_psychology",
                                                    "public_relations",
                                                    "security_studies",
                                                    "sociology",
                                                    "us_foreign_policy",
                                                    "virology",
                                                    "world_religions"};
  return subjects;
}

Task load_task(const std::string& name, const fs::path& data_dir, const TaskLoadOptions& options) {
  const fs::path dir = data_dir / "tasks" / name;
  if (name == "piqa") return load_piqa(dir, options);
  if (name == "hellaswag") return load_hellaswag(dir, options);
  if (name == "winogrande") return load_winogrande(dir, options);
  if (name == "arc_easy") return load_arc(name, dir, "ARC-Easy-test.jsonl", options);
  if (name == "arc_challenge") return load_arc(name, dir, "ARC-Challenge-test.jsonl", options);
  if (name == "openbookqa") return load_openbookqa(dir, options);
  if (name == "boolq") return load_boolq(dir, options);
  if (name == "lambada_openai") return load_lambada(dir, options);
  if (name == "mathqa") return load_mathqa(dir, options);
  if (name == "mmlu") return load_mmlu(dir, options);
  std::string known;
  for (const auto& n : task_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument(fmt::format("unknown task \"{}\" (known: {})", name, known));
}

std::vector<Task> load_tasks(const std::vector<std::string>& names, const fs::path& data_dir,
                             const TaskLoadOptions& options) {
  std::vector<Task> out;
  for (const auto& n : names) {
    if (std::any_of(out.begin(), out.end(), [&](const Task& t) { return t.name == n; })) continue;
    out.push_back(load_task(n, data_dir, options));
  }
  return out;
}

double mean_stderr(const std::vector<double>& values) {
  const size_t n = values.size();
  if (n < 2) return std::nan("");
  double mean = 0;
  for (double v : values) mean += v;
  mean /= static_cast<double>(n);
  double ss = 0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / static_cast<double>(n - 1)) / std::sqrt(static_cast<double>(n));
}

double pooled_stderr(const std::vector<double>& stderrs, const std::vector<int64_t>& sizes) {
  if (stderrs.size() != sizes.size()) throw std::invalid_argument("pooled_stderr: as many stderrs as sizes");
  double num = 0, total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    const double n = static_cast<double>(sizes[i]);
    num += (n - 1) * stderrs[i] * stderrs[i] * n;
    total += n;
  }
  const double denom = total - static_cast<double>(sizes.size());
  if (denom <= 0) return std::nan("");
  return std::sqrt(num / denom / total);
}

TaskResult score_task(const Task& task, const std::vector<std::vector<LoglikelihoodResult>>& results) {
  if (results.size() != task.items.size()) {
    throw std::invalid_argument(
        fmt::format("task \"{}\": {} results for {} items", task.name, results.size(), task.items.size()));
  }
  std::vector<size_t> all(task.items.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  TaskResult r = score_items(task.name, task, all, results);
  if (task.name != "mmlu") return r;
  // Subjects in the order they appear; the group's acc is the size-weighted mean (= mean over items).
  std::vector<std::string> order;
  std::map<std::string, std::vector<size_t>> by_subject;
  for (size_t i = 0; i < task.items.size(); ++i) {
    const auto& s = task.items[i].subject;
    if (!by_subject.count(s)) order.push_back(s);
    by_subject[s].push_back(i);
  }
  // Its stderr pools the subjects per category, then the categories, as the harness's nested groups do.
  std::map<std::string, std::pair<std::vector<double>, std::vector<int64_t>>> by_category;
  double sum = 0;
  for (const auto& s : order) {
    auto sub = score_items(s, task, by_subject[s], results);
    sub.item_scores.clear();
    sum += sub.acc.value;
    auto& [errs, sizes] = by_category[mmlu_category(s)];
    errs.push_back(sub.acc.std_error);
    sizes.push_back(sub.items);
    r.subjects.push_back(std::move(sub));
  }
  r.acc_subject_mean = order.empty() ? std::nan("") : sum / static_cast<double>(order.size());
  std::vector<double> errs;
  std::vector<int64_t> sizes;
  for (const auto& [category, parts] : by_category) {
    errs.push_back(pooled_stderr(parts.first, parts.second));
    int64_t n = 0;
    for (int64_t k : parts.second) n += k;
    sizes.push_back(n);
  }
  r.acc.std_error = pooled_stderr(errs, sizes);
  return r;
}

std::vector<TaskResult> evaluate_tasks(const model::CausalLM& lm, const tokenize::Tokenizer& tokenizer,
                                       const std::vector<Task>& tasks, const ScoreOptions& options) {
  std::vector<EncodedRequest> encoded;
  for (const auto& t : tasks)
    for (const auto& item : t.items)
      for (const auto& req : item.requests)
        encoded.push_back(encode_request(tokenizer, req, options.add_special_tokens));
  const auto scores = score_requests(lm, encoded, options);
  std::vector<TaskResult> out;
  size_t at = 0;
  for (const auto& t : tasks) {
    std::vector<std::vector<LoglikelihoodResult>> per_item;
    for (const auto& item : t.items) {
      per_item.emplace_back(scores.begin() + static_cast<std::ptrdiff_t>(at),
                            scores.begin() + static_cast<std::ptrdiff_t>(at + item.requests.size()));
      at += item.requests.size();
    }
    out.push_back(score_task(t, per_item));
  }
  return out;
}

std::string format_task_table(const std::vector<TaskResult>& results, bool subjects) {
  std::string out = fmt::format("{:<40} {:>6}  {:<17}  {:<17}  {}\n", "task", "items", "acc", "acc_norm", "perplexity");
  auto line = [&](const TaskResult& r, const std::string& name) {
    out += fmt::format("{:<40} {:>6}  {:<17}  {:<17}  {}\n", name, r.items, fmt_metric(r.acc),
                       r.has_acc_norm ? fmt_metric(r.acc_norm) : "-",
                       r.kind == TaskKind::LastWord ? fmt::format("{:.4f}", r.perplexity) : "-");
  };
  for (const auto& r : results) {
    line(r, r.name);
    if (!r.subjects.empty()) {
      out += fmt::format("{:<40} {:>6}  {:.4f}\n", "  (mean of subject accuracies)", r.subjects.size(),
                         r.acc_subject_mean);
      if (subjects)
        for (const auto& s : r.subjects) line(s, "  " + s.name);
    }
  }
  return out;
}

std::string task_results_json(const std::vector<TaskResult>& results) {
  Json out = Json::object();
  for (const auto& r : results) {
    Json j = {{"acc", number(r.acc.value)}, {"acc_stderr", number(r.acc.std_error)}, {"items", r.items}};
    if (r.has_acc_norm) {
      j["acc_norm"] = number(r.acc_norm.value);
      j["acc_norm_stderr"] = number(r.acc_norm.std_error);
    }
    if (r.kind == TaskKind::LastWord) j["perplexity"] = number(r.perplexity);
    if (!r.subjects.empty()) {
      j["acc_subject_mean"] = number(r.acc_subject_mean);
      Json subs = Json::object();
      for (const auto& s : r.subjects) {
        subs[s.name] = {{"acc", number(s.acc.value)}, {"acc_stderr", number(s.acc.std_error)}, {"items", s.items}};
      }
      j["subjects"] = std::move(subs);
    }
    out[r.name] = std::move(j);
  }
  return out.dump();
}

}  // namespace cur4llm::eval
