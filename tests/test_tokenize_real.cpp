// Real tokenizer files of published models (tokenizers-real.tar.xz in
// ../shared/data): every one loads, has the vocabulary its model card lists, and
// gives the ids that Hugging Face tokenizers / transformers gave for the
// reference texts shipped beside it. With the fixtures that
// scripts/tokenizer_reference.py writes (tests/data/tokenizer_reference/), also
// the whole wikitext-2 test text and the torture text of tests/data/text.

#include "cur4llm/io/files.h"
#include "cur4llm/tokenize/tokenizer.h"

#include "test_paths.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <tuple>
#include <optional>
#include <sstream>

namespace fs = std::filesystem;
namespace tk = cur4llm::tokenize;
using nlohmann::json;

namespace {

// The tarball unpacked once into the build tree; nullopt (tests skipped) when absent.
std::optional<fs::path> real_tokenizers() {
  const auto dir = cur4llm::test::unpacked_shared_archive("tokenizers-real.tar.xz", "tokenizers/SOURCES.md");
  return dir ? std::optional<fs::path>(*dir / "tokenizers") : std::nullopt;
}

#define REQUIRE_REAL_TOKENIZERS(var)                                                        \
  const auto var##_opt = real_tokenizers();                                                 \
  if (!var##_opt) {                                                                         \
    WARN("SKIPPED: tokenizers-real.tar.xz not found in ../shared/data (or tar/xz failed)"); \
    return;                                                                                 \
  }                                                                                         \
  const fs::path var = *var##_opt

json read_json(const fs::path& path) { return json::parse(cur4llm::io::read_file(path)); }

std::vector<int64_t> plain(const tk::Tokenizer& tok, const std::string& text) {
  tk::EncodeOptions o;
  o.add_special_tokens = false;
  return tok.encode(text, o);
}

// First index where the two differ, for readable failures on long id lists.
void require_same_ids(const std::vector<int64_t>& got, const std::vector<int64_t>& want, const std::string& what) {
  INFO(what);
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  INFO("first difference at index " << i << " of " << got.size() << " (want " << want.size() << ")");
  if (i < got.size() && i < want.size()) INFO("got " << got[i] << ", want " << want[i]);
  REQUIRE(got == want);
}

// 64-bit FNV-1a over the ids as little-endian uint32 (scripts/tokenizer_reference.py writes the same).
std::string fnv1a_ids(const std::vector<int64_t>& ids, size_t begin, size_t end) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = begin; i < end; ++i) {
    const auto v = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xFF;
      h *= 0x100000001b3ULL;
    }
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

struct Family {
  const char* name;
  int64_t vocab_size;
};

// Sizes as the model cards and the files' own listings give them (vocabulary plus added tokens).
const Family kFamilies[] = {
    {"gpt2", 50257},     {"llama2", 32000},   {"mistral", 32000}, {"phi-2", 50295},
    {"phi-3-mini", 32011}, {"falcon", 65024}, {"pythia", 50277},  {"smollm2", 49152},
    {"deepseek-coder", 32022}, {"opt", 50265}, {"qwen2.5", 151665}, {"llama3", 128256},
};

}  // namespace

TEST_CASE("real tokenizers: every family loads with its vocabulary size", "[tokenize][shared]") {
  REQUIRE_REAL_TOKENIZERS(dir);
  for (const auto& f : kFamilies) {
    INFO(f.name);
    std::unique_ptr<tk::Tokenizer> tok;
    REQUIRE_NOTHROW(tok = tk::load_tokenizer(dir / f.name));
    CHECK(tok->vocab_size() == f.vocab_size);
  }
  // The other forms of GPT-2's vocabulary: vocab.json + merges.txt, and the old hub tokenizer.json.
  CHECK(tk::load_gpt2_bpe(dir / "gpt2" / "vocab.json", dir / "gpt2" / "merges.txt")->vocab_size() == 50257);
  CHECK(tk::load_tokenizer_json(dir / "gpt2" / "tokenizer.hub-format.restored.json")->vocab_size() == 50257);
}

TEST_CASE("real tokenizers: special tokens and single words have the ids their vocabularies list", "[tokenize][shared]") {
  REQUIRE_REAL_TOKENIZERS(dir);
  auto load = [&](const char* name) { return tk::load_tokenizer(dir / name); };
  {
    auto t = load("gpt2");
    CHECK(plain(*t, "Hello world") == std::vector<int64_t>{15496, 995});
    CHECK(t->eos_id() == 50256);
  }
  {
    auto t = load("llama2");
    CHECK(t->encode("Hello") == std::vector<int64_t>{1, 15043});
    CHECK(t->eos_id() == 2);
  }
  CHECK(load("mistral")->encode("Hello") == std::vector<int64_t>{1, 22557});
  CHECK(plain(*load("phi-2"), "Hello") == std::vector<int64_t>{15496});
  {
    auto t = load("phi-3-mini");
    CHECK(plain(*t, "<|user|>") == std::vector<int64_t>{32010});
    CHECK(plain(*t, "<|assistant|>") == std::vector<int64_t>{32001});
    CHECK(plain(*t, "<|end|>") == std::vector<int64_t>{32007});
  }
  CHECK(plain(*load("falcon"), "<|endoftext|>") == std::vector<int64_t>{11});
  CHECK(plain(*load("pythia"), "<|endoftext|><|padding|>") == std::vector<int64_t>{0, 1});
  CHECK(plain(*load("smollm2"), "<|im_start|><|im_end|>") == std::vector<int64_t>{1, 2});
  {
    auto t = load("deepseek-coder");
    CHECK(t->bos_id() == 32013);
    CHECK(t->eos_id() == 32021);
  }
  {
    auto t = load("opt");
    CHECK(plain(*t, "Hello") == std::vector<int64_t>{31414});
    CHECK(t->eos_id() == 2);
  }
  CHECK(plain(*load("qwen2.5"), "<|endoftext|><|im_start|><|im_end|>") == std::vector<int64_t>{151643, 151644, 151645});
  {
    auto t = load("llama3");
    CHECK(t->bos_id() == 128000);
    CHECK(plain(*t, "<|begin_of_text|><|eot_id|>") == std::vector<int64_t>{128000, 128009});
  }
}

TEST_CASE("real tokenizers: the ids of the swift-transformers reference texts", "[tokenize][shared]") {
  REQUIRE_REAL_TOKENIZERS(dir);
  struct Case {
    std::function<std::unique_ptr<tk::Tokenizer>()> load;
    const char* reference;
  };
  const std::vector<std::pair<std::string, Case>> cases = {
      {"gpt2 tokenizer.json", {[&] { return tk::load_tokenizer(dir / "gpt2"); }, "gpt2/expected_swift_gpt2_encoded_tokens.json"}},
      {"gpt2 vocab.json + merges.txt",
       {[&] { return tk::load_gpt2_bpe(dir / "gpt2" / "vocab.json", dir / "gpt2" / "merges.txt"); },
        "gpt2/expected_swift_gpt2_encoded_tokens.json"}},
      {"gpt2 old hub tokenizer.json",
       {[&] { return tk::load_tokenizer_json(dir / "gpt2" / "tokenizer.hub-format.restored.json"); },
        "gpt2/expected_swift_gpt2_encoded_tokens.json"}},
      {"llama2", {[&] { return tk::load_tokenizer(dir / "llama2"); }, "llama2/expected_swift_llama_encoded.json"}},
      {"falcon", {[&] { return tk::load_tokenizer(dir / "falcon"); }, "falcon/expected_swift_falcon_encoded.json"}},
      {"llama3 tiktoken", {[&] { return tk::load_tokenizer(dir / "llama3"); }, "llama3/expected_swift_llama_3.2_encoded.json"}},
  };
  for (const auto& [name, c] : cases) {
    INFO(name);
    const json ref = read_json(dir / c.reference);
    const auto tok = c.load();
    const auto ids = tok->encode(ref.at("text").get<std::string>());
    require_same_ids(ids, ref.at("token_ids").get<std::vector<int64_t>>(), name);
    CHECK(tok->decode(ids) == ref.at("text").get<std::string>());
  }
}

TEST_CASE("real tokenizers: the 30 multilingual texts give transformers' ids", "[tokenize][shared]") {
  REQUIRE_REAL_TOKENIZERS(dir);
  const json inputs = read_json(dir / "expected_multilingual_inputs.json").at("inputs");
  REQUIRE(inputs.size() == 30);
  const std::vector<std::tuple<std::string, std::function<std::unique_ptr<tk::Tokenizer>()>, std::string>> cases = {
      {"gpt2 tokenizer.json", [&] { return tk::load_tokenizer(dir / "gpt2"); },
       "gpt2/expected_multilingual_openai-community__gpt2.json"},
      {"gpt2 vocab.json + merges.txt",
       [&] { return tk::load_gpt2_bpe(dir / "gpt2" / "vocab.json", dir / "gpt2" / "merges.txt"); },
       "gpt2/expected_multilingual_openai-community__gpt2.json"},
      {"llama2 (TinyLlama's vocabulary)", [&] { return tk::load_tokenizer(dir / "llama2"); },
       "llama2/expected_multilingual_TinyLlama__TinyLlama-1.1B-Chat-v1.0.json"},
      {"qwen2.5 vocab.json + merges.txt", [&] { return tk::load_tokenizer(dir / "qwen2.5"); },
       "qwen2.5/expected_multilingual_Qwen__Qwen2.5-0.5B.json"},
  };
  for (const auto& [name, load, reference] : cases) {
    const auto tok = load();
    const json want = read_json(dir / reference).at("entries");
    for (const auto& input : inputs) {
      const std::string id = input.at("id").get<std::string>();
      require_same_ids(tok->encode(input.at("text").get<std::string>()),
                       want.at(id).at("input_ids").get<std::vector<int64_t>>(), name + ": " + id);
    }
  }
}

TEST_CASE("real tokenizers: wikitext-2 and the torture text against the tokenizer_reference fixtures",
          "[tokenize][shared][slow]") {
  REQUIRE_REAL_TOKENIZERS(dir);
  const fs::path fixtures = cur4llm::test::fixture_dir() / "tokenizer_reference";
  if (!fs::is_directory(fixtures)) {
    WARN("SKIPPED: tests/data/tokenizer_reference not present (written by scripts/tokenizer_reference.py)");
    return;
  }
  const auto shared = cur4llm::test::shared_data_dir();
  const std::string torture = cur4llm::io::read_file(cur4llm::test::fixture_dir() / "text" / "tokenizer_torture.txt");
  const fs::path wiki_path = *shared / "text" / "wikitext-2-raw" / "wiki.test.raw";
  const std::string wiki = fs::is_regular_file(wiki_path) ? cur4llm::io::read_file(wiki_path) : std::string();
  size_t compared = 0;
  for (const auto& entry : fs::directory_iterator(fixtures)) {
    if (entry.path().extension() != ".json") continue;
    const json ref = read_json(entry.path());
    const std::string name = ref.at("name").get<std::string>();
    INFO(entry.path().filename().string());
    std::unique_ptr<tk::Tokenizer> tok;
    const fs::path folder = dir / ref.at("folder").get<std::string>();
    const std::string loader = ref.at("loader").get<std::string>();
    // "opt_bpe": OPT's folder (vocab.json + merges.txt, "</s>" before the text), which the reference
    // rebuilds with tokenizers' BPE because transformers 5 has no slow GPT-2 tokenizer.
    if (loader == "folder" || loader == "opt_bpe") tok = tk::load_tokenizer(folder);
    else if (loader == "vocab_merges") tok = tk::load_gpt2_bpe(folder / "vocab.json", folder / "merges.txt");
    else tok = tk::load_tokenizer_json(folder / loader);
    const json& lines = ref.at("torture_lines");
    std::istringstream in(torture);
    std::string line;
    for (size_t i = 0; std::getline(in, line); ++i) {
      REQUIRE(i < lines.size());
      require_same_ids(plain(*tok, line), lines[i].get<std::vector<int64_t>>(), name + ": torture line " + std::to_string(i + 1));
    }
    require_same_ids(tok->encode(torture), ref.at("torture").get<std::vector<int64_t>>(), name + ": whole torture text");
    if (!wiki.empty()) {
      const json& w = ref.at("wikitext2_test");
      const auto ids = tok->encode(wiki);
      const size_t chunk = w.at("chunk").get<size_t>();
      const auto& hashes = w.at("chunk_fnv1a");
      for (size_t c = 0; c * chunk < ids.size() && c < hashes.size(); ++c) {
        INFO(name << ": wikitext-2 test, ids " << c * chunk << " to " << std::min(ids.size(), (c + 1) * chunk));
        REQUIRE(fnv1a_ids(ids, c * chunk, std::min(ids.size(), (c + 1) * chunk)) == hashes[c].get<std::string>());
      }
      CHECK(ids.size() == w.at("count").get<size_t>());
    }
    ++compared;
  }
  CHECK(compared > 0);
}

TEST_CASE("NFC normalizer: composition, ordering of marks, Hangul, singletons and exclusions", "[tokenize]") {
  // A tokenizer.json whose model sees the normalized text as one word: each id names one code point.
  const fs::path dir = fs::path(CUR4LLM_TEST_WORK_DIR) / "nfc_tokenizer";
  fs::create_directories(dir);
  const json vocab = {{"\u00e9", 0},       {"e", 1},         {"\u0301", 2},  {"\uac00", 3},  {"\uac01", 4},
                      {"\u1100", 5},       {"\u1161", 6},    {"\u11a8", 7},  {"\u00c5", 8},  {"\u03a9", 9},
                      {"\u0915", 10},      {"\u093c", 11},   {"\u1ead", 12}, {"a", 13},      {"\u0323", 14},
                      {"\u0302", 15},      {"\u0958", 16},   {"\u212b", 17}};
  const json spec = {{"normalizer", {{"type", "NFC"}}},
                     {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}}};
  std::ofstream(dir / "tokenizer.json") << spec.dump();
  const auto tok = tk::load_tokenizer_json(dir / "tokenizer.json");
  using ids = std::vector<int64_t>;
  CHECK(plain(*tok, "e\u0301") == ids{0});                  // e + combining acute -> U+00E9
  CHECK(plain(*tok, "\u00e9") == ids{0});                   // already composed
  CHECK(plain(*tok, "\u1100\u1161") == ids{3});             // Hangul L + V -> U+AC00
  CHECK(plain(*tok, "\u1100\u1161\u11a8") == ids{4});       // L + V + T -> U+AC01
  CHECK(plain(*tok, "\uac00\u11a8") == ids{4});             // LV + T -> LVT
  CHECK(plain(*tok, "\u212b") == ids{8});                   // ANGSTROM SIGN -> U+00C5 (singleton)
  CHECK(plain(*tok, "\u2126") == ids{9});                   // OHM SIGN -> U+03A9
  CHECK(plain(*tok, "\u0958") == ids{10, 11});              // composition exclusion stays decomposed
  CHECK(plain(*tok, "a\u0323\u0302") == ids{12});           // dot below (220) before circumflex (230)
  CHECK(plain(*tok, "a\u0302\u0323") == ids{12});           // the marks reordered first
  CHECK(plain(*tok, "e\u0301\u0301") == ids{0, 2});         // the second acute is blocked
}

namespace {

std::string base64(const std::string& raw) {
  static const char* const k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < raw.size(); i += 3) {
    uint32_t n = static_cast<unsigned char>(raw[i]) << 16;
    if (i + 1 < raw.size()) n |= static_cast<unsigned char>(raw[i + 1]) << 8;
    if (i + 2 < raw.size()) n |= static_cast<unsigned char>(raw[i + 2]);
    out += k[(n >> 18) & 63];
    out += k[(n >> 12) & 63];
    out += i + 1 < raw.size() ? k[(n >> 6) & 63] : '=';
    out += i + 2 < raw.size() ? k[n & 63] : '=';
  }
  return out;
}

}  // namespace

TEST_CASE("tiktoken rank file: ranks are merge priorities, specials follow the ranks, bad lines named", "[tokenize]") {
  const fs::path dir = fs::path(CUR4LLM_TEST_WORK_DIR) / "tiktoken_small";
  fs::create_directories(dir);
  // Ranks 0..255: the single bytes; then "ab" (256) and "abc" (257).
  std::string text;
  for (int b = 0; b < 256; ++b) text += base64(std::string(1, static_cast<char>(b))) + " " + std::to_string(b) + "\n";
  text += base64("ab") + " 256\n" + base64("abc") + " 257\n";
  std::ofstream(dir / "tokenizer.model", std::ios::binary) << text;
  const auto tok = tk::load_tokenizer(dir);  // a tiktoken tokenizer.model, not a SentencePiece one
  CHECK(tok->vocab_size() == 258 + 256);
  CHECK(tok->bos_id() == 258);
  CHECK(tok->encode("abc") == std::vector<int64_t>{258, 257});
  CHECK(plain(*tok, "abd") == std::vector<int64_t>{256, 'd'});
  CHECK(plain(*tok, "ba c") == std::vector<int64_t>{'b', 'a', ' ', 'c'});
  CHECK(plain(*tok, "<|eot_id|>") == std::vector<int64_t>{258 + 9});
  CHECK(tok->decode(tok->encode("abc abd")) == "abc abd");

  auto refused = [&](const std::string& body, const std::string& message) {
    std::ofstream(dir / "bad.model", std::ios::binary) << body;
    CHECK_THROWS_WITH(tk::load_tiktoken(dir / "bad.model"), Catch::Contains(message));
  };
  refused(text + "!!!! 258\n", "line 259: the token is not base64");
  refused(text + base64("xyz") + " 300\n", "line 259: rank 300 where 258 was expected");
  refused(text + base64("ab") + " 258\n", "line 259: the token is listed twice");
  refused(text + base64("xyz") + "\n", "line 259: expected \"base64-token rank\"");
  refused(base64("a") + " 0\n", "fewer than 256 tokens");
}
