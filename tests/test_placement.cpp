// Placement of a model over several devices: the device map and memory flags,
// the planned placement, and on the CPU (several "cpu" entries, host offload
// under a memory cap) the same logits, statistics, perplexity and sensitivity as the resident model.
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/eval/perplexity.h>
#include <cur4llm/io/safetensors.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/device_map.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/util/memory.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <catch2/catch.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <filesystem>
#include <numeric>
#include <set>
#include <fstream>

using namespace cur4llm;
using model::DeviceMap;
using model::PlacementInputs;

namespace {

std::filesystem::path write_temp(const std::string& name, const std::string& text) {
  const auto p = std::filesystem::temp_directory_path() / name;
  std::ofstream(p) << text;
  return p;
}

PlacementInputs inputs(int64_t layers, std::vector<c10::Device> devices = {}, std::map<std::string, int64_t> budget = {}) {
  PlacementInputs in;
  in.num_layers = layers;
  in.layer_bytes = 10;
  in.embed_bytes = 5;
  in.head_bytes = 7;
  in.devices = std::move(devices);
  in.budget = std::move(budget);
  return in;
}

const c10::Device cuda0("cuda:0"), cuda1("cuda:1"), cpu("cpu");

}  // namespace

TEST_CASE("placement: memory sizes", "[placement]") {
  CHECK(model::parse_memory_size("20GiB") == 20LL * 1024 * 1024 * 1024);
  CHECK(model::parse_memory_size("1.5GB") == 1500000000LL);
  CHECK(model::parse_memory_size("512 MiB") == 512LL * 1024 * 1024);
  CHECK(model::parse_memory_size("1000") == 1000);
  CHECK_THROWS_WITH(model::parse_memory_size("12XB"), Catch::Contains("--max_memory") && Catch::Contains("12XB"));
  CHECK_THROWS_AS(model::parse_memory_size("-3GB"), std::invalid_argument);
  const auto caps = model::parse_max_memory("cuda:0=20GiB, cpu=1KB");
  REQUIRE(caps.size() == 2);
  CHECK(caps.at("cuda:0") == 20LL << 30);
  CHECK(caps.at("cpu") == 1000);
  CHECK_THROWS_WITH(model::parse_max_memory("cuda:0"), Catch::Contains("DEVICE=SIZE"));
  CHECK_THROWS_WITH(model::parse_max_memory("cpu=1KB,cpu=2KB"), Catch::Contains("twice"));
  CHECK_THROWS_WITH(model::parse_max_memory("tpu:0=1GB"), Catch::Contains("unknown device \"tpu:0\""));
}

TEST_CASE("placement: device maps as flags and files", "[placement]") {
  CHECK(DeviceMap::parse("auto").automatic);
  const auto m = DeviceMap::parse("cuda:0=0-39,cuda:1=40-79");
  REQUIRE(m.ranges.size() == 2);
  CHECK(m.ranges[0].device == cuda0);
  CHECK(m.ranges[0].first == 0);
  CHECK(m.ranges[0].last == 39);
  CHECK(m.ranges[1].device == cuda1);
  CHECK(m.ranges[1].first == 40);
  const auto two_cpu = DeviceMap::parse("cpu=0-0,cpu=1");
  REQUIRE(two_cpu.ranges.size() == 2);
  CHECK(two_cpu.ranges[1].first == 1);
  CHECK(two_cpu.ranges[1].last == 1);
  const auto object = DeviceMap::parse(write_temp("cur4llm_map_object.json", R"({"cuda:0": "0-3", "cuda:1": "4-7"})").string());
  REQUIRE(object.ranges.size() == 2);
  CHECK(object.ranges[1].device == cuda1);
  CHECK(object.ranges[1].last == 7);
  const auto list = DeviceMap::parse(
      write_temp("cur4llm_map_list.json", R"([{"device": "cpu", "layers": "0-1"}, {"device": "cpu", "layers": "2-3"}])").string());
  REQUIRE(list.ranges.size() == 2);
  CHECK(list.ranges[1].first == 2);
  CHECK_THROWS_WITH(DeviceMap::parse("cpu=3-1"), Catch::Contains("ends before it starts"));
  CHECK_THROWS_WITH(DeviceMap::parse("gpu=0-1"), Catch::Contains("unknown device \"gpu\""));
  CHECK_THROWS_WITH(DeviceMap::parse("cpu"), Catch::Contains("DEVICE=A-B"));
  CHECK_THROWS_WITH(DeviceMap::parse("cpu=a-b"), Catch::Contains("not a layer range"));
  CHECK_THROWS_AS(DeviceMap::parse(write_temp("cur4llm_map_bad.json", "[1, 2").string()), std::runtime_error);
  CHECK_THROWS_AS(DeviceMap::parse("/nonexistent/map.json"), std::runtime_error);
}

TEST_CASE("placement: an explicit map names every layer once, a budget offloads a device's last layers", "[placement]") {
  auto p = model::plan_placement(DeviceMap::parse("cuda:0=0-1,cuda:1=2-3"), inputs(4));
  CHECK(p.layers == std::vector<c10::Device>{cuda0, cuda0, cuda1, cuda1});
  CHECK(p.stage == std::vector<int64_t>{0, 0, 1, 1});
  CHECK(p.embed == cuda0);
  CHECK(p.head == cuda1);
  CHECK(p.num_offloaded() == 0);
  CHECK(p.describe() == "embed cuda:0; layers 0-1 cuda:0, 2-3 cuda:1; head cuda:1");
  CHECK_THROWS_WITH(model::plan_placement(DeviceMap::parse("cpu=0-1,cpu=3-3"), inputs(4)),
                    Catch::Contains("layer 2 is on no device"));
  CHECK_THROWS_WITH(model::plan_placement(DeviceMap::parse("cpu=0-2,cpu=2-3"), inputs(4)),
                    Catch::Contains("layer 2 is placed twice"));
  CHECK_THROWS_WITH(model::plan_placement(DeviceMap::parse("cpu=0-4"), inputs(4)), Catch::Contains("beyond the model's 4"));
  // cuda:1 holds the head (7) and room for one layer (10) within 20 bytes: layer 3 stays in host memory.
  p = model::plan_placement(DeviceMap::parse("cuda:0=0-1,cuda:1=2-3"), inputs(4, {}, {{"cuda:1", 20}}));
  CHECK(p.offloaded == std::vector<bool>{false, false, false, true});
  CHECK(p.layers[3] == cuda1);
  CHECK(p.describe() == "embed cuda:0; layers 0-1 cuda:0, 2 cuda:1, 3 cuda:1 (offloaded); head cuda:1");
}

TEST_CASE("placement: auto spreads the layers by the devices' room", "[placement]") {
  // No caps: equal shares.
  auto p = model::plan_placement(DeviceMap::parse("auto"), inputs(5, {cuda0, cuda1}));
  CHECK(p.layers == std::vector<c10::Device>{cuda0, cuda0, cuda0, cuda1, cuda1});
  CHECK(p.num_offloaded() == 0);
  // Room for 6 layers on cuda:0 (5 + 60) and 2 on cuda:1 (7 + 20): 6 and 2.
  p = model::plan_placement(DeviceMap::parse("auto"), inputs(8, {cuda0, cuda1}, {{"cuda:0", 65}, {"cuda:1", 27}}));
  CHECK(std::count(p.layers.begin(), p.layers.end(), cuda0) == 6);
  CHECK(std::count(p.layers.begin(), p.layers.end(), cuda1) == 2);
  CHECK(p.num_offloaded() == 0);
  CHECK(p.embed == cuda0);
  CHECK(p.head == cuda1);
  // Room for 3 of 8 layers: the 5 others run on the last device from host memory.
  p = model::plan_placement(DeviceMap::parse("auto"), inputs(8, {cuda0, cuda1}, {{"cuda:0", 25}, {"cuda:1", 17}}));
  CHECK(p.offloaded == std::vector<bool>{false, false, false, true, true, true, true, true});
  CHECK(p.layers == std::vector<c10::Device>{cuda0, cuda0, cuda1, cuda1, cuda1, cuda1, cuda1, cuda1});
  CHECK_THROWS_AS(model::plan_placement(DeviceMap::parse("auto"), inputs(2)), std::invalid_argument);
}

TEST_CASE("placement: on the CPU, a mapped or offloaded model computes what the resident one does", "[placement]") {
  const auto folder = test::model_dir("tiny-shakespeare-opt");
  auto resident = model::CausalLM::load(folder);
  model::LoadOptions mapped_options;
  mapped_options.device_map = "cpu=0-0,cpu=1-1";
  auto mapped = model::CausalLM::load(folder, mapped_options);
  model::LoadOptions offload_options;
  offload_options.device_map = "auto";
  // Embedding and head 374 KB, a layer 200 KB: room for one of the two layers.
  offload_options.max_memory = "cpu=650KB";
  auto offloaded = model::CausalLM::load(folder, offload_options);

  CHECK(resident->placement() == nullptr);
  REQUIRE(mapped->placement() != nullptr);
  CHECK(mapped->placement()->stage == std::vector<int64_t>{0, 1});
  CHECK(mapped->placement()->num_offloaded() == 0);
  REQUIRE(offloaded->placement() != nullptr);
  INFO(offloaded->placement()->describe());
  CHECK(offloaded->placement()->num_offloaded() >= 1);
  CHECK(offloaded->placement()->num_offloaded() < 2);  // the cap leaves room for one layer

  const auto samples = test::make_samples({24, 24, 24}, resident->config().vocab_size, 5);
  auto ids = at::empty({3, 24}, at::kLong);
  for (int64_t r = 0; r < 3; ++r) std::copy(samples[r].begin(), samples[r].end(), ids[r].data_ptr<int64_t>());
  {
    c10::InferenceMode guard;
    const auto want = resident->forward(ids);
    CHECK(mapped->forward(ids).equal(want));
    util::reset_memory_peaks();
    CHECK(offloaded->forward(ids).equal(want));
    // The offloaded layer's tensors were staged once, and counted: an OPT layer of hidden h and
    // MLP width f holds 4 (h^2 + h) attention, (f h + f) + (h f + h) MLP and 2 x 2h norm floats.
    const int64_t h = resident->config().hidden_size, f = resident->config().intermediate_size;
    REQUIRE(h == 64);
    REQUIRE(f == 256);
    CHECK(util::memory_peaks().offload_bytes == (4 * (h * h + h) + (f * h + f) + (h * f + h) + 4 * h) * 4);
    CHECK(mapped->forward(ids).equal(want));
    CHECK(util::memory_peaks().offload_bytes == (4 * (h * h + h) + (f * h + f) + (h * f + h) + 4 * h) * 4);
  }
  // The offloaded layer's weights are back where they live after the call.
  const int64_t last = offloaded->num_layers() - 1;
  CHECK(offloaded->layer_offloaded(last));
  CHECK(offloaded->dense_linear("model.decoder.layers.1.fc1").weight().is_cpu());
  CHECK(offloaded->dense_linear("model.decoder.layers.1.fc1").weight().equal(
      resident->dense_linear("model.decoder.layers.1.fc1").weight()));

  // Grouped projections: the resident layer's q/k/v become one product; the offloaded one stays
  // apart (its tensors are staged for each call), and the model still computes the same.
  {
    auto grouped = model::CausalLM::load(folder, offload_options);
    CHECK(grouped->group_projections() == grouped->num_layers() - grouped->placement()->num_offloaded());
    c10::InferenceMode guard;
    CHECK(at::allclose(grouped->forward(ids), resident->forward(ids), 1e-5, 1e-5));
  }

  // Activation statistics, one sample per batch: the same sums, and the offloaded layer copied in
  // once for the three batches (they pass it together).
  {
    calib::CollectOptions co;
    co.gram = true;
    co.abs_max = true;
    co.batch_size = 1;
    const auto want = calib::collect_statistics(*resident, samples, co);
    util::reset_memory_peaks();
    const auto got = calib::collect_statistics(*offloaded, samples, co);
    CHECK(util::memory_peaks().offload_bytes == 199936);  // one copy of layer 1 (h = 64, f = 256)
    REQUIRE(got.layer_names() == want.layer_names());
    for (const auto& name : want.layer_names()) {
      INFO(name);
      CHECK(got.layer(name).samples == want.layer(name).samples);
      CHECK(got.layer(name).tokens == want.layer(name).tokens);
      CHECK(got.layer(name).abs_mean_sum.equal(want.layer(name).abs_mean_sum));
      CHECK(got.layer(name).abs_max.equal(want.layer(name).abs_max));
      CHECK(got.layer(name).gram.equal(want.layer(name).gram));
    }
  }

  // The sweep: the same table, entry for entry, with the 3 samples in one batch and in three.
  const auto compressor = compress::make_compressor("svd");
  for (const int64_t batch_size : {0, 1}) {
    INFO("batch size " << batch_size);
    sensitivity::SweepOptions sweep;
    sweep.candidates = {0.5, 0.8};
    sweep.batch_size = batch_size;
    const auto want = sensitivity::ppl_sensitivity(*resident, samples, *compressor, {}, sweep);
    for (auto* lm : {mapped.get(), offloaded.get()}) {
      util::reset_memory_peaks();
      const auto got = sensitivity::ppl_sensitivity(*lm, samples, *compressor, {}, sweep);
      if (lm == mapped.get()) CHECK(util::memory_peaks().offload_bytes == 0);
      if (lm == offloaded.get()) {
        // The offloaded layer 1 is copied in, whatever the number of batches: whole once per slot
        // of layer 0 (every candidate's batches pass it together) and once to bring the hidden
        // states past it when a slot after the decoder layers (lm_head) is swept; and once per
        // candidate of a slot of layer 1, with that candidate in place of the slot (at most a
        // layer's bytes). Entry by entry, a slot of layer 0 would copy it once per candidate.
        const int64_t layer_bytes = 199936;  // the count checked above for h = 64, f = 256
        int64_t whole = 0, with_candidate = 0;
        bool after_layers = false;
        std::set<std::string> swept;
        for (const auto& e : want.entries()) swept.insert(e.layer);
        for (const auto& layer : swept) {
          if (layer.find("layers.0.") != std::string::npos) {
            whole += 1;
          } else if (layer.find("layers.1.") != std::string::npos) {
            with_candidate += static_cast<int64_t>(sweep.candidates.size());
          } else {
            after_layers = true;
          }
        }
        whole += after_layers ? 1 : 0;
        REQUIRE(whole >= 6);
        CHECK(util::memory_peaks().offload_bytes > whole * layer_bytes);
        CHECK(util::memory_peaks().offload_bytes <= (whole + with_candidate) * layer_bytes);
      }
      REQUIRE(got.size() == want.size());
      for (size_t i = 0; i < got.size(); ++i) {
        INFO(want.entries()[i].layer << " at " << want.entries()[i].ratio);
        CHECK(got.entries()[i].layer == want.entries()[i].layer);
        CHECK(got.entries()[i].score == Approx(want.entries()[i].score).epsilon(1e-9));
      }
    }
  }
}

TEST_CASE("placement: several offloaded layers in a row, each copied in once per pass", "[placement]") {
  // Every decoder layer offloaded: while one runs, the next is copied in ahead of it.
  const auto folder = test::model_dir("gemma2_softcap");
  auto resident = model::CausalLM::load(folder);
  model::LoadOptions options;
  options.device_map = "auto";
  options.max_memory = "cpu=1KB";
  auto offloaded = model::CausalLM::load(folder, options);
  REQUIRE(offloaded->placement() != nullptr);
  const int64_t n = offloaded->num_layers();
  REQUIRE(n == 4);
  REQUIRE(offloaded->placement()->num_offloaded() == n);
  // The bytes of each layer's tensors as the checkpoint stores them, as float32.
  std::vector<int64_t> layer_bytes(static_cast<size_t>(n), 0);
  const auto ckpt = io::Checkpoint::open(folder);
  for (const auto& name : ckpt.names()) {
    const auto at = name.find("layers.");
    if (at == std::string::npos) continue;
    int64_t numel = 1;
    for (auto d : ckpt.info(name).shape) numel *= d;
    layer_bytes.at(static_cast<size_t>(std::stoll(name.substr(at + 7)))) += numel * 4;
  }
  const int64_t all = std::accumulate(layer_bytes.begin(), layer_bytes.end(), int64_t{0});

  const auto samples = test::make_samples({16, 16}, resident->config().vocab_size, 9);
  auto ids = at::empty({2, 16}, at::kLong);
  for (int64_t r = 0; r < 2; ++r) std::copy(samples[r].begin(), samples[r].end(), ids[r].data_ptr<int64_t>());
  c10::InferenceMode guard;
  util::reset_memory_peaks();
  CHECK(offloaded->forward(ids).equal(resident->forward(ids)));
  CHECK(util::memory_peaks().offload_bytes == all);

  // Two batches through layers [1, 4): layers 1 to 3 once each, whatever the number of batches.
  std::vector<at::Tensor> want{resident->embed(ids.slice(0, 0, 1)), resident->embed(ids.slice(0, 1, 2))};
  std::vector<at::Tensor> got = want;
  for (auto& h : want) {
    for (int64_t i = 1; i < n; ++i) h = resident->layer(i, h);
  }
  util::reset_memory_peaks();
  offloaded->layers(1, n, got);
  CHECK(util::memory_peaks().offload_bytes == all - layer_bytes[0]);
  REQUIRE(got.size() == 2);
  for (size_t b = 0; b < 2; ++b) CHECK(got[b].equal(want[b]));
}

TEST_CASE("placement: perplexity with offloaded layers equals the resident one, a layer copied once per group", "[placement]") {
  const auto folder = test::model_dir("tiny-shakespeare-opt");
  auto resident = model::CausalLM::load(folder);
  model::LoadOptions offload_options;
  offload_options.device_map = "auto";
  offload_options.max_memory = "cpu=650KB";  // room for one of the two layers (see above)
  auto offloaded = model::CausalLM::load(folder, offload_options);
  REQUIRE(offloaded->placement() != nullptr);
  const int64_t offloaded_layers = offloaded->placement()->num_offloaded();
  REQUIRE(offloaded_layers == 1);
  const int64_t layer_bytes = 199936;  // an OPT layer of h = 64, f = 256 (checked above)
  const int64_t h = resident->config().hidden_size;
  REQUIRE(h == 64);

  // 6 windows of 16 tokens; a window's hidden states take 16 x 64 fp32 = 4 KiB.
  const auto text = test::make_samples({6 * 16}, resident->config().vocab_size, 11).front();
  const int64_t window_bytes = 16 * h * 4;
  struct Case {
    int64_t batch_size, group_bytes, groups;
  };
  for (const Case& c : {Case{1, int64_t{1} << 30, 1},      // the default budget: all 6 windows at once
                        Case{1, 2 * window_bytes, 3},       // 2 windows a group
                        Case{2, 4 * window_bytes, 2},       // batches {0,1} {2,3} | {4,5}
                        Case{2, 3 * window_bytes, 3},       // a second batch would pass the budget
                        Case{4, 1, 2}}) {                   // a budget below one batch: a batch a group
    INFO("batch size " << c.batch_size << ", group bytes " << c.group_bytes);
    eval::PerplexityOptions o;
    o.seqlen = 16;
    o.batch_size = c.batch_size;
    o.offload_group_bytes = c.group_bytes;
    const auto want = eval::evaluate_perplexity(*resident, text, o);
    REQUIRE(want.windows == 6);
    util::reset_memory_peaks();
    const auto got = eval::evaluate_perplexity(*offloaded, text, o);
    CHECK(util::memory_peaks().offload_bytes == offloaded_layers * layer_bytes * c.groups);
    CHECK(got.window_nll == want.window_nll);  // the same arithmetic per window: equal, not close
    CHECK(got.perplexity == want.perplexity);
  }

  // Calibration samples of two lengths, one per batch: equal values, one copy for the 4 batches.
  const auto samples = test::make_samples({24, 20, 24, 20}, resident->config().vocab_size, 12);
  eval::PerplexityOptions o;
  const auto want = eval::samples_perplexity(*resident, samples, o);
  util::reset_memory_peaks();
  const auto got = eval::samples_perplexity(*offloaded, samples, o);
  CHECK(util::memory_peaks().offload_bytes == offloaded_layers * layer_bytes);
  CHECK(got.window_nll == want.window_nll);
  CHECK(got.perplexity == want.perplexity);
  // A resident model copies nothing.
  util::reset_memory_peaks();
  CHECK(eval::samples_perplexity(*resident, samples, o).window_nll == want.window_nll);
  CHECK(util::memory_peaks().offload_bytes == 0);
}

TEST_CASE("CUDA: offloaded layers copied in ahead on a side stream give the resident model's logits", "[placement][cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  // Six layers of 51 MB (float32); the cap leaves the device room for two beside the
  // embedding and the head, so four run from pinned host memory, each next one copied in
  // while the one before it runs.
  const auto config = model::ModelConfig::from_json(
      R"({"model_type": "llama", "vocab_size": 512, "hidden_size": 1024, "num_hidden_layers": 6,
          "intermediate_size": 2816, "num_attention_heads": 8, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
          "max_position_embeddings": 4096, "hidden_act": "silu"})",
      "config");
  const int64_t h = 1024, f = 2816;
  const int64_t layer_bytes = (4 * h * h + 3 * h * f + 2 * h) * 4;
  model::LoadOptions resident_options;
  resident_options.device = c10::Device(c10::kCUDA);
  resident_options.dtype = at::kFloat;
  model::LoadOptions offload_options = resident_options;
  offload_options.device_map = "auto";
  offload_options.max_memory = "cuda:0=110MB";
  // The same draws for both: the device's generator from the same seed, in the same order.
  at::manual_seed(11);
  auto resident = model::CausalLM::random(config, resident_options, 11);
  at::manual_seed(11);
  auto offloaded = model::CausalLM::random(config, offload_options, 11);
  REQUIRE(offloaded->placement() != nullptr);
  INFO(offloaded->placement()->describe());
  REQUIRE(offloaded->placement()->num_offloaded() == 4);
  CHECK(offloaded->dense_linear("model.layers.5.mlp.up_proj").weight().is_cpu());
  CHECK(offloaded->dense_linear("model.layers.5.mlp.up_proj").weight().equal(
      resident->dense_linear("model.layers.5.mlp.up_proj").weight().cpu()));

  c10::InferenceMode guard;
  const auto ids = at::randint(512, {2, 64}, at::TensorOptions().dtype(at::kLong));
  const auto want = resident->forward(ids);
  resident.reset();
  for (int pass = 0; pass < 3; ++pass) {
    INFO("pass " << pass);
    util::reset_memory_peaks();
    const auto got = offloaded->forward(ids);
    CHECK(at::allclose(got, want, 1e-5, 1e-5));
    const auto peaks = util::memory_peaks();
    CHECK(peaks.offload_bytes == 4 * layer_bytes);
    // At most two offloaded layers on the device at once, beside the two resident ones and
    // the embedding and head (4 MiB); the hidden states of 128 tokens are small.
    REQUIRE(!peaks.devices.empty());
    CHECK(peaks.devices.front().second <= 4 * layer_bytes + (8 << 20) + (16 << 20));
  }
  // Rows one at a time, their hidden states parked in host memory between layers (pinned,
  // copied without waiting): what the evaluation and the statistics do with offloaded layers.
  std::vector<at::Tensor> rows{offloaded->embed(ids.narrow(0, 0, 1)), offloaded->embed(ids.narrow(0, 1, 1))};
  offloaded->layers(0, offloaded->num_layers(), rows, /*park_on_host=*/true);
  for (int64_t r = 0; r < 2; ++r) {
    INFO("row " << r);
    CHECK(rows[static_cast<size_t>(r)].is_cpu());
    const auto logits = offloaded->head(rows[static_cast<size_t>(r)].to(offloaded->head_device()));
    CHECK(at::allclose(logits, want.narrow(0, r, 1), 1e-4, 1e-4));
  }
  // Back in host memory after the pass, pinned for the next copies.
  const auto& w = offloaded->dense_linear("model.layers.5.mlp.up_proj").weight();
  CHECK(w.is_cpu());
  CHECK(w.is_pinned());
}
