// Self-generated calibration samples (data/selfgen.h, docs/data.md "selfgen"):
// the rows they start from, their prompts, the generation, and the pipeline's
// cache of them. tests/data/selfgen is a data folder whose wikitext-2-raw train
// split is a short hand-written text in the WikiText layout.

#include <cur4llm/data/selfgen.h>
#include <cur4llm/data/text_data.h>
#include <cur4llm/generate/generate.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cur4llm;
using Catch::Matchers::Contains;

namespace {

const fs::path kDataDir = test::fixture_dir() / "selfgen";
const fs::path kTinyOpt = test::model_dir("tiny-shakespeare-opt");

// The usable rows of the fixture's train split and the first 50 code points of each, stripped
// (written out by hand from tests/data/selfgen/wikitext-2-raw/wiki.train.raw).
const std::vector<std::pair<int64_t, std::string>> kPromptTexts = {
    {1, "= Harbour Lights ="},
    {3, "The harbour at Sandmouth was built in 1843 by the "},
    {5, "= = History = ="},
    {7, "Sandmouth 's first pier was a line of oak piles dr"},
    {8, "Caf\xC3\xA9 owners along the quay \xE2\x80\x93 most of them the daug"},
    {10, "= = Lighthouse = ="},
    {12, "A small lighthouse stands at the end of the breakw"},
    {14, "= = = Keepers = = ="},
    {16, "Three families kept the light between 1861 and 195"},
};

data::CalibrationOptions options_of(int64_t n, int64_t seqlen, uint64_t seed) {
  data::CalibrationOptions o;
  o.n_samples = n;
  o.seqlen = seqlen;
  o.seed = seed;
  return o;
}

std::vector<int64_t> first_two(const std::vector<int64_t>& ids) {
  return std::vector<int64_t>(ids.begin(), ids.begin() + std::min<size_t>(2, ids.size()));
}

}  // namespace

TEST_CASE("selfgen: resolved for calibration only, its rows those of wikitext2's train split", "[data][selfgen]") {
  const auto d = data::resolve_dataset("selfgen", data::Purpose::Calibration, kDataDir);
  CHECK(d.selfgen);
  CHECK(d.name == "selfgen:wikitext2:train");
  CHECK(d.format == data::DatasetFile::Format::WikiText);
  CHECK(d.file == kDataDir / "wikitext-2-raw" / "wiki.train.raw");
  CHECK_THROWS_WITH(data::resolve_dataset("selfgen:wikitext2:valid", data::Purpose::Calibration, kDataDir),
                    Contains("wikitext2:valid needs"));
  const auto file = (test::fixture_dir() / "text" / "shakespeare_tail.txt").string();
  CHECK(data::resolve_dataset("selfgen:" + file, data::Purpose::Calibration, kDataDir).format ==
        data::DatasetFile::Format::Plain);
  CHECK_THROWS_WITH(data::resolve_dataset("selfgen", data::Purpose::Evaluation, kDataDir),
                    Contains("selfgen is a calibration source, not an evaluation set"));
  CHECK_THROWS_WITH(data::resolve_dataset("selfgen:alpaca", data::Purpose::Calibration, kDataDir),
                    Contains("not from alpaca"));
  CHECK_THROWS_WITH(data::resolve_dataset("selfgen:selfgen", data::Purpose::Calibration, kDataDir),
                    Contains("not from selfgen"));
  CHECK_THROWS_WITH(data::resolve_dataset("selfgen", data::Purpose::Calibration, kDataDir / "missing"),
                    Contains("wikitext2:train needs"));

  const auto rows = data::load_rows("selfgen", data::Purpose::Calibration, kDataDir);
  REQUIRE(rows.size() == 18);
  CHECK(rows[0].empty());  // a blank line is an empty row
  CHECK(rows[1] == " = Harbour Lights = \n");
  CHECK(rows[2].empty());
  // The text (which the cache key fingerprints) is the rows joined, as for wikitext2 itself.
  const auto text = data::load_text("selfgen", data::Purpose::Calibration, kDataDir);
  CHECK(text.text == data::load_text("wikitext2", data::Purpose::Calibration, kDataDir).text);
  CHECK(text.text.rfind("\n\n = Harbour Lights = \n\n\n\n\n The harbour at Sandmouth", 0) == 0);
  // A plain file's rows are its lines; alpaca has none.
  const auto lines = data::load_rows(file, data::Purpose::Calibration, kDataDir);
  REQUIRE(lines.size() > 3);
  CHECK(lines[0].back() == '\n');
  CHECK_THROWS_AS(data::load_rows("alpaca:" + (test::fixture_dir() / "text" / "alpaca_mini.json").string(),
                                  data::Purpose::Calibration, kDataDir),
                  std::invalid_argument);
}

TEST_CASE("selfgen: prompts are the first 2 tokens of the first 50 characters of the rows that have 2", "[data][selfgen]") {
  const auto tok = tokenize::load_tokenizer(kTinyOpt);
  REQUIRE(tok->adds_bos());
  const auto rows = data::load_rows("selfgen", data::Purpose::Calibration, kDataDir);
  const auto prompts = data::selfgen_prompts(rows, *tok, options_of(9, 64, 233));
  REQUIRE(prompts.size() == kPromptTexts.size());
  for (size_t k = 0; k < prompts.size(); ++k) {
    INFO(k);
    CHECK(data::count_code_points(kPromptTexts[k].second) <= 50);
    CHECK(prompts[k].row == kPromptTexts[k].first);
    const auto expected = tok->encode(kPromptTexts[k].second);
    REQUIRE(expected.size() >= 2);
    CHECK(prompts[k].ids == first_two(expected));
    CHECK(prompts[k].ids[0] == *tok->bos_id());  // this tokenizer puts BOS first
  }
  // Fewer samples take the first rows only; more than the rows give is refused.
  const auto three = data::selfgen_prompts(rows, *tok, options_of(3, 64, 233));
  REQUIRE(three.size() == 3);
  CHECK(three[2].row == 5);
  CHECK_THROWS_WITH(data::selfgen_prompts(rows, *tok, options_of(10, 64, 233)),
                    Contains("n_calib_samples is 10, but only 9 of the 18 rows give 2 tokens"));
  // A row of one token ("a") is kept when the tokenizer puts BOS first; a blank row never is.
  const std::vector<std::string> short_rows = {"\n", " a \n", "The harbour\n"};
  CHECK(data::selfgen_prompts(short_rows, *tok, options_of(1, 64, 233))[0].row == 1);
}

TEST_CASE("selfgen: with a tokenizer that adds no BOS, one-token rows are skipped unless use_bos", "[data][selfgen]") {
  // tiny-shakespeare-opt's tokenizer without the template that puts BOS first.
  test::TempDir tmp("cur4llm_selfgen_tok");
  auto json = nlohmann::json::parse(io::read_file(kTinyOpt / "tokenizer.json"));
  json["post_processor"] = nullptr;
  io::write_file_atomic(tmp / "tokenizer.json", json.dump());
  fs::copy_file(kTinyOpt / "tokenizer_config.json", tmp / "tokenizer_config.json");
  const auto tok = tokenize::load_tokenizer(tmp.path);
  REQUIRE_FALSE(tok->adds_bos());
  REQUIRE(tok->bos_id());
  const std::vector<std::string> rows = {"\n", " a \n", "The harbour\n"};
  REQUIRE(tok->encode("a").size() == 1);
  auto o = options_of(1, 64, 233);
  const auto plain = data::selfgen_prompts(rows, *tok, o);
  CHECK(plain[0].row == 2);
  CHECK(plain[0].ids == first_two(tok->encode("The harbour")));
  o.use_bos = true;
  const auto with_bos = data::selfgen_prompts(rows, *tok, o);
  CHECK(with_bos[0].row == 1);
  CHECK(with_bos[0].ids == std::vector<int64_t>{*tok->bos_id(), tok->encode("a")[0]});
}

TEST_CASE("selfgen: stories260K (LLaMA, SentencePiece): samples start with <s> and the row's first token", "[data][selfgen]") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const fs::path folder = shared / "models" / "stories260K-hf";
  const auto tok = tokenize::load_tokenizer(folder);
  const auto lm = model::CausalLM::load(folder);
  const auto rows = data::load_rows("selfgen", data::Purpose::Calibration, kDataDir);
  const auto samples = data::sample_selfgen(*lm, *tok, rows, options_of(4, 48, 233));
  REQUIRE(samples.size() == 4);
  for (size_t k = 0; k < samples.size(); ++k) {
    INFO(k);
    CHECK(samples[k].size() == 48);
    CHECK(samples[k][0] == 1);  // <s>
    CHECK(first_two(samples[k]) == first_two(tok->encode(kPromptTexts[k].second)));
  }
  CHECK(data::sample_selfgen(*lm, *tok, rows, options_of(4, 48, 233)) == samples);
}

TEST_CASE("selfgen: samples are the prompts continued by the model, seqlen tokens, reproducible by seed", "[data][selfgen]") {
  const auto lm = model::CausalLM::load(kTinyOpt);
  const auto tok = tokenize::load_tokenizer(kTinyOpt);
  const auto rows = data::load_rows("selfgen", data::Purpose::Calibration, kDataDir);
  const auto o = options_of(5, 40, 233);
  const auto samples = data::sample_selfgen(*lm, *tok, rows, o);
  REQUIRE(samples.size() == 5);
  const auto prompts = data::selfgen_prompts(rows, *tok, o);
  for (size_t k = 0; k < samples.size(); ++k) {
    INFO(k);
    CHECK(samples[k].size() == 40);
    CHECK(first_two(samples[k]) == first_two(tok->encode(kPromptTexts[k].second)));
    for (int64_t id : samples[k]) CHECK((id >= 0 && id < lm->config().vocab_size));
  }
  // Each sample is what sampling at temperature 1 gives its prompt alone, with the row's seed,
  // generating on past end-of-sequence tokens.
  generate::GenerateOptions g;
  g.max_new_tokens = 38;
  g.temperature = 1;
  g.stop_at_eos = false;
  for (size_t k : {size_t{0}, size_t{4}}) {
    g.seed = data::selfgen_row_seed(233, prompts[k].row);
    const auto alone = generate::generate(*lm, {prompts[k].ids}, g).sequences[0];
    std::vector<int64_t> expected = prompts[k].ids;
    expected.insert(expected.end(), alone.tokens.begin(), alone.tokens.end());
    CHECK(samples[k] == expected);
  }
  // Not greedy decoding: sampled tokens differ from the argmax ones somewhere.
  generate::GenerateOptions greedy;
  greedy.max_new_tokens = 38;
  greedy.stop_at_eos = false;
  const auto argmax = generate::generate(*lm, {prompts[0].ids}, greedy).sequences[0].tokens;
  CHECK(std::vector<int64_t>(samples[0].begin() + 2, samples[0].end()) != argmax);

  // The same seed gives the same samples, whatever the batch; another seed others, from the same prompts.
  data::SelfGenOptions one_at_a_time;
  one_at_a_time.batch_size = 1;
  CHECK(data::sample_selfgen(*lm, *tok, rows, o, one_at_a_time) == samples);
  data::SelfGenOptions pairs;
  pairs.batch_size = 2;
  CHECK(data::sample_selfgen(*lm, *tok, rows, o, pairs) == samples);
  const auto other = data::sample_selfgen(*lm, *tok, rows, options_of(5, 40, 234));
  REQUIRE(other.size() == 5);
  for (size_t k = 0; k < 5; ++k) {
    INFO(k);
    CHECK(first_two(other[k]) == first_two(samples[k]));
    CHECK(other[k] != samples[k]);
  }
  CHECK(data::selfgen_row_seed(233, 1) != data::selfgen_row_seed(233, 3));
  CHECK(data::selfgen_row_seed(233, 3) != data::selfgen_row_seed(234, 3));

  // seqlen: more than the 2 prompt tokens, within the model's context (256).
  CHECK_THROWS_WITH(data::sample_selfgen(*lm, *tok, rows, options_of(2, 2, 233)),
                    Contains("seqlen must be more than the 2 prompt tokens"));
  CHECK_THROWS_WITH(data::sample_selfgen(*lm, *tok, rows, options_of(2, 257, 233)),
                    Contains("seqlen 257 is longer than the model's context of 256 tokens"));
  CHECK(data::sample_selfgen(*lm, *tok, rows, options_of(1, 256, 233))[0].size() == 256);
}

TEST_CASE("selfgen: the pipeline caches the samples under a key that names the model", "[data][selfgen][pipeline]") {
  test::TempDir tmp("cur4llm_selfgen");
  const auto lm = model::CausalLM::load(kTinyOpt);
  const auto tok = tokenize::load_tokenizer(kTinyOpt);
  pipeline::PipelineOptions o;
  o.calib_dataset = "selfgen";
  o.data_dir = kDataDir;
  o.n_calib_samples = 4;
  o.seqlen = 24;
  o.use_cache = true;
  o.cache_dir = tmp / "cache";
  o.show_progress = false;
  const auto samples = pipeline::calibration_samples(*lm, *tok, o);
  REQUIRE(samples.size() == 4);
  const auto rows = data::load_rows("selfgen", data::Purpose::Calibration, kDataDir);
  data::CalibrationOptions copts = options_of(4, 24, 233);
  CHECK(samples == data::sample_selfgen(*lm, *tok, rows, copts));

  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(o.cache_dir)) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  std::map<std::string, std::string> meta;
  {
    io::SafetensorsFile f(files[0]);
    meta = f.metadata();
  }
  CHECK(meta.at("key.calib_dataset") == "selfgen");
  CHECK(meta.count("key.model_fingerprint") == 1);
  CHECK(meta.at("key.model") == fs::absolute(kTinyOpt).lexically_normal().string());
  // Rewrite the cached file with a marked sample under the same key: the second call reads it.
  meta.erase(io::kDataChecksumKey);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (size_t i = 0; i < samples.size(); ++i) {
    auto ids = samples[i];
    if (i == 0) ids.back() = 7;
    tensors.emplace_back("sample." + std::to_string(i), at::tensor(ids, at::kLong));
  }
  io::save_safetensors_checked(files[0], tensors, meta);
  auto marked = samples;
  marked[0].back() = 7;
  REQUIRE(marked != samples);
  CHECK(pipeline::calibration_samples(*lm, *tok, o) == marked);

  // Another seed, or the same weights in another folder, is another key: generated anew.
  auto seed = o;
  seed.seed = 234;
  CHECK(pipeline::calibration_samples(*lm, *tok, seed) != marked);
  const fs::path copy = tmp / "tiny-opt-copy";
  fs::create_directories(copy);
  for (const auto& e : fs::directory_iterator(kTinyOpt)) fs::copy_file(e.path(), copy / e.path().filename());
  const auto lm_copy = model::CausalLM::load(copy);
  CHECK(pipeline::calibration_samples(*lm_copy, *tok, o) == samples);
  size_t count = 0;
  for (const auto& e : fs::directory_iterator(o.cache_dir)) count += e.path().extension() == ".safetensors";
  CHECK(count == 3);
}
