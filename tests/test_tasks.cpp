// Zero-shot tasks: prompts and metrics as lm-evaluation-harness 0.4.x defines
// them (on hand-made documents), the request split on a real tokenizer, the
// scoring against the model's own logits, and an end-to-end run on the real
// task data; per-item log-likelihoods against the Python reference
// (scripts/tasks_reference.py) where its fixtures exist.

#include "cur4llm/eval/tasks.h"

#include "test_helpers.h"
#include "test_paths.h"

#include <cur4llm/model/causal_lm.h>
#include <cur4llm/tokenize/tokenizer.h>

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>

namespace fs = std::filesystem;
namespace ev = cur4llm::eval;
using Catch::Matchers::Contains;
using cur4llm::test::TempDir;

namespace {

void write(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

ev::LoglikelihoodResult r(double logprob, bool greedy = false) { return {logprob, greedy}; }

}  // namespace

TEST_CASE("piqa, arc, openbookqa, boolq, mathqa: prompts, choices and gold as the harness writes them", "[tasks]") {
  TempDir tmp;
  const auto t = tmp.path / "tasks";
  write(t / "piqa" / "valid.jsonl", "{\"goal\": \"Open a jar\", \"sol1\": \"twist the lid\", \"sol2\": \"hit it\"}\n");
  write(t / "piqa" / "valid-labels.lst", "1\n");
  write(t / "arc_easy" / "ARC-Easy-test.jsonl",
        "{\"id\": \"x\", \"question\": \"Which is hot?\", \"choices\": {\"text\": [\"ice\", \"fire\", \"snow\"], "
        "\"label\": [\"1\", \"2\", \"3\"]}, \"answerKey\": \"2\"}\n");
  write(t / "openbookqa" / "test.jsonl",
        "{\"id\": \"1\", \"question\": {\"stem\": \"The sun is\", \"choices\": [{\"text\": \"a star\", \"label\": "
        "\"A\"}, "
        "{\"text\": \"a moon\", \"label\": \"B\"}]}, \"answerKey\": \"A\"}\n");
  write(
      t / "boolq" / "val_superglue_derived.jsonl",
      "{\"question\": \"is water wet\", \"passage\": \"Water -- Water is a liquid.\", \"idx\": 0, \"label\": true}\n");
  write(t / "mathqa" / "test.json",
        "[{\"Problem\": \"what is 1 + 1 ?\", \"options\": \"a ) 1 , b ) 2 , c ) 3 , d ) 4 , e ) none of these\", "
        "\"correct\": \"b\"}]");

  auto piqa = ev::load_task("piqa", tmp.path);
  REQUIRE(piqa.items.size() == 1);
  CHECK(piqa.acc_norm);
  CHECK(piqa.items[0].requests[0].context == "Question: Open a jar\nAnswer:");
  CHECK(piqa.items[0].requests[0].continuation == " twist the lid");
  CHECK(piqa.items[0].requests[1].continuation == " hit it");
  CHECK(piqa.items[0].gold == 1);

  auto arc = ev::load_task("arc_easy", tmp.path);
  CHECK(arc.items[0].requests.size() == 3);
  CHECK(arc.items[0].requests[2].context == "Question: Which is hot?\nAnswer:");
  CHECK(arc.items[0].requests[2].continuation == " snow");
  CHECK(arc.items[0].gold == 1);  // numeric label "2"

  auto obqa = ev::load_task("openbookqa", tmp.path);
  CHECK(obqa.items[0].requests[0].context == "The sun is");  // the stem alone
  CHECK(obqa.items[0].requests[1].continuation == " a moon");
  CHECK(obqa.items[0].gold == 0);

  auto boolq = ev::load_task("boolq", tmp.path);
  CHECK_FALSE(boolq.acc_norm);
  CHECK(boolq.items[0].requests[0].context == "Water -- Water is a liquid.\nQuestion: is water wet?\nAnswer:");
  CHECK(boolq.items[0].requests[0].continuation == " no");
  CHECK(boolq.items[0].requests[1].continuation == " yes");
  CHECK(boolq.items[0].gold == 1);

  auto mathqa = ev::load_task("mathqa", tmp.path);
  REQUIRE(mathqa.items[0].choices == std::vector<std::string>{"1", "2", "3", "4", "none of these"});
  CHECK(mathqa.items[0].requests[0].context == "Question: what is 1 + 1 ?\nAnswer:");
  CHECK(mathqa.items[0].gold == 1);
}

TEST_CASE("hellaswag: the harness's preprocessing, on the text form and on the original JSON lines", "[tasks]") {
  CHECK(ev::hellaswag_preprocess("  Making tea [title] Boil water. [step] Pour it [substeps]  in. ") ==
        "Making tea. Boil water. Pour it  in.");  // one pass of "  " -> " ", as str.replace
  CHECK(ev::hellaswag_preprocess("a [insert name] b [open") == "a b [open");

  TempDir tmp;
  write(tmp.path / "tasks" / "hellaswag" / "hellaswag_val_full.txt",
        "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap.\nis ripping tiles [citation].\n"
        "is holding a cube.\nstarts pulling up roofing.\n");
  auto txt = ev::load_task("hellaswag", tmp.path);
  REQUIRE(txt.items.size() == 1);
  CHECK(txt.items[0].requests[0].context == "Roof shingle removal: A man is sitting on a roof. he");
  CHECK(txt.items[0].requests[1].continuation == " is ripping tiles .");
  CHECK(txt.items[0].gold == 3);

  // The original form: ctx_b capitalised (the rest lowered, as Python's capitalize), then preprocessed.
  write(tmp.path / "tasks" / "hellaswag" / "hellaswag_val.jsonl",
        "{\"activity_label\": \"Roof shingle removal\", \"ctx_a\": \"A man is sitting on a roof.\", \"ctx_b\": \"he "
        "SITS\", "
        "\"endings\": [\"a\", \"b\", \"c\", \"d [x]\"], \"label\": 2}\n");
  auto orig = ev::load_task("hellaswag", tmp.path);
  CHECK(orig.items[0].requests[0].context == "Roof shingle removal: A man is sitting on a roof. He sits");
  CHECK(orig.items[0].requests[3].continuation == " d ");  // stripped before the span goes
  CHECK(orig.items[0].gold == 2);
}

TEST_CASE("winogrande: partial scoring, one context per option and the rest of the sentence scored", "[tasks]") {
  TempDir tmp;
  write(tmp.path / "tasks" / "winogrande" / "dev.jsonl",
        "{\"qID\": \"q\", \"sentence\": \"Sarah was better than Maria so _ got the easier cases.\", "
        "\"option1\": \"Sarah\", \"option2\": \"Maria\", \"answer\": \"2\"}\n");
  auto w = ev::load_task("winogrande", tmp.path);
  REQUIRE(w.items[0].requests.size() == 2);
  CHECK(w.items[0].requests[0].context == "Sarah was better than Maria so Sarah");
  CHECK(w.items[0].requests[1].context == "Sarah was better than Maria so Maria");
  CHECK(w.items[0].requests[0].continuation == " got the easier cases.");
  CHECK(w.items[0].requests[1].continuation == " got the easier cases.");
  CHECK(w.items[0].gold == 1);
  CHECK_FALSE(w.acc_norm);
}

TEST_CASE("lambada_openai: the last space-separated word is the target, acc is greedy, perplexity exp(-mean)",
          "[tasks]") {
  TempDir tmp;
  write(tmp.path / "tasks" / "lambada_openai" / "lambada_test.jsonl",
        "{\"text\": \"he looked at the  dog\"}\n{\"text\": \"she said hello\"}\n");
  auto l = ev::load_task("lambada_openai", tmp.path);
  REQUIRE(l.items.size() == 2);
  CHECK(l.items[0].requests[0].context == "he looked at the ");  // split(' ') keeps the empty word
  CHECK(l.items[0].requests[0].continuation == " dog");
  CHECK(l.items[1].requests[0].context == "she said");
  auto res = ev::score_task(l, {{r(-1.0, true)}, {r(-3.0, false)}});
  CHECK(res.acc.value == 0.5);
  CHECK(res.perplexity == Approx(std::exp(2.0)));
  const auto j = nlohmann::json::parse(ev::task_results_json({res}));
  CHECK(j["lambada_openai"]["perplexity"].get<double>() == Approx(7.3890561));
  CHECK(j["lambada_openai"]["items"] == 2);
  CHECK_FALSE(j["lambada_openai"].contains("acc_norm"));
}

TEST_CASE("mmlu: the 5-shot prompt exactly as the harness writes it, CSV quirks, per-subject results", "[tasks]") {
  TempDir tmp;
  const auto m = tmp.path / "tasks" / "mmlu";
  // Dev rows: CRLF record ends, a quoted field with a comma, a quote and an embedded CRLF.
  write(m / "dev" / "abstract_algebra_dev.csv",
        "\"Q1, with comma?\r\nI. part\",a1,b1,c1,d1,B\r\nQ2,a2,b2,c2,d2,A\r\n\" Q3 \",a3,\"b \"\"3\"\"\",c3,d3,D\n"
        "Q4,a4,b4,c4,d4,C\nQ5,a5,b5,c5,d5,A\n");
  // U+0085 (NEL) ends the question: Python's strip() removes it, as it did in the real data.
  write(m / "test" / "abstract_algebra_test.csv", "Find x.\xC2\x85,1,2,3,4,C\nSecond?,5,6,7,8,D\n");
  write(m / "dev" / "anatomy_dev.csv", "q,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\nq,a,b,c,d,A\n");
  write(m / "test" / "anatomy_test.csv", "t,a,b,c,d,B\n");
  ev::TaskLoadOptions o;
  o.mmlu_subjects = {"abstract_algebra", "anatomy"};
  auto mmlu = ev::load_task("mmlu", tmp.path, o);
  REQUIRE(mmlu.items.size() == 3);
  const std::string expected =
      "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
      "Q1, with comma?\nI. part\nA. a1\nB. b1\nC. c1\nD. d1\nAnswer: B\n\n"
      "Q2\nA. a2\nB. b2\nC. c2\nD. d2\nAnswer: A\n\n"
      "Q3\nA. a3\nB. b \"3\"\nC. c3\nD. d3\nAnswer: D\n\n"
      "Q4\nA. a4\nB. b4\nC. c4\nD. d4\nAnswer: C\n\n"
      "Q5\nA. a5\nB. b5\nC. c5\nD. d5\nAnswer: A\n\n"
      "Find x.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:";
  CHECK(mmlu.items[0].requests[0].context == expected);
  CHECK(mmlu.items[0].requests[3].continuation == " D");
  CHECK(mmlu.items[0].gold == 2);
  CHECK(mmlu.items[0].subject == "abstract_algebra");
  CHECK(mmlu.items[2].subject == "anatomy");

  o.limit = 1;
  CHECK(ev::load_task("mmlu", tmp.path, o).items.size() == 2);  // the limit is per subject

  // Subject accuracies 1/2 and 1/1: the group's acc is over items (2/3), the subject mean 3/4.
  auto res =
      ev::score_task(mmlu, {{r(-2), r(-3), r(-1), r(-4)}, {r(-1), r(-2), r(-3), r(-4)}, {r(-2), r(-1), r(-3), r(-4)}});
  REQUIRE(res.subjects.size() == 2);
  CHECK(res.subjects[0].name == "abstract_algebra");
  CHECK(res.subjects[0].acc.value == 0.5);
  CHECK(res.subjects[1].acc.value == 1.0);
  CHECK(res.acc.value == Approx(2.0 / 3));
  CHECK(res.acc_subject_mean == Approx(0.75));
  const auto j = nlohmann::json::parse(ev::task_results_json({res}));
  CHECK(j["mmlu"]["subjects"]["anatomy"]["items"] == 1);
  CHECK(j["mmlu"]["subjects"]["anatomy"]["acc_stderr"].is_null());  // one item: no stderr
}

TEST_CASE("acc and acc_norm: argmax of log-likelihoods, and of log-likelihood per character of the choice", "[tasks]") {
  ev::Task t{"piqa", ev::TaskKind::MultipleChoice, true, {}, {}};
  ev::TaskItem item;
  item.requests = {{"q", " a"}, {"q", " bbbb"}};
  item.choices = {"a", "bbbb"};
  item.gold = 1;
  t.items = {item, item};
  t.items[1].choices = {"é", "bbbb"};  // one character, two bytes
  t.items[1].gold = 0;
  // -2 > -4 picks choice 0; -2/1 < -4/4 picks choice 1.
  auto res = ev::score_task(t, {{r(-2), r(-4)}, {r(-2), r(-4)}});
  CHECK(res.item_scores[0].pred == 0);
  CHECK(res.item_scores[0].pred_norm == 1);
  CHECK(res.item_scores[0].acc == 0);
  CHECK(res.item_scores[0].acc_norm == 1);
  CHECK(res.item_scores[1].pred_norm == 1);  // -2/1 (characters, not bytes) < -1
  CHECK(res.acc.value == 0.5);
  CHECK(res.acc_norm.value == 0.5);
  // Ties go to the first choice, as numpy.argmax.
  auto tie = ev::score_task(t, {{r(-3), r(-3)}, {r(-3), r(-3)}});
  CHECK(tie.item_scores[0].pred == 0);
  CHECK_THROWS_AS(ev::score_task(t, {{r(-1)}, {r(-1), r(-2)}}), std::invalid_argument);
}

TEST_CASE("stderr: the sample stderr of the mean, and the pooled stderr of a size-weighted group", "[tasks]") {
  // mean 0.75; sum of squares 0.75; sqrt(0.75 / 3) / sqrt(4) = 0.25.
  CHECK(ev::mean_stderr({1, 0, 1, 1}) == Approx(0.25));
  CHECK(std::isnan(ev::mean_stderr({1})));
  // ((2-1)*0.5^2*2 + (4-1)*0.25^2*4) / (6-2) / 6 = 0.0520833...; sqrt = 0.2282177
  CHECK(ev::pooled_stderr({0.5, 0.25}, {2, 4}) == Approx(0.2282177).epsilon(1e-6));
}

TEST_CASE("mmlu stderr: pooled per category, then over the categories", "[tasks]") {
  ev::Task t{"mmlu", ev::TaskKind::MultipleChoice, false, {}, {}};
  const std::vector<std::pair<std::string, std::vector<int>>> subjects = {
      {"abstract_algebra", {1, 0}}, {"anatomy", {1, 1}}, {"formal_logic", {1, 1, 0}}};  // stem, stem, humanities
  std::vector<std::vector<ev::LoglikelihoodResult>> results;
  for (const auto& [subject, correct] : subjects) {
    for (int c : correct) {
      ev::TaskItem item;
      item.requests = {{"q", " A"}, {"q", " B"}, {"q", " C"}, {"q", " D"}};
      item.choices = {"A", "B", "C", "D"};
      item.subject = subject;
      t.items.push_back(item);
      results.push_back(c ? std::vector<ev::LoglikelihoodResult>{r(-1), r(-2), r(-3), r(-4)}
                          : std::vector<ev::LoglikelihoodResult>{r(-4), r(-1), r(-2), r(-3)});
    }
  }
  const auto res = ev::score_task(t, results);
  CHECK(res.acc.value == Approx(5.0 / 7));
  // stderrs 0.5, 0, 1/3. stem: sqrt((1*0.25*2 + 0) / (4-2) / 4) = 0.25 over 4 items; humanities 1/3 over 3.
  // mmlu: sqrt((3*0.0625*4 + 2*(1/9)*3) / (7-2) / 7) = 0.2011870 (one pooling of the three subjects: 0.2041241).
  CHECK(res.acc.std_error == Approx(0.2011870).epsilon(1e-6));
}

TEST_CASE("a task without data is refused, naming the path looked for", "[tasks]") {
  TempDir tmp;
  CHECK_THROWS_WITH(ev::load_task("piqa", tmp.path), Contains((tmp.path / "tasks" / "piqa" / "valid.jsonl").string()));
  CHECK_THROWS_WITH(ev::load_tasks({"mmlu"}, tmp.path),
                    Contains((tmp.path / "tasks" / "mmlu" / "dev" / "abstract_algebra_dev.csv").string()));
  CHECK_THROWS_WITH(ev::load_task("squad", tmp.path), Contains("unknown task \"squad\""));
  write(tmp.path / "tasks" / "winogrande" / "dev.jsonl", "{\"sentence\": \"no blank\", \"answer\": \"1\"}\n");
  CHECK_THROWS_AS(ev::load_task("winogrande", tmp.path), std::runtime_error);
}

TEST_CASE("requests split where the harness splits them, on the tiny model's tokenizer", "[tasks]") {
  auto tok = cur4llm::tokenize::load_tokenizer(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  const std::string context = "Question: What says the king?\nAnswer:";
  const auto e = ev::encode_request(*tok, {context, " the crown"});
  CHECK(e.context == tok->encode(context));
  auto whole = tok->encode(context + " the crown");
  REQUIRE(whole.size() > e.context.size());
  CHECK(e.continuation == std::vector<int64_t>(whole.begin() + static_cast<long>(e.context.size()), whole.end()));
  if (tok->adds_bos()) CHECK(e.context.front() == *tok->bos_id());
  // A trailing space of the context moves into the continuation.
  const auto moved = ev::encode_request(*tok, {"Answer: ", "yes"});
  CHECK(moved.context == tok->encode("Answer:"));
  const auto plain = ev::encode_request(*tok, {"Answer:", " yes"});
  CHECK(moved.continuation == plain.continuation);
  // Without special tokens (harness 0.4.0-0.4.8): no BOS.
  const auto bare = ev::encode_request(*tok, {context, " the crown"}, false);
  CHECK(bare.context == tok->encode(context, {false}));
  if (tok->adds_bos()) CHECK(bare.context.size() + 1 == e.context.size());
  // An empty context is the BOS (else EOS) token.
  const auto empty = ev::encode_request(*tok, {"", " yes"});
  REQUIRE(empty.context.size() == 1);
  CHECK(empty.context[0] == (tok->bos_id() ? *tok->bos_id() : *tok->eos_id()));
}

TEST_CASE("score_requests: continuation log-probs and greedy flags from the model's logits, batched or not",
          "[tasks]") {
  auto lm = cur4llm::model::CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  std::vector<ev::EncodedRequest> reqs = {{{0, 5, 9, 13}, {20, 21}},
                                          {{0, 5, 9, 13}, {22}},
                                          {{0, 5, 9, 13}, {23}},
                                          {{0, 7}, {30, 31, 32}},
                                          {{0, 5, 9}, {13}}};
  ev::ScoreOptions one;
  one.max_batch_tokens = 1;  // one row per forward pass
  const auto batched = ev::score_requests(*lm, reqs);
  const auto single = ev::score_requests(*lm, reqs, one);
  c10::InferenceMode guard;
  for (size_t i = 0; i < reqs.size(); ++i) {
    std::vector<int64_t> seq(reqs[i].context);
    seq.insert(seq.end(), reqs[i].continuation.begin(), reqs[i].continuation.end());
    auto ids = at::tensor(seq, at::kLong).unsqueeze(0);
    auto logp = at::log_softmax(lm->forward(ids).to(at::kDouble)[0], -1);
    double sum = 0;
    bool greedy = true;
    const int64_t n = static_cast<int64_t>(reqs[i].continuation.size());
    const int64_t c = static_cast<int64_t>(reqs[i].context.size());
    for (int64_t j = 0; j < n; ++j) {
      const int64_t tok = reqs[i].continuation[static_cast<size_t>(j)];
      sum += logp[c - 1 + j][tok].item<double>();
      greedy = greedy && logp[c - 1 + j].argmax().item<int64_t>() == tok;
    }
    CHECK(batched[i].logprob == Approx(sum).margin(1e-4));
    CHECK(single[i].logprob == Approx(sum).margin(1e-4));
    CHECK(batched[i].is_greedy == greedy);
  }
  CHECK_THROWS_AS(ev::score_requests(*lm, {{{0, 1}, {}}}), std::invalid_argument);
}

TEST_CASE("score_requests: rows that begin alike run their common tokens once, with the results of separate rows",
          "[tasks]") {
  for (const char* name : {"tiny-shakespeare-opt", "llama_gqa", "mistral_window", "gemma2_softcap"}) {
    INFO(name);
    auto lm = cur4llm::model::CausalLM::load(cur4llm::test::model_dir(name));
    const int64_t vocab = lm->config().vocab_size;
    // 3 contexts of 40 tokens, each with 4 endings of 1 to 4 tokens that begin differently (a
    // multiple-choice item); a few-shot block of 30 tokens shared by 2 questions of 6 and 9 tokens,
    // each with a one-token answer; and a request that begins like nothing else.
    std::vector<ev::EncodedRequest> reqs;
    auto token = [&](int64_t i) { return (i * 7 + 3) % vocab; };
    for (int64_t c = 0; c < 3; ++c) {
      std::vector<int64_t> ctx;
      for (int64_t i = 0; i < 40; ++i) ctx.push_back(token(c * 100 + i));
      for (int64_t e = 0; e < 4; ++e) {
        std::vector<int64_t> ending;
        for (int64_t i = 0; i <= e; ++i) ending.push_back(token(1000 + c * 10 + e + 3 * i));
        reqs.push_back({ctx, ending});
      }
    }
    std::vector<int64_t> shots;
    for (int64_t i = 0; i < 30; ++i) shots.push_back(token(5000 + i));
    for (int64_t q : {6, 9}) {
      std::vector<int64_t> ctx(shots);
      for (int64_t i = 0; i < q; ++i) ctx.push_back(token(6000 + 13 * q + i));
      for (int64_t a = 0; a < 2; ++a) reqs.push_back({ctx, {token(7000 + a)}});
    }
    reqs.push_back({{token(9000), token(9001)}, {token(9002), token(9003)}});

    ev::ScoreOptions separate;
    separate.share_prefixes = false;
    ev::ScoreStats with, without;
    const auto expected = ev::score_requests(*lm, reqs, separate, &without);
    const auto shared = ev::score_requests(*lm, reqs, {}, &with);
    // Through the KV cache only, with budgets so small that every group runs in several pieces and batches.
    ev::ScoreOptions pieces;
    pieces.max_batch_tokens = 24;
    pieces.max_packed_tokens = -1;
    ev::ScoreStats cut;
    const auto small = ev::score_requests(*lm, reqs, pieces, &cut);
    // Packed rows up to 45 tokens: the few-shot group (30 + 6 + 9) packed, the contexts' (40 + 6)
    // through the cache; a packed row longer than the batch runs alone.
    ev::ScoreOptions mixed;
    mixed.max_packed_tokens = 45;
    mixed.max_batch_tokens = 24;
    ev::ScoreStats both;
    const auto some = ev::score_requests(*lm, reqs, mixed, &both);
    REQUIRE(shared.size() == reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      INFO("request " << i);
      CHECK(shared[i].logprob == Approx(expected[i].logprob).margin(1e-4));
      CHECK(small[i].logprob == Approx(expected[i].logprob).margin(1e-4));
      CHECK(some[i].logprob == Approx(expected[i].logprob).margin(1e-4));
      CHECK(shared[i].is_greedy == expected[i].is_greedy);
      CHECK(some[i].is_greedy == expected[i].is_greedy);
    }
    CHECK(with.packed_groups == 4);  // every group fits the default (256 tokens for these widths)
    CHECK(cut.packed_groups == 0);
    CHECK(both.packed_groups == 1);
    // The contexts' cache pieces hold one ending each at this batch size (their prefix runs 4 times);
    // the packed few-shot row runs its 30 + 6 + 9 tokens once.
    CHECK(both.tokens == 3 * (4 * 39 + 10) + (30 + 15) + 3);
    // Rows: 12 endings, 2 questions (their two answers share an input), the stray one.
    CHECK(without.rows == 15);
    CHECK(without.shared_groups == 0);
    CHECK(with.shared_groups == 4);
    // Separate: each ending runs 40 + e tokens (e = 0..3), each question 30 + q, the stray 3.
    CHECK(without.tokens == 3 * (4 * 40 + 6) + (36 + 39) + 3);
    // Shared: a context's 40 tokens once (the one-token ending reads its last), then e = 1..3 each;
    // the few-shot block's 30 tokens once, then 6 and 9.
    CHECK(with.tokens == 3 * (40 + 6) + (30 + 15) + 3);
    CHECK(cut.tokens > with.tokens);  // pieces run their group's prefix again
    // A longer least beginning (35) shares the 39-token contexts but not the 30-token block.
    ev::ScoreOptions longer;
    longer.min_shared_prefix = 35;
    ev::ScoreStats fewer;
    (void)ev::score_requests(*lm, reqs, longer, &fewer);
    CHECK(fewer.shared_groups == 3);
    CHECK(fewer.tokens == 3 * (40 + 6) + (36 + 39) + 3);
  }
}

TEST_CASE("score_requests: rows that share beginnings at several depths run each distinct beginning once",
          "[tasks]") {
  for (const char* name : {"tiny-shakespeare-opt", "llama_gqa", "mistral_window", "gemma2_softcap"}) {
    INFO(name);
    auto lm = cur4llm::model::CausalLM::load(cur4llm::test::model_dir(name));
    const int64_t vocab = lm->config().vocab_size;
    auto token = [&](int64_t i) { return (i * 11 + 5) % vocab; };
    // A 20-token label shared by three documents; two of them also share their first 8 context
    // tokens. Each document has 4 endings: one of a single token (its input is the context alone,
    // a beginning of the others'), two that begin with the same two tokens and one of its own.
    std::vector<ev::EncodedRequest> reqs;
    std::vector<int64_t> label;
    for (int64_t i = 0; i < 20; ++i) label.push_back(token(i));
    for (int64_t d = 0; d < 3; ++d) {
      std::vector<int64_t> ctx(label);
      for (int64_t i = 0; i < 12; ++i) ctx.push_back(token(i < 8 && d < 2 ? 100 + i : 200 + 20 * d + i));
      const std::vector<std::vector<int64_t>> endings = {{token(300 + d)},
                                                         {token(310 + d), token(320 + d), token(330 + d)},
                                                         {token(310 + d), token(320 + d), token(340 + d), token(350)},
                                                         {token(360 + d), token(370 + d)}};
      for (const auto& e : endings) reqs.push_back({ctx, e});
    }
    // The distinct beginnings of the rows (each request's context and continuation but its last token).
    std::set<std::vector<int64_t>> beginnings;
    for (const auto& r : reqs) {
      std::vector<int64_t> input(r.context);
      input.insert(input.end(), r.continuation.begin(), r.continuation.end() - 1);
      for (size_t n = 1; n <= input.size(); ++n) beginnings.emplace(input.begin(), input.begin() + n);
    }
    REQUIRE(beginnings.size() == 20 + 8 + 2 * 4 + 12 + 3 * 4);  // label, shared context, own contexts, endings

    ev::ScoreOptions separate;
    separate.share_prefixes = false;
    ev::ScoreStats apart, tree;
    const auto expected = ev::score_requests(*lm, reqs, separate, &apart);
    const auto shared = ev::score_requests(*lm, reqs, {}, &tree);
    for (size_t i = 0; i < reqs.size(); ++i) {
      INFO("request " << i);
      CHECK(shared[i].logprob == Approx(expected[i].logprob).margin(1e-4));
      CHECK(shared[i].is_greedy == expected[i].is_greedy);
    }
    CHECK(tree.packed_groups == 1);
    CHECK(tree.tokens == static_cast<int64_t>(beginnings.size()));
    CHECK(apart.tokens == 3 * (4 * 32 + 0 + 2 + 3 + 1));
  }
}

TEST_CASE("score_requests: a continuation longer than the window is scored on its last window of tokens",
          "[tasks]") {
  auto lm = cur4llm::model::CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  // Window 6: context 3 tokens + continuation 9 tokens; the input is the last 6 of the 11 tokens
  // context + continuation[:-1] = continuation[2..7], predicting continuation[3..8].
  const std::vector<int64_t> ctx = {0, 5, 9}, cont = {13, 20, 21, 22, 23, 30, 31, 32, 40};
  ev::ScoreOptions o;
  o.max_length = 6;
  const auto got = ev::score_requests(*lm, {{ctx, cont}, {ctx, {cont.begin(), cont.begin() + 2}}}, o);
  c10::InferenceMode guard;
  const std::vector<int64_t> window(cont.begin() + 2, cont.begin() + 8);
  auto logp = at::log_softmax(lm->forward(at::tensor(window, at::kLong).unsqueeze(0)).to(at::kDouble)[0], -1);
  double sum = 0;
  for (int64_t j = 0; j < 6; ++j) sum += logp[j][cont[static_cast<size_t>(3 + j)]].item<double>();
  CHECK(got[0].logprob == Approx(sum).margin(1e-4));
  // A short continuation in the same call keeps its whole context.
  auto full = at::log_softmax(lm->forward(at::tensor(std::vector<int64_t>{0, 5, 9, 13}, at::kLong).unsqueeze(0))
                                  .to(at::kDouble)[0], -1);
  CHECK(got[1].logprob == Approx(full[2][13].item<double>() + full[3][20].item<double>()).margin(1e-4));
}

namespace {

// The task data unpacked once into the build tree; nullopt (test skipped) when absent.
std::optional<fs::path> task_data() { return cur4llm::test::unpacked_shared_archive("tasks.tar.xz", "tasks/mmlu/test"); }

}  // namespace

TEST_CASE("end to end on the real task data: every task, a few items, accuracies in [0, 1]", "[tasks][shared]") {
  const auto data = task_data();
  if (!data) {
    WARN("SKIPPED: tasks.tar.xz not found in ../shared/data (or tar/xz failed)");
    return;
  }
  auto lm = cur4llm::model::CausalLM::load(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  auto tok = cur4llm::tokenize::load_tokenizer(cur4llm::test::model_dir("tiny-shakespeare-opt"));
  ev::TaskLoadOptions o;
  o.limit = 3;
  o.mmlu_subjects = {"abstract_algebra", "college_mathematics", "world_religions"};
  const auto tasks = ev::load_tasks(ev::task_names(), *data, o);
  REQUIRE(tasks.size() == ev::task_names().size());
  const auto results = ev::evaluate_tasks(*lm, *tok, tasks);
  for (const auto& res : results) {
    INFO(res.name);
    CHECK(res.items == (res.name == "mmlu" ? 9 : 3));
    CHECK(res.acc.value >= 0);
    CHECK(res.acc.value <= 1);
    if (res.has_acc_norm) CHECK((res.acc_norm.value >= 0 && res.acc_norm.value <= 1));
    for (const auto& s : res.item_scores)
      for (const auto& x : s.results) CHECK(x.logprob < 0);
  }
  CHECK(results.back().subjects.size() == 3);
  const auto j = nlohmann::json::parse(ev::task_results_json(results));
  CHECK(j["piqa"].contains("acc_norm_stderr"));
  CHECK(j["lambada_openai"]["perplexity"].get<double>() > 1);
  // The first HellaSwag item of the text form, and ARC-C's first gold.
  CHECK(tasks[1].items[0].requests[0].context == "Roof shingle removal: A man is sitting on a roof. he");
  CHECK(tasks[4].items[0].gold == 2);
}

TEST_CASE("per-item log-likelihoods and accuracies match the Python reference (fixtures)", "[tasks][shared]") {
  const auto data = task_data();
  if (!data) {
    WARN("SKIPPED: tasks.tar.xz not found in ../shared/data");
    return;
  }
  const auto shared = cur4llm::test::shared_data_dir();
  const std::vector<std::pair<std::string, fs::path>> models = {
      {"tiny-shakespeare-opt", cur4llm::test::model_dir("tiny-shakespeare-opt")},
      {"stories260K-hf", *shared / "models" / "stories260K-hf"}};
  int compared = 0;
  size_t skipped = 0, total = 0;
  for (const auto& [name, folder] : models) {
    const fs::path fixture = cur4llm::test::fixture_dir() / "tasks_reference" / (name + ".json");
    if (!fs::is_regular_file(fixture) || !fs::is_directory(folder)) continue;
    std::ifstream in(fixture);
    const auto ref = nlohmann::json::parse(in);
    auto lm = cur4llm::model::CausalLM::load(folder);
    auto tok = cur4llm::tokenize::load_tokenizer(folder);
    // A SentencePiece model without tokenizer.json is tokenized by SentencePiece, which collapses runs of
    // spaces and drops leading and trailing ones; transformers' converted tokenizer keeps them
    // (docs/deviations.md). Requests whose text has such spaces have other tokens than the reference's.
    const bool collapses = tok->encode("a  b ", {false}) == tok->encode("a b", {false});
    auto spaces_differ = [&](const ev::LoglikelihoodRequest& q) {
      const std::string text = q.context + q.continuation;
      return collapses && !text.empty() &&
             (text.find("  ") != std::string::npos || text.front() == ' ' || text.back() == ' ');
    };
    ev::ScoreOptions so;
    so.add_special_tokens = ref.value("bos", true);
    ev::TaskLoadOptions o;
    for (const auto& [task_name, t] : ref.at("tasks").items()) {
      INFO(name << " " << task_name);
      o.limit = t.at("limit").get<int64_t>();
      o.mmlu_subjects = t.value("mmlu_subjects", std::vector<std::string>{});
      const auto task = ev::load_task(task_name, *data, o);
      const auto res = ev::evaluate_tasks(*lm, *tok, {task}, so).at(0);
      const auto& items = t.at("items");
      REQUIRE(res.item_scores.size() == items.size());
      REQUIRE(task.items.size() == items.size());
      size_t skipped_here = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        INFO("item " << i);
        const auto& reqs = task.items[i].requests;
        if (std::any_of(reqs.begin(), reqs.end(), spaces_differ)) {
          ++skipped_here;
          continue;
        }
        const auto& lls = items[i].at("logprobs");
        REQUIRE(res.item_scores[i].results.size() == lls.size());
        for (size_t k = 0; k < lls.size(); ++k) {
          CHECK(res.item_scores[i].results[k].logprob == Approx(lls[k].get<double>()).epsilon(0).margin(1e-4));
          CHECK(res.item_scores[i].results[k].is_greedy == items[i].at("greedy")[k].get<bool>());
        }
        CHECK(res.item_scores[i].acc == items[i].at("acc").get<double>());
        if (items[i].contains("acc_norm")) CHECK(res.item_scores[i].acc_norm == items[i].at("acc_norm").get<double>());
      }
      if (skipped_here == 0) CHECK(res.acc.value == Approx(t.at("acc").get<double>()));
      skipped += skipped_here;
      total += items.size();
      ++compared;
    }
  }
  // stories260K's fixture: PIQA item 1 (a trailing and a double space) and MMLU items 40, 41 and 49 (runs of
  // spaces in the prompt; 40 and 41 have them outside the 512-token window and would still agree).
  CHECK(skipped * 50 <= total);
  if (skipped > 0) WARN(skipped << " items with runs of spaces left out (SentencePiece collapses them)");
  if (compared == 0)
    WARN("SKIPPED: fixture missing (tests/data/tasks_reference/*.json; scripts/tasks_reference.py writes them)");
}
