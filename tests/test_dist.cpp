// Several processes: the shares, the table messages, the launcher's variables,
// and two ranks as threads of this process over c10d Gloo on 127.0.0.1 against
// one process (statistics and the sensitivity sweep).
#include <cur4llm/calib/statistics.h>
#include <cur4llm/compress/factory.h>
#include <cur4llm/dist/group.h>
#include <cur4llm/dist/work.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/pipeline/pipeline.h>
#include <cur4llm/sensitivity/sensitivity.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include "test_helpers.h"
#include "test_paths.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <thread>

using namespace cur4llm;

namespace {

// A TCP port the kernel just handed out on 127.0.0.1.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::vector<std::vector<int64_t>> token_samples(int64_t n, int64_t length, int64_t vocab) {
  std::vector<std::vector<int64_t>> out;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> s;
    for (int64_t t = 0; t < length; ++t) s.push_back((i * 131 + t * 17 + 7) % vocab);
    out.push_back(s);
  }
  return out;
}

// Runs f(rank group) for every rank of a `world`-rank group, each rank a thread;
// returns each rank's error ("" for none).
template <typename F>
std::vector<std::string> ranks_errors(int world, F&& f) {
  const int port = free_port();
  std::vector<std::string> errors(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        dist::LaunchEnvironment env;
        env.rank = rank;
        env.world_size = world;
        env.master_port = port;
        dist::GroupOptions options;
        options.timeout_s = 120;
        options.heartbeat_timeout_s = 120;
        auto group = dist::Group::join(env, options);
        f(*group);
        group->finish();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

template <typename F>
void run_ranks(int world, F&& f) {
  const auto errors = ranks_errors(world, std::forward<F>(f));
  for (int rank = 0; rank < world; ++rank) {
    INFO("rank " << rank);
    CHECK(errors[static_cast<size_t>(rank)].empty());
  }
}

}  // namespace

TEST_CASE("dist: balance gives the longest items first to the least loaded rank", "[dist]") {
  // 5 -> r0, 4 -> r1, 3 -> r1 (4 < 5), 3 -> r0 (5 < 7), 2 -> r1 (7 < 8), 1 -> r0 (8 < 9).
  CHECK(dist::balance({5, 4, 3, 3, 2, 1}, 2) == std::vector<int>{0, 1, 1, 0, 1, 0});
  CHECK(dist::balance({1, 1, 1}, 1) == std::vector<int>{0, 0, 0});
  CHECK(dist::balance({}, 3).empty());
  CHECK_THROWS_AS(dist::balance({1}, 0), std::invalid_argument);
}

TEST_CASE("dist: contiguous shares cover every item once", "[dist]") {
  CHECK(dist::contiguous_share(8, 0, 3) == std::pair<size_t, size_t>{0, 2});
  CHECK(dist::contiguous_share(8, 1, 3) == std::pair<size_t, size_t>{2, 5});
  CHECK(dist::contiguous_share(8, 2, 3) == std::pair<size_t, size_t>{5, 8});
  CHECK(dist::contiguous_share(5, 0, 1) == std::pair<size_t, size_t>{0, 5});
  CHECK_THROWS_AS(dist::contiguous_share(5, 3, 3), std::invalid_argument);
}

TEST_CASE("dist: a table message keeps every score exactly, inf and NaN included", "[dist]") {
  search::SensitivityTable t("ppl");
  t.add("model.layers.1.mlp.up_proj", 0.45, 12.345678901234567);
  t.add("model.layers.1.mlp.up_proj", 0.1 + 0.2, std::numeric_limits<double>::infinity());
  t.add("lm_head", 0.95, std::nan(""));
  const auto back = dist::table_from_bytes(dist::table_to_bytes(t));
  REQUIRE(back.size() == 3);
  CHECK(back.metric() == "ppl");
  CHECK(back.entries()[0].layer == "model.layers.1.mlp.up_proj");
  CHECK(back.entries()[0].ratio == 0.45);
  CHECK(back.entries()[0].score == 12.345678901234567);
  CHECK(back.entries()[1].ratio == 0.1 + 0.2);
  CHECK(std::isinf(back.entries()[1].score));
  CHECK(back.entries()[2].layer == "lm_head");
  CHECK(std::isnan(back.entries()[2].score));
  CHECK_THROWS_AS(dist::table_from_bytes("ppl\nno tabs here\n"), std::runtime_error);
  CHECK_THROWS_AS(dist::table_from_bytes(""), std::runtime_error);
}

TEST_CASE("dist: a swept layer costs its candidates' forward passes and one decomposition", "[dist]") {
  auto lm = model::CausalLM::load(test::model_dir("tiny-shakespeare-opt"));
  REQUIRE(lm->num_layers() == 2);
  REQUIRE(lm->config().hidden_size == 64);
  REQUIRE(lm->config().intermediate_size == 256);
  REQUIRE(lm->config().vocab_size == 601);
  // Multiply-adds per token: a layer's q, k, v, out_proj (64 x 64) and fc1, fc2 (256 x 64); lm_head 601 x 64.
  const double layer = 4 * 64 * 64 + 2 * 256 * 64, head = 601 * 64;
  dist::SweepCostOptions o;
  o.calibration_tokens = 100;
  o.candidates = 3;
  o.prepare_cost = 2;
  const std::vector<std::string> names{"model.decoder.layers.0.fc1", "model.decoder.layers.1.fc1",
                                       "model.decoder.layers.1.self_attn.q_proj", "lm_head"};
  auto costs = dist::sweep_costs(*lm, names, o);
  REQUIRE(costs.size() == 4);
  CHECK(costs[0] == Approx(300 * (2 * layer + head) + 2.0 * 256 * 64 * 64));
  CHECK(costs[1] == Approx(300 * (layer + head) + 2.0 * 256 * 64 * 64));
  CHECK(costs[2] == Approx(300 * (layer + head) + 2.0 * 64 * 64 * 64));
  CHECK(costs[3] == Approx(300 * head + 2.0 * 601 * 64 * 64));
  // Forward passes alone: the later the layer, the cheaper; lm_head the cheapest.
  o.prepare_cost = 0;
  costs = dist::sweep_costs(*lm, names, o);
  CHECK(costs[0] > costs[1]);
  CHECK(costs[3] == Approx(300 * head));
  // A costly decomposition of the largest matrix (lm_head) puts it first in the split.
  o.prepare_cost = 40;
  o.calibration_tokens = 16;
  costs = dist::sweep_costs(*lm, names, o);
  CHECK(costs[3] > costs[0]);
  CHECK(dist::balance(costs, 2) == std::vector<int>{1, 1, 1, 0});
  CHECK_THROWS_AS(dist::sweep_costs(*lm, {"model.decoder.layers.7.fc1"}), std::invalid_argument);
}

TEST_CASE("dist: the launcher's variables", "[dist]") {
  SECTION("unset: one process") {
    test::ScopedEnv w("WORLD_SIZE", std::nullopt), r("RANK", std::nullopt);
    const auto env = dist::LaunchEnvironment::read();
    CHECK(env.world_size == 1);
    CHECK(env.rank == 0);
    auto group = dist::Group::from_environment();
    CHECK_FALSE(group->distributed());
    CHECK(group->is_root());
  }
  SECTION("a rank outside the world is refused, naming RANK") {
    test::ScopedEnv w("WORLD_SIZE", "2"), r("RANK", "2"), p("MASTER_PORT", "29999");
    CHECK_THROWS_WITH(dist::LaunchEnvironment::read(), Catch::Contains("RANK=\"2\""));
  }
  SECTION("WORLD_SIZE without RANK is refused") {
    test::ScopedEnv w("WORLD_SIZE", "2"), r("RANK", std::nullopt), p("MASTER_PORT", "29999");
    CHECK_THROWS_WITH(dist::LaunchEnvironment::read(), Catch::Contains("needs RANK"));
  }
  SECTION("a port that is not a number") {
    test::ScopedEnv w("WORLD_SIZE", "2"), r("RANK", "0"), p("MASTER_PORT", "http");
    CHECK_THROWS_WITH(dist::LaunchEnvironment::read(), Catch::Contains("MASTER_PORT"));
  }
}

TEST_CASE("dist: each rank on a host gets its own CUDA devices", "[dist]") {
  // Nothing listed: the host's devices by index, K consecutive ones per local rank.
  CHECK(dist::rank_cuda_devices("", 0, 1) == "0");
  CHECK(dist::rank_cuda_devices("", 3, 1) == "3");
  CHECK(dist::rank_cuda_devices("", 1, 2) == "2,3");
  CHECK(dist::rank_cuda_devices("", 2, 4) == "8,9,10,11");
  // A list: this rank's share of it, whatever its entries are (indices or UUIDs).
  CHECK(dist::rank_cuda_devices("4,5,6,7", 1, 1) == "5");
  CHECK(dist::rank_cuda_devices("4, 5 ,6,7", 1, 2) == "6,7");
  CHECK(dist::rank_cuda_devices("GPU-a,GPU-b,GPU-c", 2, 1) == "GPU-c");
  // Exactly K listed: the launcher bound this rank already (Slurm's --gpus-per-task).
  CHECK(dist::rank_cuda_devices("6", 3, 1) == "6");
  CHECK(dist::rank_cuda_devices("2,3", 5, 2) == "2,3");
  // Too few for this rank, or a count below one: refused, naming what was asked.
  CHECK_THROWS_WITH(dist::rank_cuda_devices("0,1,2", 1, 2),
                    Catch::Contains("local rank 1") && Catch::Contains("--gpus_per_rank 2") &&
                        Catch::Contains("2 to 3") && Catch::Contains("lists 3"));
  CHECK_THROWS_WITH(dist::rank_cuda_devices("", 0, 0), Catch::Contains("--gpus_per_rank must be 1 or more"));
  // The variable is set for this process.
  test::ScopedEnv visible("CUDA_VISIBLE_DEVICES", "0,1,2,3");
  CHECK(dist::bind_cuda_devices(1, 2) == "2,3");
  CHECK(std::string(std::getenv("CUDA_VISIBLE_DEVICES")) == "2,3");
}

TEST_CASE("dist: the single group does every collective locally", "[dist]") {
  auto group = dist::Group::single();
  auto t = at::arange(3, at::kFloat);
  group->all_reduce_sum(t);
  CHECK(t.equal(at::arange(3, at::kFloat)));
  CHECK(group->all_gather("x") == std::vector<std::string>{"x"});
  CHECK(group->all_true(true));
  CHECK_FALSE(group->all_true(false));
  CHECK_NOTHROW(group->check_same("anything", "a"));
}

TEST_CASE("dist: two ranks over Gloo give one process's statistics and sensitivity table", "[dist][gloo]") {
  if (!dist::available()) {
    WARN("SKIPPED: built without c10d (CUR4LLM_WITH_DIST=OFF)");
    return;
  }
  const auto folder = test::model_dir("tiny-shakespeare-opt");
  auto reference_lm = model::CausalLM::load(folder);
  const auto samples = token_samples(5, 24, reference_lm->config().vocab_size);
  calib::CollectOptions copts;
  copts.abs_max = true;
  copts.gram = true;
  const auto reference_stats = calib::collect_statistics(*reference_lm, samples, copts);
  const auto compressor = compress::make_compressor("cur");
  sensitivity::SweepOptions sweep;
  sweep.candidates = {0.5, 0.8};
  auto scale_of = [](const calib::ActivationStatistics& stats) {
    return [&stats](const std::string& layer) { return stats.scale(layer, calib::ScalingMethod::AbsMean, 0.5); };
  };
  const auto reference_table =
      sensitivity::ppl_sensitivity(*reference_lm, samples, *compressor, scale_of(reference_stats), sweep);

  std::vector<calib::ActivationStatistics> stats(2);
  std::vector<search::SensitivityTable> tables(2);
  std::vector<std::string> mismatch(2);
  run_ranks(2, [&](dist::Group& group) {
    auto lm = model::CausalLM::load(folder);
    const auto r = static_cast<size_t>(group.rank());
    stats[r] = dist::collect_statistics(*lm, samples, copts, group);
    tables[r] = dist::ppl_sensitivity(*lm, samples, *compressor, scale_of(stats[r]), sweep, group);
    try {
      group.check_same("the test value", group.rank() == 0 ? "alpha=0.5\nseed=1\n" : "alpha=0.5\nseed=2\n");
    } catch (const std::invalid_argument& e) {
      mismatch[r] = e.what();
    }
  });

  for (size_t r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(mismatch[r].find("rank 1 has \"seed=2\" where rank 0 has \"seed=1\"") != std::string::npos);
    for (const auto& name : reference_stats.layer_names()) {
      INFO(name);
      const auto& a = stats[r].layer(name);
      const auto& b = reference_stats.layer(name);
      CHECK(a.samples == b.samples);
      CHECK(a.tokens == b.tokens);
      CHECK(at::allclose(a.abs_mean_sum, b.abs_mean_sum, 1e-6, 0));
      CHECK(a.abs_max.equal(b.abs_max));
      CHECK(at::allclose(a.gram, b.gram, 1e-6, 1e-9));
    }
    const auto& got = tables[r].entries();
    const auto& want = reference_table.entries();
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) {
      INFO(want[i].layer << " at " << want[i].ratio);
      CHECK(got[i].layer == want[i].layer);
      CHECK(got[i].ratio == want[i].ratio);
      CHECK(std::abs(got[i].score - want[i].score) <= 1e-6 * std::abs(want[i].score));
    }
  }
}

TEST_CASE("dist: the pipeline refuses ranks whose options differ, and agrees when they do not", "[dist][gloo]") {
  if (!dist::available()) {
    WARN("SKIPPED: built without c10d (CUR4LLM_WITH_DIST=OFF)");
    return;
  }
  const auto folder = test::model_dir("tiny-shakespeare-opt");
  auto options_for = [](int rank, bool differ) {
    pipeline::PipelineOptions o;
    o.param_ratio_target = 0.8;
    o.method = "svd";
    o.calib_dataset = (test::fixture_dir() / "text" / "shakespeare_tail.txt").string();
    o.n_calib_samples = 4;
    o.seqlen = 32;
    o.batch_size = 2;
    o.candidates = {0.5, 0.8};
    o.show_progress = false;
    o.alpha = differ && rank == 1 ? 0.25 : 0.5;
    return o;
  };
  const auto errors = ranks_errors(2, [&](dist::Group& group) {
    auto lm = model::CausalLM::load(folder);
    auto tokenizer = tokenize::load_tokenizer(folder);
    auto o = options_for(group.rank(), true);
    o.group = std::shared_ptr<dist::Group>(&group, [](dist::Group*) {});
    try {
      pipeline::compress_model(*lm, *tokenizer, o);
    } catch (...) {
      // Both ranks refuse at the same point: end in order, so that neither
      // rank's watchdog sees the other's store go (it would end this process).
      group.finish();
      throw;
    }
  });
  for (const auto& e : errors) {
    CHECK_THAT(e, Catch::Contains("the ranks disagree on the model and the pipeline options") &&
                      Catch::Contains("rank 1 has \"alpha=0.25\" where rank 0 has \"alpha=0.5\""));
  }

  // The same options: both ranks reach one process's plan.
  auto lm = model::CausalLM::load(folder);
  auto tokenizer = tokenize::load_tokenizer(folder);
  const auto want = pipeline::compress_model(*lm, *tokenizer, options_for(0, false)).plan.to_json();
  std::vector<std::string> plans(2);
  run_ranks(2, [&](dist::Group& group) {
    auto rank_lm = model::CausalLM::load(folder);
    auto rank_tokenizer = tokenize::load_tokenizer(folder);
    auto o = options_for(group.rank(), false);
    o.group = std::shared_ptr<dist::Group>(&group, [](dist::Group*) {});
    plans[static_cast<size_t>(group.rank())] = pipeline::compress_model(*rank_lm, *rank_tokenizer, o).plan.to_json();
  });
  CHECK(plans[0] == want);
  CHECK(plans[1] == want);
}

TEST_CASE("dist: selfgen samples generated in shares by two ranks are one process's samples", "[dist][gloo][selfgen]") {
  if (!dist::available()) {
    WARN("SKIPPED: built without c10d (CUR4LLM_WITH_DIST=OFF)");
    return;
  }
  const auto folder = test::model_dir("tiny-shakespeare-opt");
  pipeline::PipelineOptions o;
  o.calib_dataset = "selfgen";
  o.data_dir = test::fixture_dir() / "selfgen";
  o.n_calib_samples = 5;  // 3 on rank 0, 2 on rank 1
  o.seqlen = 20;
  o.show_progress = false;
  o.method = "cur";
  const auto lm = model::CausalLM::load(folder);
  const auto tokenizer = tokenize::load_tokenizer(folder);
  const auto want = pipeline::calibration_samples(*lm, *tokenizer, o);
  REQUIRE(want.size() == 5);
  std::vector<std::vector<std::vector<int64_t>>> got(2);
  run_ranks(2, [&](dist::Group& group) {
    auto rank_lm = model::CausalLM::load(folder);
    auto rank_tokenizer = tokenize::load_tokenizer(folder);
    auto ro = o;
    ro.group = std::shared_ptr<dist::Group>(&group, [](dist::Group*) {});
    got[static_cast<size_t>(group.rank())] = pipeline::calibration_samples(*rank_lm, *rank_tokenizer, ro);
  });
  CHECK(got[0] == want);
  CHECK(got[1] == want);
}
