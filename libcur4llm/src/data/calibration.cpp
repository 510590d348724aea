// Calibration samples (the reference's get_calib_data) and evaluation windows.

#include "cur4llm/data/text_data.h"
#include "cur4llm/tokenize/tokenizer.h"

#include "data/sample_options.h"
#include "data/utf8.h"

#include <fmt/format.h>

#include <optional>
#include <stdexcept>
#include <string>

namespace cur4llm::detail {

void check_sample_options(const data::CalibrationOptions& options, int64_t min_seqlen) {
  if (options.n_samples <= 0) {
    throw std::invalid_argument("n_samples must be positive, got " + std::to_string(options.n_samples));
  }
  if (options.seqlen < min_seqlen) {
    throw std::invalid_argument(fmt::format("seqlen must be at least {}, got {}", min_seqlen, options.seqlen));
  }
}

std::optional<int64_t> sample_bos(const tokenize::Tokenizer& tokenizer, const data::CalibrationOptions& options) {
  if (!options.use_bos || tokenizer.adds_bos()) return std::nullopt;
  const std::optional<int64_t> bos = tokenizer.bos_id();
  if (!bos) throw std::invalid_argument("use_bos: the tokenizer (" + tokenizer.describe() + ") has no BOS token");
  return bos;
}

}  // namespace cur4llm::detail

namespace cur4llm::data {

namespace {

// Byte offsets of every kStride-th code point, so that a code-point offset
// maps to a byte offset without a table of every code point (wikitext2's
// train split has about 11M of them).
class CodePointIndex {
 public:
  static constexpr int64_t kStride = 256;

  explicit CodePointIndex(const std::string& text) : text_(text) {
    uint32_t cp = 0;
    for (size_t pos = 0; pos < text.size(); ++size_) {
      if (size_ % kStride == 0) checkpoints_.push_back(pos);
      pos += detail::decode_utf8(text, pos, cp);
    }
  }

  int64_t size() const { return size_; }

  // The byte offset of code point `index` (text.size() for index == size()).
  size_t byte_offset(int64_t index) const {
    if (index >= size_) return text_.size();
    return advance(checkpoints_[static_cast<size_t>(index / kStride)], index % kStride);
  }

  // The byte offset `count` code points after byte offset `pos`, or the end.
  size_t advance(size_t pos, int64_t count) const {
    uint32_t cp = 0;
    for (; count > 0 && pos < text_.size(); --count) pos += detail::decode_utf8(text_, pos, cp);
    return pos;
  }

 private:
  const std::string& text_;
  std::vector<size_t> checkpoints_;
  int64_t size_ = 0;
};

}  // namespace

std::vector<std::vector<int64_t>> sample_calibration(const std::string& text,
                                                     const tokenize::Tokenizer& tokenizer,
                                                     const CalibrationOptions& options) {
  detail::check_sample_options(options);
  const std::optional<int64_t> bos = detail::sample_bos(tokenizer, options);
  const CodePointIndex index(text);
  if (index.size() < options.seqlen + 1) {
    throw std::invalid_argument("seqlen " + std::to_string(options.seqlen) + " needs a calibration text of at least " +
                                std::to_string(options.seqlen + 1) + " code points, got " +
                                std::to_string(index.size()));
  }

  PyRandom random(options.seed);
  std::vector<std::vector<int64_t>> samples;
  samples.reserve(static_cast<size_t>(options.n_samples));
  for (int64_t s = 0; s < options.n_samples; ++s) {
    // text[i : i + 10*seqlen] in code points, as Python slices a str.
    const int64_t i = random.randint(0, index.size() - options.seqlen - 1);
    const size_t begin = index.byte_offset(i);
    const size_t end = index.advance(begin, 10 * options.seqlen);
    std::string piece = text.substr(begin, end - begin);
    // piece[piece.find('.') + 1:]: '.' is ASCII, so a byte search is exact.
    const size_t dot = piece.find('.');
    if (dot != std::string::npos) piece.erase(0, dot + 1);
    piece = py_strip(piece);

    std::vector<int64_t> ids;
    if (bos) ids.push_back(*bos);
    const auto encoded = tokenizer.encode(piece);
    ids.insert(ids.end(), encoded.begin(), encoded.end());
    if (static_cast<int64_t>(ids.size()) > options.seqlen) ids.resize(static_cast<size_t>(options.seqlen));
    samples.push_back(std::move(ids));
  }
  return samples;
}

std::vector<std::vector<int64_t>> split_windows(const std::vector<int64_t>& ids, int64_t seqlen) {
  if (seqlen <= 0) throw std::invalid_argument("seqlen must be positive, got " + std::to_string(seqlen));
  const size_t width = static_cast<size_t>(seqlen);
  std::vector<std::vector<int64_t>> windows;
  windows.reserve(ids.size() / width);
  for (size_t start = 0; start + width <= ids.size(); start += width) {
    windows.emplace_back(ids.begin() + static_cast<std::ptrdiff_t>(start),
                         ids.begin() + static_cast<std::ptrdiff_t>(start + width));
  }
  return windows;
}

}  // namespace cur4llm::data
