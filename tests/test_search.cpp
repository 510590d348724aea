// Tests for cur4llm::search: the sensitivity table, the reference's binary
// search, stable-rank scores and the compression plan.
//
// Every expected allocation, ratio and probe sequence below is worked out by
// hand in the comments (from PROTOCOL.md and binary_search.py), never taken
// from the code under test. Ratios 0.5/0.75 and numels of 100s keep the sums
// exact in binary, so "ratio == target" ties are real ties.

#include "test_paths.h"
#include "test_helpers.h"

#include <cur4llm/io/files.h>

#include <cur4llm/search/binary_search.h>
#include <cur4llm/search/lagrangian.h>
#include <cur4llm/search/compression_plan.h>
#include <cur4llm/search/sensitivity_table.h>
#include <cur4llm/search/stable_rank.h>

#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace cur4llm::search;
using Catch::Matchers::Contains;

using cur4llm::test::TempDir;

namespace {

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
}


// Layers A, B (numel 100) and C (numel 200): 400 parameters.
// Sorted by score descending:
//   pos 0 C@0.5 (40), 1 A@0.5 (30), 2 B@0.5 (20), 3 A@0.75 (12), 4 B@0.75 (11), 5 C@0.75 (10); n = 6.
// C@1.0 is no candidate in weights mode. Nominal ratio at each cut p:
//   p0: A.5 B.5 C.5   -> (50+50+100)/400  = 0.5
//   p1: A.5 B.5 C.75  -> (50+50+150)/400  = 0.625
//   p2: A.75 B.5 C.75 -> (75+50+150)/400  = 0.6875
//   p3: all 0.75      -> 300/400          = 0.75
//   p4: A1 B.75 C.75  -> (100+75+150)/400 = 0.8125
//   p5: A1 B1 C.75    -> 350/400          = 0.875
//   p6: dense         -> 1
SensitivityTable abc_table() {
  SensitivityTable t("ppl");
  t.add("A", 0.5, 30);
  t.add("A", 0.75, 12);
  t.add("B", 0.5, 20);
  t.add("B", 0.75, 11);
  t.add("C", 0.5, 40);
  t.add("C", 0.75, 10);
  t.add("C", 1.0, 5);
  return t;
}

std::vector<LayerSize> abc_layers() { return {{"A", 100}, {"B", 100}, {"C", 200}}; }

std::map<std::string, double> ratios_of(const Allocation& a) {
  std::map<std::string, double> out;
  for (const auto& l : a) out[l.layer] = l.ratio;
  return out;
}

std::vector<std::size_t> mids_of(const SearchResult& r) {
  std::vector<std::size_t> out;
  for (const auto& s : r.steps) out.push_back(s.mid);
  return out;
}

SearchOptions reference_mode() {
  SearchOptions o;
  o.final_cut = FinalCut::kReferenceLastMid;
  return o;
}

}  // namespace

TEST_CASE("candidate ratios are exact tenths", "[unit]") {
  CHECK(candidate_ratios(CompressMode::kWeights) == std::vector<double>{0.4, 0.5, 0.6, 0.7, 0.8, 0.9});
  const auto kv = candidate_ratios(CompressMode::kKvCache);
  REQUIRE(kv.size() == 19);
  CHECK(kv.front() == 0.1);
  CHECK(kv[2] == 0.3);        // 0.1 * 3 would be 0.30000000000000004
  CHECK(kv[6] == 0.7);        // 0.1 * 7 would be 0.7000000000000001
  CHECK(kv.back() == 1.9);
  CHECK(stable_rank_candidate_ratios() == std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9});
}

TEST_CASE("sensitivity table keeps insertion order and replaces repeats", "[unit]") {
  SensitivityTable t = abc_table();
  CHECK(t.size() == 7);
  CHECK(t.layers() == std::vector<std::string>{"A", "B", "C"});
  t.add("B", 0.5, 21);
  CHECK(t.size() == 7);
  CHECK(*t.score("B", 0.5) == 21);
  CHECK_FALSE(t.score("B", 0.6));
  CHECK_THROWS_AS(t.add("", 0.5, 1), std::invalid_argument);
  CHECK_THROWS_AS(t.add("A", 0, 1), std::invalid_argument);
  CHECK_THROWS_AS(t.add("A", std::nan(""), 1), std::invalid_argument);
}

TEST_CASE("sorted entries: score descending, ties by layer order then ratio, NaN first", "[unit]") {
  SensitivityTable t;
  t.add("Y", 0.5, 10);
  t.add("X", 0.5, 10);   // X's ratios arrive out of order on purpose
  t.add("X", 0.25, 10);
  t.add("Y", 0.25, 20);
  t.add("Z", 0.5, std::nan(""));
  t.add("Z", 0.75, 1.5);  // kept
  t.add("Z", 1.0, 99);    // ratio >= 1: dropped in weights mode
  // Z@0.5 (NaN = +inf), Y@0.25 (20), then the three 10s: Y before X (Y's first entry comes
  // first in the table), X@0.25 before X@0.5; last Z@0.75 (1.5).
  const auto s = sorted_entries(t, CompressMode::kWeights);
  REQUIRE(s.size() == 6);
  CHECK((s[0].layer == "Z" && s[0].ratio == 0.5));
  CHECK((s[1].layer == "Y" && s[1].ratio == 0.25));
  CHECK((s[2].layer == "Y" && s[2].ratio == 0.5));
  CHECK((s[3].layer == "X" && s[3].ratio == 0.25));
  CHECK((s[4].layer == "X" && s[4].ratio == 0.5));
  CHECK((s[5].layer == "Z" && s[5].ratio == 0.75));
}

TEST_CASE("allocation at each cut and the nominal whole-model ratio", "[unit]") {
  const auto sorted = sorted_entries(abc_table(), CompressMode::kWeights);
  const auto layers = abc_layers();
  const double expected[] = {0.5, 0.625, 0.6875, 0.75, 0.8125, 0.875, 1.0};
  for (std::size_t p = 0; p <= 6; ++p) {
    INFO("cut " << p);
    CHECK(whole_model_ratio(allocation_at(sorted, layers, p, CompressMode::kWeights), layers, CompressMode::kWeights) ==
          expected[p]);
  }
  const Allocation a4 = allocation_at(sorted, layers, 4, CompressMode::kWeights);
  CHECK((a4[0].layer == "A" && a4[0].ratio == 1.0 && !a4[0].compressed));
  CHECK((a4[1].layer == "B" && a4[1].ratio == 0.75 && a4[1].compressed));
  CHECK((a4[2].layer == "C" && a4[2].ratio == 0.75 && a4[2].compressed));
  CHECK_THROWS_AS(allocation_at(sorted, layers, 7, CompressMode::kWeights), std::invalid_argument);
}

TEST_CASE("param target: probes and converged cut", "[unit]") {
  // Target 0.7: mid 2 (0.6875 <= 0.7) low=3; mid 4 (0.8125 > 0.7) high=4; mid 3 (0.75 > 0.7) high=3.
  // low == high == 3 and the last mid is 3: every layer at 0.75, ratio 0.75.
  for (const SearchOptions& o : {SearchOptions{}, reference_mode()}) {
    const SearchResult r = search_param_ratio(abc_table(), abc_layers(), 0.7, o);
    CHECK(mids_of(r) == std::vector<std::size_t>{2, 4, 3});
    CHECK(r.num_entries == 6);
    CHECK(r.cut == 3);
    CHECK(ratios_of(r.allocation) == std::map<std::string, double>{{"A", 0.75}, {"B", 0.75}, {"C", 0.75}});
    CHECK(r.ratio == 0.75);
    CHECK(r.nominal_ratio == 0.75);
  }
  const SearchResult r = search_param_ratio(abc_table(), abc_layers(), 0.7);
  REQUIRE(r.steps.size() == 3);
  CHECK((r.steps[0].low == 0 && r.steps[0].high == 5 && r.steps[0].ratio == 0.6875));
  CHECK((r.steps[1].low == 3 && r.steps[1].high == 5 && r.steps[1].ratio == 0.8125));
  CHECK((r.steps[2].low == 3 && r.steps[2].high == 4 && r.steps[2].ratio == 0.75));
  CHECK(std::isnan(r.steps[0].ppl));
}

TEST_CASE("param target: converged cut versus the reference's last mid", "[unit]") {
  // Target 0.8: mid 2 (0.6875) low=3; mid 4 (0.8125 > 0.8) high=4; mid 3 (0.75) low=4.
  // Converged: cut 4 (A dense, B and C at 0.75, ratio 0.8125). The reference keeps mid = 3 (all 0.75).
  const SearchResult conv = search_param_ratio(abc_table(), abc_layers(), 0.8);
  CHECK(mids_of(conv) == std::vector<std::size_t>{2, 4, 3});
  CHECK(conv.cut == 4);
  CHECK(conv.ratio == 0.8125);
  CHECK(ratios_of(conv.allocation) == std::map<std::string, double>{{"A", 1.0}, {"B", 0.75}, {"C", 0.75}});
  const SearchResult ref = search_param_ratio(abc_table(), abc_layers(), 0.8, reference_mode());
  CHECK(ref.cut == 3);
  CHECK(ref.ratio == 0.75);
}

TEST_CASE("param target: a ratio equal to the target moves low up", "[unit]") {
  // Target 0.75: mid 2 (0.6875) low=3; mid 4 (0.8125) high=4; mid 3: 0.75 is not > 0.75, low=4.
  const SearchResult r = search_param_ratio(abc_table(), abc_layers(), 0.75);
  CHECK(mids_of(r) == std::vector<std::size_t>{2, 4, 3});
  CHECK(r.cut == 4);
  CHECK(r.ratio == 0.8125);
  CHECK(search_param_ratio(abc_table(), abc_layers(), 0.75, reference_mode()).cut == 3);
}

TEST_CASE("param target below every reachable ratio gives the most compressed cut", "[unit]") {
  // Target 0.3: mid 2 (0.6875) high=2; mid 1 (0.625) high=1; mid 0 (0.5) high=0: cut 0, every layer at 0.5.
  for (const SearchOptions& o : {SearchOptions{}, reference_mode()}) {
    const SearchResult r = search_param_ratio(abc_table(), abc_layers(), 0.3, o);
    CHECK(mids_of(r) == std::vector<std::size_t>{2, 1, 0});
    CHECK(r.cut == 0);
    CHECK(r.ratio == 0.5);
    CHECK(ratios_of(r.allocation) == std::map<std::string, double>{{"A", 0.5}, {"B", 0.5}, {"C", 0.5}});
  }
}

TEST_CASE("param target at or above 1 keeps the model dense, unlike the reference", "[unit]") {
  for (double target : {1.0, 1.5}) {
    const SearchResult r = search_param_ratio(abc_table(), abc_layers(), target);
    CHECK(r.steps.empty());
    CHECK(r.cut == 6);
    CHECK(r.ratio == 1.0);
    for (const auto& l : r.allocation) CHECK((l.ratio == 1.0 && !l.compressed));
  }
  // Reference: mid 2 low=3; mid 4 (0.8125 <= 1.5) low=5 == high; it keeps mid 4: ratio 0.8125.
  const SearchResult ref = search_param_ratio(abc_table(), abc_layers(), 1.5, reference_mode());
  CHECK(mids_of(ref) == std::vector<std::size_t>{2, 4});
  CHECK(ref.cut == 4);
  CHECK(ref.ratio == 0.8125);
  // Target 0.9 (between p5's 0.875 and 1): mid 2 low=3; mid 4 low=5: converged cut 5, ratio 0.875.
  const SearchResult r09 = search_param_ratio(abc_table(), abc_layers(), 0.9);
  CHECK(r09.cut == 5);
  CHECK(r09.ratio == 0.875);
}

TEST_CASE("layers absent from the table count at ratio 1", "[unit]") {
  // D (numel 400) has no entries; total 800. Ratio at cut p = (kept_p + 400) / 800:
  //   p0 600/800 = 0.75, p1 650/800 = 0.8125, p2 675/800 = 0.84375.
  // Target 0.8: mid 2 (0.84375) high=2; mid 1 (0.8125) high=1; mid 0 (0.75) low=1. Cut 1.
  auto layers = abc_layers();
  layers.push_back({"D", 400});
  const SearchResult r = search_param_ratio(abc_table(), layers, 0.8);
  CHECK(mids_of(r) == std::vector<std::size_t>{2, 1, 0});
  CHECK(r.cut == 1);
  CHECK(r.ratio == 0.8125);
  CHECK(ratios_of(r.allocation) == std::map<std::string, double>{{"A", 0.5}, {"B", 0.5}, {"C", 0.75}, {"D", 1.0}});
  CHECK(search_param_ratio(abc_table(), layers, 0.8, reference_mode()).cut == 0);
}

TEST_CASE("real-params variant counts what the layers store", "[unit]") {
  // SVD-like counts: A, B are 10x10, C is 10x20; rank = floor(floor(m*n*r)/(m+n)), stored = rank*(m+n):
  //   A/B: 0.5 -> floor(50/20)=2 -> 40; 0.75 -> floor(75/20)=3 -> 60.
  //   C:   0.5 -> floor(100/30)=3 -> 90; 0.75 -> floor(150/30)=5 -> 150.
  // Real ratio at cut p: p0 170/400, p1 230/400, p2 250/400 = 0.625, p3 270/400 = 0.675,
  //   p4 310/400 = 0.775, p5 350/400.
  // Target 0.7: mid 2 (0.625) low=3; mid 4 (0.775) high=4; mid 3 (0.675) low=4. Cut 4, where the
  // nominal ratio is 0.8125. The nominal search stops at cut 3 (see "param target: probes").
  int calls = 0;
  SearchOptions o;
  o.stored_params = [&](const std::string& layer, double ratio) -> std::int64_t {
    ++calls;
    const std::map<std::pair<std::string, double>, std::int64_t> stored{
        {{"A", 0.5}, 40}, {{"A", 0.75}, 60}, {{"B", 0.5}, 40}, {{"B", 0.75}, 60}, {{"C", 0.5}, 90}, {{"C", 0.75}, 150}};
    return stored.at({layer, ratio});
  };
  const SearchResult r = search_param_ratio(abc_table(), abc_layers(), 0.7, o);
  CHECK(calls > 0);
  CHECK(mids_of(r) == std::vector<std::size_t>{2, 4, 3});
  CHECK(r.cut == 4);
  CHECK(r.ratio == Approx(0.775));
  CHECK(r.nominal_ratio == 0.8125);
  CHECK(r.steps[0].ratio == Approx(0.625));
  CHECK(ratios_of(r.allocation) == std::map<std::string, double>{{"A", 1.0}, {"B", 0.75}, {"C", 0.75}});
}

TEST_CASE("perplexity target with a monotone fake perplexity", "[unit]") {
  // Fake ppl = 10 / (nominal ratio), summed here from the allocation:
  //   p0 20, p1 16, p2 14.55, p3 13.33, p4 12.31, p5 11.43.
  // Target 13: mid 2 (14.55 >= 13) low=3; mid 4 (12.31 < 13) high=4; mid 3 (13.33) low=4. Cut 4,
  // after exactly three perplexity runs; the reference keeps mid 3.
  const std::map<std::string, double> numel{{"A", 100}, {"B", 100}, {"C", 200}};
  int calls = 0;
  PerplexityFn fake = [&](const Allocation& a) {
    ++calls;
    double kept = 0;
    for (const auto& l : a) kept += numel.at(l.layer) * l.ratio;
    return 10.0 / (kept / 400.0);
  };
  const SearchResult r = search_perplexity(abc_table(), abc_layers(), 13.0, fake);
  CHECK(calls == 3);
  CHECK(mids_of(r) == std::vector<std::size_t>{2, 4, 3});
  CHECK(r.cut == 4);
  CHECK(r.steps[1].ppl == Approx(10.0 / 0.8125));
  CHECK(r.steps[1].ratio == 0.8125);
  CHECK(ratios_of(r.allocation) == std::map<std::string, double>{{"A", 1.0}, {"B", 0.75}, {"C", 0.75}});
  CHECK(search_perplexity(abc_table(), abc_layers(), 13.0, fake, reference_mode()).cut == 3);
  // Target 100 is met everywhere: mid 2, 1, 0 all go lower; cut 0 (every layer at 0.5).
  const SearchResult loose = search_perplexity(abc_table(), abc_layers(), 100.0, fake);
  CHECK(mids_of(loose) == std::vector<std::size_t>{2, 1, 0});
  CHECK(loose.cut == 0);
  CHECK_THROWS_AS(search_perplexity(abc_table(), abc_layers(), 13.0, PerplexityFn{}), std::invalid_argument);
}

TEST_CASE("KV-cache target over k_proj/v_proj with the ratio halved", "[unit]") {
  // k (numel 100), v (numel 300); q and o are not budgeted. Sorted k/v entries:
  //   pos 0 k@0.5 (30), 1 v@0.5 (20), 2 k@1.5 (12), 3 v@1.5 (11); q@0.5 is ignored. n = 4.
  // KV fraction = (sum numel*ratio over k, v) / 400 / 2, dense k/v counting 2:
  //   p0 (50+150)/400/2 = 0.25; p1 (150+150)/400/2 = 0.375; p2 (150+450)/400/2 = 0.75;
  //   p3 (200+450)/400/2 = 0.8125.
  // Target 0.5: mid 1 (0.375) low=2; mid 2 (0.75 > 0.5) high=2. Cut 2, k and v at 1.5.
  // Target 0.8: mid 1 low=2; mid 2 (0.75) low=3. Cut 3: k dense (2), v at 1.5; reference keeps mid 2.
  SensitivityTable t;
  t.add("l0.q_proj", 0.5, 50);
  t.add("l0.k_proj", 0.5, 30);
  t.add("l0.k_proj", 1.5, 12);
  t.add("l0.v_proj", 0.5, 20);
  t.add("l0.v_proj", 1.5, 11);
  const std::vector<LayerSize> layers{{"l0.q_proj", 100}, {"l0.k_proj", 100}, {"l0.v_proj", 300}, {"l0.o_proj", 100}};
  SearchOptions o;
  o.mode = CompressMode::kKvCache;
  const SearchResult r = search_param_ratio(t, layers, 0.5, o);
  CHECK(r.num_entries == 4);
  CHECK(mids_of(r) == std::vector<std::size_t>{1, 2});
  CHECK(r.steps[0].ratio == 0.375);
  CHECK(r.cut == 2);
  CHECK(r.ratio == 0.75);
  CHECK(ratios_of(r.allocation) ==
        std::map<std::string, double>{{"l0.q_proj", 1.0}, {"l0.k_proj", 1.5}, {"l0.v_proj", 1.5}, {"l0.o_proj", 1.0}});
  CHECK_FALSE(r.allocation[0].compressed);
  CHECK(r.allocation[1].compressed);

  const SearchResult r8 = search_param_ratio(t, layers, 0.8, o);
  CHECK(r8.cut == 3);
  CHECK(r8.ratio == 0.8125);
  CHECK((r8.allocation[1].ratio == 2.0 && !r8.allocation[1].compressed));
  CHECK((r8.allocation[2].ratio == 1.5 && r8.allocation[2].compressed));
  SearchOptions ref = o;
  ref.final_cut = FinalCut::kReferenceLastMid;
  CHECK(search_param_ratio(t, layers, 0.8, ref).cut == 2);

  CHECK_THROWS_AS(search_perplexity(t, layers, 10.0, [](const Allocation&) { return 1.0; }, o), std::invalid_argument);
  SearchOptions with_stored = o;
  with_stored.stored_params = [](const std::string&, double) -> std::int64_t { return 1; };
  CHECK_THROWS_AS(search_param_ratio(t, layers, 0.5, with_stored), std::invalid_argument);
}

TEST_CASE("search rejects bad targets and layers", "[unit]") {
  CHECK_THROWS_AS(search_param_ratio(abc_table(), abc_layers(), 0.0), std::invalid_argument);
  CHECK_THROWS_AS(search_param_ratio(abc_table(), abc_layers(), -1.0), std::invalid_argument);
  CHECK_THROWS_AS(search_param_ratio(abc_table(), abc_layers(), std::nan("")), std::invalid_argument);
  CHECK_THROWS_WITH(search_param_ratio(abc_table(), {{"A", 100}, {"B", 100}}, 0.7), Contains("\"C\""));
  CHECK_THROWS_WITH(search_param_ratio(abc_table(), {{"A", 100}, {"A", 100}, {"C", 200}}, 0.7), Contains("twice"));
  CHECK_THROWS_WITH(search_param_ratio(abc_table(), {{"A", 100}, {"B", 0}, {"C", 200}}, 0.7), Contains("numel"));
  // An empty table searches nothing: the model stays dense. One entry: the loop never runs, cut 0.
  const SearchResult empty = search_param_ratio(SensitivityTable{}, abc_layers(), 0.5, reference_mode());
  CHECK((empty.num_entries == 0 && empty.cut == 0 && empty.ratio == 1.0));
  SensitivityTable one;
  one.add("A", 0.5, 1);
  const SearchResult single = search_param_ratio(one, abc_layers(), 0.5, reference_mode());
  CHECK((single.cut == 0 && single.steps.empty() && single.ratio == 350.0 / 400.0));
}

TEST_CASE("stable-rank scores follow the reference formula", "[unit]") {
  // Singular values 3 and 4: ||W||_F^2 = 25, sigma_max = 4, sr = sqrt(25/16) = 1.25.
  CHECK(stable_rank(25.0, 4.0) == 1.25);
  CHECK(stable_rank_score(1.25, 1.0) == -1.25);
  // 0.5^0.1 = 2^-0.1 = 0.9330329915368074; times -1.25 = -1.1662912394210093.
  CHECK(stable_rank_score(1.25, 0.5) == Approx(-1.1662912394210093).epsilon(1e-14));
  CHECK_THROWS_AS(stable_rank(25.0, 0.0), std::invalid_argument);
  SensitivityTable t("stable_rank");
  add_stable_rank_scores(t, "A", 1.25, stable_rank_candidate_ratios());
  CHECK(t.size() == 9);
  // Larger ratios score lower (more negative), so a layer's 0.9 entry sorts last and is applied first.
  const auto s = sorted_entries(t, CompressMode::kWeights);
  CHECK(s.front().ratio == 0.1);
  CHECK(s.back().ratio == 0.9);
}

TEST_CASE("sensitivity table JSON round trip", "[unit][io]") {
  TempDir dir;
  SensitivityTable t("ppl");
  t.meta()["model"] = "facebook/opt-125m";
  t.meta()["alpha"] = "0.5";
  for (double r : candidate_ratios(CompressMode::kWeights)) t.add("model.decoder.layers.0.fc1", r, 27.0 + r);
  t.add("lm_head", 0.4, std::numeric_limits<double>::infinity());
  t.add("lm_head", 0.5, std::nan(""));
  t.add("lm_head", 0.6, 1.0 / 3.0);
  const fs::path file = dir.path / "sub" / "sens.json";
  fs::create_directories(file.parent_path());
  t.save(file);
  const SensitivityTable back = SensitivityTable::load(file);
  CHECK(back.metric() == "ppl");
  CHECK(back.meta() == t.meta());
  REQUIRE(back.size() == t.size());
  for (std::size_t i = 0; i < t.size(); ++i) {
    INFO("entry " << i);
    CHECK(back.entries()[i].layer == t.entries()[i].layer);
    CHECK(back.entries()[i].ratio == t.entries()[i].ratio);  // bit-exact
    if (std::isnan(t.entries()[i].score))
      CHECK(std::isnan(back.entries()[i].score));
    else
      CHECK(back.entries()[i].score == t.entries()[i].score);
  }
  CHECK(back.layers() == std::vector<std::string>{"model.decoder.layers.0.fc1", "lm_head"});
}

TEST_CASE("corrupt sensitivity JSON names the file and the key", "[unit][io]") {
  TempDir dir;
  const fs::path file = dir.path / "bad.json";
  const std::string head = R"({"format": "cur4llm.sensitivity", "version": 1, "metric": "ppl", )";
  auto load_error = [&](const std::string& text) -> std::string {
    write_text(file, text);
    try {
      SensitivityTable::load(file);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "no error";
  };
  std::string e = load_error(head + R"("layers": [{"name": "A", "scores": [{"ratio": 0.4, "score": 1}, {"ratio": "x", "score": 2}]}]})");
  CHECK_THAT(e, Contains(file.string()));
  CHECK_THAT(e, Contains("layers[0].scores[1].ratio"));
  e = load_error(head + R"("layers": [{"name": "A", "scores": [{"ratio": 0.4}]}]})");
  CHECK_THAT(e, Contains("layers[0].scores[0].score"));
  CHECK_THAT(e, Contains("missing"));
  e = load_error(head + R"("layers": [{"scores": []}]})");
  CHECK_THAT(e, Contains("layers[0].name"));
  e = load_error(head + R"("layers": {}})");
  CHECK_THAT(e, Contains("\"layers\" must be an array"));
  e = load_error(R"({"format": "cur4llm.sensitivity", "version": 1, "metric": "ppl"})");
  CHECK_THAT(e, Contains("\"layers\" is missing"));
  e = load_error(R"({"format": "cur4llm.plan", "version": 1})");
  CHECK_THAT(e, Contains("\"format\""));
  e = load_error(head + R"("layers": [{"name": "A", "scores": [{"ratio": 0.4, "score": 1}, {"ratio": 0.4, "score": 2}]}]})");
  CHECK_THAT(e, Contains("layers[0].scores[1].ratio"));
  e = load_error(head + R"("layers": [)");
  CHECK_THAT(e, Contains(file.string()));
  CHECK_THAT(e, Contains("invalid JSON"));
  CHECK_THROWS_WITH(SensitivityTable::load(dir.path / "missing.json"), Contains("missing.json"));
}

TEST_CASE("compression plan totals, table and JSON round trip", "[unit][io]") {
  CompressionPlan plan;
  plan.meta()["model"] = "tiny";
  plan.add({"model.layers.0.self_attn.q_proj", "cur", 0.5, 16, 2048, 4096});
  plan.add({"model.layers.0.mlp.up_proj", "svd", 0.75, 24, 9216, 12288});
  plan.add({"lm_head", "dense", 1.0, 0, 8000, 8000});
  CHECK(plan.stored_params() == 2048 + 9216 + 8000);  // 19264
  CHECK(plan.dense_params() == 4096 + 12288 + 8000);  // 24384
  CHECK(plan.param_ratio() == Approx(19264.0 / 24384.0));
  CHECK(plan.find("lm_head")->method == "dense");
  CHECK_FALSE(plan.find("nope"));
  CHECK_THROWS_AS(plan.add({"lm_head", "dense", 1.0, 0, 8000, 8000}), std::invalid_argument);
  CHECK_THROWS_AS(plan.add({"x", "qr", 1.0, 0, 8, 8}), std::invalid_argument);
  CHECK_THROWS_AS(plan.add({"x", "svd", 0.5, 1, 8, 0}), std::invalid_argument);

  // Fixed-width: every line of the table has the same length; header, rule, 3 rows, total.
  const std::string table = plan.table();
  std::vector<std::string> lines;
  for (std::size_t start = 0, nl; (nl = table.find('\n', start)) != std::string::npos; start = nl + 1)
    lines.push_back(table.substr(start, nl - start));
  REQUIRE(lines.size() == 6);
  for (const auto& l : lines) CHECK(l.size() == lines[0].size());
  CHECK_THAT(lines[2], Contains("model.layers.0.self_attn.q_proj") && Contains("cur") && Contains("50.00%"));
  CHECK_THAT(lines[5], Contains("total (3 layers)") && Contains("19264") && Contains("24384") && Contains("79.00%"));
  // A dense row shows no ratio and no rank ("-"), not a rank of 0.
  CHECK_THAT(lines[4], Contains("lm_head") && Contains("dense") && Contains("  -  "));
  CHECK_THAT(lines[4], !Contains(" 0 ") && !Contains("1.000"));

  TempDir dir;
  plan.save(dir.path / "plan.json");
  const CompressionPlan back = CompressionPlan::load(dir.path / "plan.json");
  CHECK(back.meta() == plan.meta());
  REQUIRE(back.layers().size() == 3);
  for (std::size_t i = 0; i < 3; ++i) {
    const auto &a = plan.layers()[i], &b = back.layers()[i];
    CHECK((a.name == b.name && a.method == b.method && a.ratio == b.ratio && a.rank == b.rank &&
           a.stored_params == b.stored_params && a.dense_params == b.dense_params));
  }
}

TEST_CASE("corrupt compression plan JSON names the file and the key", "[unit][io]") {
  TempDir dir;
  const fs::path file = dir.path / "plan.json";
  const std::string head = R"({"format": "cur4llm.compression_plan", "version": 1, "layers": [)";
  const std::string good = R"({"name": "a", "method": "cur", "ratio": 0.5, "rank": 2, "stored_params": 10, "dense_params": 20})";
  write_text(file, head + good + R"(, {"name": "b", "method": "svd", "ratio": 0.5, "rank": 2.5, "stored_params": 10, "dense_params": 20}]})");
  CHECK_THROWS_WITH(CompressionPlan::load(file), Contains(file.string()) && Contains("layers[1].rank"));
  write_text(file, head + good + R"(, {"name": "b", "method": "lowrank", "ratio": 0.5, "rank": 2, "stored_params": 10, "dense_params": 20}]})");
  CHECK_THROWS_WITH(CompressionPlan::load(file), Contains("layers[1]") && Contains("lowrank"));
  write_text(file, head + good + ", " + good + "]}");
  CHECK_THROWS_WITH(CompressionPlan::load(file), Contains("layers[1]") && Contains("twice"));
  write_text(file, R"({"format": "cur4llm.compression_plan", "version": 2, "layers": []})");
  CHECK_THROWS_WITH(CompressionPlan::load(file), Contains("\"version\""));
}

TEST_CASE("a shared (tied) layer is free while dense and costs in full once compressed", "[unit]") {
  // A, B 100 each; H (a tied lm_head, numel 200) is shared: the total is A + B = 200.
  std::vector<LayerSize> layers = {{"A", 100}, {"B", 100}, {"H", 200, true}};
  // Dense everywhere: 200 / 200.
  const Allocation dense = {{"A", 1.0, false}, {"B", 1.0, false}, {"H", 1.0, false}};
  CHECK(whole_model_ratio(dense, layers, CompressMode::kWeights) == 1.0);
  // A at 0.5, H compressed at 0.5: (50 + 100 + 100) / 200 = 1.25 (the untied head adds 100).
  const Allocation head = {{"A", 0.5, true}, {"B", 1.0, false}, {"H", 0.5, true}};
  CHECK(whole_model_ratio(head, layers, CompressMode::kWeights) == 1.25);
  // The Lagrangian search never compresses H: it only adds parameters.
  SensitivityTable t("ppl");
  for (const char* name : {"A", "B", "H"}) {
    t.add(name, 0.5, 12);
    t.add(name, 0.75, 11);
  }
  const SearchResult r = search_param_ratio_lagrangian(t, layers, 0.75, 10);
  CHECK(ratios_of(r.allocation).at("H") == 1.0);
  CHECK(r.ratio <= 0.75);
  CHECK(r.target_met);
}

TEST_CASE("a target no cut reaches is reported as missed", "[unit]") {
  // abc: the smallest reachable ratio is 0.5 (every layer at 0.5).
  const SearchResult low = search_param_ratio(abc_table(), abc_layers(), 0.3);
  CHECK(low.ratio == 0.5);
  CHECK_FALSE(low.target_met);
  // The reference's search stops at the first cut above the target (0.75 for 0.7: cut 3 of
  // 0.5, 0.625, 0.6875, 0.75, ...; 0.8125 for 0.75, since a ratio equal to the target moves
  // low up): a miss, and said so.
  const SearchResult over = search_param_ratio(abc_table(), abc_layers(), 0.7);
  CHECK(over.ratio == 0.75);
  CHECK_FALSE(over.target_met);
  const SearchResult equal = search_param_ratio(abc_table(), abc_layers(), 0.75);
  CHECK(equal.ratio == 0.8125);
  CHECK_FALSE(equal.target_met);
  const SearchResult lagr = search_param_ratio_lagrangian(abc_table(), abc_layers(), 0.7, 5);
  CHECK(lagr.ratio <= 0.7);
  CHECK(lagr.target_met);
  const SearchResult lagr_low = search_param_ratio_lagrangian(abc_table(), abc_layers(), 0.3, 5);
  CHECK(lagr_low.ratio == 0.5);
  CHECK_FALSE(lagr_low.target_met);
  // A perplexity target that every cut misses (ppl never below 1).
  const SearchResult ppl = search_perplexity(abc_table(), abc_layers(), 1.0, [](const Allocation&) { return 5.0; });
  CHECK_FALSE(ppl.target_met);
}
