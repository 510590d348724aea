// Tokenizers against ids made by Hugging Face tokenizers / transformers and
// SentencePiece (tests/fixtures/make_fixtures.py).

#include "cur4llm/tokenize/tokenizer.h"

#include "test_paths.h"

#include <cur4llm/io/files.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <optional>
#include <fstream>
#include <set>
#include <sstream>

namespace fs = std::filesystem;
using cur4llm::tokenize::EncodeOptions;
using cur4llm::tokenize::Tokenizer;
using nlohmann::json;

namespace {

const json& reference() {
  static const json ref = [] {
    std::ifstream in(cur4llm::test::fixture_dir() / "reference.json");
    return json::parse(in);
  }();
  return ref.at("tokenizers");
}

std::vector<int64_t> read_u16(const std::string& name, const std::string& key) {
  const std::string bytes = cur4llm::io::read_file(cur4llm::test::fixture_dir() / "tokenizers" / name);
  std::vector<int64_t> ids(bytes.size() / 2);
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<unsigned char>(bytes[2 * i]) | (static_cast<unsigned char>(bytes[2 * i + 1]) << 8);
  REQUIRE(static_cast<int64_t>(ids.size()) == reference().at(key).at("count").get<int64_t>());
  return ids;
}

std::vector<int64_t> no_special(const Tokenizer& tok, const std::string& text) {
  EncodeOptions options;
  options.add_special_tokens = false;
  return tok.encode(text, options);
}

// First index where the two differ, for readable failures on long id lists.
void require_same_ids(const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  INFO("got " << got.size() << " ids, want " << want.size() << ", first difference at " << i);
  REQUIRE(got == want);
}

// A fresh empty folder under the build's temp dir.
fs::path temp_folder(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("cur4llm_test_tokenize_" + name);
  cur4llm::io::remove_tree(dir);
  fs::create_directories(dir);
  return dir;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

template <typename Exception>
void require_throws_mentioning(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    FAIL("no exception");
  } catch (const Exception& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find('\n') == std::string::npos);
    for (const auto& p : parts) CHECK(what.find(p) != std::string::npos);
  }
}

const fs::path& stories_json_dir() {
  static const fs::path dir = cur4llm::test::fixture_dir() / "tokenizers" / "stories260K";
  return dir;
}
const fs::path& llama3_json() {
  static const fs::path file = cur4llm::test::fixture_dir() / "tokenizers" / "bpe_llama3_style" / "tokenizer.json";
  return file;
}

}  // namespace

// ------------------------------------------------------------ GPT-2 (shared)

TEST_CASE("gpt2 vocab.json+merges.txt: tricky texts", "[unit][tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  const auto dir = data / "tokenizers" / "gpt2";
  auto tok = cur4llm::tokenize::load_gpt2_bpe(dir / "vocab.json", dir / "merges.txt");
  const auto& texts = reference().at("tricky_texts");
  const auto& want = reference().at("gpt2_tricky");
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    INFO("text " << i << ": " << text);
    CHECK(tok->encode(text) == want[i].get<std::vector<int64_t>>());
    CHECK(tok->decode(tok->encode(text)) == text);
  }
  CHECK_FALSE(tok->adds_bos());
  CHECK(tok->vocab_size() == 50257);
  CHECK(tok->eos_id() == 50256);
}

TEST_CASE("gpt2 vocab.json+merges.txt: the whole wikitext-2 test file", "[tokenize][slow]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  const auto dir = data / "tokenizers" / "gpt2";
  auto tok = cur4llm::tokenize::load_gpt2_bpe(dir / "vocab.json", dir / "merges.txt");
  const std::string wiki = cur4llm::io::read_file(data / "text" / "wikitext-2-raw" / "wiki.test.raw");
  const auto t0 = std::chrono::steady_clock::now();
  const auto ids = tok->encode(wiki);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("gpt2 encode of wiki.test.raw (" << wiki.size() << " bytes, " << ids.size() << " ids): " << seconds << " s");
  require_same_ids(ids, read_u16("gpt2_wiki_test.u16", "gpt2_wiki_test"));
  CHECK(tok->decode(ids) == wiki);
}

// ---------------------------------------------------------- stories260K

TEST_CASE("stories260K tokenizer.json: tricky texts equal transformers", "[unit][tokenize]") {
  auto tok = cur4llm::tokenize::load_tokenizer(stories_json_dir());
  CHECK(tok->describe().find("tokenizer.json") != std::string::npos);
  const auto& texts = reference().at("tricky_texts");
  const auto& want = reference().at("stories_json_tricky");
  const auto& want_hf = reference().at("hf_stories_tricky");
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    INFO("text " << i << ": " << text);
    const auto ids = tok->encode(text);
    CHECK(ids == want[i].get<std::vector<int64_t>>());
    CHECK(ids == want_hf[i].get<std::vector<int64_t>>());
  }
  CHECK(tok->adds_bos());
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  CHECK(tok->vocab_size() == 512);
  CHECK(tok->decode(tok->encode("Once upon a time, there was a little girl named Lily.")) ==
        "Once upon a time, there was a little girl named Lily.");
  CHECK(tok->decode(tok->encode("café 中文 🙂")) == "café 中文 🙂");  // through byte fallback
}

TEST_CASE("stories260K tokenizer.json: tinystories eval equals transformers", "[tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  auto tok = cur4llm::tokenize::load_tokenizer_json(stories_json_dir() / "tokenizer.json",
                                                   stories_json_dir() / "tokenizer_config.json");
  const std::string text = cur4llm::io::read_file(data / "text" / "tinystories" / "tinystories_eval.txt");
  require_same_ids(tok->encode(text), read_u16("hf_stories_eval.u16", "hf_stories_eval"));
}

TEST_CASE("stories260K tokenizer.model: libsentencepiece ids", "[tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  const auto dir = data / "models" / "stories260K-hf";
  auto tok = cur4llm::tokenize::load_tokenizer(dir);  // tokenizer.model + tokenizer_config.json
  CHECK(tok->describe().find("SentencePiece") != std::string::npos);
  CHECK(tok->adds_bos());
  CHECK(tok->bos_id() == 1);
  CHECK(tok->eos_id() == 2);
  const auto& texts = reference().at("tricky_texts");
  const auto& want = reference().at("sp_tricky");
  for (size_t i = 0; i < texts.size(); ++i) {
    INFO("text " << i);
    CHECK(no_special(*tok, texts[i].get<std::string>()) == want[i].get<std::vector<int64_t>>());
  }
  const std::string text = cur4llm::io::read_file(data / "text" / "tinystories" / "tinystories_eval.txt");
  auto want_ids = read_u16("sp_stories_eval.u16", "sp_stories_eval");
  want_ids.insert(want_ids.begin(), 1);
  require_same_ids(tok->encode(text), want_ids);
  CHECK(tok->decode(tok->encode("Once upon a time, there was a girl.")) == "Once upon a time, there was a girl.");
}

// ------------------------------------------------------- LLaMA-3 style BPE

TEST_CASE("bpe_llama3_style: tricky texts with and without special tokens", "[unit][tokenize]") {
  auto tok = cur4llm::tokenize::load_tokenizer_json(llama3_json());
  const auto& texts = reference().at("bpe_llama3_texts");
  const auto& want = reference().at("bpe_llama3_tricky");
  const auto& want_plain = reference().at("bpe_llama3_tricky_no_special");
  REQUIRE(texts.size() == want.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    INFO("text " << i << ": " << text);
    CHECK(tok->encode(text) == want[i].get<std::vector<int64_t>>());
    CHECK(no_special(*tok, text) == want_plain[i].get<std::vector<int64_t>>());
  }
  CHECK(tok->adds_bos());
  CHECK(tok->bos_id() == 0);
  CHECK(tok->vocab_size() == 601);
}

TEST_CASE("bpe_llama3_style: special tokens are split out before pre-tokenization", "[unit][tokenize]") {
  auto tok = cur4llm::tokenize::load_tokenizer_json(llama3_json());
  const auto ids = no_special(*tok, "<|begin_of_text|>Hi<|eot_id|> there<|end_of_text|>");
  CHECK(ids == std::vector<int64_t>{0, 41, 74, 600, 514, 1});
  // Specials are skipped by decode; the rest round-trips.
  CHECK(tok->decode(ids) == "Hi there");
  const std::string text = "line one\nline two\n\n\nthree\t\ttabs";
  CHECK(tok->decode(tok->encode(text)) == text);
}

TEST_CASE("bpe_llama3_style: head of wikitext-2 test", "[tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  auto tok = cur4llm::tokenize::load_tokenizer_json(llama3_json());
  const std::string wiki = cur4llm::io::read_file(data / "text" / "wikitext-2-raw" / "wiki.test.raw");
  // The first 200000 code points.
  size_t bytes = 0;
  for (size_t cps = 0; cps < 200000 && bytes < wiki.size(); ++cps) {
    auto c = static_cast<unsigned char>(wiki[bytes]);
    bytes += c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : 4;
  }
  require_same_ids(no_special(*tok, wiki.substr(0, bytes)),
                   read_u16("bpe_llama3_wiki_head.u16", "bpe_llama3_wiki_head"));
}

// --------------------------------------------------- folders and configs

TEST_CASE("load_tokenizer: tokenizer.json before tokenizer.model before vocab.json", "[unit][tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  const auto gpt2 = data / "tokenizers" / "gpt2";
  const auto sp_model = data / "models" / "stories260K-hf" / "tokenizer.model";
  const auto dir = temp_folder("order");
  fs::copy_file(gpt2 / "vocab.json", dir / "vocab.json");
  fs::copy_file(gpt2 / "merges.txt", dir / "merges.txt");
  CHECK(cur4llm::tokenize::load_tokenizer(dir)->describe().find("vocab.json") != std::string::npos);
  fs::copy_file(sp_model, dir / "tokenizer.model");
  CHECK(cur4llm::tokenize::load_tokenizer(dir)->describe().find("SentencePiece") != std::string::npos);
  fs::copy_file(stories_json_dir() / "tokenizer.json", dir / "tokenizer.json");
  CHECK(cur4llm::tokenize::load_tokenizer(dir)->describe().find("tokenizer.json") != std::string::npos);
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("load_tokenizer: tokenizer_config.json decides BOS and EOS", "[unit][tokenize]") {
  const auto dir = temp_folder("bos");
  fs::copy_file(stories_json_dir() / "tokenizer.json", dir / "tokenizer.json");
  // No config: the post-processor's template adds BOS.
  CHECK(cur4llm::tokenize::load_tokenizer(dir)->encode("a") == std::vector<int64_t>{1, 261});
  write_text(dir / "tokenizer_config.json", R"({"add_bos_token": false})");
  auto no_bos = cur4llm::tokenize::load_tokenizer(dir);
  CHECK_FALSE(no_bos->adds_bos());
  CHECK(no_bos->encode("a") == std::vector<int64_t>{261});
  write_text(dir / "tokenizer_config.json", R"({"add_bos_token": true, "add_eos_token": true, "eos_token": "</s>"})");
  auto both = cur4llm::tokenize::load_tokenizer(dir);
  CHECK(both->adds_bos());
  CHECK(both->encode("a") == std::vector<int64_t>{1, 261, 2});
  CHECK(no_special(*both, "a") == std::vector<int64_t>{261});
  // The LLaMA-3 style template has BOS; the config turns it off.
  const auto dir3 = temp_folder("bos3");
  fs::copy_file(llama3_json(), dir3 / "tokenizer.json");
  write_text(dir3 / "tokenizer_config.json", R"({"add_bos_token": false, "bos_token": "<|begin_of_text|>"})");
  CHECK(cur4llm::tokenize::load_tokenizer(dir3)->encode("a") == std::vector<int64_t>{66});
  cur4llm::io::remove_tree(dir);
  cur4llm::io::remove_tree(dir3);
}

TEST_CASE("load_tokenizer: tokenizer.model honours add_bos_token / add_eos_token", "[unit][tokenize]") {
  CUR4LLM_REQUIRE_SHARED_DATA(data);
  const auto dir = temp_folder("sp");
  fs::copy_file(data / "models" / "stories260K-hf" / "tokenizer.model", dir / "tokenizer.model");
  auto plain = cur4llm::tokenize::load_tokenizer(dir);  // no config: LLaMA's default BOS
  CHECK(plain->adds_bos());
  CHECK(plain->encode("a") == std::vector<int64_t>{1, 261});
  write_text(dir / "tokenizer_config.json", R"({"add_bos_token": false, "add_eos_token": true})");
  auto eos = cur4llm::tokenize::load_tokenizer(dir);
  CHECK_FALSE(eos->adds_bos());
  CHECK(eos->encode("a") == std::vector<int64_t>{261, 2});
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("load_tokenizer: bad inputs give clear errors", "[unit][tokenize]") {
  using cur4llm::tokenize::load_tokenizer;
  using cur4llm::tokenize::load_tokenizer_json;
  const auto dir = temp_folder("bad");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir / "missing"); }, {"missing"});
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {dir.string(), "tokenizer.json", "tokenizer.model"});
  // vocab.json without merges.txt is not enough.
  write_text(dir / "vocab.json", R"({"a": 0})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {dir.string()});

  write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": )");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "malformed JSON"});

  write_text(dir / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "model.type", "Unigram"});
  write_text(dir / "tokenizer.json", R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"model.type", "WordPiece"});

  write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "model.merges"});

  write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "merge 0"});

  write_text(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "BertPreTokenizer"}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"pre_tokenizer.type", "BertPreTokenizer"});

  write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  write_text(dir / "tokenizer_config.json", R"({"add_bos_token": "yes"})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer_config.json", "add_bos_token"});
  write_text(dir / "tokenizer_config.json", "{ not json");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer_config.json", "malformed JSON"});

  require_throws_mentioning<std::runtime_error>(
      [&] { cur4llm::tokenize::load_sentencepiece(dir / "nope.model"); }, {"nope.model"});
  write_text(dir / "broken.model", "not a protobuf");
  require_throws_mentioning<std::runtime_error>(
      [&] { cur4llm::tokenize::load_sentencepiece(dir / "broken.model"); }, {"broken.model"});

  auto tok = load_tokenizer_json(llama3_json());
  require_throws_mentioning<std::invalid_argument>([&] { tok->decode({100000}); }, {"100000"});
  require_throws_mentioning<std::invalid_argument>([&] { tok->encode(std::string("\xff\xfe")); }, {"UTF-8"});
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("tokenizer.json: legacy LLaMA normalizer and Metaspace prepend_scheme first", "[unit][tokenize]") {
  json root;
  {
    std::ifstream in(stories_json_dir() / "tokenizer.json");
    root = json::parse(in);
  }
  const auto& texts = reference().at("tricky_texts");
  const auto& want = reference().at("stories_json_tricky");
  const auto dir = temp_folder("legacy");

  // Older LLaMA tokenizer.json: normalizer Sequence[Prepend("▁"), Replace(" ", "▁")], no pre-tokenizer.
  json legacy = root;
  legacy["pre_tokenizer"] = nullptr;
  legacy["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})");
  write_text(dir / "tokenizer.json", legacy.dump());
  auto tok = cur4llm::tokenize::load_tokenizer(dir);
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    if (text.empty() || text[0] == ' ') continue;  // Prepend always adds "▁"; Metaspace not before a space
    INFO("text " << i << ": " << text);
    CHECK(tok->encode(text) == want[i].get<std::vector<int64_t>>());
  }
  // Prepend adds "▁" even before a leading space: one more "▁" (id 410) than Metaspace gives.
  auto spaced = want[1].get<std::vector<int64_t>>();
  spaced.insert(spaced.begin() + 1, 410);
  CHECK(tok->encode(texts[1].get<std::string>()) == spaced);
  CHECK(tok->decode(tok->encode("Once upon a time")) == "Once upon a time");

  // prepend_scheme "first": no "▁" for text that follows a special token at the start.
  json first = root;
  first["pre_tokenizer"]["prepend_scheme"] = "first";
  write_text(dir / "tokenizer.json", first.dump());
  auto tok_first = cur4llm::tokenize::load_tokenizer(dir);
  const auto hello = no_special(*tok_first, "Hello world");
  CHECK(hello == std::vector<int64_t>(want[0].begin() + 1, want[0].end()));
  const auto after_bos = no_special(*tok_first, "<s>Hello world");
  REQUIRE_FALSE(after_bos.empty());
  CHECK(after_bos.front() == 1);
  CHECK(std::vector<int64_t>(after_bos.begin() + 1, after_bos.end()) != hello);
  CHECK(tok_first->decode(after_bos) == "Hello world");
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("tokenizer files: bad token ids and deep nesting are refused before any table is built",
          "[unit][tokenize][bad_input]") {
  using cur4llm::tokenize::load_tokenizer;
  const auto dir = temp_folder("bad_ids");
  const std::string merges = R"("merges": [])";
  auto tokenizer_json = [&](const std::string& vocab, const std::string& added) {
    write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": )" + vocab + ", " + merges + "}" +
                                           (added.empty() ? "" : R"(, "added_tokens": )" + added) + "}");
  };
  tokenizer_json(R"({"a": 0, "x": -3})", "");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "model.vocab", "\"x\"", "-3", "negative"});
  tokenizer_json(R"({"a": 0, "b": 0})", "");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "\"a\"", "\"b\"", "same id 0"});
  tokenizer_json(R"({"a": 0, "b": 4000000000000})", "");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "4000000000000", "far beyond"});
  tokenizer_json(R"({"a": 0, "a": 1})", "");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "\"a\" appears twice"});
  tokenizer_json(R"({"a": 0})", R"([{"id": -1, "content": "<s>", "special": true}])");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "added_tokens[0].id", "-1"});
  tokenizer_json(R"({"a": 0})", R"([{"id": 1, "content": "<s>"}, {"id": 1, "content": "</s>"}])");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "added_tokens[1].id", "<s>"});
  tokenizer_json(R"({"a": 0})", R"({"<s>": 1})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "added_tokens", "array"});
  tokenizer_json(R"({"a": 0})", std::string(100000, '[') + std::string(100000, ']'));
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "nest deeper than"});
  write_text(dir / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": "x"}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"tokenizer.json", "model.dropout", "\"x\""});
  write_text(dir / "tokenizer.json",
             R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [], "continuing_subword_prefix": "##"}})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); },
                                                {"tokenizer.json", "model.continuing_subword_prefix", "\"##\""});
  cur4llm::io::remove_tree(dir / "tokenizer.json");

  // GPT-2 vocab.json + merges.txt
  write_text(dir / "merges.txt", "#version: 0.2\n");
  write_text(dir / "vocab.json", R"({"a": 0, "x": -3})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"vocab.json", "\"x\"", "-3"});
  write_text(dir / "vocab.json", R"({"a": 0, "b": 9000000000})");
  require_throws_mentioning<std::runtime_error>([&] { load_tokenizer(dir); }, {"vocab.json", "9000000000", "far beyond"});
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("tokenizer.json: keys tokenizers writes with their default values are accepted", "[unit][tokenize]") {
  json root;
  {
    std::ifstream in(llama3_json());
    root = json::parse(in);
  }
  const auto dir = temp_folder("defaults");
  root["model"]["continuing_subword_prefix"] = "";
  root["model"]["end_of_word_suffix"] = "";
  root["model"]["dropout"] = nullptr;
  write_text(dir / "tokenizer.json", root.dump());
  auto with_defaults = cur4llm::tokenize::load_tokenizer(dir);
  auto plain = cur4llm::tokenize::load_tokenizer_json(llama3_json());
  const std::string text = "Hello world, it's 2024!";
  CHECK(with_defaults->encode(text) == plain->encode(text));
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("tokenizer_config.json naming LlamaTokenizer: transformers 5's Metaspace replaces the file's normalizer",
          "[unit][tokenize]") {
  // stories260K's vocabulary: "a" 412, "▁a" 261, "▁" 410, "▁b" 268, "<s>" 1; no "▁▁".
  json root;
  {
    std::ifstream in(stories_json_dir() / "tokenizer.json");
    root = json::parse(in);
  }
  root["pre_tokenizer"] = nullptr;
  root["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [
      {"type": "Prepend", "prepend": "▁"},
      {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]})");
  const auto dir = temp_folder("llama_class");
  write_text(dir / "tokenizer.json", root.dump());
  using ids = std::vector<int64_t>;
  {
    // No config: the file's normalizer puts "▁" before a leading space and after a special token.
    auto tok = cur4llm::tokenize::load_tokenizer(dir);
    CHECK(no_special(*tok, " a") == ids{410, 261});
    CHECK(no_special(*tok, "<s>a") == ids{1, 261});
  }
  {
    // legacy not given (false): "▁" only at the start of the text, and not twice.
    write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
    auto tok = cur4llm::tokenize::load_tokenizer(dir);
    CHECK(no_special(*tok, "a") == ids{261});
    CHECK(no_special(*tok, " a") == ids{261});
    CHECK(no_special(*tok, "<s>a") == ids{1, 412});
    CHECK(no_special(*tok, "a <s> b") == ids{261, 410, 1, 268});
    CHECK(tok->describe().find("LlamaTokenizer") != std::string::npos);
  }
  {
    write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizerFast", "legacy": true})");
    auto tok = cur4llm::tokenize::load_tokenizer(dir);
    CHECK(no_special(*tok, "<s>a") == ids{1, 261});  // "always": after a special token too
    CHECK(no_special(*tok, " a") == ids{261});
  }
  {
    write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer", "add_prefix_space": false})");
    auto tok = cur4llm::tokenize::load_tokenizer(dir);
    CHECK(no_special(*tok, "a") == ids{412});
    CHECK(no_special(*tok, "a b") == ids{412, 268});
  }
  // A byte-level vocabulary under LlamaTokenizer keeps the file's pipeline (transformers 5 would
  // turn spaces into "▁" and drop what the vocabulary lacks).
  const auto dir3 = temp_folder("llama_class_bytes");
  fs::copy_file(llama3_json(), dir3 / "tokenizer.json");
  write_text(dir3 / "tokenizer_config.json", R"({"tokenizer_class": "LlamaTokenizer"})");
  auto bytes = cur4llm::tokenize::load_tokenizer(dir3);
  const auto& texts = reference().at("bpe_llama3_texts");
  const auto& want_plain = reference().at("bpe_llama3_tricky_no_special");
  for (size_t i = 0; i < texts.size(); ++i) {
    INFO("text " << i);
    CHECK(no_special(*bytes, texts[i].get<std::string>()) == want_plain[i].get<std::vector<int64_t>>());
  }
  cur4llm::io::remove_tree(dir);
  cur4llm::io::remove_tree(dir3);
}

TEST_CASE("tokenizer_config.json naming GPT2Tokenizer: ByteLevel with GPT-2's regex replaces the file's pre-tokenizer",
          "[unit][tokenize]") {
  // "Ġ" is the byte-level form of a space.
  const json root = json::parse(R"({
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
    "model": {"type": "BPE", "vocab": {"Ġ": 0, "1": 1, "2": 2, "Ġ1": 3, "x": 4, "Ġx": 5},
              "merges": ["Ġ 1", "Ġ x"]}})");
  const auto dir = temp_folder("gpt2_class");
  write_text(dir / "tokenizer.json", root.dump());
  using ids = std::vector<int64_t>;
  // The file's Digits step cuts the space from the digits.
  CHECK(no_special(*cur4llm::tokenize::load_tokenizer(dir), "x 12") == ids{4, 0, 1, 2});
  // GPT2Tokenizer has no Digits step: " 12" is one word.
  write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": false})");
  CHECK(no_special(*cur4llm::tokenize::load_tokenizer(dir), "x 12") == ids{4, 3, 2});
  write_text(dir / "tokenizer_config.json", R"({"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": true})");
  CHECK(no_special(*cur4llm::tokenize::load_tokenizer(dir), "x 12") == ids{5, 3, 2});
  cur4llm::io::remove_tree(dir);
}

TEST_CASE("vocab.json + merges.txt: <|endoftext|>, or the config's BOS/EOS, is split out as a special token",
          "[unit][tokenize]") {
  const auto dir = temp_folder("gpt2_specials");
  // Every character of the special tokens, and the tokens themselves.
  write_text(dir / "vocab.json", R"({"<": 0, "|": 1, "e": 2, "n": 3, "d": 4, "o": 5, "f": 6, "t": 7, "x": 8, ">": 9,
                                     "/": 10, "s": 11, "<|endoftext|>": 12, "</s>": 13, "Ġ": 14})");
  write_text(dir / "merges.txt", "#version: 0.2\n");
  using ids = std::vector<int64_t>;
  auto tok = cur4llm::tokenize::load_gpt2_bpe(dir / "vocab.json", dir / "merges.txt");
  CHECK(no_special(*tok, "x<|endoftext|>x") == ids{8, 12, 8});
  CHECK(no_special(*tok, "x <|endoftext|>") == ids{8, 14, 12});
  CHECK(no_special(*tok, "</s>") == ids{0, 10, 11, 9});
  CHECK(tok->decode({8, 12, 8}) == "xx");  // special: skipped
  // A config that names its BOS/EOS (as OPT's does) but lists no added tokens.
  write_text(dir / "tokenizer_config.json", R"({"bos_token": "</s>", "eos_token": "</s>"})");
  auto opt = cur4llm::tokenize::load_tokenizer(dir);
  CHECK(no_special(*opt, "x</s>") == ids{8, 13});
  CHECK(no_special(*opt, "<|endoftext|>").size() == 13);
  cur4llm::io::remove_tree(dir);
}

// ------------------------------------------------- real tokenizer files
namespace {

// tokenizers-real.tar.xz (shared data) unpacked once into the build tree.
std::optional<fs::path> real_tokenizers(const fs::path& shared) {
  if (!fs::is_regular_file(shared / "tokenizers-real.tar.xz")) return std::nullopt;
  const auto dir = cur4llm::test::unpacked_shared_archive("tokenizers-real.tar.xz", "tokenizers/SOURCES.md");
  REQUIRE(dir);
  return *dir / "tokenizers";
}

json read_json(const fs::path& path) {
  std::ifstream in(path);
  REQUIRE(in);
  return json::parse(in);
}

// The multilingual baselines: {id: input_ids} made by transformers, for the shared inputs.
// `unsupported`: inputs whose ids need a feature we lack (named at the call).
void check_multilingual(const Tokenizer& tok, const fs::path& root, const fs::path& baseline,
                        const std::set<std::string>& unsupported = {}) {
  const json inputs = read_json(root / "expected_multilingual_inputs.json").at("inputs");
  const json entries = read_json(baseline).at("entries");
  size_t compared = 0;
  for (const auto& input : inputs) {
    const std::string id = input.at("id").get<std::string>();
    if (!entries.contains(id) || unsupported.count(id)) continue;
    INFO(baseline.filename().string() << ": " << id);
    CHECK(tok.encode(input.at("text").get<std::string>()) == entries.at(id).at("input_ids").get<std::vector<int64_t>>());
    ++compared;
  }
  CHECK(compared + unsupported.size() == inputs.size());
}

}  // namespace

TEST_CASE("real tokenizer files of many families load and give Hugging Face's ids", "[tokenize][real]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto found = real_tokenizers(shared);
  if (!found) {
    WARN("SKIPPED: tokenizers-real.tar.xz not found in the shared data");
    return;
  }
  const fs::path root = *found;
  using cur4llm::tokenize::load_tokenizer;
  using cur4llm::tokenize::load_tokenizer_json;

  // Every family folder loads (tokenizer.json, else tokenizer.model, else vocab.json + merges.txt).
  for (const char* family : {"gpt2", "llama2", "mistral", "phi-2", "phi-3-mini", "falcon", "pythia", "smollm2",
                             "deepseek-coder", "opt", "qwen2.5"}) {
    INFO(family);
    std::unique_ptr<Tokenizer> tok;
    CHECK_NOTHROW(tok = load_tokenizer(root / family));
    if (tok) CHECK(tok->decode(no_special(*tok, "Hello world")) == "Hello world");
  }
  // The other files of a family load on their own too.
  CHECK_NOTHROW(load_tokenizer_json(root / "gpt2" / "tokenizer.hub-format.restored.json"));
  CHECK_NOTHROW(cur4llm::tokenize::load_gpt2_bpe(root / "gpt2" / "vocab.json", root / "gpt2" / "merges.txt"));
  CHECK_NOTHROW(cur4llm::tokenize::load_gpt2_bpe(root / "smollm2" / "vocab.json", root / "smollm2" / "merges.txt"));

  // Reference encodings.
  SECTION("gpt2") {
    const json swift = read_json(root / "gpt2" / "expected_swift_gpt2_encoded_tokens.json");
    for (const char* file : {"tokenizer.json", "tokenizer.hub-format.restored.json"}) {
      INFO(file);
      auto tok = load_tokenizer_json(root / "gpt2" / file, root / "gpt2" / "tokenizer_config.json");
      CHECK(tok->encode(swift.at("text").get<std::string>()) == swift.at("token_ids").get<std::vector<int64_t>>());
      check_multilingual(*tok, root, root / "gpt2" / "expected_multilingual_openai-community__gpt2.json");
    }
    auto legacy = cur4llm::tokenize::load_gpt2_bpe(root / "gpt2" / "vocab.json", root / "gpt2" / "merges.txt");
    check_multilingual(*legacy, root, root / "gpt2" / "expected_multilingual_openai-community__gpt2.json");
  }
  SECTION("llama2") {
    auto tok = load_tokenizer(root / "llama2");
    const json swift = read_json(root / "llama2" / "expected_swift_llama_encoded.json");
    CHECK(tok->encode(swift.at("text").get<std::string>()) == swift.at("token_ids").get<std::vector<int64_t>>());
    check_multilingual(*tok, root, root / "llama2" / "expected_multilingual_TinyLlama__TinyLlama-1.1B-Chat-v1.0.json");
  }
  SECTION("falcon") {
    auto tok = load_tokenizer(root / "falcon");
    const json swift = read_json(root / "falcon" / "expected_swift_falcon_encoded.json");
    CHECK(tok->encode(swift.at("text").get<std::string>()) == swift.at("token_ids").get<std::vector<int64_t>>());
  }
  SECTION("qwen2.5") {
    auto tok = load_tokenizer(root / "qwen2.5");
    // All 30, the two written in decomposed form (Hangul jamo, combining accents) included: NFC composes them.
    check_multilingual(*tok, root, root / "qwen2.5" / "expected_multilingual_Qwen__Qwen2.5-0.5B.json");
  }
}
