// Instruction records (the Stanford Alpaca JSON layout) as calibration samples.
#include <cur4llm/data/text_data.h>
#include <cur4llm/tokenize/tokenizer.h>

#include "data/sample_options.h"
#include "io/json_parse.h"

#include <cmath>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>

namespace cur4llm::data {

std::vector<AlpacaRecord> parse_alpaca(const std::string& json_text, const std::string& source) {
  const auto doc = cur4llm::detail::parse_json(json_text, source);
  if (!doc.is_array()) {
    throw std::runtime_error(source + ": an alpaca file is a JSON list of {instruction, input, output} records, not a " +
                             std::string(doc.type_name()));
  }
  std::vector<AlpacaRecord> records;
  records.reserve(doc.size());
  for (size_t i = 0; i < doc.size(); ++i) {
    const auto& r = doc[i];
    const auto bad = [&](const std::string& what) {
      return std::runtime_error(source + ": record " + std::to_string(i) + " " + what +
                                " (an alpaca record is an object with the strings \"instruction\", \"input\" and "
                                "\"output\"; \"input\" may be empty or absent)");
    };
    if (!r.is_object()) throw bad("is a " + std::string(r.type_name()) + ", not an object");
    AlpacaRecord rec;
    for (const char* field : {"instruction", "input", "output"}) {
      const auto it = r.find(field);
      if (it == r.end()) {
        if (std::string(field) == "input") continue;
        throw bad(std::string("has no \"") + field + "\"");
      }
      if (!it->is_string()) throw bad(std::string("has a \"") + field + "\" that is not a string");
      const std::string value = it->get<std::string>();
      if (std::string(field) == "instruction") rec.instruction = value;
      else if (std::string(field) == "input") rec.input = value;
      else rec.output = value;
    }
    records.push_back(std::move(rec));
  }
  return records;
}

std::string alpaca_text(const AlpacaRecord& record) {
  std::string prompt = record.instruction;
  if (!record.input.empty()) prompt += "\n\n" + record.input;
  return "[INST] <<SYS>>\n"
         "\"Below is an instruction that describes a task. Write a response that appropriately completes the "
         "request.\"\n"
         "<</SYS>>\n\n" +
         prompt + " [/INST] " + record.output;
}

std::vector<int64_t> python_sample_indices(int64_t population, int64_t k, uint64_t seed) {
  if (k < 0 || k > population) {
    throw std::invalid_argument("cannot draw " + std::to_string(k) + " of " + std::to_string(population) + " records");
  }
  PyRandom random(seed);
  const auto randbelow = [&](int64_t n) { return random.randint(0, n - 1); };
  std::vector<int64_t> out(static_cast<size_t>(k));
  int64_t setsize = 21;
  if (k > 5) setsize += static_cast<int64_t>(std::pow(4.0, std::ceil(std::log(static_cast<double>(k * 3)) / std::log(4.0))));
  if (population <= setsize) {
    std::vector<int64_t> pool(static_cast<size_t>(population));
    for (int64_t i = 0; i < population; ++i) pool[static_cast<size_t>(i)] = i;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = randbelow(population - i);
      out[static_cast<size_t>(i)] = pool[static_cast<size_t>(j)];
      pool[static_cast<size_t>(j)] = pool[static_cast<size_t>(population - i - 1)];
    }
  } else {
    std::set<int64_t> selected;
    for (int64_t i = 0; i < k; ++i) {
      int64_t j = randbelow(population);
      while (selected.count(j)) j = randbelow(population);
      selected.insert(j);
      out[static_cast<size_t>(i)] = j;
    }
  }
  return out;
}

std::vector<std::vector<int64_t>> sample_alpaca(const std::vector<AlpacaRecord>& records,
                                                const tokenize::Tokenizer& tokenizer,
                                                const CalibrationOptions& options) {
  detail::check_sample_options(options);
  if (options.n_samples > static_cast<int64_t>(records.size())) {
    throw std::invalid_argument("--n_calib_samples " + std::to_string(options.n_samples) + " is more than the " +
                                std::to_string(records.size()) + " records of the alpaca file");
  }
  const std::optional<int64_t> bos = detail::sample_bos(tokenizer, options);
  std::vector<std::vector<int64_t>> samples;
  for (int64_t index : python_sample_indices(static_cast<int64_t>(records.size()), options.n_samples, options.seed)) {
    std::vector<int64_t> ids;
    if (bos) ids.push_back(*bos);
    const auto encoded = tokenizer.encode(alpaca_text(records[static_cast<size_t>(index)]));
    ids.insert(ids.end(), encoded.begin(), encoded.end());
    if (static_cast<int64_t>(ids.size()) > options.seqlen) ids.resize(static_cast<size_t>(options.seqlen));
    if (ids.empty()) throw std::invalid_argument("alpaca record " + std::to_string(index) + " gives no tokens");
    samples.push_back(std::move(ids));
  }
  return samples;
}

}  // namespace cur4llm::data
