// acur repositories: written by repo::write_acur_repo, read back by
// CausalLM::load through the slot-kind registry. The round trip must give the
// very same logits in fp32; a failed write must leave nothing behind.
#include <cur4llm/compress/apply.h>
#include <cur4llm/compress/cur_linear.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/quant/packed_linear.h>
#include <cur4llm/quant/packed_model.h>
#include <cur4llm/compress/skeleton_linear.h>
#include <cur4llm/compress/slot_io.h>
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/atomic_folder.h>
#include <cur4llm/io/files.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/slot_registry.h>
#include <cur4llm/repo/acur_repo.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <nlohmann/json.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <sys/resource.h>

#include <csignal>
#include <set>

using cur4llm::model::CausalLM;
using cur4llm::test::model_dir;
using cur4llm::test::TempDir;
namespace fs = std::filesystem;
namespace compress = cur4llm::compress;
namespace quant = cur4llm::quant;
namespace repo = cur4llm::repo;

namespace {

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(cur4llm::io::read_file(p)); }

// Fixed token ids [2, 24] inside the vocabulary.
at::Tensor probe_ids(const CausalLM& lm) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  return at::randint(lm.config().vocab_size, {2, 24}, gen, at::TensorOptions().dtype(at::kLong));
}

at::Tensor logits(const CausalLM& lm) {
  c10::InferenceMode guard;
  return lm.forward(probe_ids(lm));
}

// Compresses every `stride`-th Linear (lm_head included when picked) with `method` at ratio 0.6,
// activation-aware with a fixed positive scale per layer.
cur4llm::search::CompressionPlan compress_some(CausalLM& lm, const std::string& method, size_t stride,
                                               const compress::CompressorOptions& options = {}) {
  cur4llm::search::Allocation allocation;
  size_t i = 0;
  for (const auto& info : lm.linears()) allocation.push_back({info.name, 0.6, (i++ % stride) == 0});
  auto compressor = compress::make_compressor(method, options);
  auto scale = [&](const std::string& layer) {
    const auto n = lm.linear(layer).in_features();
    return at::linspace(0.5, 2.0, n, at::kFloat);
  };
  return compress::apply_allocation(lm, allocation, *compressor, scale);
}

// The slot kinds a layer compressed by `method` may have: "skeleton" picks a side per layer.
std::set<std::string> kinds_of(const std::string& method) {
  if (method == "skeleton") return {"skeleton_row", "skeleton_col"};
  return {method};
}

// The kinds of the layers of `plan` that `lm` holds compressed (not "dense").
std::set<std::string> slot_kinds(const CausalLM& lm, const cur4llm::search::CompressionPlan& plan) {
  std::set<std::string> out;
  for (const auto& layer : plan.layers()) {
    if (lm.linear(layer.name).kind() != "dense") out.insert(lm.linear(layer.name).kind());
  }
  return out;
}

// Every file of `folder` (names and bytes), to see that it was not written to.
std::string snapshot(const fs::path& folder) {
  std::string all;
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(folder)) names.insert(e.path().filename().string());
  for (const auto& n : names) all += n + ":" + cur4llm::io::read_file(folder / n) + "|";
  return all;
}

// Names in `dir` that start with '.': temporary siblings a failed write could leave.
std::vector<std::string> hidden_entries(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename().string().front() == '.') out.push_back(e.path().filename().string());
  }
  return out;
}

// Sets the process's file size limit for its lifetime; SIGXFSZ is ignored so that
// writes past the limit fail with EFBIG, as under `ulimit -f` with the signal ignored.
struct FileSizeLimit {
  rlimit saved{};
  void (*saved_handler)(int) = nullptr;
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    saved_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limit = saved;
    limit.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limit) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, saved_handler);
  }
};

}  // namespace

TEST_CASE("acur repository round trip: the same logits, bit for bit, in fp32", "[export][model]") {
  struct Case {
    const char* fixture;
    const char* method;
    size_t stride;
  };
  // OPT (tied lm_head, biases), LLaMA with GQA, Qwen2 (tied, q/k/v biases), Mistral; CUR, SVD and the
  // skeleton layers of both sides ("skeleton" picks a side per layer; both in one repository: the next test).
  for (const Case c : {Case{"tiny-shakespeare-opt", "cur", 2}, Case{"tiny-shakespeare-opt", "svd", 3},
                       Case{"llama_gqa", "cur", 2}, Case{"llama_gqa", "svd", 2}, Case{"qwen2_bias", "cur", 3},
                       Case{"qwen2_bias", "svd", 2}, Case{"mistral_window", "cur", 2},
                       Case{"tiny-shakespeare-opt", "skeleton_row", 2}, Case{"tiny-shakespeare-opt", "skeleton_col", 2},
                       Case{"tiny-shakespeare-opt", "skeleton", 1}, Case{"llama_gqa", "skeleton_row", 2},
                       Case{"llama_gqa", "skeleton_col", 2}, Case{"llama_gqa", "skeleton", 1}}) {
    DYNAMIC_SECTION(c.fixture << " " << c.method) {
      auto lm = CausalLM::load(model_dir(c.fixture));
      const auto plan = compress_some(*lm, c.method, c.stride);
      REQUIRE(compress::count_layers(plan, c.method) > 0);
      std::string kinds;  // the repository's method when none is given: its kinds, sorted, joined by "+"
      for (const auto& k : slot_kinds(*lm, plan)) kinds += (kinds.empty() ? "" : "+") + k;
      const auto before = logits(*lm);
      TempDir dir("export_roundtrip");
      const auto written = repo::write_acur_repo(*lm, dir / "repo", {});
      CHECK(written.layers == compress::count_layers(plan, c.method));

      auto back = CausalLM::load(dir / "repo");
      CHECK(back->stored_form().acur_format_version == cur4llm::model::kAcurFormatVersion);
      CHECK(back->stored_form().method == kinds);
      for (const auto& layer : plan.layers()) {
        INFO(layer.name);
        const auto& slot = back->linear(layer.name);
        CHECK(slot.kind() == lm->linear(layer.name).kind());
        CHECK(kinds_of(layer.method).count(slot.kind()) == 1);
        CHECK(slot.weight_params() == layer.stored_params);
        CHECK(at::equal(slot.reconstruct_weight(), lm->linear(layer.name).reconstruct_weight()));
      }
      CHECK(at::equal(logits(*back), before));
    }
  }
}

TEST_CASE("acur repository round trip: CUR with U folded into C is stored as CU and R", "[export][model]") {
  for (const char* fixture : {"tiny-shakespeare-opt", "llama_gqa"}) {
    DYNAMIC_SECTION(fixture) {
      auto lm = CausalLM::load(model_dir(fixture));
      compress::CompressorOptions options;
      options.cur.fold_u = true;
      const auto plan = compress_some(*lm, "cur", 2, options);
      const auto before = logits(*lm);
      TempDir dir("export_folded");
      repo::write_acur_repo(*lm, dir / "repo", {});
      const auto layers = read_json(dir / "repo" / "config.json")["acur"]["layers"];
      auto back = CausalLM::load(dir / "repo");
      int64_t folded = 0;
      for (const auto& layer : plan.layers()) {
        if (layer.method != "cur") continue;
        INFO(layer.name);
        CHECK(layers.at(layer.name).at("folded") == true);
        const auto& slot = dynamic_cast<const compress::CURLinear&>(back->linear(layer.name));
        CHECK(slot.folded());
        CHECK_FALSE(slot.u().defined());
        // Rank k stores out*k + k*in weights: no k*k term.
        CHECK(slot.weight_params() == slot.out_features() * slot.rank() + slot.rank() * slot.in_features());
        CHECK(slot.weight_params() == layer.stored_params);
        ++folded;
      }
      CHECK(folded > 0);
      CHECK(at::equal(logits(*back), before));
    }
  }
}

TEST_CASE("acur repository round trip: the same perplexity on the trained tiny OPT", "[export][model]") {
  auto lm = CausalLM::load(model_dir("tiny-shakespeare-opt"));
  compress_some(*lm, "cur", 2);
  const auto ids = cur4llm::test::make_samples({64 * 6}, lm->config().vocab_size, 3).front();
  cur4llm::eval::PerplexityOptions o;
  o.seqlen = 64;
  const auto before = cur4llm::eval::evaluate_perplexity(*lm, ids, o);
  TempDir dir("export_ppl");
  repo::write_acur_repo(*lm, dir / "repo", {});
  const auto after = cur4llm::eval::evaluate_perplexity(*CausalLM::load(dir / "repo"), ids, o);
  CHECK(after.perplexity == before.perplexity);
  CHECK(after.window_nll == before.window_nll);
}

TEST_CASE("acur repository: config.json, Python files and tokenizer as transformers needs them", "[export]") {
  auto lm = CausalLM::load(model_dir("tiny-shakespeare-opt"));
  // Every Linear, lm_head included: a compressed lm_head can no longer be tied to the embedding.
  cur4llm::search::Allocation all;
  for (const auto& info : lm->linears()) all.push_back({info.name, 0.5, true});
  compress::apply_allocation(*lm, all, *compress::make_compressor("cur"), {});
  TempDir dir("export_config");
  const auto written = repo::write_acur_repo(*lm, dir / "repo", {});
  const std::set<std::string> files(written.files.begin(), written.files.end());
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                        "generation_config.json", "configuration_acur_opt.py", "modeling_acur_opt.py"}) {
    CHECK(files.count(f) == 1);
  }
  CHECK(files.count("model.safetensors.index.json") == 0);
  CHECK(cur4llm::io::read_file(dir / "repo" / "tokenizer.json") ==
        cur4llm::io::read_file(model_dir("tiny-shakespeare-opt") / "tokenizer.json"));

  const auto config = read_json(dir / "repo" / "config.json");
  CHECK(config.at("model_type") == "opt");
  CHECK(config.at("architectures") == nlohmann::json::array({"AcurOPTForCausalLM"}));
  CHECK(config.at("auto_map").at("AutoConfig") == "configuration_acur_opt.AcurOPTConfig");
  CHECK(config.at("auto_map").at("AutoModelForCausalLM") == "modeling_acur_opt.AcurOPTForCausalLM");
  CHECK_FALSE(config.contains("quantization_config"));  // transformers reads that key as its own quantizer's
  CHECK(config.at("tie_word_embeddings") == false);
  const auto& acur = config.at("acur");
  CHECK(acur.at("format_version") == 1);
  CHECK(acur.at("method") == "cur");
  CHECK(acur.at("base").at("tie_word_embeddings") == true);
  CHECK(acur.at("base").at("architectures") == nlohmann::json::array({"OPTForCausalLM"}));
  const auto& head = acur.at("layers").at("lm_head");
  CHECK(head.at("kind") == "cur");
  CHECK(head.at("rank").get<int64_t>() ==
        dynamic_cast<const compress::CURLinear&>(lm->linear("lm_head")).rank());
  CHECK(head.at("in_features") == 64);
  CHECK(head.at("out_features") == 601);
  CHECK(acur.at("layers").size() == lm->linears().size());

  // The stored names are the modules' tensor names.
  cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
  CHECK(st.metadata().at("format") == "pt");
  for (const char* name : {"lm_head.C", "lm_head.U", "lm_head.R", "lm_head.row_indices", "lm_head.col_indices",
                           "model.decoder.layers.0.fc1.bias", "model.decoder.embed_tokens.weight"}) {
    CHECK(st.contains(name));
  }
  CHECK(st.info("lm_head.row_indices").dtype == "I64");
  CHECK_FALSE(st.contains("lm_head.weight"));

  // The Python files are filled in for OPT, with no placeholder left.
  const auto modeling = cur4llm::io::read_file(dir / "repo" / "modeling_acur_opt.py");
  CHECK(modeling.find("class AcurOPTForCausalLM(OPTForCausalLM)") != std::string::npos);
  CHECK(modeling.find("from .configuration_acur_opt import AcurOPTConfig") != std::string::npos);
  CHECK(modeling.find("{{") == std::string::npos);
  // The LLaMA-family file serves Qwen2 on Qwen2's own classes.
  const auto qwen = repo::python_files("qwen2");
  REQUIRE(qwen.size() == 2);
  CHECK(qwen[0].first == "configuration_acur_llama.py");
  CHECK(qwen[0].second.find("class AcurQwen2Config(Qwen2Config)") != std::string::npos);
  CHECK(qwen[1].first == "modeling_acur_llama.py");
  CHECK(qwen[1].second.find("from transformers import Qwen2ForCausalLM") != std::string::npos);
  CHECK_THROWS_WITH(repo::python_files("gpt2"), Catch::Contains("gpt2"));
}

TEST_CASE("acur repository: packed weights stored as codes, scales and zeros, and loaded back", "[export][quantize]") {
  for (const std::string format : {"rtn_int8", "rtn_int6", "rtn_int4"}) {
    DYNAMIC_SECTION(format) {
      auto lm = CausalLM::load(model_dir("llama_gqa"));
      compress_some(*lm, "cur", 2);
      const auto packed = quant::quantize_model_packed(*lm, quant::parse_quant_format(format));
      REQUIRE_FALSE(packed.empty());
      const auto before = logits(*lm);
      TempDir dir("export_packed");
      repo::ExportOptions o;
      o.packed = &packed;
      repo::write_acur_repo(*lm, dir / "repo", o);

      const auto config = read_json(dir / "repo" / "config.json");
      const auto& q = config.at("acur").at("quantization");
      CHECK(q.at("format") == format);
      CHECK(q.at("bits") == quant::parse_quant_format(format).bits);
      // A dense layer of a decoder layer is listed as "dense" once its weight is packed.
      const auto& dense = config.at("acur").at("layers").at("model.layers.0.self_attn.k_proj");
      CHECK(dense.at("kind") == "dense");
      CHECK(dense.at("quantized") == nlohmann::json::array({"weight"}));
      CHECK_FALSE(config.at("acur").at("layers").at("lm_head").contains("quantized"));  // lm_head is never quantized

      cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
      CHECK(st.info("model.layers.0.self_attn.k_proj.weight.qweight").dtype == "U8");
      CHECK(st.info("model.layers.0.self_attn.k_proj.weight.scales").dtype == "F16");
      CHECK(st.info("model.layers.0.self_attn.k_proj.weight.zeros").dtype == "F16");
      CHECK_FALSE(st.contains("model.layers.0.self_attn.k_proj.weight"));
      CHECK(st.contains("lm_head.C"));
      CHECK(st.contains("model.layers.0.self_attn.q_proj.C.qweight"));

      auto back = CausalLM::load(dir / "repo");
      CHECK(back->stored_form().quantization == format);
      CHECK(at::equal(logits(*back), before));
    }
  }
}

TEST_CASE("acur repository: skeleton layers packed, their permutations stored as int64, and loaded back",
          "[export][quantize]") {
  // tiny OPT: biases on every layer; llama_gqa: none. Every second Linear (lm_head included) a row
  // skeleton, the others column skeletons: both kinds in one repository, as "skeleton" may give.
  for (const std::string fixture : {"tiny-shakespeare-opt", "llama_gqa"}) {
    for (const std::string format : {"rtn_int8", "rtn_int4"}) {
      DYNAMIC_SECTION(fixture << " " << format) {
        auto lm = CausalLM::load(model_dir(fixture));
        compress_some(*lm, "skeleton_row", 2);
        const auto col = compress::make_compressor("skeleton_col");
        std::vector<std::string> names;
        for (const auto& info : lm->linears()) {
          names.push_back(info.name);
          if (const auto* d = dynamic_cast<const cur4llm::model::DenseLinear*>(&lm->linear(info.name))) {
            const auto scale = at::linspace(0.5, 2.0, d->in_features(), at::kFloat);
            lm->replace_linear(info.name, col->compress(d->weight(), d->bias(), scale, 0.6));
          }
        }
        const auto packed = quant::quantize_model_packed(*lm, quant::parse_quant_format(format));
        const auto before = logits(*lm);
        TempDir dir("export_skeleton_packed");
        repo::ExportOptions o;
        o.packed = &packed;
        repo::write_acur_repo(*lm, dir / "repo", o);

        const auto config = read_json(dir / "repo" / "config.json");
        CHECK(config.at("acur").at("quantization").at("format") == format);
        cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
        int64_t rows = 0, cols = 0;
        for (const auto& name : names) {
          INFO(name);
          const auto& slot = dynamic_cast<const compress::SkeletonLinear&>(lm->linear(name));
          const bool row = slot.side() == compress::SkeletonSide::Row;
          (row ? rows : cols) += 1;
          const auto& entry = config.at("acur").at("layers").at(name);
          CHECK(entry.at("kind") == slot.kind());
          CHECK(entry.at("rank") == slot.rank());
          CHECK(entry.at("bias") == slot.bias().defined());
          const std::string kept = row ? "W_I" : "W_J", predictor = row ? "X_rest" : "Z_rest";
          const std::string index = row ? "row_index" : "col_index";
          const std::string prefix = name + ".";
          if (name == "lm_head") {  // never quantized
            CHECK_FALSE(entry.contains("quantized"));
            CHECK(st.contains(prefix + kept));
          } else {
            CHECK(entry.at("quantized") == nlohmann::json::array({kept, predictor}));
            CHECK(st.info(prefix + kept + ".qweight").dtype == "U8");
            CHECK(st.info(prefix + predictor + ".scales").dtype == "F16");
            CHECK_FALSE(st.contains(prefix + kept));
          }
          // The permutation is stored as it is: int64, every position once, kept ones first.
          CHECK(st.info(prefix + index).dtype == "I64");
          CHECK(at::equal(st.load(prefix + index), slot.index()));
          CHECK(at::equal(std::get<0>(at::sort(st.load(prefix + index))),
                          at::arange(row ? slot.out_features() : slot.in_features(), at::kLong)));
          if (slot.bias().defined()) CHECK(st.info(prefix + "bias").dtype == "F32");
        }
        CHECK(rows > 0);
        CHECK(cols > 0);

        auto back = CausalLM::load(dir / "repo");
        CHECK(back->stored_form().quantization == format);
        CHECK(back->stored_form().method == "skeleton_col+skeleton_row");
        for (const auto& name : names) {
          INFO(name);
          const auto& a = dynamic_cast<const compress::SkeletonLinear&>(back->linear(name));
          const auto& b = dynamic_cast<const compress::SkeletonLinear&>(lm->linear(name));
          CHECK(a.side() == b.side());
          CHECK(at::equal(a.index(), b.index()));
          CHECK(at::equal(a.kept(), b.kept()));  // the dequantized values the model ran with
        }
        CHECK(at::equal(logits(*back), before));
      }
    }
  }
}

TEST_CASE("loading a skeleton layer: a stored index that is no permutation is refused, naming it", "[export][model]") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  compress_some(*lm, "skeleton_row", 2);
  TempDir dir("export_skeleton_bad");
  repo::write_acur_repo(*lm, dir / "repo", {});
  const std::string name = "model.layers.0.self_attn.q_proj.row_index";
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  {
    cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
    for (const auto& n : st.names()) tensors.emplace_back(n, st.load(n));
  }
  SECTION("a position twice") {
    for (auto& [n, t] : tensors) {
      if (n == name) t = t.clone().index_fill_(0, at::tensor({int64_t{1}}), t[0].item<int64_t>());
    }
    cur4llm::io::save_safetensors(dir / "repo" / "model.safetensors", tensors);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"), Catch::Contains(name) && Catch::Contains("not a permutation"));
  }
  SECTION("a position outside the layer") {
    for (auto& [n, t] : tensors) {
      if (n == name) t = t.clone().index_fill_(0, at::tensor({int64_t{0}}), t.numel());
    }
    cur4llm::io::save_safetensors(dir / "repo" / "model.safetensors", tensors);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"), Catch::Contains(name) && Catch::Contains("outside"));
  }
}

TEST_CASE("read_indices: an int64 vector of the stored values, integers from 0 to bound - 1 only", "[export][unit]") {
  // Stored tensors by name, as a repository's loader sees them.
  class Stored final : public cur4llm::model::SlotTensors {
   public:
    std::map<std::string, at::Tensor> tensors;
    bool contains(const std::string& name) const override { return tensors.count(name) > 0; }
    at::Tensor stored(const std::string& name, const std::vector<int64_t>& shape) const override {
      const auto& t = tensors.at(name);
      if (t.sizes().vec() != shape) throw std::runtime_error(describe(name) + " is misshaped");
      return t;
    }
    std::string describe(const std::string& name) const override { return "m.safetensors: tensor \"" + name + "\""; }
    c10::Device device() const override { return at::kCPU; }
    c10::ScalarType dtype() const override { return at::kFloat; }
  };
  Stored t;
  t.tensors["ok"] = at::tensor(std::vector<int64_t>{3, 0, 2}).to(at::kInt);
  t.tensors["far"] = at::tensor(std::vector<int64_t>{0, 5, 1});
  t.tensors["float"] = at::tensor(std::vector<double>{0.0, 1.0, 2.0});
  const auto ok = compress::read_indices(t, "ok", 3, 4);
  CHECK(ok.scalar_type() == at::kLong);
  CHECK(std::vector<int64_t>(ok.data_ptr<int64_t>(), ok.data_ptr<int64_t>() + 3) == std::vector<int64_t>{3, 0, 2});
  CHECK_THROWS_WITH(compress::read_indices(t, "ok", 3, 3),
                    "m.safetensors: tensor \"ok\" has an index outside [0, 3)");
  CHECK_THROWS_WITH(compress::read_indices(t, "far", 3, 5), Catch::Contains("\"far\" has an index outside [0, 5)"));
  CHECK_THROWS_WITH(compress::read_indices(t, "float", 3, 4), "m.safetensors: tensor \"float\" must hold integers");
  CHECK_THROWS_WITH(compress::read_indices(t, "ok", 4, 4), Catch::Contains("misshaped"));
}

TEST_CASE("acur repository: weights sharded above max_shard_bytes, with an index", "[export]") {
  auto lm = CausalLM::load(model_dir("tiny-shakespeare-opt"));
  compress_some(*lm, "svd", 2);
  const auto before = logits(*lm);
  TempDir dir("export_shards");
  repo::ExportOptions o;
  o.max_shard_bytes = 100 * 1000;
  const auto written = repo::write_acur_repo(*lm, dir / "repo", o);
  CHECK(written.shards > 2);
  const auto index = read_json(dir / "repo" / "model.safetensors.index.json");
  std::set<std::string> shard_files;
  int64_t total = 0;
  for (const auto& [name, file] : index.at("weight_map").items()) shard_files.insert(file.get<std::string>());
  CHECK(static_cast<int64_t>(shard_files.size()) == written.shards);
  for (const auto& file : shard_files) {
    cur4llm::io::SafetensorsFile st(dir / "repo" / file);
    int64_t bytes = 0;
    for (const auto& n : st.names()) bytes += static_cast<int64_t>(st.info(n).end - st.info(n).begin);
    total += bytes;
    // A shard exceeds the limit only when it is one tensor larger than the limit.
    if (bytes > o.max_shard_bytes) CHECK(st.names().size() == 1);
    CHECK(file.rfind("model-", 0) == 0);
  }
  CHECK(index.at("metadata").at("total_size").get<int64_t>() == total);
  CHECK(at::equal(logits(*CausalLM::load(dir / "repo")), before));
}

TEST_CASE("slot-kind registry: a new kind is stored and rebuilt through one registration", "[export]") {
  // A slot y = 2 (W x) stored as its weight W: the smallest possible new kind.
  class Doubled final : public cur4llm::model::LinearSlot {
   public:
    explicit Doubled(at::Tensor w) : w_(std::move(w)) {}
    at::Tensor forward(const at::Tensor& x) const override { return at::linear(x, w_) * 2; }
    int64_t in_features() const override { return w_.size(1); }
    int64_t out_features() const override { return w_.size(0); }
    int64_t weight_params() const override { return w_.numel(); }
    std::string kind() const override { return "test_doubled"; }
    std::vector<std::pair<std::string, at::Tensor>> state() const override { return {{"W", w_}}; }
    at::Tensor reconstruct_weight() const override { return w_ * 2; }

   private:
    at::Tensor w_;
  };
  static const cur4llm::model::SlotKindRegistrar registrar(
      {"test_doubled", [](const cur4llm::model::LinearSlot&) { return cur4llm::model::SlotFields{{"factor", "2"}}; },
       [](const cur4llm::model::SlotSpec& spec, const cur4llm::model::SlotTensors& t) -> cur4llm::model::LinearPtr {
         CHECK(spec.integer("factor") == 2);
         return std::make_shared<Doubled>(compress::read_factor(spec, t, "W", {spec.out_features, spec.in_features}));
       }});
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  const std::string name = "model.layers.1.mlp.up_proj";
  const auto& dense = dynamic_cast<const cur4llm::model::DenseLinear&>(lm->linear(name));
  lm->replace_linear(name, std::make_shared<Doubled>(dense.weight() * 0.5));
  const auto before = logits(*lm);
  TempDir dir("export_kind");
  repo::write_acur_repo(*lm, dir / "repo", {});
  auto back = CausalLM::load(dir / "repo");
  CHECK(back->linear(name).kind() == "test_doubled");
  CHECK(at::equal(logits(*back), before));
  // A name is registered once.
  CHECK_THROWS_AS(cur4llm::model::register_slot_kind(
                      {"cur", [](const cur4llm::model::LinearSlot&) { return cur4llm::model::SlotFields{}; },
                       [](const cur4llm::model::SlotSpec&, const cur4llm::model::SlotTensors&) {
                         return cur4llm::model::LinearPtr{};
                       }}),
                  std::logic_error);
}

TEST_CASE("acur repository: bad input is refused with the file named, and nothing half-written", "[export]") {
  auto lm = CausalLM::load(model_dir("tiny-shakespeare-opt"));
  compress_some(*lm, "cur", 2);
  const fs::path source = model_dir("tiny-shakespeare-opt");
  const auto source_files = snapshot(source);
  TempDir dir("export_bad");

  SECTION("an existing folder is kept unless overwrite is given") {
    fs::create_directories(dir / "repo");
    cur4llm::io::write_file_atomic(dir / "repo" / "keep.txt", "old");
    CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "repo", {}), Catch::Contains("already exists"));
    CHECK(cur4llm::io::read_file(dir / "repo" / "keep.txt") == "old");
    repo::ExportOptions o;
    o.overwrite = true;
    repo::write_acur_repo(*lm, dir / "repo", o);
    CHECK_FALSE(fs::exists(dir / "repo" / "keep.txt"));
    CHECK(fs::exists(dir / "repo" / "config.json"));
    CHECK(hidden_entries(dir.path).empty());
  }
  SECTION("a write that fails (file size limit, EFBIG) leaves no folder and no temporary one") {
    {
      FileSizeLimit limit(64 * 1024);  // the weights are about 650 KB
      CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "repo", {}), Catch::Contains("File too large"));
    }
    CHECK_FALSE(fs::exists(dir / "repo"));
    CHECK(hidden_entries(dir.path).empty());
  }
  SECTION("with overwrite, a failed write leaves the old folder as it was") {
    fs::create_directories(dir / "repo");
    cur4llm::io::write_file_atomic(dir / "repo" / "keep.txt", "old");
    repo::ExportOptions o;
    o.overwrite = true;
    {
      FileSizeLimit limit(64 * 1024);
      CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "repo", o), Catch::Contains("File too large"));
    }
    CHECK(cur4llm::io::read_file(dir / "repo" / "keep.txt") == "old");
    CHECK_FALSE(fs::exists(dir / "repo" / "config.json"));
    CHECK(hidden_entries(dir.path).empty());
  }
  SECTION("the model's own folder is refused, even with overwrite") {
    fs::copy(source, dir / "src", fs::copy_options::recursive);
    auto own = CausalLM::load(dir / "src");
    const auto own_files = snapshot(dir / "src");
    repo::ExportOptions o;
    o.overwrite = true;
    CHECK_THROWS_WITH(repo::write_acur_repo(*own, dir / "src", o), Catch::Contains("own folder"));
    CHECK_THROWS_WITH(repo::write_acur_repo(*own, dir / "src" / ".", o), Catch::Contains("own folder"));
    CHECK(snapshot(dir / "src") == own_files);
    CHECK(hidden_entries(dir.path).empty());
  }
  SECTION("a parent path that is a regular file") {
    cur4llm::io::write_file_atomic(dir / "file", "x");
    CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "file" / "repo", {}), Catch::Contains("file"));
    CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "file" / "deeper" / "repo", {}), Catch::Contains("file"));
    CHECK(cur4llm::io::read_file(dir / "file") == "x");
  }
  SECTION("a slot kind that nothing registered") {
    auto grad = compress::make_compressor("grad_cur");
    const auto& slot = dynamic_cast<const cur4llm::model::DenseLinear&>(lm->linear("model.decoder.layers.1.fc2"));
    lm->replace_linear("model.decoder.layers.1.fc2", grad->compress(slot.weight(), slot.bias(), {}, 0.5));
    CHECK_THROWS_WITH(repo::write_acur_repo(*lm, dir / "repo", {}),
                      Catch::Contains("model.decoder.layers.1.fc2") && Catch::Contains("grad_cur"));
    CHECK_FALSE(fs::exists(dir / "repo"));
  }
  CHECK(snapshot(source) == source_files);  // the source model is never written to
}

TEST_CASE("loading an acur repository: newer formats and broken sections are refused", "[export][model]") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  compress_some(*lm, "svd", 2);
  TempDir dir("export_load");
  repo::write_acur_repo(*lm, dir / "repo", {});
  auto config = read_json(dir / "repo" / "config.json");
  auto rewrite = [&](const nlohmann::json& c) { cur4llm::io::write_file_atomic(dir / "repo" / "config.json", c.dump()); };

  SECTION("a newer format_version") {
    config["acur"]["format_version"] = cur4llm::model::kAcurFormatVersion + 1;
    rewrite(config);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"),
                      Catch::Contains("config.json") && Catch::Contains("format_version 2 is newer"));
  }
  SECTION("an unknown slot kind") {
    config["acur"]["layers"]["model.layers.0.self_attn.q_proj"]["kind"] = "mystery";
    rewrite(config);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"), Catch::Contains("\"mystery\"") && Catch::Contains("svd"));
  }
  SECTION("a rank that disagrees with the stored tensors") {
    auto& layer = config["acur"]["layers"]["model.layers.0.self_attn.q_proj"];
    layer["rank"] = layer["rank"].get<int64_t>() - 1;
    rewrite(config);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"),
                      Catch::Contains("model.layers.0.self_attn.q_proj.ALinear.weight") && Catch::Contains("shape"));
  }
  SECTION("a layer the model does not have") {
    config["acur"]["layers"]["model.layers.7.mlp.up_proj"] = config["acur"]["layers"]["model.layers.0.self_attn.q_proj"];
    rewrite(config);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"), Catch::Contains("model.layers.7.mlp.up_proj"));
  }
  SECTION("a missing factor") {
    const std::string dropped = "model.layers.0.self_attn.q_proj.BLinear.weight";
    std::vector<std::pair<std::string, at::Tensor>> kept;
    {
      cur4llm::io::SafetensorsFile st(dir / "repo" / "model.safetensors");
      for (const auto& n : st.names()) {
        if (n != dropped) kept.emplace_back(n, st.load(n));
      }
    }
    cur4llm::io::save_safetensors(dir / "repo" / "model.safetensors", kept);
    CHECK_THROWS_WITH(CausalLM::load(dir / "repo"), Catch::Contains(dropped) && Catch::Contains("is missing"));
  }
}

TEST_CASE("parse_size reads transformers' max_shard_size forms", "[export][unit]") {
  CHECK(repo::parse_size("123") == 123);
  CHECK(repo::parse_size("500MB") == 500000000);
  CHECK(repo::parse_size("5GB") == 5000000000);
  CHECK(repo::parse_size("2gib") == int64_t{2} << 30);
  CHECK(repo::parse_size("64KiB") == 65536);
  CHECK(repo::parse_size("1.5KB") == 1500);
  for (const char* bad : {"", "GB", "12XB", "-5MB", "0", "1.2.3MB", ".MB"}) {
    INFO(bad);
    CHECK_THROWS_AS(repo::parse_size(bad), std::invalid_argument);
  }
  CHECK(repo::repo_folder_name("stories260K-hf", 0.9) == "stories260K-hf-acur90");
  CHECK(repo::repo_folder_name("opt-125m", 0.855) == "opt-125m-acur86");
}

TEST_CASE("AtomicFolder: renamed into place on commit, removed otherwise", "[export][io][unit]") {
  TempDir dir("atomic_folder");
  {
    cur4llm::io::AtomicFolder out(dir / "a" / "b", {});
    cur4llm::io::write_file_atomic(out.path() / "f", "1");
    CHECK(out.path().parent_path() == dir / "a");
    CHECK_FALSE(fs::exists(dir / "a" / "b"));
  }
  CHECK_FALSE(fs::exists(dir / "a" / "b"));
  CHECK(hidden_entries(dir / "a").empty());
  {
    cur4llm::io::AtomicFolder out(dir / "a" / "b", {});
    cur4llm::io::write_file_atomic(out.path() / "f", "2");
    out.commit();
  }
  CHECK(cur4llm::io::read_file(dir / "a" / "b" / "f") == "2");
  CHECK_THROWS_AS(cur4llm::io::AtomicFolder(dir / "a" / "b", {}), std::invalid_argument);
  CHECK(cur4llm::io::folder_bytes(dir / "a") == 1);
}

TEST_CASE("check_target_free: a symbolic link is an existing target, dangling or not, with or without a slash",
          "[export][io][unit]") {
  TempDir dir("target_free");
  namespace io = cur4llm::io;
  CHECK_NOTHROW(io::check_target_free(dir / "new", {}));
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  REQUIRE_FALSE(fs::exists(dir / "dangling"));  // what the apps' early check used to ask
  for (const auto& p : {dir / "dangling", dir / "dangling" / "", dir / "." / "dangling"}) {
    CHECK_THROWS_WITH(io::check_target_free(p, {}),
                      (dir / "dangling").string() + " already exists (pass --overwrite to replace it)");
    CHECK_NOTHROW(io::check_target_free(p, {true}));
  }
  CHECK_THROWS_AS(io::AtomicFolder(dir / "dangling", {}), std::invalid_argument);
  // With overwrite the link is replaced by the new folder; the folder it points to is not touched.
  fs::create_directory(dir / "elsewhere");
  io::write_file_atomic(dir / "elsewhere" / "keep", "k");
  fs::create_directory_symlink(dir / "elsewhere", dir / "link");
  {
    io::AtomicFolder out(dir / "link", {true});
    io::write_file_atomic(out.path() / "f", "new");
    out.commit();
  }
  CHECK_FALSE(fs::is_symlink(dir / "link"));
  CHECK(io::read_file(dir / "link" / "f") == "new");
  CHECK(io::read_file(dir / "elsewhere" / "keep") == "k");
  CHECK_FALSE(fs::exists(dir / "elsewhere" / "f"));
}

TEST_CASE("export_weight_bytes: the tensor bytes write_acur_repo then writes, without writing", "[export]") {
  struct Case {
    std::string model, method, format;
    std::optional<c10::ScalarType> dtype;
  };
  // Tied (opt_pre, qwen2_bias) and untied (llama_gqa) models; dense, factorized, packed; a dtype override.
  for (const Case& c : {Case{"opt_pre", "", "", {}}, Case{"opt_pre", "cur", "", {}}, Case{"llama_gqa", "svd", "", at::kHalf},
                        Case{"qwen2_bias", "cur", "rtn_int4", {}}, Case{"opt_pre_fp16", "skeleton", "rtn_int8", {}}}) {
    DYNAMIC_SECTION(c.model << " " << c.method << " " << c.format) {
      auto lm = CausalLM::load(model_dir(c.model));
      if (!c.method.empty()) compress_some(*lm, c.method, 2);
      quant::PackedWeights packed;
      if (!c.format.empty()) packed = quant::quantize_model_packed(*lm, quant::parse_quant_format(c.format));
      repo::ExportOptions o;
      o.dtype = c.dtype;
      if (!packed.empty()) o.packed = &packed;
      const int64_t predicted = repo::export_weight_bytes(*lm, o);
      TempDir dir("export_bytes");
      const auto written = repo::write_acur_repo(*lm, dir / "repo", o);
      CHECK(predicted == written.weight_bytes);
      // The safetensors file holds those bytes plus its header (8-byte length + JSON).
      CHECK(static_cast<int64_t>(fs::file_size(dir / "repo" / "model.safetensors")) > predicted);
    }
  }
}

TEST_CASE("keep_packed: packed dense weights and factors stay codes in memory and give the dequantized model's logits",
          "[export][quantize]") {
  for (const std::string format : {"rtn_int8", "rtn_int4"}) {
    for (const std::string method : {"svd", "cur"}) {
      DYNAMIC_SECTION(format << " " << method) {
        auto lm = CausalLM::load(model_dir("llama_gqa"));
        compress_some(*lm, method, 3);
        const auto packed = quant::quantize_model_packed(*lm, quant::parse_quant_format(format));
        TempDir dir("keep_packed");
        repo::ExportOptions o;
        o.packed = &packed;
        repo::write_acur_repo(*lm, dir / "repo", o);

        auto unpacked = CausalLM::load(dir / "repo");
        cur4llm::model::LoadOptions keep;
        keep.keep_packed = true;
        auto kept = CausalLM::load(dir / "repo", keep);
        int64_t n_packed = 0, n_factorized = 0, packed_bytes = 0, dense_bytes = 0;
        for (const auto& info : kept->linears()) {
          const auto slot = kept->linear_ptr(info.name);
          CHECK(slot->kind() == unpacked->linear(info.name).kind());
          if (const auto* p = dynamic_cast<const quant::PackedLinear*>(slot.get())) {
            ++n_packed;
            CHECK(packed.count(info.name + ".weight") == 1);
            packed_bytes += p->packed_bytes();
            dense_bytes += p->weight_params() * 4;
          } else if (const auto* f = dynamic_cast<const quant::PackedFactors*>(slot.get())) {
            ++n_factorized;
            for (const auto& factor : f->factors()) {
              // Every 2-d factor of these slots is quantized, so each stays packed.
              CHECK(packed.count(info.name + "." + factor.name) == 1);
              CHECK(dynamic_cast<const quant::PackedLinear*>(factor.layer.get()) != nullptr);
            }
            packed_bytes += f->packed_bytes();
            dense_bytes += f->weight_params() * 4;
            CHECK(at::allclose(f->reconstruct_weight(), unpacked->linear(info.name).reconstruct_weight().to(at::kFloat),
                               1e-5, 1e-6));
          } else {
            CHECK(packed.count(info.name + ".weight") == 0);  // every packed dense weight stays packed
          }
        }
        CHECK(n_packed > 0);
        int64_t factorized = 0;
        for (const auto& info : unpacked->linears()) factorized += unpacked->linear(info.name).kind() != "dense";
        CHECK(factorized > 0);
        CHECK(n_factorized == factorized);
        CHECK(packed_bytes * (format == "rtn_int4" ? 6 : 3) < dense_bytes);
        // The factorized products run unpadded here, padded in the loaded CUR/SVD layers.
        CHECK(at::allclose(logits(*kept), logits(*unpacked), 1e-5, 1e-5));
        // Written again, the kept model is the same repository's model.
        const auto again = repo::write_acur_repo(*kept, dir / "again");
        CHECK(at::allclose(logits(*CausalLM::load(dir / "again")), logits(*unpacked), 1e-6, 1e-6));
      }
    }
  }
}
