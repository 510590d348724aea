// Dataset specs and the joined text of each split, as the reference builds it
// from the Hugging Face datasets (see docs/data.md).

#include "cur4llm/data/text_data.h"

#include "data/utf8.h"

#include <nlohmann/json.hpp>
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace cur4llm::data {

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) throw std::runtime_error("cannot read " + path.string());
  return out.str();
}

// A gzip file (or, as gzread allows, a plain one) in full.
std::string read_gz(const fs::path& path) {
  gzFile file = gzopen(path.string().c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path.string());
  std::string data;
  char buffer[1 << 16];
  for (;;) {
    const int n = gzread(file, buffer, sizeof(buffer));
    if (n < 0) {
      int errnum = 0;
      const std::string message = gzerror(file, &errnum);
      gzclose(file);
      throw std::runtime_error("cannot read " + path.string() + ": " + message);
    }
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
  }
  gzclose(file);
  return data;
}

// Python's text mode (universal newlines): "\r\n" and "\r" read as "\n".
std::string translate_newlines(const std::string& raw) {
  if (raw.find('\r') == std::string::npos) return raw;
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '\r') {
      out.push_back('\n');
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
    } else {
      out.push_back(raw[i]);
    }
  }
  return out;
}

// The lines of a file as Python iterates a text file: each keeps its "\n",
// the last one only if the file ends with one.
std::vector<std::string> python_lines(const std::string& text) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    if (end == std::string::npos) {
      lines.push_back(text.substr(start));
      break;
    }
    lines.push_back(text.substr(start, end + 1 - start));
    start = end + 1;
  }
  return lines;
}

std::string join(const std::vector<std::string>& rows, const std::string& separator) {
  size_t size = 0;
  for (const auto& row : rows) size += row.size() + separator.size();
  std::string out;
  out.reserve(size);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) out += separator;
    out += rows[i];
  }
  return out;
}

// Hugging Face "wikitext" (wikitext-2-raw-v1): each line is a row, a blank one
// becomes "", the others keep their "\n".
std::vector<std::string> wikitext_rows(const std::string& raw) {
  auto rows = python_lines(translate_newlines(raw));
  for (auto& row : rows) {
    if (py_strip(row).empty()) row.clear();
  }
  return rows;
}

// Hugging Face "ptb_text_only": each line, stripped, is a sentence.
std::vector<std::string> ptb_rows(const std::string& raw) {
  auto rows = python_lines(translate_newlines(raw));
  for (auto& row : rows) row = py_strip(row);
  return rows;
}

// A C4 shard: one JSON object per line; the "text" fields.
std::vector<std::string> c4_rows(const std::string& raw, const fs::path& path) {
  std::vector<std::string> rows;
  size_t start = 0;
  size_t line_number = 0;
  while (start < raw.size()) {
    size_t end = raw.find('\n', start);
    if (end == std::string::npos) end = raw.size();
    ++line_number;
    const std::string line = raw.substr(start, end - start);
    start = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json object;
    try {
      object = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(path.string() + " line " + std::to_string(line_number) +
                               ": not JSON (" + e.what() + ")");
    }
    const auto text = object.find("text");
    if (!object.is_object() || text == object.end() || !text->is_string()) {
      throw std::runtime_error(path.string() + " line " + std::to_string(line_number) +
                               ": no string field \"text\"");
    }
    rows.push_back(text->get<std::string>());
  }
  return rows;
}

std::string known_names_list() {
  std::string out;
  for (const auto& name : known_datasets()) out += (out.empty() ? "" : ", ") + name;
  return out;
}

// The canonical split name for `name`, or throws naming the accepted ones.
std::string canonical_split(const std::string& name, const std::string& split, const std::string& spec) {
  if (name == "c4") {
    if (split == "train") return "train";
    if (split == "validation" || split == "valid") return "validation";
    throw std::invalid_argument("dataset '" + spec + "': c4 has the splits train and validation");
  }
  if (split == "train" || split == "test") return split;
  if (split == "valid" || split == "validation") return "valid";
  throw std::invalid_argument("dataset '" + spec + "': unknown split '" + split +
                              "' (known: train, valid, validation, test)");
}

[[noreturn]] void missing(const std::string& what, const std::string& expected) {
  throw std::runtime_error(what + " needs " + expected +
                           ", which does not exist (point --data_dir or CUR4LLM_DATA_DIR at the folder that holds "
                           "it (docs/data.md), give a text file instead, or --eval_ppl none to skip evaluation)");
}

}  // namespace

const std::vector<std::string>& known_datasets() {
  static const std::vector<std::string> names = {"wikitext2", "ptb", "c4"};
  return names;
}

fs::path default_data_dir() {
  const char* env = std::getenv("CUR4LLM_DATA_DIR");
  if (env && *env) return fs::path(env);
  return fs::path("data");
}

DatasetFile resolve_dataset(const std::string& spec, Purpose purpose, const fs::path& data_dir) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  if (name == "selfgen") {
    if (purpose != Purpose::Calibration) {
      throw std::invalid_argument("dataset '" + spec + "': selfgen is a calibration source, not an evaluation set");
    }
    const std::string source = colon == std::string::npos ? "wikitext2" : spec.substr(colon + 1);
    const std::string source_name = source.substr(0, source.find(':'));
    if (source_name == "selfgen" || source_name == "alpaca") {
      throw std::invalid_argument("dataset '" + spec + "': selfgen takes its prompts from the rows of a text dataset "
                                  "(wikitext2, ptb, c4, or a text file), not from " + source_name);
    }
    DatasetFile d = resolve_dataset(source, purpose, data_dir);
    d.name = "selfgen:" + d.name;
    d.selfgen = true;
    return d;
  }
  if (name == "alpaca") {
    if (purpose != Purpose::Calibration) {
      throw std::invalid_argument("dataset '" + spec + "': alpaca is a calibration source, not an evaluation set");
    }
    const fs::path file = colon == std::string::npos ? data_dir / "alpaca" / "alpaca_data.json"
                                                     : fs::path(spec.substr(colon + 1));
    if (!fs::is_regular_file(file)) missing(spec, file.string());
    return {spec, file, DatasetFile::Format::Alpaca};
  }
  const bool known = std::find(known_datasets().begin(), known_datasets().end(), name) != known_datasets().end();

  if (!known) {
    std::error_code ec;
    if (fs::is_regular_file(spec, ec)) return {spec, fs::path(spec), DatasetFile::Format::Plain};
    throw std::invalid_argument("dataset '" + spec + "' is neither a known name (" + known_names_list() +
                                ", optionally with :train|valid|test|validation) nor an existing file");
  }

  std::string split;
  if (colon != std::string::npos) {
    split = canonical_split(name, spec.substr(colon + 1), spec);
  } else if (purpose == Purpose::Calibration) {
    split = "train";
  } else {
    split = name == "ptb" ? "valid" : name == "c4" ? "validation" : "test";
  }
  const std::string full = name + ":" + split;
  if (name == "wikitext2") {
    const fs::path file = data_dir / "wikitext-2-raw" / ("wiki." + split + ".raw");
    if (!fs::is_regular_file(file)) missing(full, file.string());
    return {full, file, DatasetFile::Format::WikiText};
  }
  if (name == "ptb") {
    const fs::path file = data_dir / "ptb" / ("ptb." + split + ".txt");
    if (!fs::is_regular_file(file)) missing(full, file.string());
    return {full, file, DatasetFile::Format::Ptb};
  }
  // Shard 0 of the split, as the reference's json.gz files.
  const std::string stem = split == "train" ? "c4-train.00000-of-01024.json" : "c4-validation.00000-of-00008.json";
  fs::path file = data_dir / "c4" / (stem + ".gz");
  if (!fs::is_regular_file(file)) {
    const fs::path plain = data_dir / "c4" / stem;
    if (!fs::is_regular_file(plain)) missing(full, file.string() + " (or " + plain.string() + ")");
    file = plain;
  }
  return {full, file, DatasetFile::Format::C4};
}

TextSource load_text(const std::string& spec, Purpose purpose, const fs::path& data_dir) {
  const DatasetFile d = resolve_dataset(spec, purpose, data_dir);
  TextSource source;
  source.name = d.name;
  source.files = {d.file};
  switch (d.format) {
    case DatasetFile::Format::Plain:
      source.text = read_file(d.file);  // a plain text file is used as it is
      break;
    case DatasetFile::Format::Alpaca:
      source.text = read_file(d.file);  // JSON records: parse_alpaca
      break;
    case DatasetFile::Format::WikiText:
      source.text = join(wikitext_rows(read_file(d.file)), "\n\n");
      break;
    case DatasetFile::Format::Ptb:
      source.text = join(ptb_rows(read_file(d.file)), "\n\n");
      break;
    case DatasetFile::Format::C4:
      source.text = join(c4_rows(read_gz(d.file), d.file), "\n\n");
      break;
  }
  return source;
}

std::vector<std::string> load_rows(const std::string& spec, Purpose purpose, const fs::path& data_dir) {
  const DatasetFile d = resolve_dataset(spec, purpose, data_dir);
  switch (d.format) {
    case DatasetFile::Format::Plain:
      return python_lines(read_file(d.file));
    case DatasetFile::Format::Alpaca:
      break;
    case DatasetFile::Format::WikiText:
      return wikitext_rows(read_file(d.file));
    case DatasetFile::Format::Ptb:
      return ptb_rows(read_file(d.file));
    case DatasetFile::Format::C4:
      return c4_rows(read_gz(d.file), d.file);
  }
  throw std::invalid_argument("dataset '" + spec + "': alpaca has instruction records, not rows of text");
}

std::string py_strip(const std::string& text) {
  size_t begin = 0;
  size_t end = text.size();
  uint32_t cp = 0;
  while (begin < end) {
    const size_t len = detail::decode_utf8(text, begin, cp);
    if (!detail::is_py_space(cp)) break;
    begin += len;
  }
  // Walk back over whole code points: find the start byte of the last one.
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    if (detail::decode_utf8(text, start, cp) != end - start) {
      throw std::invalid_argument("text is not valid UTF-8 at byte " + std::to_string(start));
    }
    if (!detail::is_py_space(cp)) break;
    end = start;
  }
  return text.substr(begin, end - begin);
}

int64_t count_code_points(const std::string& text) {
  int64_t count = 0;
  uint32_t cp = 0;
  for (size_t pos = 0; pos < text.size(); ++count) pos += detail::decode_utf8(text, pos, cp);
  return count;
}

}  // namespace cur4llm::data
