// Tests for cur4llm::io: safetensors reading/writing, checkpoints, the
// Hugging Face cache and the small file helpers.
//
// Expected values come from the fixtures written by Hugging Face
// transformers / safetensors (tests/fixtures/make_fixtures.py), from
// reference.json, or from bytes the tests write by hand; never from the code
// under test.

#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/io/files.h>
#include <cur4llm/io/model_folder.h>
#include <cur4llm/io/safetensors.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

namespace fs = std::filesystem;
using cur4llm::io::Checkpoint;
using cur4llm::io::SafetensorsFile;
using cur4llm::io::TensorInfo;
using Catch::Matchers::Contains;

using cur4llm::test::model_dir;
using cur4llm::test::TempDir;

using cur4llm::test::ScopedEnv;

namespace {

// Plain iostreams here, so the tests do not depend on io/files.h.
std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void spit(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  REQUIRE(out.good());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

uint64_t read_le64(const std::string& bytes) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  return v;
}

// A safetensors file assembled by hand: length prefix, header text, data.
std::string raw_file(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

// The real llama_gqa checkpoint split into its header text and data bytes.
struct RealFile {
  std::string header;
  std::string data;
  RealFile() {
    const std::string bytes = slurp(model_dir("llama_gqa") / "model.safetensors");
    const uint64_t n = read_le64(bytes);
    header = bytes.substr(8, n);
    data = bytes.substr(8 + n);
  }
  // The header with `from` replaced once by `to` (which must be present).
  std::string patched(const std::string& from, const std::string& to) const {
    const auto pos = header.find(from);
    REQUIRE(pos != std::string::npos);
    std::string h = header;
    h.replace(pos, from.size(), to);
    return raw_file(h, data);
  }
};

// The message of the exception `fn` throws, which must be exactly of type E.
template <class E, class F>
std::string message_of(F&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    INFO("exception: " << e.what());
    CHECK(std::string(typeid(e).name()) == std::string(typeid(E).name()));
    return e.what();
  }
  FAIL("no exception was thrown");
  return {};
}

float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}


std::vector<std::string> folder_listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

// ---------------------------------------------------------------------------
// Reading the transformers fixtures

TEST_CASE("safetensors: llama_gqa tensors have the dtypes and shapes of its config", "[unit][io]") {
  // config.json: hidden 32, 4 heads, 2 kv heads, head_dim 8, intermediate 48, vocab 128, 2 layers.
  const SafetensorsFile file(model_dir("llama_gqa") / "model.safetensors");
  CHECK(file.names().size() == 3 + 2 * 9);
  CHECK(file.metadata() == (std::map<std::string, std::string>{{"format", "pt"}}));
  const std::vector<std::pair<std::string, std::vector<int64_t>>> expected = {
      {"model.embed_tokens.weight", {128, 32}},
      {"lm_head.weight", {128, 32}},
      {"model.norm.weight", {32}},
      {"model.layers.0.self_attn.q_proj.weight", {32, 32}},
      {"model.layers.0.self_attn.k_proj.weight", {16, 32}},
      {"model.layers.1.self_attn.v_proj.weight", {16, 32}},
      {"model.layers.1.self_attn.o_proj.weight", {32, 32}},
      {"model.layers.1.mlp.gate_proj.weight", {48, 32}},
      {"model.layers.0.mlp.up_proj.weight", {48, 32}},
      {"model.layers.0.mlp.down_proj.weight", {32, 48}},
      {"model.layers.1.input_layernorm.weight", {32}},
      {"model.layers.0.post_attention_layernorm.weight", {32}},
  };
  for (const auto& [name, shape] : expected) {
    INFO(name);
    REQUIRE(file.contains(name));
    CHECK(file.info(name).dtype == "F32");
    CHECK(file.info(name).shape == shape);
    const at::Tensor t = file.load(name);
    CHECK(t.scalar_type() == at::kFloat);
    CHECK(t.device().is_cpu());
    CHECK(t.is_contiguous());
    CHECK(t.sizes().vec() == shape);
  }
  CHECK_FALSE(file.contains("model.layers.2.self_attn.q_proj.weight"));
  // Offsets as the Python safetensors parser reads them.
  CHECK(file.info("lm_head.weight").begin == 0);
  CHECK(file.info("lm_head.weight").end == 16384);
  CHECK(file.info("model.layers.1.self_attn.k_proj.weight").begin == 82432);
  CHECK(file.info("model.layers.1.self_attn.k_proj.weight").end == 84480);
}

TEST_CASE("safetensors: loaded values equal the stored bytes", "[unit][io]") {
  // Bit patterns read from the files with Python's struct module.
  const SafetensorsFile file(model_dir("llama_gqa") / "model.safetensors");
  const at::Tensor lm_head = file.load("lm_head.weight");
  const uint32_t head_bits[4] = {3189564070u, 1013051387u, 981089660u, 3174590418u};
  for (int i = 0; i < 4; ++i) CHECK(lm_head[0][i].item<float>() == bits_to_float(head_bits[i]));
  CHECK(lm_head[0][0].item<float>() == Approx(-0.15320834517478943));

  const at::Tensor k = file.load("model.layers.1.self_attn.k_proj.weight").reshape({-1});
  const uint32_t k_tail[4] = {1032171824u, 1044087607u, 1058039668u, 1055389844u};
  for (int i = 0; i < 4; ++i) CHECK(k[k.numel() - 4 + i].item<float>() == bits_to_float(k_tail[i]));

  const SafetensorsFile bf16(model_dir("llama_gqa_bf16") / "model.safetensors");
  const at::Tensor b = bf16.load("lm_head.weight");
  CHECK(b.scalar_type() == at::kBFloat16);
  const uint16_t b_bits[4] = {48669, 15458, 14970, 48440};
  for (int i = 0; i < 4; ++i) CHECK(b[0][i].item<float>() == bits_to_float(uint32_t(b_bits[i]) << 16));

  const SafetensorsFile fp16(model_dir("opt_pre_fp16") / "model.safetensors");
  const at::Tensor h = fp16.load("model.decoder.embed_tokens.weight");
  CHECK(h.scalar_type() == at::kHalf);
  const uint16_t h_bits[4] = {9662, 13228, 11871, 42164};
  for (int i = 0; i < 4; ++i) {
    at::Tensor one = at::empty({1}, at::TensorOptions().dtype(at::kShort));
    one[0] = static_cast<int16_t>(h_bits[i]);
    CHECK(h[0][i].item<float>() == one.view(at::kHalf)[0].item<float>());
  }
}

TEST_CASE("safetensors: reference outputs have the documented dtypes and values", "[unit][io]") {
  const nlohmann::json summary = nlohmann::json::parse(slurp(cur4llm::test::fixture_dir() / "reference.json"));
  for (const std::string model : {"llama_gqa", "llama_gqa_bf16", "opt_pre_fp16", "qwen2_bias"}) {
    INFO(model);
    const SafetensorsFile ref(model_dir(model) / "reference.safetensors");
    CHECK(ref.info("input_ids").dtype == "I64");
    CHECK(ref.info("input_ids").shape == (std::vector<int64_t>{2, 12}));
    CHECK(ref.info("logits").dtype == "F32");
    CHECK(ref.info("logits").shape == (std::vector<int64_t>{2, 12, 128}));
    CHECK(ref.info("loss").dtype == "F32");
    CHECK(ref.info("loss").shape == std::vector<int64_t>(1, 1));
    const at::Tensor loss = ref.load("loss");
    CHECK(loss.scalar_type() == at::kFloat);
    CHECK(loss.item<float>() == static_cast<float>(summary["models"][model]["loss"].get<double>()));
    CHECK(ref.load("logits").scalar_type() == at::kFloat);
    CHECK(ref.metadata().empty());
  }
  const SafetensorsFile ref(model_dir("llama_gqa") / "reference.safetensors");
  const at::Tensor ids = ref.load("input_ids");
  CHECK(ids.scalar_type() == at::kLong);
  const int64_t expected[24] = {28, 49, 59, 118, 69, 67, 60, 3,   78, 32, 96, 94,
                                82, 85, 16, 20,  74, 126, 45, 60, 126, 60, 58, 102};
  for (int i = 0; i < 24; ++i) CHECK(ids[i / 12][i % 12].item<int64_t>() == expected[i]);
  // File order: the order of the header, which the Python writer chose.
  CHECK(ref.names().front() == "input_ids");
  CHECK(ref.names().back() == "loss");
}

TEST_CASE("checkpoint: the sharded llama_gqa equals model.safetensors bit for bit", "[unit][io]") {
  const Checkpoint single = Checkpoint::open(model_dir("llama_gqa"));
  const Checkpoint sharded = Checkpoint::open(model_dir("llama_gqa_sharded"));
  CHECK(single.describe() == (model_dir("llama_gqa") / "model.safetensors").string());
  CHECK_THAT(sharded.describe(), Contains("llama_gqa_sharded") && Contains("(6 shards)"));
  REQUIRE(sharded.names() == single.names());
  REQUIRE(single.names().size() == 21);
  for (const auto& name : single.names()) {
    INFO(name);
    CHECK(sharded.info(name).dtype == single.info(name).dtype);
    CHECK(sharded.info(name).shape == single.info(name).shape);
    const at::Tensor a = single.load(name);
    const at::Tensor b = sharded.load(name);
    REQUIRE(a.sizes() == b.sizes());
    CHECK(at::equal(a, b));
  }
  // Shard assignment as written in model.safetensors.index.json.
  CHECK(sharded.file_of("lm_head.weight").filename() == "model-00006-of-00006.safetensors");
  CHECK(sharded.file_of("model.embed_tokens.weight").filename() == "model-00001-of-00006.safetensors");
  CHECK(sharded.file_of("model.layers.1.self_attn.k_proj.weight").filename() == "model-00003-of-00006.safetensors");
  CHECK_FALSE(sharded.contains("input_ids"));  // reference.safetensors is not part of the checkpoint
}

TEST_CASE("checkpoint: bf16 and fp16 files hold the fp32 weights rounded", "[unit][io]") {
  const std::vector<std::tuple<std::string, std::string, at::ScalarType, std::string>> pairs = {
      {"llama_gqa", "llama_gqa_bf16", at::kBFloat16, "BF16"},
      {"opt_pre", "opt_pre_fp16", at::kHalf, "F16"},
  };
  for (const auto& [fp32_name, low_name, type, dtype] : pairs) {
    const Checkpoint fp32 = Checkpoint::open(model_dir(fp32_name));
    const Checkpoint low = Checkpoint::open(model_dir(low_name));
    REQUIRE(low.names() == fp32.names());
    for (const auto& name : fp32.names()) {
      INFO(low_name << " " << name);
      CHECK(low.info(name).dtype == dtype);
      const at::Tensor l = low.load(name);
      CHECK(l.scalar_type() == type);
      const at::Tensor rounded = fp32.load(name).to(type);
      REQUIRE(l.sizes() == rounded.sizes());
      CHECK(at::equal(l, rounded));
    }
  }
}

TEST_CASE("checkpoint: falls back to the only *.safetensors file", "[unit][io]") {
  TempDir dir;
  fs::copy_file(model_dir("llama_gqa") / "model.safetensors", dir / "weights.safetensors");
  const Checkpoint ckpt = Checkpoint::open(dir.path);
  CHECK(ckpt.describe() == (dir / "weights.safetensors").string());
  CHECK(ckpt.names().size() == 21);
  CHECK(ckpt.load("model.norm.weight").sizes().vec() == std::vector<int64_t>(1, 32));

  // model.safetensors is preferred over other files beside it.
  fs::copy_file(model_dir("llama_gqa") / "reference.safetensors", dir / "model.safetensors");
  CHECK(Checkpoint::open(dir.path).contains("logits"));

  const Checkpoint one = Checkpoint::open_file(model_dir("llama_gqa") / "reference.safetensors");
  CHECK(one.contains("logits"));
  CHECK(one.file_of("logits") == model_dir("llama_gqa") / "reference.safetensors");
}

TEST_CASE("checkpoint: folders without a checkpoint are errors naming the folder", "[unit][io]") {
  TempDir dir;
  const auto empty = dir / "empty";
  fs::create_directories(empty);
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(empty); }), Contains(empty.string()));

  const auto two = dir / "two";
  fs::create_directories(two);
  fs::copy_file(model_dir("llama_gqa") / "reference.safetensors", two / "a.safetensors");
  fs::copy_file(model_dir("llama_gqa") / "reference.safetensors", two / "b.safetensors");
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(two); }),
             Contains(two.string()) && Contains("a.safetensors") && Contains("b.safetensors"));

  const auto missing = dir / "missing";
  CHECK_THAT(message_of<std::invalid_argument>([&] { Checkpoint::open(missing); }), Contains(missing.string()));

  const Checkpoint ckpt = Checkpoint::open(model_dir("llama_gqa"));
  CHECK_THAT(message_of<std::runtime_error>([&] { ckpt.load("no.such.weight"); }),
             Contains("model.safetensors") && Contains("no.such.weight"));
}

TEST_CASE("checkpoint: an index naming a tensor its shard lacks is an error naming both", "[unit][io]") {
  TempDir dir;
  const auto folder = dir / "sharded";
  fs::copy(model_dir("llama_gqa_sharded"), folder);
  const auto index_path = folder / "model.safetensors.index.json";
  std::string index = slurp(index_path);
  const std::string from = "\"model.norm.weight\": \"model-00005-of-00006.safetensors\"";
  const auto pos = index.find(from);
  REQUIRE(pos != std::string::npos);
  index.replace(pos, from.size(), "\"model.norm.weight\": \"model-00001-of-00006.safetensors\"");
  spit(index_path, index);
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(folder); }),
             Contains("model.norm.weight") && Contains("model-00001-of-00006.safetensors"));

  // A shard file that is missing altogether.
  fs::remove(folder / "model-00001-of-00006.safetensors");
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(folder); }),
             Contains("model-00001-of-00006.safetensors"));

  spit(index_path, "{\"weight_map\": [1, 2]}");
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(folder); }),
             Contains(index_path.string()) && Contains("weight_map"));
  spit(index_path, "{\"weight_map\": {");
  CHECK_THAT(message_of<std::runtime_error>([&] { Checkpoint::open(folder); }), Contains(index_path.string()));
}

TEST_CASE("safetensors: 0-dim and empty tensors in a hand-written file", "[unit][io]") {
  TempDir dir;
  const float pi = 3.25f;
  std::string data(4, '\0');
  std::memcpy(data.data(), &pi, 4);
  const std::string header =
      R"({"scalar":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
      R"("empty":{"dtype":"I64","shape":[0,3],"data_offsets":[4,4]},)"
      R"("flag":{"dtype":"BOOL","shape":[1],"data_offsets":[4,5]},)"
      R"("__metadata__":{"note":"hand made"}})";
  spit(dir / "x.safetensors", raw_file(header, data + std::string(1, '\1')));
  const SafetensorsFile file(dir / "x.safetensors");
  CHECK(file.names() == (std::vector<std::string>{"scalar", "empty", "flag"}));
  CHECK(file.metadata().at("note") == "hand made");
  const at::Tensor s = file.load("scalar");
  CHECK(s.dim() == 0);
  CHECK(s.item<float>() == 3.25f);
  const at::Tensor e = file.load("empty");
  CHECK(e.sizes().vec() == (std::vector<int64_t>{0, 3}));
  CHECK(e.scalar_type() == at::kLong);
  CHECK(file.load("flag").item<bool>());
}

// ---------------------------------------------------------------------------
// Corrupt files: each is rejected at open with an exception naming the file
// (and the tensor, where there is one).

TEST_CASE("safetensors bad input: file shorter than 8 bytes", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "short.safetensors";
  spit(path, slurp(model_dir("llama_gqa") / "model.safetensors").substr(0, 5));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("5 bytes"));
  spit(path, "");
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }), Contains(path.string()));
  const auto absent = dir / "absent.safetensors";
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(absent); }), Contains(absent.string()));
}

TEST_CASE("safetensors bad input: header length past the end of the file", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "cut.safetensors";
  // The real header is 2096 bytes; keep only 2086 of them.
  spit(path, slurp(model_dir("llama_gqa") / "model.safetensors").substr(0, 8 + 2086));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("header length 2096 past the end of the file (size 2094)"));
  // A length so large that adding 8 would overflow.
  spit(path, le64(~uint64_t(0)) + "{}");
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("header length 18446744073709551615 past the end"));
}

TEST_CASE("safetensors bad input: malformed JSON header", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "json.safetensors";
  std::string header = real.header;
  header[header.find_last_of('}')] = ' ';  // unterminated object
  spit(path, raw_file(header, real.data));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("malformed JSON"));
  spit(path, raw_file("[1, 2]  ", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("not an object"));
  spit(path, raw_file("{\"a\": \"\xff\"}", ""));  // not UTF-8
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }), Contains(path.string()));
  spit(path, raw_file(R"({"__metadata__":{"format":1}})", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("__metadata__") && Contains("format"));
}

TEST_CASE("safetensors bad input: entry missing dtype, shape or data_offsets", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "missing.safetensors";
  const std::string data(8, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"dtype", R"({"w.weight":{"shape":[2],"data_offsets":[0,8]}})"},
      {"shape", R"({"w.weight":{"dtype":"F32","data_offsets":[0,8]}})"},
      {"data_offsets", R"({"w.weight":{"dtype":"F32","shape":[2]}})"},
  };
  for (const auto& [key, header] : cases) {
    INFO(key);
    spit(path, raw_file(header, data));
    CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
               Contains(path.string()) && Contains("'w.weight'") && Contains("\"" + key + "\""));
  }
  spit(path, raw_file(R"({"w.weight":[1,2]})", data));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'w.weight'"));
  spit(path, raw_file(R"({"w.weight":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'w.weight'"));
  spit(path, raw_file(R"({"w.weight":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", data));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'w.weight'") && Contains("data_offsets"));
}

TEST_CASE("safetensors bad input: unsupported dtype", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "f8.safetensors";
  spit(path, real.patched(R"("lm_head.weight":{"dtype":"F32")", R"("lm_head.weight":{"dtype":"F8_E4M3")"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("F8_E4M3 is not supported"));
  spit(path, real.patched(R"("lm_head.weight":{"dtype":"F32")", R"("lm_head.weight":{"dtype":"f32")"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("f32 is not supported"));
}

TEST_CASE("safetensors bad input: data_offsets begin after end", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "reversed.safetensors";
  spit(path, real.patched(R"("data_offsets":[0,16384])", R"("data_offsets":[16384,0])"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("[16384, 0]"));
}

TEST_CASE("safetensors bad input: data_offsets end beyond the data section", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "truncated.safetensors";
  // The last tensor, model.norm.weight, ends at 94848: drop its last 4 bytes.
  spit(path, raw_file(real.header, real.data.substr(0, real.data.size() - 4)));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'model.norm.weight'") && Contains("94844 bytes"));
  // Offsets moved past the end of an intact file.
  spit(path, real.patched(R"("data_offsets":[0,16384])", R"("data_offsets":[94848,111232])"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("past the data section"));
}

TEST_CASE("safetensors bad input: byte range does not match dtype and shape", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "size.safetensors";
  spit(path, real.patched(R"("lm_head.weight":{"dtype":"F32","shape":[128,32])",
                          R"("lm_head.weight":{"dtype":"F32","shape":[128,31])"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("16384 bytes") && Contains("15872"));
  // The same bytes read as F16 would be half as many.
  spit(path, real.patched(R"("lm_head.weight":{"dtype":"F32")", R"("lm_head.weight":{"dtype":"F16")"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'"));
  // A shape whose element count overflows 64 bits.
  spit(path, raw_file(R"({"huge":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'huge'"));
}

TEST_CASE("safetensors bad input: negative dimension", "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "negative.safetensors";
  spit(path, real.patched(R"("lm_head.weight":{"dtype":"F32","shape":[128,32])",
                          R"("lm_head.weight":{"dtype":"F32","shape":[-128,-32])"));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'lm_head.weight'") && Contains("negative dimension -128"));
}

TEST_CASE("safetensors bad input: overlapping byte ranges", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "overlap.safetensors";
  spit(path, raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, '\0')));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'a'") && Contains("'b'") && Contains("overlap"));
}

TEST_CASE("safetensors bad input: JSON nested 100,000 deep is refused, not a stack overflow", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "deep.safetensors";
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string deep_object = [] {
    std::string s;
    for (int i = 0; i < 100000; ++i) s += "{\"a\":";
    return s + "1" + std::string(100000, '}');
  }();
  spit(path, raw_file(R"({"__metadata__":{"x":)" + deep + "}}", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("nest deeper than"));
  spit(path, raw_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":)" + deep_object + "}}", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("nest deeper than"));
  // An index file is JSON from the same folder.
  spit(dir / "model.safetensors.index.json", "{\"weight_map\":" + deep + "}");
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::Checkpoint::open(dir.path); }),
             Contains("model.safetensors.index.json") && Contains("nest deeper than"));
}

TEST_CASE("safetensors bad input: a header over the format's 100,000,000 byte limit", "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "big.safetensors";
  const uint64_t length = 100000001;
  spit(path, le64(length) + "{");
  fs::resize_file(path, 8 + length);  // sparse: no 100 MB written
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("header length 100000001 exceeds the format's limit"));
}

TEST_CASE("safetensors bad input: a header length a few bytes short is refused, not read shifted",
          "[unit][io][bad_input]") {
  TempDir dir;
  const RealFile real;
  const auto path = dir / "short_header.safetensors";
  std::string header = real.header;
  while (!header.empty() && header.back() == ' ') header.pop_back();
  header += "    ";  // padding that a shorter length would silently swallow
  for (uint64_t k = 1; k <= 4; ++k) {
    INFO("length " << k << " bytes short");
    spit(path, le64(header.size() - k) + header + real.data);
    CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
               Contains(path.string()) && Contains("the tensors cover 94848 bytes") &&
                   Contains("holds " + std::to_string(94848 + k)));
  }
  spit(path, le64(header.size()) + header + real.data);
  CHECK(SafetensorsFile(path).names().size() == SafetensorsFile(model_dir("llama_gqa") / "model.safetensors").names().size());
}

TEST_CASE("safetensors bad input: gaps, bytes before or after the tensors, and a name listed twice",
          "[unit][io][bad_input]") {
  TempDir dir;
  const auto path = dir / "layout.safetensors";
  spit(path, raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                      std::string(12, '\0')));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'b'") && Contains("gap of 4 bytes") && Contains("'a'"));
  spit(path, raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("'a'") && Contains("gap of 4 bytes"));
  spit(path, raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(6, '\0')));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("cover 4 bytes") && Contains("holds 6"));
  spit(path, raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                      R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                      std::string(4, '\0')));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("\"a\" appears twice"));
  spit(path, raw_file(R"({"__metadata__":{"k":"1","k":"2"}})", ""));
  CHECK_THAT(message_of<std::runtime_error>([&] { SafetensorsFile f(path); }),
             Contains(path.string()) && Contains("\"k\" appears twice"));
}

TEST_CASE("safetensors: a header of 200,000 tensors keeps their order and round-trips", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "many.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (int i = 0; i < 200000; ++i) tensors.emplace_back("t." + std::to_string(i), at::full({1}, float(i)));
  cur4llm::io::save_safetensors(path, tensors);
  const SafetensorsFile file(path);
  REQUIRE(file.names().size() == 200000);
  std::vector<std::string> sorted = file.names();
  CHECK(std::is_sorted(sorted.begin(), sorted.end()));  // the writer lists tensors by name
  CHECK(file.load("t.123456").item<float>() == 123456.0f);
  CHECK(file.load("t.0").item<float>() == 0.0f);
}

TEST_CASE("safetensors bad input: unknown tensor name", "[unit][io][bad_input]") {
  const auto path = model_dir("llama_gqa") / "model.safetensors";
  const SafetensorsFile file(path);
  CHECK_THAT(message_of<std::runtime_error>([&] { file.load("lm_head.bias"); }),
             Contains(path.string()) && Contains("'lm_head.bias'"));
  CHECK_THAT(message_of<std::runtime_error>([&] { file.info("x"); }), Contains(path.string()) && Contains("'x'"));
}

// ---------------------------------------------------------------------------
// Writing

TEST_CASE("save_safetensors: round trip of every dtype, 0-dim and empty tensors", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "out.safetensors";
  const at::Tensor f32 = at::arange(12, at::kFloat).reshape({3, 4}) * 0.5 - 1.0;
  const at::Tensor bf16 = (at::arange(6, at::kFloat) / 3.0).to(at::kBFloat16);
  const at::Tensor f16 = (at::arange(6, at::kFloat) / 7.0).to(at::kHalf);
  const at::Tensor i64 = at::arange(5, at::kLong) * (int64_t(1) << 40);
  const at::Tensor f64 = at::arange(3, at::kDouble) / 3.0;
  const at::Tensor i32 = at::arange(-2, 2, at::kInt);
  const at::Tensor i16 = at::arange(-3, 3, at::kShort);
  const at::Tensor i8 = at::arange(-4, 4, at::kChar);
  const at::Tensor u8 = at::arange(250, 256, at::TensorOptions().dtype(at::kByte));
  const at::Tensor flags = at::arange(4, at::kLong).remainder(2).to(at::kBool);
  const at::Tensor scalar = at::full({}, 2.5, at::kFloat);
  const at::Tensor empty = at::empty({0, 7}, at::kHalf);
  const at::Tensor transposed = at::arange(6, at::kFloat).reshape({2, 3}).t();  // not contiguous
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f32", f32},   {"bf16", bf16}, {"f16", f16},       {"i64", i64},     {"f64", f64},
      {"i32", i32},   {"i16", i16},   {"i8", i8},         {"u8", u8},       {"flags", flags},
      {"scalar", scalar}, {"empty", empty}, {"transposed", transposed},
  };
  cur4llm::io::save_safetensors(path, tensors, {{"format", "pt"}, {"source", "test"}});

  const SafetensorsFile file(path);
  CHECK(file.metadata() == (std::map<std::string, std::string>{{"format", "pt"}, {"source", "test"}}));
  CHECK(file.names().size() == tensors.size());
  const std::map<std::string, std::string> dtypes = {
      {"f32", "F32"}, {"bf16", "BF16"}, {"f16", "F16"}, {"i64", "I64"},     {"f64", "F64"},
      {"i32", "I32"}, {"i16", "I16"},   {"i8", "I8"},   {"u8", "U8"},       {"flags", "BOOL"},
      {"scalar", "F32"}, {"empty", "F16"}, {"transposed", "F32"}};
  for (const auto& [name, original] : tensors) {
    INFO(name);
    CHECK(file.info(name).dtype == dtypes.at(name));
    const at::Tensor back = file.load(name);
    CHECK(back.scalar_type() == original.scalar_type());
    CHECK(back.sizes() == original.sizes());
    CHECK(at::equal(back, original));
  }
  CHECK(file.load("scalar").dim() == 0);
  CHECK(file.load("scalar").item<float>() == 2.5f);
  CHECK(file.load("transposed")[0][1].item<float>() == 3.0f);
  CHECK(file.load("i64")[4].item<int64_t>() == (int64_t(4) << 40));
  CHECK(file.info("empty").begin == file.info("empty").end);
}

TEST_CASE("save_safetensors: header layout matches the Python library", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "layout.safetensors";
  cur4llm::io::save_safetensors(path,
                                {{"b", at::ones({2}, at::kFloat)},
                                 {"a", at::zeros({1}, at::kLong)},
                                 {"c", at::ones({1}, at::kHalf)}},
                                {{"k", "v"}});
  const std::string bytes = slurp(path);
  // Data by dtype (I64, F32, F16 in the Python library's order), header keys
  // sorted with "__metadata__" first, padded with spaces to 8 bytes.
  const std::string expected_header =
      R"({"__metadata__":{"k":"v"},)"
      R"("a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
      R"("c":{"dtype":"F16","shape":[1],"data_offsets":[16,18]}})";
  const size_t padded = (expected_header.size() + 7) / 8 * 8;
  REQUIRE(bytes.size() == 8 + padded + 18);
  CHECK(read_le64(bytes) == padded);
  CHECK(bytes.substr(8, padded) == expected_header + std::string(padded - expected_header.size(), ' '));
  const std::string data = bytes.substr(8 + padded);
  CHECK(data.substr(0, 8) == std::string(8, '\0'));
  CHECK(data.substr(8, 4) == std::string("\x00\x00\x80\x3f", 4));  // 1.0f
  CHECK(data.substr(16, 2) == std::string("\x00\x3c", 2));          // 1.0 in F16

  // No metadata, no tensors: "{}" padded to 8.
  cur4llm::io::save_safetensors(path, {});
  CHECK(slurp(path) == le64(8) + "{}      ");
}

TEST_CASE("save_safetensors: rewriting the transformers checkpoint reproduces it byte for byte", "[unit][io]") {
  TempDir dir;
  const auto original = model_dir("llama_gqa") / "model.safetensors";
  const SafetensorsFile file(original);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : file.names()) tensors.emplace_back(name, file.load(name));
  const auto copy = dir / "model.safetensors";
  cur4llm::io::save_safetensors(copy, tensors, file.metadata());
  CHECK(slurp(copy) == slurp(original));
  CHECK(folder_listing(dir.path) == std::vector<std::string>{"model.safetensors"});  // no temporary left
}

TEST_CASE("save_safetensors: user mistakes are std::invalid_argument naming file and tensor", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  CHECK_THAT(message_of<std::invalid_argument>([&] {
               cur4llm::io::save_safetensors(path, {{"w", at::ones({2})}, {"w", at::ones({3})}});
             }),
             Contains(path.string()) && Contains("'w'"));
  CHECK_THAT(message_of<std::invalid_argument>([&] {
               cur4llm::io::save_safetensors(path, {{"z", at::ones({2}, at::kComplexFloat)}});
             }),
             Contains(path.string()) && Contains("'z'"));
  CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::save_safetensors(path, {{"u", at::Tensor()}}); }),
             Contains(path.string()) && Contains("'u'"));
  CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::save_safetensors(path, {{"__metadata__", at::ones({1})}}); }),
             Contains(path.string()));
  CHECK_FALSE(fs::exists(path));
  CHECK(folder_listing(dir.path).empty());
  CHECK(cur4llm::io::safetensors_dtype(at::kBFloat16) == "BF16");
  CHECK(cur4llm::io::safetensors_dtype(at::kBool) == "BOOL");
  CHECK_THROWS_AS(cur4llm::io::safetensors_dtype(at::kComplexDouble), std::invalid_argument);
}

TEST_CASE("save_safetensors: a path under a regular file fails cleanly", "[unit][io]") {
  // Tests may run as root, which ignores directory permissions; a parent that
  // is a regular file fails for everyone.
  TempDir dir;
  spit(dir / "not_a_dir", "x");
  const auto path = dir / "not_a_dir" / "model.safetensors";
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::save_safetensors(path, {{"w", at::ones({2})}}); }),
             Contains(path.string()));
  CHECK(slurp(dir / "not_a_dir") == "x");
  CHECK(folder_listing(dir.path) == std::vector<std::string>{"not_a_dir"});
}

TEST_CASE("save_safetensors: a failed write leaves the existing file untouched", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "model.safetensors";
  const std::string before = "previous content, not a safetensors file";
  spit(path, before);
  // In a child: a 64 KiB file size limit (SIGXFSZ ignored, so write() fails
  // with EFBIG) and a 1 MiB tensor.
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);
    rlimit limit{64 * 1024, 64 * 1024};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(3);
    try {
      cur4llm::io::save_safetensors(path, {{"big", at::ones({256, 1024}, at::kFloat)}});
    } catch (const std::runtime_error& e) {
      ::_exit(std::string(e.what()).find(path.string()) != std::string::npos ? 0 : 4);
    } catch (...) {
      ::_exit(5);
    }
    ::_exit(6);  // no exception
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(slurp(path) == before);
  CHECK(folder_listing(dir.path) == std::vector<std::string>{"model.safetensors"});  // temporary removed

  // Without the limit the same call replaces the file.
  cur4llm::io::save_safetensors(path, {{"big", at::ones({256, 1024}, at::kFloat)}});
  CHECK(SafetensorsFile(path).info("big").shape == (std::vector<int64_t>{256, 1024}));
}

// ---------------------------------------------------------------------------
// File helpers

TEST_CASE("files: read_file, write_file_atomic and append_line", "[unit][io]") {
  TempDir dir;
  const auto path = dir / "a.txt";
  const std::string content("line one\n\0binary\xff", 17);
  cur4llm::io::write_file_atomic(path, content);
  CHECK(slurp(path) == content);
  CHECK(cur4llm::io::read_file(path) == content);
  cur4llm::io::write_file_atomic(path, "replaced");
  CHECK(slurp(path) == "replaced");
  CHECK(folder_listing(dir.path) == std::vector<std::string>{"a.txt"});

  const auto log = dir / "deep" / "er" / "log.jsonl";
  cur4llm::io::append_line(log, "{\"a\":1}");
  cur4llm::io::append_line(log, "{\"b\":2}");
  CHECK(slurp(log) == "{\"a\":1}\n{\"b\":2}\n");

  const auto absent = dir / "absent.txt";
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::read_file(absent); }), Contains(absent.string()));
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::read_file(dir.path); }), Contains(dir.path.string()));
  const auto under_file = path / "x.txt";
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::write_file_atomic(under_file, "x"); }),
             Contains(under_file.string()));
  CHECK_THAT(message_of<std::runtime_error>([&] { cur4llm::io::append_line(under_file, "x"); }),
             Contains(under_file.string()));
}

// ---------------------------------------------------------------------------
// Model ids and the Hugging Face cache

namespace {

// A fake hub cache: <hub>/models--<org>--<name>/{refs/main, snapshots/<rev>/config.json}.
fs::path make_snapshot(const fs::path& hub, const std::string& repo_folder, const std::string& revision) {
  const auto snapshot = hub / repo_folder / "snapshots" / revision;
  fs::create_directories(snapshot);
  spit(snapshot / "config.json", "{}");
  return snapshot;
}

void write_ref(const fs::path& hub, const std::string& repo_folder, const std::string& content) {
  fs::create_directories(hub / repo_folder / "refs");
  spit(hub / repo_folder / "refs" / "main", content);
}

}  // namespace

TEST_CASE("model_folder: an existing directory is used as it is", "[unit][io]") {
  const auto folder = model_dir("llama_gqa");
  CHECK(cur4llm::io::resolve_model_id(folder.string()) == folder);
}

TEST_CASE("model_folder: hf_hub_cache_dir follows HF_HUB_CACHE, HF_HOME, then HOME", "[unit][io]") {
  ScopedEnv xdg("XDG_CACHE_HOME", std::nullopt);
  {
    ScopedEnv a("HF_HUB_CACHE", "/x/hub_cache");
    ScopedEnv b("HF_HOME", "/y/hf_home");
    CHECK(cur4llm::io::hf_hub_cache_dir() == fs::path("/x/hub_cache"));
  }
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", "/y/hf_home");
    CHECK(cur4llm::io::hf_hub_cache_dir() == fs::path("/y/hf_home/hub"));
  }
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", std::nullopt);
    ScopedEnv c("HOME", "/z/home");
    CHECK(cur4llm::io::hf_hub_cache_dir() == fs::path("/z/home/.cache/huggingface/hub"));
  }
}

TEST_CASE("model_folder: an org/name id resolves to the snapshot refs/main names", "[unit][io]") {
  TempDir dir;
  ScopedEnv xdg("XDG_CACHE_HOME", std::nullopt);
  const auto hub = dir / "hub";
  const auto wanted = make_snapshot(hub, "models--acme--tiny-llama", "0123abcd");
  make_snapshot(hub, "models--acme--tiny-llama", "ffff0000");  // an older revision
  write_ref(hub, "models--acme--tiny-llama", "0123abcd\n");
  {
    ScopedEnv a("HF_HUB_CACHE", hub.string());
    ScopedEnv b("HF_HOME", (dir / "elsewhere").string());
    CHECK(cur4llm::io::resolve_model_id("acme/tiny-llama") == wanted);
  }
  {
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", dir.path.string());  // HF_HOME/hub
    CHECK(cur4llm::io::resolve_model_id("acme/tiny-llama") == wanted);
  }
  {
    const auto home = dir / "home";
    const auto cached = make_snapshot(home / ".cache" / "huggingface" / "hub", "models--acme--tiny-llama", "abc");
    write_ref(home / ".cache" / "huggingface" / "hub", "models--acme--tiny-llama", "abc");
    ScopedEnv a("HF_HUB_CACHE", std::nullopt);
    ScopedEnv b("HF_HOME", std::nullopt);
    ScopedEnv c("HOME", home.string());
    CHECK(cur4llm::io::resolve_model_id("acme/tiny-llama") == cached);
  }
  {
    // Ids without an organisation (e.g. "gpt2") live in models--gpt2.
    const auto gpt2 = make_snapshot(hub, "models--gpt2", "607a30d7");
    write_ref(hub, "models--gpt2", "607a30d7");
    ScopedEnv a("HF_HUB_CACHE", hub.string());
    CHECK(cur4llm::io::resolve_model_id("gpt2") == gpt2);
  }
}

TEST_CASE("model_folder: without refs/main the only snapshot is used", "[unit][io]") {
  TempDir dir;
  const auto hub = dir / "hub";
  const auto only = make_snapshot(hub, "models--acme--solo", "5555");
  ScopedEnv a("HF_HUB_CACHE", hub.string());
  CHECK(cur4llm::io::resolve_model_id("acme/solo") == only);

  make_snapshot(hub, "models--acme--solo", "6666");
  CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id("acme/solo"); }),
             Contains("acme/solo") && Contains((hub / "models--acme--solo" / "refs" / "main").string()) &&
                 Contains((hub / "models--acme--solo" / "snapshots").string()) && Contains("2 snapshots"));
}

TEST_CASE("model_folder: an unknown id is std::invalid_argument listing every place looked at", "[unit][io]") {
  TempDir dir;
  const auto hub = dir / "hub";
  fs::create_directories(hub);
  ScopedEnv a("HF_HUB_CACHE", hub.string());
  const std::string message =
      message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id("acme/missing"); });
  CHECK_THAT(message, Contains("'acme/missing'"));
  CHECK_THAT(message, Contains("acme/missing (no such directory)"));
  CHECK_THAT(message, Contains((hub / "models--acme--missing" / "refs" / "main").string()));
  CHECK_THAT(message, Contains((hub / "models--acme--missing" / "snapshots").string()));
  CHECK(message.find('\n') == std::string::npos);

  // refs/main naming a snapshot that is not there.
  write_ref(hub, "models--acme--broken", "deadbeef");
  make_snapshot(hub, "models--acme--broken", "cafe");
  CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id("acme/broken"); }),
             Contains((hub / "models--acme--broken" / "snapshots" / "deadbeef").string()));

  // A path that does not exist and is no repository id.
  const auto nowhere = (dir / "no" / "such" / "folder").string();
  CHECK_THAT(message_of<std::invalid_argument>([&] { cur4llm::io::resolve_model_id(nowhere); }),
             Contains(nowhere));
  CHECK_THROWS_AS(cur4llm::io::resolve_model_id(""), std::invalid_argument);
  CHECK_THROWS_AS(cur4llm::io::resolve_model_id("acme/../etc"), std::invalid_argument);
}

TEST_CASE("files: remove_tree removes nested folders and never follows links", "[unit][io]") {
  TempDir dir;
  const auto keep = dir / "keep.txt";
  spit(keep, "outside");
  const auto tree = dir / "tree";
  fs::create_directories(tree / "a" / "b");
  spit(tree / "a" / "b" / "deep.bin", std::string(1000, 'x'));
  spit(tree / "top.txt", "t");
  fs::create_symlink(keep, tree / "a" / "link");
  fs::create_directory_symlink(dir.path, tree / "dirlink");
  cur4llm::io::remove_tree(tree);
  CHECK_FALSE(fs::exists(tree));
  CHECK(slurp(keep) == "outside");  // the links' targets survive
  CHECK_NOTHROW(cur4llm::io::remove_tree(tree));  // missing: nothing to do
  cur4llm::io::remove_tree(keep);                 // a plain file
  CHECK_FALSE(fs::exists(keep));
}
