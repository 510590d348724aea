#pragma once
/// Calibration and evaluation text, exactly as the reference pipeline builds it
/// (docs/protocol.md, docs/data.md).
///
/// A dataset spec is a name ("wikitext2", "ptb", "c4"), a name with a split
/// ("wikitext2:valid"), or the path of a plain text file used as it is. Named
/// datasets are read from a data folder with this layout:
///   wikitext-2-raw/wiki.{train,valid,test}.raw
///   ptb/ptb.{train,valid,test}.txt
///   c4/c4-{train,validation}.*.json.gz   (or .json, one JSON object per line)
///   alpaca/alpaca_data.json              (calibration only: "alpaca", or "alpaca:FILE")
/// "selfgen" (or "selfgen:SPEC") is a calibration source too: samples the model
/// generates from the first characters of the rows of wikitext2's train split
/// (or of SPEC), data/selfgen.h.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace cur4llm::tokenize {
class Tokenizer;
}

namespace cur4llm::data {

/// What a text is for: it picks the default split of a named dataset.
enum class Purpose {
  Calibration,  ///< train split
  Evaluation,   ///< test split (ptb: valid; c4: validation shard 0)
};

/// The data folder: $CUR4LLM_DATA_DIR if set, else "data" under the working directory.
std::filesystem::path default_data_dir();

/// A resolved dataset: where its text came from and the text itself.
struct TextSource {
  std::string name;                  ///< e.g. "wikitext2:test" or the file path given
  std::vector<std::filesystem::path> files;  ///< the files read
  std::string text;                  ///< UTF-8, rows joined as the reference joins them
};

/// Where a dataset spec's text lives and how it is joined.
struct DatasetFile {
  enum class Format { Plain, WikiText, Ptb, C4, Alpaca };
  std::string name;             ///< "wikitext2:test", or the path given
  std::filesystem::path file;   ///< the file to read
  Format format = Format::Plain;
  bool selfgen = false;         ///< "selfgen[:SPEC]": the model generates the samples from this file's rows (data/selfgen.h)
};

/// Resolves `spec` without reading it, with the same errors as load_text():
/// lets an app check every dataset before any work starts.
DatasetFile resolve_dataset(const std::string& spec, Purpose purpose, const std::filesystem::path& data_dir);

/// Reads the text of `spec` for `purpose` from `data_dir` (for an alpaca
/// source: the JSON file's text, for parse_alpaca; for selfgen: the joined text
/// of its source, which the calibration cache key fingerprints). Throws
/// std::invalid_argument for an unknown name or split, and
/// std::runtime_error naming the expected file when it is missing.
TextSource load_text(const std::string& spec, Purpose purpose, const std::filesystem::path& data_dir);

/// The rows of `spec` as the reference's datasets yield them, before they are
/// joined: wikitext2 and ptb their lines (as load_text treats them: blank
/// wikitext lines are "", other lines keep their "\n"; ptb lines stripped), c4
/// the "text" fields, a plain file its lines (each with its "\n"). For
/// "selfgen[:SPEC]", the rows of its source. Errors as load_text; alpaca has
/// records, not rows (std::invalid_argument).
std::vector<std::string> load_rows(const std::string& spec, Purpose purpose, const std::filesystem::path& data_dir);

/// The dataset names load_text knows: "wikitext2", "ptb", "c4".
const std::vector<std::string>& known_datasets();

/// The number of Unicode code points of UTF-8 `text` (Python's len(text)).
/// Throws std::invalid_argument at the first byte that is not valid UTF-8.
int64_t count_code_points(const std::string& text);

/// `text` without leading and trailing whitespace, exactly as Python's
/// str.strip() with no argument (Unicode whitespace, `\x1c`-`\x1f` included).
std::string py_strip(const std::string& text);

/// Python's random.Random (MT19937, seeded as Python seeds from an int), so
/// that calibration offsets equal those of `random.seed(seed); random.randint(...)`.
class PyRandom {
 public:
  explicit PyRandom(uint64_t seed);
  /// A uniformly random integer in [a, b], as random.randint(a, b).
  int64_t randint(int64_t a, int64_t b);
  /// k random bits, as random.getrandbits(k), for 0 < k <= 64.
  uint64_t getrandbits(int k);

 private:
  uint32_t next_u32();
  uint32_t state_[624];
  int index_ = 624;
};

/// Options of calibration sampling.
struct CalibrationOptions {
  int64_t n_samples = 32;   ///< samples to draw
  int64_t seqlen = 2048;    ///< tokens per sample (at most)
  uint64_t seed = 233;      ///< PyRandom seed
  bool use_bos = false;     ///< put BOS first when the tokenizer does not already
};

/// The reference's calibration samples: for each, a random code-point offset
/// i in [0, len - seqlen - 1], the text [i, i + 10*seqlen), cut after the first
/// '.', stripped of whitespace, tokenized with default special tokens, and
/// cut to seqlen tokens.
/// Throws std::invalid_argument naming the option for n_samples <= 0,
/// seqlen <= 1, a text shorter than seqlen + 1 code points, or use_bos with a
/// tokenizer that has no BOS token.
std::vector<std::vector<int64_t>> sample_calibration(const std::string& text,
                                                     const tokenize::Tokenizer& tokenizer,
                                                     const CalibrationOptions& options);

/// One instruction record of the Stanford Alpaca layout.
struct AlpacaRecord {
  std::string instruction;  ///< the task
  std::string input;        ///< its input, often empty
  std::string output;       ///< the response
};

/// The records of an Alpaca JSON file's text: a list of objects with the
/// strings "instruction", "output" and optionally "input" (other keys are
/// ignored). std::runtime_error naming `source` and the record index otherwise.
std::vector<AlpacaRecord> parse_alpaca(const std::string& json_text, const std::string& source);

/// The calibration text of one record: the reference's Llama-2 chat prompt (its
/// system line, then the instruction, the input after a blank line when there
/// is one, and the output; docs/data.md gives the exact text).
std::string alpaca_text(const AlpacaRecord& record);

/// Indices of Python's random.sample(range(population), k) after random.seed(seed).
/// std::invalid_argument for k outside [0, population].
std::vector<int64_t> python_sample_indices(int64_t population, int64_t k, uint64_t seed);

/// Calibration samples from instruction records: options.n_samples records
/// drawn as the reference draws them (python_sample_indices), each record's
/// alpaca_text tokenized with default special tokens (BOS first with use_bos
/// when the tokenizer adds none) and cut to options.seqlen tokens. Samples are
/// as long as their records. std::invalid_argument for more samples than records.
std::vector<std::vector<int64_t>> sample_alpaca(const std::vector<AlpacaRecord>& records,
                                                const tokenize::Tokenizer& tokenizer,
                                                const CalibrationOptions& options);

/// Evaluation windows: `ids` cut into floor(N / seqlen) consecutive windows of
/// seqlen ids each; the tail that does not fill a window is dropped.
/// Throws std::invalid_argument when seqlen <= 0.
std::vector<std::vector<int64_t>> split_windows(const std::vector<int64_t>& ids, int64_t seqlen);

}  // namespace cur4llm::data
