// The data area: dataset specs, joined split text, Python-compatible random
// draws and calibration sampling (docs/data.md).

#include "cur4llm/data/text_data.h"
#include "cur4llm/tokenize/tokenizer.h"

#include "test_paths.h"

#include <cur4llm/io/files.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cur4llm;
using Catch::Matchers::Contains;

namespace {

nlohmann::json stories_reference() {
  std::ifstream in(test::fixture_dir() / "reference.json");
  REQUIRE(in);
  return nlohmann::json::parse(in).at("stories260K");
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_file(const fs::path& path, const std::string& bytes) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  REQUIRE(out.good());
}

// A fresh empty folder under the system temp folder.
fs::path temp_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / ("cur4llm_test_data_" + name);
  cur4llm::io::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    const size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += len;
  }
  return out;
}

std::string utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// A test double: one id per code point (id = the code point); BOS is id 1.
class CodePointTokenizer : public tokenize::Tokenizer {
 public:
  explicit CodePointTokenizer(bool adds_bos = false, bool has_bos = true) : adds_bos_(adds_bos), has_bos_(has_bos) {}
  std::vector<int64_t> encode(const std::string& text, const tokenize::EncodeOptions& options = {}) const override {
    std::vector<int64_t> ids;
    if (adds_bos_ && options.add_special_tokens) ids.push_back(1);
    for (uint32_t cp : code_points(text)) ids.push_back(cp);
    return ids;
  }
  std::string decode(const std::vector<int64_t>& ids) const override {
    std::string out;
    for (int64_t id : ids) {
      if (id != 1) out += utf8(static_cast<uint32_t>(id));
    }
    return out;
  }
  int64_t vocab_size() const override { return 0x110000; }
  std::optional<int64_t> bos_id() const override { return has_bos_ ? std::optional<int64_t>(1) : std::nullopt; }
  std::optional<int64_t> eos_id() const override { return std::nullopt; }
  bool adds_bos() const override { return adds_bos_; }
  std::string describe() const override { return "code-point test double"; }

 private:
  bool adds_bos_;
  bool has_bos_;
};

std::vector<int64_t> ids_of(const std::string& s) {
  std::vector<int64_t> ids;
  for (uint32_t cp : code_points(s)) ids.push_back(cp);
  return ids;
}

// CRC-32 (the gzip polynomial), bit by bit.
uint32_t crc32(const std::string& data) {
  uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char c : data) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

// A gzip member with stored (uncompressed) deflate blocks, RFC 1951/1952.
// The library reads it with zlib; the test target does not link zlib itself.
std::string gzip_stored(const std::string& data) {
  std::string out = {'\x1f', '\x8b', '\x08', '\x00', '\x00', '\x00', '\x00', '\x00', '\x00', '\xff'};
  const auto put16 = [&](uint32_t v) {
    out += static_cast<char>(v & 0xFF);
    out += static_cast<char>((v >> 8) & 0xFF);
  };
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(data.size() - pos, 65535);
    const bool last = pos + n == data.size();
    out += static_cast<char>(last ? 1 : 0);
    put16(static_cast<uint32_t>(n));
    put16(static_cast<uint32_t>(~n & 0xFFFF));
    out.append(data, pos, n);
    pos += n;
  } while (pos < data.size());
  const uint32_t crc = crc32(data);
  const uint32_t size = static_cast<uint32_t>(data.size());
  put16(crc & 0xFFFF);
  put16(crc >> 16);
  put16(size & 0xFFFF);
  put16(size >> 16);
  return out;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

}  // namespace

// ---------------------------------------------------------------- PyRandom

TEST_CASE("PyRandom seed 233 randint(0, 1000000) equals CPython", "[unit][data]") {
  const auto expected = stories_reference().at("python_random_seed233_randint_0_1000000").get<std::vector<int64_t>>();
  REQUIRE(expected.size() == 8);
  data::PyRandom random(233);
  for (int64_t value : expected) CHECK(random.randint(0, 1000000) == value);
}

TEST_CASE("PyRandom seed 5 randint(0, 3) equals CPython", "[unit][data]") {
  const auto expected = stories_reference().at("python_random_seed5_randint_0_3").get<std::vector<int64_t>>();
  REQUIRE(expected.size() == 16);
  data::PyRandom random(5);
  for (int64_t value : expected) CHECK(random.randint(0, 3) == value);
}

TEST_CASE("PyRandom two-word seed 2**40+7 randint(0, 2**40) equals CPython", "[unit][data]") {
  const auto expected = stories_reference().at("python_random_seed2p40p7_randint_0_2p40").get<std::vector<int64_t>>();
  REQUIRE(expected.size() == 4);
  data::PyRandom random((uint64_t{1} << 40) + 7);
  for (int64_t value : expected) CHECK(random.randint(0, int64_t{1} << 40) == value);
}

TEST_CASE("PyRandom getrandbits and edge ranges equal CPython", "[unit][data]") {
  // Values printed by CPython 3.11: random.Random(233).getrandbits(k) for k in
  // (1, 7, 32, 33, 40, 63, 64); Random(0).randint(0, 2**63-1) x3;
  // Random(2**64-1).randint(-5, 5) x6; Random(1): randint(10, 10) x2, randint(0, 100).
  data::PyRandom r233(233);
  const std::array<int, 7> ks = {1, 7, 32, 33, 40, 63, 64};
  const std::array<uint64_t, 7> bits = {1u, 102u, 2698614761u, 5043785457u, 877164635192u,
                                        4465160013025234745u, 3769789198605746821u};
  for (size_t i = 0; i < ks.size(); ++i) CHECK(r233.getrandbits(ks[i]) == bits[i]);

  data::PyRandom r0(0);
  CHECK(r0.randint(0, INT64_MAX) == 7106521602475165645);
  CHECK(r0.randint(0, INT64_MAX) == 746805015404516437);
  CHECK(r0.randint(0, INT64_MAX) == 8963783824838420066);

  data::PyRandom rmax(UINT64_MAX);
  for (int64_t value : {-5, -2, 0, 4, -2, 2}) CHECK(rmax.randint(-5, 5) == value);

  data::PyRandom r1(1);  // a one-value range still draws a bit, as CPython does
  CHECK(r1.randint(10, 10) == 10);
  CHECK(r1.randint(10, 10) == 10);
  CHECK(r1.randint(0, 100) == 32);

  CHECK_THROWS_AS(r1.randint(3, 2), std::invalid_argument);
  CHECK_THROWS_AS(r1.getrandbits(0), std::invalid_argument);
  CHECK_THROWS_AS(r1.getrandbits(65), std::invalid_argument);
}

TEST_CASE("calibration offsets on tinystories_calib.txt equal the reference", "[data][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto ref = stories_reference();
  const fs::path file = shared / "text" / "tinystories" / "tinystories_calib.txt";
  const auto source = data::load_text(file.string(), data::Purpose::Calibration, "unused");
  REQUIRE(source.text == read_all(file));
  const int64_t len = data::count_code_points(source.text);
  REQUIRE(len == ref.at("calib_text_codepoints").get<int64_t>());

  const auto offsets = ref.at("calib_seed233_offsets").get<std::vector<int64_t>>();
  data::PyRandom random(233);
  for (int64_t offset : offsets) CHECK(random.randint(0, len - 512 - 1) == offset);

  // The samples themselves, with a code-point tokenizer standing in for the real one.
  data::CalibrationOptions options;
  options.n_samples = 4;
  options.seqlen = 512;
  const auto samples = data::sample_calibration(source.text, CodePointTokenizer(), options);
  REQUIRE(samples.size() == offsets.size());
  const auto all = ids_of(source.text);  // ASCII file: code point == byte
  for (size_t s = 0; s < offsets.size(); ++s) {
    const std::string piece = source.text.substr(static_cast<size_t>(offsets[s]), 5120);
    const std::string cut = data::py_strip(piece.substr(piece.find('.') + 1));
    const auto expected = ids_of(cut.substr(0, 512));
    CHECK(samples[s] == expected);
    CHECK(samples[s].size() == 512);
  }
}

// ---------------------------------------------------------------- joining

TEST_CASE("wikitext2 rows: blank lines become empty, others keep their newline, joined by blank lines",
          "[unit][data]") {
  const fs::path dir = temp_dir("wikitext");
  write_file(dir / "wikitext-2-raw" / "wiki.test.raw",
             " \n = Title = \n \t\n\nText é here .\n  \nlast line");
  const auto source = data::load_text("wikitext2", data::Purpose::Evaluation, dir);
  // rows: "", " = Title = \n", "", "", "Text é here .\n", "", "last line"
  CHECK(source.text == "\n\n = Title = \n\n\n\n\n\n\nText é here .\n\n\n\n\nlast line");
  CHECK(source.name == "wikitext2:test");
  REQUIRE(source.files.size() == 1);
  CHECK(source.files[0] == dir / "wikitext-2-raw" / "wiki.test.raw");

  // Python reads text files with universal newlines: CRLF counts as LF.
  write_file(dir / "wikitext-2-raw" / "wiki.valid.raw", "a\r\n\r\nb\r\n");
  CHECK(data::load_text("wikitext2:valid", data::Purpose::Calibration, dir).text == "a\n\n\n\n\nb\n");
}

TEST_CASE("ptb lines are stripped and joined by blank lines", "[unit][data]") {
  const fs::path dir = temp_dir("ptb");
  write_file(dir / "ptb" / "ptb.valid.txt", " consumers may want <unk> \n\n the N cents \n");
  const auto source = data::load_text("ptb", data::Purpose::Evaluation, dir);
  CHECK(source.name == "ptb:valid");
  CHECK(source.text == "consumers may want <unk>\n\n\n\nthe N cents");
}

TEST_CASE("c4 text fields of a json.gz shard are joined by blank lines", "[unit][data]") {
  const fs::path dir = temp_dir("c4");
  const std::string lines =
      "{\"text\": \"First doc.\\nSecond line.\", \"url\": \"http://a\", \"timestamp\": \"2019\"}\n"
      "{\"url\": \"http://b\", \"text\": \"Caf\\u00e9 \\u2603\"}\n"
      "\n"
      "{\"text\": \"  third  \"}\n";
  write_file(dir / "c4" / "c4-validation.00000-of-00008.json.gz", gzip_stored(lines));
  const auto eval = data::load_text("c4", data::Purpose::Evaluation, dir);
  CHECK(eval.name == "c4:validation");
  CHECK(eval.text == "First doc.\nSecond line.\n\nCafé ☃\n\n  third  ");
  CHECK(eval.files.at(0) == dir / "c4" / "c4-validation.00000-of-00008.json.gz");

  // The same name without .gz is read as plain JSON lines.
  write_file(dir / "c4" / "c4-train.00000-of-01024.json", "{\"text\": \"a\"}\n{\"text\": \"b\"}");
  const auto train = data::load_text("c4:train", data::Purpose::Evaluation, dir);
  CHECK(train.text == "a\n\nb");
  CHECK(data::load_text("c4", data::Purpose::Calibration, dir).name == "c4:train");
  CHECK(data::load_text("c4:valid", data::Purpose::Calibration, dir).name == "c4:validation");

  write_file(dir / "c4" / "c4-train.00000-of-01024.json", "{\"url\": \"x\"}\n");
  CHECK_THROWS_WITH(data::load_text("c4:train", data::Purpose::Calibration, dir),
                    Contains("line 1") && Contains("\"text\""));
}

// ---------------------------------------------------------------- specs

TEST_CASE("dataset specs pick splits by purpose or explicitly, and read files as they are", "[unit][data]") {
  const fs::path dir = temp_dir("specs");
  for (const char* split : {"train", "valid", "test"}) {
    write_file(dir / "wikitext-2-raw" / (std::string("wiki.") + split + ".raw"), std::string(split) + "\n");
    write_file(dir / "ptb" / (std::string("ptb.") + split + ".txt"), std::string(split) + "\n");
  }
  using data::Purpose;
  CHECK(data::load_text("wikitext2", Purpose::Calibration, dir).text == "train\n");
  CHECK(data::load_text("wikitext2", Purpose::Evaluation, dir).text == "test\n");
  CHECK(data::load_text("wikitext2:valid", Purpose::Evaluation, dir).text == "valid\n");
  CHECK(data::load_text("wikitext2:validation", Purpose::Evaluation, dir).name == "wikitext2:valid");
  CHECK(data::load_text("wikitext2:train", Purpose::Evaluation, dir).name == "wikitext2:train");
  CHECK(data::load_text("ptb", Purpose::Calibration, dir).text == "train");
  CHECK(data::load_text("ptb", Purpose::Evaluation, dir).text == "valid");
  CHECK(data::load_text("ptb:test", Purpose::Calibration, dir).text == "test");

  // A file path: the bytes untouched (no newline translation, no joining).
  const fs::path file = dir / "my text.txt";
  write_file(file, " line one\r\n\n  line two. ");
  const auto source = data::load_text(file.string(), Purpose::Calibration, dir);
  CHECK(source.text == " line one\r\n\n  line two. ");
  CHECK(source.name == file.string());
  CHECK(source.files == std::vector<fs::path>{file});
  // A colon inside a path is no split.
  const fs::path colon = dir / "a:b.txt";
  write_file(colon, "x");
  CHECK(data::load_text(colon.string(), Purpose::Evaluation, dir).text == "x");
}

TEST_CASE("missing split files, unknown names and unknown splits are reported", "[unit][data]") {
  const fs::path dir = temp_dir("errors");
  using data::Purpose;
  const std::string expected = (dir / "wikitext-2-raw" / "wiki.train.raw").string();
  CHECK_THROWS_AS(data::load_text("wikitext2", Purpose::Calibration, dir), std::runtime_error);
  const std::string message = error_of([&] { data::load_text("wikitext2", Purpose::Calibration, dir); });
  CHECK(message.rfind("wikitext2:train needs " + expected + ", which does not exist (", 0) == 0);
  // The message says how to fix it.
  CHECK_THAT(message, Contains("--data_dir") && Contains("CUR4LLM_DATA_DIR") && Contains("--eval_ppl none"));
  CHECK_THROWS_WITH(data::load_text("ptb", Purpose::Evaluation, dir),
                    Contains((dir / "ptb" / "ptb.valid.txt").string()) && Contains("does not exist"));
  CHECK_THROWS_WITH(data::load_text("c4", Purpose::Evaluation, dir),
                    Contains("c4-validation.00000-of-00008.json.gz"));

  CHECK_THROWS_AS(data::load_text("wikitext103", Purpose::Calibration, dir), std::invalid_argument);
  CHECK_THROWS_WITH(data::load_text("wikitext103", Purpose::Calibration, dir),
                    Contains("wikitext103") && Contains("wikitext2, ptb, c4"));
  CHECK_THROWS_AS(data::load_text("wikitext2:dev", Purpose::Calibration, dir), std::invalid_argument);
  CHECK_THROWS_WITH(data::load_text("wikitext2:dev", Purpose::Calibration, dir), Contains("dev"));
  CHECK_THROWS_AS(data::load_text("c4:test", Purpose::Calibration, dir), std::invalid_argument);
  CHECK_THROWS_AS(data::load_text(dir.string(), Purpose::Calibration, dir), std::invalid_argument);
}

TEST_CASE("default_data_dir is $CUR4LLM_DATA_DIR or data", "[unit][data]") {
  const char* old = std::getenv("CUR4LLM_DATA_DIR");
  const std::string saved = old ? old : "";
  ::setenv("CUR4LLM_DATA_DIR", "/some/where", 1);
  CHECK(data::default_data_dir() == fs::path("/some/where"));
  ::unsetenv("CUR4LLM_DATA_DIR");
  CHECK(data::default_data_dir() == fs::path("data"));
  if (old) ::setenv("CUR4LLM_DATA_DIR", saved.c_str(), 1);
}

TEST_CASE("shared wikitext2 test and ptb valid join as the Hugging Face datasets do", "[data][shared]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  // Lengths and ends from the Python of PROTOCOL.md ("\n\n".join of the rows).
  const auto wiki = data::load_text("wikitext2", data::Purpose::Evaluation, shared / "text");
  CHECK(wiki.name == "wikitext2:test");
  CHECK(data::count_code_points(wiki.text) == 1294336);
  CHECK(wiki.text.size() == 1296370);
  CHECK(wiki.text.rfind("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is", 0) == 0);
  const std::string wiki_end = "Eddie Pelkey . \n\n\n";
  CHECK(wiki.text.compare(wiki.text.size() - wiki_end.size(), wiki_end.size(), wiki_end) == 0);

  const auto ptb = data::load_text("ptb", data::Purpose::Evaluation, shared / "text");
  CHECK(ptb.name == "ptb:valid");
  CHECK(ptb.text.size() == 396410);
  CHECK(ptb.text.rfind("consumers may want to move their telephones", 0) == 0);
  const std::string ptb_end = "million in fiscal N and $ N million in N";
  CHECK(ptb.text.compare(ptb.text.size() - ptb_end.size(), ptb_end.size(), ptb_end) == 0);

  // The shared folder has no train splits: the error names the file.
  CHECK_THROWS_WITH(data::load_text("wikitext2", data::Purpose::Calibration, shared / "text"),
                    Contains("wiki.train.raw") && Contains("does not exist"));
}

// ---------------------------------------------------------------- text helpers

TEST_CASE("py_strip and count_code_points follow Python str", "[unit][data]") {
  CHECK(data::py_strip("  a b \n") == "a b");
  CHECK(data::py_strip("\t\n\v\f\r\x1c\x1d\x1e\x1f x \x1f") == "x");
  // U+0085, U+00A0, U+1680, U+2000, U+200A, U+2028, U+2029, U+202F, U+205F, U+3000
  CHECK(data::py_strip("\u0085\u00a0\u1680\u2000\u200a\u2028x y\u2029\u202f\u205f\u3000") == "x y");
  // Not whitespace in Python: U+200B (zero width space), U+FEFF.
  CHECK(data::py_strip("\u200b x \ufeff") == "\u200b x \ufeff");
  CHECK(data::py_strip(" \n ") == "");
  CHECK(data::py_strip("") == "");
  CHECK(data::count_code_points("aé☃😀") == 4);
  CHECK(data::count_code_points("") == 0);
  CHECK_THROWS_AS(data::count_code_points("a\xff"), std::invalid_argument);
  CHECK_THROWS_AS(data::count_code_points("\xc3"), std::invalid_argument);
  CHECK_THROWS_AS(data::count_code_points("\xc0\x80"), std::invalid_argument);      // overlong
  CHECK_THROWS_AS(data::count_code_points("\xed\xa0\x80"), std::invalid_argument);  // surrogate
}

// ---------------------------------------------------------------- sampling

TEST_CASE("sample_calibration cuts after the first '.', strips, and keeps seqlen tokens", "[unit][data]") {
  // One window covers the whole text when len - seqlen - 1 == 0: offset 0.
  data::CalibrationOptions options;
  options.n_samples = 2;
  options.seqlen = 4;
  const std::string text = "ab. \t cdefg";  // 11 code points; offsets in [0, 6]
  data::PyRandom random(options.seed);
  const CodePointTokenizer tokenizer;
  const auto samples = data::sample_calibration(text, tokenizer, options);
  REQUIRE(samples.size() == 2);
  for (const auto& sample : samples) {
    const int64_t i = random.randint(0, 11 - 4 - 1);
    std::string piece = text.substr(static_cast<size_t>(i));  // 10*seqlen covers the rest
    const size_t dot = piece.find('.');
    if (dot != std::string::npos) piece = piece.substr(dot + 1);
    piece = data::py_strip(piece);
    CHECK(sample == ids_of(piece.substr(0, 4)));
  }

  // No '.': everything is kept; text shorter than seqlen tokens after the cut stays short.
  options.n_samples = 1;
  options.seqlen = 3;
  CHECK(data::sample_calibration("  xyzw", tokenizer, options).at(0).size() <= 3);
  const auto one = data::sample_calibration("a.b  ", tokenizer, options);  // len 5, offset in [0, 1]
  CHECK((one.at(0) == ids_of("b")));
}

TEST_CASE("sample_calibration equals the reference's Python on small texts", "[unit][data]") {
  // Golden samples from CPython: r = random.Random(233); per sample
  // i = r.randint(0, len(t) - seqlen - 1); s = t[i:i + 10*seqlen];
  // s = s[s.find('.') + 1:].strip(); s[:seqlen]  (offsets in the comments).
  const CodePointTokenizer tokenizer;
  data::CalibrationOptions options;
  options.n_samples = 6;
  options.seqlen = 2;
  // The window is 10*seqlen = 20 code points: only offset 5 misses the '.'.
  const auto a = data::sample_calibration("abcdefghijklmnopqrstuvwxyz.", tokenizer, options);
  const std::vector<std::string> expected_a = {"", "", "fg", "", "", ""};  // 21, 20, 5, 16, 7, 15
  REQUIRE(a.size() == expected_a.size());
  for (size_t s = 0; s < a.size(); ++s) CHECK(a[s] == ids_of(expected_a[s]));

  options.seqlen = 3;
  const std::string text = "\u00dcn\u00efc\u00f8d\u00e9 \u2603. \u3000Stra\u00dfe \U0001F600 na\u00efve. fin\u2029 e.";
  REQUIRE(data::count_code_points(text) == 35);
  const auto b = data::sample_calibration(text, tokenizer, options);
  const std::vector<std::string> expected_b = {"fin", "fin", "", "fin", "Str", "Str"};  // 11, 14, 30, 13, 5, 6
  REQUIRE(b.size() == expected_b.size());
  for (size_t s = 0; s < b.size(); ++s) CHECK(b[s] == ids_of(expected_b[s]));
}

TEST_CASE("sample_calibration offsets count code points, not bytes", "[unit][data]") {
  // 2-, 3- and 4-byte code points before and inside the windows.
  std::string text;
  for (int k = 0; k < 400; ++k) text += (k % 7 == 3 ? "." : k % 3 == 0 ? "é" : k % 3 == 1 ? "☃" : "😀");
  const auto cps = code_points(text);
  REQUIRE(cps.size() == 400);
  data::CalibrationOptions options;
  options.n_samples = 8;
  options.seqlen = 5;
  options.seed = 7;
  const auto samples = data::sample_calibration(text, CodePointTokenizer(), options);
  data::PyRandom random(7);
  for (const auto& sample : samples) {
    const int64_t i = random.randint(0, 400 - 5 - 1);
    std::vector<int64_t> window(cps.begin() + i, cps.begin() + std::min<int64_t>(400, i + 50));
    auto dot = std::find(window.begin(), window.end(), '.');
    if (dot != window.end()) window.erase(window.begin(), dot + 1);
    window.resize(std::min<size_t>(window.size(), 5));
    CHECK(sample == window);
  }
}

TEST_CASE("sample_calibration use_bos prepends BOS only when the tokenizer does not", "[unit][data]") {
  data::CalibrationOptions options;
  options.n_samples = 3;
  options.seqlen = 4;
  options.use_bos = true;
  const std::string text = "no dots in this text at all";
  for (const auto& sample : data::sample_calibration(text, CodePointTokenizer(false), options)) {
    REQUIRE(sample.size() == 4);
    CHECK(sample[0] == 1);
    CHECK(sample[1] != 1);
  }
  // The tokenizer adds BOS itself: exactly one, with or without use_bos.
  for (bool use_bos : {true, false}) {
    options.use_bos = use_bos;
    for (const auto& sample : data::sample_calibration(text, CodePointTokenizer(true), options)) {
      REQUIRE(sample.size() == 4);
      CHECK(sample[0] == 1);
      CHECK(sample[1] != 1);
    }
  }
  options.use_bos = false;
  for (const auto& sample : data::sample_calibration(text, CodePointTokenizer(false), options)) {
    CHECK(sample[0] != 1);
  }
  options.use_bos = true;
  CHECK_THROWS_WITH(data::sample_calibration(text, CodePointTokenizer(false, false), options), Contains("use_bos"));
}

TEST_CASE("sample_calibration rejects bad options naming them", "[unit][data]") {
  const CodePointTokenizer tokenizer;
  data::CalibrationOptions options;
  options.seqlen = 4;
  options.n_samples = 0;
  CHECK_THROWS_AS(data::sample_calibration("0123456789", tokenizer, options), std::invalid_argument);
  CHECK_THROWS_WITH(data::sample_calibration("0123456789", tokenizer, options), Contains("n_samples"));
  options.n_samples = 1;
  options.seqlen = 1;
  CHECK_THROWS_WITH(data::sample_calibration("0123456789", tokenizer, options), Contains("seqlen"));
  options.seqlen = 4;
  CHECK_NOTHROW(data::sample_calibration("0é234", tokenizer, options));  // 5 code points, 6 bytes
  CHECK_THROWS_AS(data::sample_calibration("0é23", tokenizer, options), std::invalid_argument);
  CHECK_THROWS_WITH(data::sample_calibration("0é23", tokenizer, options), Contains("seqlen") && Contains("5"));
}

// ---------------------------------------------------------------- windows

TEST_CASE("split_windows cuts floor(N/seqlen) windows and drops the tail", "[unit][data]") {
  const std::vector<int64_t> ids = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  const auto w3 = data::split_windows(ids, 3);
  REQUIRE(w3.size() == 3);
  CHECK(w3[0] == std::vector<int64_t>{0, 1, 2});
  CHECK(w3[2] == std::vector<int64_t>{6, 7, 8});
  CHECK(data::split_windows(ids, 5).size() == 2);
  CHECK(data::split_windows(ids, 10).size() == 1);
  CHECK(data::split_windows(ids, 11).empty());
  CHECK(data::split_windows({}, 4).empty());
  CHECK_THROWS_AS(data::split_windows(ids, 0), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// alpaca: instruction records as calibration samples.

namespace {

const fs::path kAlpacaMini = fs::path(CUR4LLM_TEST_DATA_DIR) / "text" / "alpaca_mini.json";

}  // namespace

TEST_CASE("alpaca: records parsed, and a file that is not a list of records refused by file and index", "[data][alpaca]") {
  const auto records = data::parse_alpaca(cur4llm::io::read_file(kAlpacaMini), kAlpacaMini.string());
  REQUIRE(records.size() == 8);
  CHECK(records[1].instruction == "Translate the sentence into French.");
  CHECK(records[1].input == "The cat sleeps.");
  CHECK(records[1].output == "Le chat dort.");
  CHECK(records[6].input.empty());  // "input" absent
  CHECK_THROWS_WITH(data::parse_alpaca(R"({"instruction": "x"})", "a.json"),
                    Contains("a.json") && Contains("JSON list"));
  CHECK_THROWS_WITH(data::parse_alpaca(R"([{"instruction": "x", "output": "y"}, {"instruction": "x"}])", "b.json"),
                    Contains("b.json: record 1 has no \"output\""));
  CHECK_THROWS_WITH(data::parse_alpaca(R"([{"instruction": "x", "input": 3, "output": "y"}])", "c.json"),
                    Contains("c.json: record 0 has a \"input\" that is not a string"));
  CHECK_THROWS_WITH(data::parse_alpaca(R"([{"instruction": "x", "output": "y"}, "text"])", "d.json"),
                    Contains("d.json: record 1 is a string, not an object"));
  CHECK_THROWS_AS(data::parse_alpaca("[{", "e.json"), std::runtime_error);
}

TEST_CASE("alpaca: a record's text is the reference's chat prompt with the fields filled in", "[data][alpaca]") {
  const std::string header =
      "[INST] <<SYS>>\n\"Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\"\n<</SYS>>\n\n";
  CHECK(data::alpaca_text({"Name a primary colour.", "", "Red."}) == header + "Name a primary colour. [/INST] Red.");
  CHECK(data::alpaca_text({"Add the numbers.", "4 and 9", "13"}) == header + "Add the numbers.\n\n4 and 9 [/INST] 13");
}

TEST_CASE("alpaca: records drawn as Python's random.sample draws them", "[data][alpaca]") {
  // Expected values printed by CPython 3.11: random.seed(s); random.sample(range(n), k).
  CHECK(data::python_sample_indices(8, 3, 233) == std::vector<int64_t>{2, 4, 1});
  CHECK(data::python_sample_indices(1000, 4, 233) == std::vector<int64_t>{698, 821, 643, 178});  // the set branch
  CHECK(data::python_sample_indices(100, 7, 5) == std::vector<int64_t>{79, 32, 94, 45, 88, 83, 67});
  CHECK_THROWS_AS(data::python_sample_indices(3, 4, 1), std::invalid_argument);
}

TEST_CASE("alpaca: calibration samples are the drawn records' texts tokenized and cut", "[data][alpaca]") {
  const auto tok = tokenize::load_tokenizer(fs::path(CUR4LLM_TEST_DATA_DIR) / "models" / "tiny-shakespeare-opt");
  const auto records = data::parse_alpaca(cur4llm::io::read_file(kAlpacaMini), kAlpacaMini.string());
  data::CalibrationOptions o;
  o.n_samples = 3;
  o.seqlen = 1000;
  o.seed = 233;
  const auto samples = data::sample_alpaca(records, *tok, o);
  REQUIRE(samples.size() == 3);
  const std::vector<int> drawn{2, 4, 1};
  for (size_t i = 0; i < 3; ++i) {
    CHECK(samples[i] == tok->encode(data::alpaca_text(records[static_cast<size_t>(drawn[i])])));
  }
  o.seqlen = 10;
  for (const auto& s : data::sample_alpaca(records, *tok, o)) CHECK(s.size() == 10);
  o.n_samples = 9;
  CHECK_THROWS_WITH(data::sample_alpaca(records, *tok, o), Contains("more than the 8 records"));
}

TEST_CASE("alpaca: resolved from the data folder or a path, for calibration only", "[data][alpaca]") {
  const auto d = data::resolve_dataset("alpaca:" + kAlpacaMini.string(), data::Purpose::Calibration, "unused");
  CHECK(d.format == data::DatasetFile::Format::Alpaca);
  CHECK(d.file == kAlpacaMini);
  CHECK_THROWS_WITH(data::resolve_dataset("alpaca", data::Purpose::Calibration, "/no/such/dir"),
                    Contains("/no/such/dir/alpaca/alpaca_data.json"));
  CHECK_THROWS_WITH(data::resolve_dataset("alpaca:" + kAlpacaMini.string(), data::Purpose::Evaluation, "unused"),
                    Contains("calibration source"));
  const auto text = data::load_text("alpaca:" + kAlpacaMini.string(), data::Purpose::Calibration, "unused");
  CHECK(text.text == cur4llm::io::read_file(kAlpacaMini));
}
