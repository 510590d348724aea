// Generation with a KV cache: cached logits against the full forward, batches
// against one prompt at a time, stopping, sampling, bad input, and greedy
// tokens against transformers' generate() (tests/data/generate_reference).
#include <cur4llm/compress/svd_linear.h>
#include <cur4llm/generate/generate.h>
#include <cur4llm/model/causal_lm.h>
#include <cur4llm/model/kv_cache.h>
#include <cur4llm/quant/packed_model.h>
#include <cur4llm/quant/packed_quant.h>
#include <cur4llm/repo/acur_repo.h>
#include <cur4llm/tokenize/tokenizer.h>
#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include "test_paths.h"
#include "product_checks.h"
#include "test_helpers.h"
#include "generate_reference.h"

#include <fstream>
#include <string>
#include <tuple>

using namespace cur4llm;
using cur4llm::model::CausalLM;
using cur4llm::test::model_dir;
namespace fs = std::filesystem;

namespace {

at::Tensor row_ids(const std::vector<int64_t>& ids) { return at::tensor(ids, at::kLong).unsqueeze(0); }

// |a - b| <= tol (1 + |b|) everywhere.
bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-4) {
  auto x = a.to(at::kCPU, at::kFloat), y = b.to(at::kCPU, at::kFloat);
  return x.sizes() == y.sizes() && (x - y).abs().le(tol * (1 + y.abs())).all().item<bool>();
}

// Prefills `prefill` tokens of a fixed sequence, then feeds the rest one at a
// time; each step's logits must be the full forward's at that position.
void check_cached_equals_forward(const CausalLM& lm, int64_t prefill, int64_t total, double tol = 1e-4) {
  c10::InferenceMode guard;
  const auto ids = row_ids(test::make_samples({total}, lm.config().vocab_size, 11).front()).to(lm.device());
  const auto full = lm.forward(ids);  // [1, total, vocab]
  model::KVCache cache(1, total, lm.device());
  const auto first = lm.forward_cached(ids.narrow(1, 0, prefill), cache, {}, /*all_positions=*/true);
  CHECK(close(first, full.narrow(1, 0, prefill), tol));
  CHECK(cache.length() == prefill);
  for (int64_t t = prefill; t < total; ++t) {
    const auto step = lm.forward_cached(ids.narrow(1, t, 1), cache);
    INFO("position " << t);
    CHECK(close(step, full.narrow(1, t, 1), tol));
  }
  CHECK(cache.length() == total);
  CHECK(cache.next_positions()[0].item<int64_t>() == total);
}

// Every Linear inside the decoder layers replaced by a rank-4 factorization (A·B plus the bias).
void factorize(CausalLM& lm) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  int replaced = 0;
  for (const auto& info : lm.linears()) {
    if (info.layer < 0) continue;
    ++replaced;
    const auto* dense = dynamic_cast<const model::DenseLinear*>(&lm.linear(info.name));
    REQUIRE(dense);
    auto a = at::randn({info.out_features, 4}, gen) * 0.3;
    auto b = at::randn({4, info.in_features}, gen) * 0.3;
    lm.replace_linear(info.name, std::make_shared<compress::SVDLinear>(a, b, dense->bias()));
  }
  REQUIRE(replaced >= 12);
  for (const auto& info : lm.linears()) CHECK((info.layer < 0 || lm.linear(info.name).kind() == "svd"));
}

generate::GenerateOptions greedy(int64_t n) {
  generate::GenerateOptions o;
  o.max_new_tokens = n;
  o.stop_at_eos = false;
  return o;
}

std::vector<std::vector<int64_t>> prompts_of(const std::vector<int64_t>& lengths, int64_t vocab) {
  return test::make_samples(lengths, vocab, 21);
}

// Two rows of prefix trees laid out by hand (depth first, each slot's token, depth and subtree
// end): every sequence's logits at its slots equal its own forward's, each within `tol` (close),
// or, with `nmse`, their normalised mean squared error over the sequence below `tol`. Returns the
// ids, positions and ends for the callers' own checks.
std::tuple<at::Tensor, at::Tensor, at::Tensor> check_trees(const CausalLM& lm, double tol, bool nmse = false) {
  c10::InferenceMode guard;
  const int64_t vocab = lm.config().vocab_size;
  // Row 0: sequences that share 7 tokens, two of them 3 more (a subtree of a subtree), one a
  // prefix of another, and one that leaves the tree right after the root. Row 1: two sequences,
  // then padding. mistral_window and gemma2_softcap slide over 5 positions: a late leaf sits
  // more than 5 slots after its ancestors but only its depth in positions. The layout, written
  // out by hand depth first: each slot's token, depth and end of its subtree.
  struct Slot {
    int64_t token, depth, end;
  };
  const std::vector<std::vector<Slot>> layout = {
      {{3, 0, 18}, {9, 1, 17}, {4, 2, 17}, {17, 3, 17}, {2, 4, 17}, {8, 5, 17}, {11, 6, 17},  // shared by four
       {6, 7, 13}, {14, 8, 13}, {2, 9, 13}, {5, 10, 11}, {9, 10, 13}, {1, 11, 13},            // two leaves
       {10, 7, 17}, {4, 8, 17}, {13, 9, 17}, {7, 10, 17},                                     // one inside another
       {12, 1, 18}},
      {{5, 0, 14}, {1, 1, 14}, {12, 2, 14}, {7, 3, 14}, {2, 4, 12}, {3, 5, 12}, {5, 6, 12}, {8, 7, 12},
       {13, 8, 12}, {4, 9, 12}, {6, 10, 12}, {1, 11, 12}, {15, 4, 14}, {16, 5, 14}}};
  // Where each sequence's tokens sit, by depth (its tokens are those slots').
  const std::vector<std::vector<std::vector<int64_t>>> paths = {
      {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10},
       {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12},
       {0, 1, 2, 3, 4, 5, 6, 13},
       {0, 1, 2, 3, 4, 5, 6, 13, 14, 15, 16},
       {0, 17}},
      {{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {0, 1, 2, 3, 12, 13}}};
  const int64_t width = 18;
  auto ids = at::zeros({2, width}, at::kLong), pos = at::zeros({2, width}, at::kLong);
  auto ends = at::full({2, width}, -1, at::kLong);
  for (int64_t r = 0; r < 2; ++r) {
    const auto& slots = layout[static_cast<size_t>(r)];
    for (size_t j = 0; j < slots.size(); ++j) {
      ids[r][static_cast<int64_t>(j)] = slots[j].token % vocab;
      pos[r][static_cast<int64_t>(j)] = slots[j].depth;
      ends[r][static_cast<int64_t>(j)] = slots[j].end;
    }
  }
  const auto logits = lm.head(lm.forward_tree_hidden(ids.to(lm.device()), pos, ends)).to(at::kCPU, at::kFloat);
  for (int64_t r = 0; r < 2; ++r) {
    const auto& slots = layout[static_cast<size_t>(r)];
    for (size_t q = 0; q < paths[static_cast<size_t>(r)].size(); ++q) {
      const auto& path = paths[static_cast<size_t>(r)][q];
      std::vector<int64_t> sequence;
      for (size_t d = 0; d < path.size(); ++d) {
        const auto& slot = slots[static_cast<size_t>(path[d])];
        REQUIRE(slot.depth == static_cast<int64_t>(d));  // a path from the root, one slot a depth
        sequence.push_back(slot.token);
      }
      const auto alone = lm.forward(row_ids(sequence).remainder(vocab).to(lm.device()))[0].to(at::kCPU, at::kFloat);
      const auto at_path = logits[r].index_select(0, at::tensor(path, at::kLong));
      INFO("row " << r << ", sequence " << q);
      if (nmse) {
        CHECK((at_path - alone).pow(2).mean().item<double>() < tol * alone.pow(2).mean().item<double>());
      } else {
        for (size_t d = 0; d < path.size(); ++d) {
          INFO("depth " << d);
          CHECK(close(at_path[static_cast<int64_t>(d)].unsqueeze(0), alone[static_cast<int64_t>(d)].unsqueeze(0), tol));
        }
      }
    }
  }
  return {ids, pos, ends};
}

}  // namespace

TEST_CASE("cached decoding gives the full forward's logits at every position, every family") {
  for (const char* name : {"opt_pre", "opt_proj_post", "tiny-shakespeare-opt", "llama_gqa", "llama3_rope",
                           "mistral_window", "qwen2_bias"}) {
    INFO(name);
    auto lm = CausalLM::load(model_dir(name));
    // mistral_window's window is 5 tokens: both the prefill and the decoding run past it.
    check_cached_equals_forward(*lm, 9, 24);
    check_cached_equals_forward(*lm, 1, 6);
    REQUIRE(lm->group_projections() > 0);  // as the generate app runs it: q/k/v (and gate/up) as one product
    check_cached_equals_forward(*lm, 9, 24);
  }
}

TEST_CASE("Gemma-2 and Qwen3: cached decoding gives the full forward's logits within 1e-5 (fp32)") {
  for (const char* name : {"gemma2_softcap", "qwen3_qknorm"}) {
    INFO(name);
    auto lm = CausalLM::load(model_dir(name));
    REQUIRE(lm->config().max_position_embeddings >= 40);
    check_cached_equals_forward(*lm, 9, 24, 1e-5);
    check_cached_equals_forward(*lm, 1, 6, 1e-5);
    check_cached_equals_forward(*lm, 30, 40, 1e-5);
  }
  // gemma2_softcap: layers 0 and 2 slide over 5 positions, 1 and 3 see everything; attention scores and
  // logits are soft-capped. A prefill and decoding both longer than the window, up to the model's 64 positions.
  auto lm = CausalLM::load(model_dir("gemma2_softcap"));
  REQUIRE(lm->config().sliding_window == 5);
  REQUIRE(lm->config().window(0) == 5);
  REQUIRE(lm->config().window(1) == 0);
  REQUIRE(lm->config().attn_logit_softcapping > 0);
  check_cached_equals_forward(*lm, 12, 64, 1e-5);
}

TEST_CASE("prefix trees: each sequence of a packed tree gives what it gives alone, bad layouts refused") {
  for (const char* name : {"opt_pre", "tiny-shakespeare-opt", "llama_gqa", "mistral_window", "gemma2_softcap",
                           "qwen3_qknorm"}) {
    INFO(name);
    auto lm = CausalLM::load(model_dir(name));
    const auto [ids, pos, ends] = check_trees(*lm, 1e-4);
    c10::InferenceMode guard;
    const int64_t width = ids.size(1);
    // Sizes that disagree, a position past the row's slots, and ends outside the row or before
    // their own slot are refused.
    CHECK_THROWS_AS(lm->forward_tree_hidden(ids, pos.narrow(1, 0, 5), ends), std::invalid_argument);
    CHECK_THROWS_AS(lm->forward_tree_hidden(ids, pos + width, ends), std::invalid_argument);
    CHECK_THROWS_AS(lm->forward_tree_hidden(ids, pos - 1, ends), std::invalid_argument);
    auto past = ends.clone();
    past[1][0] = width + 1;
    CHECK_THROWS_AS(lm->forward_tree_hidden(ids, pos, past), std::invalid_argument);
    auto before = ends.clone();
    before[0][5] = 5;
    CHECK_THROWS_AS(lm->forward_tree_hidden(ids, pos, before), std::invalid_argument);
  }
}

TEST_CASE("CUDA: prefix trees in bfloat16 and half give each sequence's own logits", "[cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  // The step's own keys and values, not a cache's, through the masked attention kernel.
  for (const char* name : {"llama_gqa", "qwen3_qknorm", "tiny-shakespeare-opt"}) {
    for (const auto dtype : {at::kBFloat16, at::kHalf}) {
      INFO(name << ", " << c10::toString(dtype));
      model::LoadOptions o;
      o.device = c10::Device(c10::kCUDA);
      o.dtype = dtype;
      auto lm = CausalLM::load(model_dir(name), o);
      (void)check_trees(*lm, 1e-3, /*nmse=*/true);  // a sibling seen by mistake moves it by far more
    }
  }
}

TEST_CASE("cached decoding through factorized slots and narrowed layers") {
  SECTION("svd slots in every decoder layer") {
    for (const char* name : {"opt_pre", "llama_gqa", "mistral_window"}) {
      INFO(name);
      auto lm = CausalLM::load(model_dir(name));
      factorize(*lm);
      check_cached_equals_forward(*lm, 7, 20);
    }
  }
  SECTION("a layer with narrower values and MLP (module methods' shapes)") {
    auto lm = CausalLM::load(model_dir("llama_gqa"));  // 4 heads, 2 KV heads, head_dim 8, hidden 32
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    auto dense = [&](int64_t out, int64_t in) {
      return std::make_shared<model::DenseLinear>(at::randn({out, in}, gen) * 0.2, at::Tensor());
    };
    model::LayerShapes narrow;
    narrow.v_head_dim = 3;
    narrow.intermediate_size = 20;
    const std::string p = "model.layers.1.";
    lm->reshape_layer(1, narrow,
                      {{p + "self_attn.v_proj", dense(2 * 3, 32)}, {p + "self_attn.o_proj", dense(32, 4 * 3)},
                       {p + "mlp.gate_proj", dense(20, 32)}, {p + "mlp.up_proj", dense(20, 32)},
                       {p + "mlp.down_proj", dense(32, 20)}});
    check_cached_equals_forward(*lm, 5, 16);
    model::KVCache cache(1, 4, lm->device());
    (void)lm->forward_cached(row_ids({3, 4}), cache);
    CHECK(cache.values(0).size(3) == 8);  // each layer's cache has that layer's widths
    CHECK(cache.values(1).size(3) == 3);
    CHECK(cache.keys(1).size(3) == 8);
  }
  SECTION("narrower query/key heads (qk_cr's shapes): rotary pairs per KV head, and OPT") {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(10);
    auto dense = [&](int64_t out, int64_t in, bool bias) {
      return std::make_shared<model::DenseLinear>(at::randn({out, in}, gen) * 0.3,
                                                  bias ? at::randn({out}, gen) * 0.1 : at::Tensor());
    };
    {
      auto lm = CausalLM::load(model_dir("llama_gqa"));  // 4 heads, 2 KV heads, head_dim 8, hidden 32
      model::LayerShapes narrow;
      narrow.qk_head_dim = 4;
      narrow.qk_dims = {0, 2, 4, 6, 1, 3, 5, 7};  // KV head 0 keeps pairs (0, 4), (2, 6); head 1 (1, 5), (3, 7)
      const std::string p = "model.layers.0.";
      lm->reshape_layer(0, narrow, {{p + "self_attn.q_proj", dense(4 * 4, 32, false)},
                                    {p + "self_attn.k_proj", dense(2 * 4, 32, false)}});
      check_cached_equals_forward(*lm, 6, 16);
      model::KVCache cache(1, 4, lm->device());
      (void)lm->forward_cached(row_ids({3, 4}), cache);
      CHECK(cache.keys(0).size(3) == 4);
      CHECK(cache.keys(1).size(3) == 8);
    }
    {
      auto lm = CausalLM::load(model_dir("opt_pre"));  // 4 heads of 8
      model::LayerShapes narrow;
      narrow.qk_head_dim = 3;
      narrow.qk_dims = {0, 5, 7, 1, 2, 6, 3, 4, 5, 0, 6, 7};
      const std::string p = "model.decoder.layers.1.";
      lm->reshape_layer(1, narrow, {{p + "self_attn.q_proj", dense(4 * 3, 32, true)},
                                    {p + "self_attn.k_proj", dense(4 * 3, 32, true)}});
      check_cached_equals_forward(*lm, 4, 12);
    }
  }
}

TEST_CASE("generation from an acur repository with factorized layers and packed int8 weights") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  factorize(*lm);
  const auto packed = quant::quantize_model_packed(*lm, quant::parse_quant_format("rtn_int8"));
  REQUIRE_FALSE(packed.empty());
  test::TempDir dir("cur4llm_gen_repo");
  repo::ExportOptions eo;
  eo.packed = &packed;
  repo::write_acur_repo(*lm, dir / "repo", eo);
  auto back = CausalLM::load(dir / "repo");
  REQUIRE(back->stored_form().quantization == "rtn_int8");
  REQUIRE(back->linear("model.layers.1.mlp.up_proj").kind() == "svd");
  check_cached_equals_forward(*back, 6, 18);
  const auto prompts = prompts_of({5, 2}, back->config().vocab_size);
  CHECK(generate::generate(*back, prompts, greedy(12)).sequences[1].tokens ==
        generate::generate(*lm, prompts, greedy(12)).sequences[1].tokens);
}

TEST_CASE("stories260K: greedy tokens with the cache are those of full forward passes") {
  CUR4LLM_REQUIRE_SHARED_DATA(shared);
  const auto folder = shared / "models" / "stories260K-hf";
  if (!fs::is_directory(folder)) {
    WARN("SKIPPED: " << folder.string() << " not found");
    return;
  }
  auto lm = CausalLM::load(folder);
  auto tok = tokenize::load_tokenizer(folder);
  const auto prompt = tok->encode("Once upon a time, there was a little girl named Lily. She");
  const auto r = generate::generate(*lm, *tok, {"Once upon a time, there was a little girl named Lily. She"}, greedy(64));
  REQUIRE(r.sequences[0].prompt_ids == prompt);
  // The same 64 tokens from argmax over full forward passes, no cache.
  c10::InferenceMode guard;
  std::vector<int64_t> seq = prompt;
  for (int i = 0; i < 64; ++i) seq.push_back(lm->forward(row_ids(seq))[0][-1].argmax().item<int64_t>());
  CHECK(r.sequences[0].tokens == std::vector<int64_t>(seq.begin() + static_cast<int64_t>(prompt.size()), seq.end()));
  // The text continues the prompt's (SentencePiece drops a leading space when the tokens are decoded alone).
  std::vector<int64_t> all = prompt;
  all.insert(all.end(), r.sequences[0].tokens.begin(), r.sequences[0].tokens.end());
  CHECK(tok->decode(prompt) + r.sequences[0].text == tok->decode(all));
}

TEST_CASE("a batch of prompts of different lengths gives each prompt what it gives alone") {
  for (const char* name : {"opt_pre", "llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm", "gemma2_softcap"}) {
    INFO(name);
    auto lm = CausalLM::load(model_dir(name));
    const auto prompts = prompts_of({3, 11, 7, 1}, lm->config().vocab_size);
    const auto batched = generate::generate(*lm, prompts, greedy(20));
    REQUIRE(batched.sequences.size() == prompts.size());
    for (size_t b = 0; b < prompts.size(); ++b) {
      const auto alone = generate::generate(*lm, {prompts[b]}, greedy(20));
      INFO("row " << b);
      CHECK(batched.sequences[b].prompt_ids == prompts[b]);
      CHECK(batched.sequences[b].tokens.size() == 20);
      CHECK(batched.sequences[b].tokens == alone.sequences[0].tokens);
    }
    // And the padded prefill's logits are each prompt's own.
    c10::InferenceMode guard;
    auto ids = at::zeros({2, 11}, at::kLong);
    auto mask = at::zeros({2, 11}, at::kLong);
    ids[0].narrow(0, 8, 3).copy_(at::tensor(prompts[0], at::kLong));
    mask[0].narrow(0, 8, 3).fill_(1);
    ids[1].copy_(at::tensor(prompts[1], at::kLong));
    mask[1].fill_(1);
    model::KVCache cache(2, 12, lm->device());
    const auto logits = lm->forward_cached(ids, cache, mask);
    CHECK(close(logits[0], lm->forward(row_ids(prompts[0])).narrow(1, 2, 1)[0]));
    CHECK(close(logits[1], lm->forward(row_ids(prompts[1])).narrow(1, 10, 1)[0]));
    CHECK(cache.next_positions()[0].item<int64_t>() == 3);
    CHECK(cache.next_positions()[1].item<int64_t>() == 11);
    // One more token each: still each row's own.
    const auto next = lm->forward_cached(at::tensor({5, 6}, at::kLong).view({2, 1}), cache);
    auto row0 = prompts[0];
    row0.push_back(5);
    CHECK(close(next[0], lm->forward(row_ids(row0)).narrow(1, 3, 1)[0]));
  }
}

TEST_CASE("greedy generation stops at EOS and at a stop string spanning two tokens") {
  const auto folder = model_dir("tiny-shakespeare-opt");
  auto lm = CausalLM::load(folder);
  auto tok = tokenize::load_tokenizer(folder);
  const std::string prompt = "ROMEO:\nWhat light";
  const auto free_run = generate::generate(*lm, *tok, {prompt}, greedy(40));
  const auto& tokens = free_run.sequences[0].tokens;
  REQUIRE(tokens.size() == 40);
  CHECK(free_run.sequences[0].finish == generate::FinishReason::Length);
  CHECK(free_run.sequences[0].text == tok->decode(tokens));
  CHECK_FALSE(free_run.sequences[0].text.empty());

  SECTION("EOS") {
    // Pretend the 6th token is the end of a sequence: the row stops there, EOS kept.
    auto o = greedy(40);
    o.stop_at_eos = true;
    o.eos_token_ids = {tokens[5]};
    const auto first = static_cast<size_t>(std::find(tokens.begin(), tokens.end(), tokens[5]) - tokens.begin());
    const auto r = generate::generate(*lm, *tok, {prompt}, o);
    CHECK(r.sequences[0].finish == generate::FinishReason::Eos);
    CHECK(r.sequences[0].tokens == std::vector<int64_t>(tokens.begin(), tokens.begin() + first + 1));
    // stop_at_eos off: all 40.
    o.stop_at_eos = false;
    CHECK(generate::generate(*lm, *tok, {prompt}, o).sequences[0].tokens == tokens);
  }

  SECTION("a stop string") {
    // Two characters: the last of one token's text and the first of the next's.
    std::string stop;
    size_t expected_tokens = 0;
    for (size_t k = 1; k + 1 < tokens.size() && stop.empty(); ++k) {
      const std::string before = tok->decode({tokens.begin(), tokens.begin() + k});
      const std::string upto = tok->decode({tokens.begin(), tokens.begin() + k + 1});
      if (before.empty() || upto.size() <= before.size()) continue;
      const std::string candidate = upto.substr(before.size() - 1, 2);
      if (static_cast<unsigned char>(candidate[0]) >= 0x80 || static_cast<unsigned char>(candidate[1]) >= 0x80) continue;
      if (upto.find(candidate) != before.size() - 1) continue;  // its first occurrence must be this one
      stop = candidate;
      expected_tokens = k + 1;
    }
    REQUIRE_FALSE(stop.empty());
    auto o = greedy(40);
    o.stop = {"never occurs \x01", stop};
    const auto r = generate::generate(*lm, *tok, {prompt}, o);
    const auto& seq = r.sequences[0];
    CHECK(seq.finish == generate::FinishReason::Stop);
    CHECK(seq.tokens == std::vector<int64_t>(tokens.begin(), tokens.begin() + expected_tokens));
    // The text ends with the stop string, nothing after it.
    REQUIRE(seq.text.size() >= stop.size());
    CHECK(seq.text.compare(seq.text.size() - stop.size(), stop.size(), stop) == 0);
    CHECK(seq.text.find(stop) == seq.text.size() - stop.size());
  }

  SECTION("a stop string that never occurs: the row runs to max_new_tokens") {
    auto o = greedy(40);
    o.stop = {"\x01never\x02"};
    const auto r = generate::generate(*lm, *tok, {prompt}, o);
    CHECK(r.sequences[0].finish == generate::FinishReason::Length);
    CHECK(r.sequences[0].tokens == tokens);
  }

  SECTION("streaming: the pieces make the text, one event per token, the last one marked") {
    auto o = greedy(25);
    std::string streamed;
    std::vector<int64_t> seen;
    int lasts = 0;
    o.on_token = [&](const generate::TokenEvent& e) {
      CHECK(e.row == 0);
      streamed += e.text;
      seen.push_back(e.token);
      lasts += e.last ? 1 : 0;
    };
    const auto r = generate::generate(*lm, *tok, {prompt}, o);
    CHECK(seen == r.sequences[0].tokens);
    CHECK(streamed == r.sequences[0].text);
    CHECK(lasts == 1);
    CHECK(r.stats.generated_tokens == 25);
    CHECK(r.stats.first_tokens == 1);
    CHECK(r.stats.decode_steps == 24);
  }
}

TEST_CASE("sampling: a seed gives the same tokens, top_k 1 is greedy, the batch does not matter") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  const auto prompts = prompts_of({4, 9}, lm->config().vocab_size);
  auto o = greedy(24);
  o.temperature = 1.5;
  o.seed = 7;
  const auto a = generate::generate(*lm, prompts, o);
  const auto b = generate::generate(*lm, prompts, o);
  CHECK(a.sequences[0].tokens == b.sequences[0].tokens);
  CHECK(a.sequences[1].tokens == b.sequences[1].tokens);
  // Each row draws from its own generator: alone, the same tokens.
  CHECK(generate::generate(*lm, {prompts[1]}, o).sequences[0].tokens == a.sequences[1].tokens);
  o.seed = 8;
  const auto c = generate::generate(*lm, prompts, o);
  CHECK((c.sequences[0].tokens != a.sequences[0].tokens || c.sequences[1].tokens != a.sequences[1].tokens));
  // Sampled at temperature 1.5, the tokens differ from greedy ones; top_k 1 gives the greedy ones.
  const auto g = generate::generate(*lm, prompts, greedy(24));
  CHECK(a.sequences[0].tokens != g.sequences[0].tokens);
  o.top_k = 1;
  const auto k1 = generate::generate(*lm, prompts, o);
  CHECK(k1.sequences[0].tokens == g.sequences[0].tokens);
  CHECK(k1.sequences[1].tokens == g.sequences[1].tokens);
}

TEST_CASE("sampling: row_seeds give each prompt its own seed, as that seed alone gives it") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));
  const auto prompts = prompts_of({4, 4}, lm->config().vocab_size);
  auto o = greedy(24);
  o.temperature = 1.5;
  auto alone = [&](size_t row, uint64_t seed) {
    auto one = o;
    one.row_seeds.clear();
    one.seed = seed;
    return generate::generate(*lm, {prompts[row]}, one).sequences[0].tokens;
  };
  o.row_seeds = {11, 12};
  const auto r = generate::generate(*lm, prompts, o);
  CHECK(r.sequences[0].tokens == alone(0, 11));
  CHECK(r.sequences[1].tokens == alone(1, 12));
  CHECK(r.sequences[1].tokens != alone(1, 11));
  o.row_seeds = {11};
  CHECK_THROWS_WITH(generate::generate(*lm, prompts, o), Catch::Contains("row_seeds has 1 seeds for 2 prompts"));
}

TEST_CASE("pick_token: temperature, top_k and top_p on hand-made logits") {
  generate::GenerateOptions o;
  // Greedy: the first maximum.
  CHECK(generate::pick_token({1.0, 3.0, 3.0, 2.0}, o, 0.9) == 1);
  // probabilities 0.5, 0.3, 0.2 (at temperature 1)
  const std::vector<double> logits = {std::log(0.2), std::log(0.5), std::log(0.3)};
  o.temperature = 1;
  CHECK(generate::pick_token(logits, o, 0.0) == 1);
  CHECK(generate::pick_token(logits, o, 0.49) == 1);
  CHECK(generate::pick_token(logits, o, 0.51) == 2);
  CHECK(generate::pick_token(logits, o, 0.79) == 2);
  CHECK(generate::pick_token(logits, o, 0.81) == 0);
  o.top_k = 2;  // 0.5 and 0.3, renormalised: 0.625, 0.375
  CHECK(generate::pick_token(logits, o, 0.6) == 1);
  CHECK(generate::pick_token(logits, o, 0.99) == 2);
  o.top_k = 0;
  o.top_p = 0.6;  // 0.5 < 0.6, 0.5 + 0.3 >= 0.6: ids 1 and 2
  CHECK(generate::pick_token(logits, o, 0.99) == 2);
  o.top_p = 0.5;  // id 1 alone reaches it
  CHECK(generate::pick_token(logits, o, 0.99) == 1);
  o.top_p = 1;
  o.temperature = 1e-3;  // nearly greedy
  CHECK(generate::pick_token(logits, o, 0.99) == 1);
}

TEST_CASE("generation's bad input: long and empty prompts, bad options, a full cache") {
  auto lm = CausalLM::load(model_dir("llama_gqa"));  // context 64, BOS 1
  const int64_t vocab = lm->config().vocab_size;

  SECTION("a prompt as long as the context is refused, naming the context") {
    const auto long_prompt = prompts_of({64}, vocab);
    try {
      (void)generate::generate(*lm, long_prompt, greedy(4));
      FAIL("no error");
    } catch (const std::invalid_argument& e) {
      CHECK_THAT(e.what(), Catch::Contains("64 tokens") && Catch::Contains("context"));
    }
  }
  SECTION("a row stops where its sequence reaches the context") {
    const auto r = generate::generate(*lm, prompts_of({60, 3}, vocab), greedy(10));
    CHECK(r.sequences[0].tokens.size() == 4);
    CHECK(r.sequences[0].finish == generate::FinishReason::Context);
    CHECK(r.sequences[1].tokens.size() == 10);
    CHECK(r.sequences[1].finish == generate::FinishReason::Length);
  }
  SECTION("an empty prompt starts from BOS") {
    const auto r = generate::generate(*lm, {{}}, greedy(5));
    CHECK(r.sequences[0].prompt_ids == std::vector<int64_t>{1});
    CHECK(r.sequences[0].tokens == generate::generate(*lm, {{1}}, greedy(5)).sequences[0].tokens);
    // A model without BOS refuses it.
    auto config = lm->config();
    config.bos_token_id = -1;
    auto no_bos = CausalLM::random(config);
    CHECK_THROWS_AS(generate::generate(*no_bos, {{}}, greedy(5)), std::invalid_argument);
  }
  SECTION("options and ids") {
    const auto p = prompts_of({3}, vocab);
    auto o = greedy(4);
    o.max_new_tokens = -1;
    CHECK_THROWS_AS(generate::generate(*lm, p, o), std::invalid_argument);
    o = greedy(4);
    o.temperature = -1;
    CHECK_THROWS_AS(generate::generate(*lm, p, o), std::invalid_argument);
    o = greedy(4);
    o.top_p = 0;
    CHECK_THROWS_AS(generate::generate(*lm, p, o), std::invalid_argument);
    o = greedy(4);
    o.top_k = -2;
    CHECK_THROWS_AS(generate::generate(*lm, p, o), std::invalid_argument);
    o = greedy(4);
    o.stop = {"x"};  // without a tokenizer
    CHECK_THROWS_AS(generate::generate(*lm, p, o), std::invalid_argument);
    CHECK_THROWS_AS(generate::generate(*lm, {{5, vocab}}, greedy(4)), std::invalid_argument);
    CHECK_THROWS_AS(generate::generate(*lm, std::vector<std::vector<int64_t>>{}, greedy(4)), std::invalid_argument);
    CHECK(generate::generate(*lm, p, greedy(0)).sequences[0].tokens.empty());
  }
  SECTION("a cache too small, or of another batch, is refused and left as it was") {
    c10::InferenceMode guard;
    model::KVCache cache(1, 5, lm->device());
    (void)lm->forward_cached(row_ids({3, 4, 5}), cache);
    CHECK_THROWS_AS(lm->forward_cached(row_ids({3, 4, 5}), cache), std::invalid_argument);
    CHECK_THROWS_AS(lm->forward_cached(at::ones({2, 1}, at::kLong), cache), std::invalid_argument);
    CHECK_THROWS_AS(lm->forward_cached(row_ids({3, vocab}), cache), std::invalid_argument);
    CHECK(cache.length() == 3);
    // Still usable, and truncating rewinds it.
    const auto next = lm->forward_cached(row_ids({6}), cache);
    CHECK(close(next, lm->forward(row_ids({3, 4, 5, 6})).narrow(1, 3, 1)));
    cache.truncate(2);
    CHECK(cache.next_positions()[0].item<int64_t>() == 2);
    const auto again = lm->forward_cached(row_ids({7}), cache);
    CHECK(close(again, lm->forward(row_ids({3, 4, 7})).narrow(1, 2, 1)));
  }
}

TEST_CASE("CUDA: cached decoding gives the full forward's logits (fp32, bf16)", "[cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  for (const char* name : {"opt_pre", "llama_gqa", "mistral_window", "qwen2_bias", "qwen3_qknorm", "gemma2_softcap"}) {
    INFO(name);
    model::LoadOptions o;
    o.device = c10::Device(c10::kCUDA);
    o.dtype = at::kFloat;
    check_cached_equals_forward(*CausalLM::load(model_dir(name), o), 9, 24, 1e-3);
    auto grouped = CausalLM::load(model_dir(name), o);
    REQUIRE(grouped->group_projections() > 0);  // as the generate app runs it
    check_cached_equals_forward(*grouped, 9, 24, 1e-3);
    o.dtype = at::kBFloat16;
    check_cached_equals_forward(*CausalLM::load(model_dir(name), o), 9, 24, 0.1);
    auto lm = CausalLM::load(model_dir(name), o);
    const auto prompts = prompts_of({3, 11, 7}, lm->config().vocab_size);
    const auto batched = generate::generate(*lm, prompts, greedy(8));
    CHECK(batched.sequences[1].tokens.size() == 8);
  }
}

TEST_CASE("CUDA: rotary rows at each row's positions: narrowed heads, rows of different lengths", "[cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  model::LoadOptions o;
  o.device = c10::Device(c10::kCUDA);
  o.dtype = at::kFloat;
  {
    // Layer 0 keeps 2 rotary pairs per KV head: the fused rotary reads each KV head's own table.
    auto lm = CausalLM::load(model_dir("llama_gqa"), o);  // 4 heads, 2 KV heads, head_dim 8, hidden 32
    auto gen = at::make_generator<at::CPUGeneratorImpl>(10);
    auto dense = [&](int64_t out, int64_t in) {
      return std::make_shared<model::DenseLinear>((at::randn({out, in}, gen) * 0.3).cuda(), at::Tensor());
    };
    model::LayerShapes narrow;
    narrow.qk_head_dim = 4;
    narrow.qk_dims = {0, 2, 4, 6, 1, 3, 5, 7};
    const std::string p = "model.layers.0.";
    lm->reshape_layer(0, narrow, {{p + "self_attn.q_proj", dense(4 * 4, 32)}, {p + "self_attn.k_proj", dense(2 * 4, 32)}});
    check_cached_equals_forward(*lm, 6, 16, 1e-4);
  }
  // Rows of a batch sit at different positions (prompts of 3, 11 and 7 tokens): each row's
  // tokens equal those it gets alone.
  auto lm = CausalLM::load(model_dir("llama_gqa"), o);
  const auto prompts = prompts_of({3, 11, 7}, lm->config().vocab_size);
  const auto batched = generate::generate(*lm, prompts, greedy(10));
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    CHECK(batched.sequences[i].tokens == generate::generate(*lm, {prompts[i]}, greedy(10)).sequences[0].tokens);
  }
}

TEST_CASE("CUDA: decoding attention over many cache slots, model-sized heads, with and without GQA", "[cuda]") {
  CUR4LLM_REQUIRE_CUDA();
  // Head dim 128 with 4 query heads per KV head (70 to 100 slots), and head dim 64 with one (260
  // to 300 slots): the key axis spans several blocks either way; batch 2 with prompts of
  // different lengths (masked slots). The fused decoding path, reading the cache 16 bytes a lane
  // and one element a lane, against the full forward (fp32), and against the cached path with
  // cur4llm's kernels off (bf16, half).
  test::KernelScope kernels{};
  const char* mha = R"({"model_type": "llama", "vocab_size": 512, "hidden_size": 512, "num_hidden_layers": 2,
      "intermediate_size": 1024, "num_attention_heads": 8, "num_key_value_heads": 8, "rms_norm_eps": 1e-5,
      "max_position_embeddings": 4096, "hidden_act": "silu"})";
  struct Case {
    const char* config;
    int64_t prefill, total;
  };
  for (const auto& c : {Case{test::kModelSizedLlama, 70, 100}, Case{mha, 260, 300}}) {
    const auto config = model::ModelConfig::from_json(c.config, "test config");
    INFO("head dim " << config.head_dim << ", " << config.num_heads / config.num_kv_heads << " query heads per KV head");
    model::LoadOptions o;
    o.device = c10::Device(c10::kCUDA);
    o.dtype = at::kFloat;
    for (const bool vector_loads : {false, true}) {
      kernels.set(util::Kernel::decode_vector, vector_loads);
      check_cached_equals_forward(*CausalLM::random(config, o, 3), c.prefill, c.total, 1e-3);
    }
    for (const auto dtype : {at::kBFloat16, at::kHalf}) {
      o.dtype = dtype;
      const auto lm = CausalLM::random(config, o, 3);
      c10::InferenceMode guard;
      const auto samples = test::make_samples({c.total, c.total}, 512, 5);
      // Row 1's prompt is 13 tokens shorter, padded on the left: its first slots are masked in every step.
      auto padding = at::ones({2, c.prefill}, at::kLong);
      padding[1].narrow(0, 0, 13).zero_();
      auto ids = at::stack({row_ids(samples[0])[0], row_ids(samples[1])[0]}).to(lm->device());
      auto decode = [&](bool fused) {
        util::set_fused_kernels_enabled(fused);
        model::KVCache cache(2, c.total, lm->device());
        std::vector<at::Tensor> steps{lm->forward_cached(ids.narrow(1, 0, c.prefill), cache, padding.to(lm->device()))};
        for (int64_t t = c.prefill; t < c.total; ++t) steps.push_back(lm->forward_cached(ids.narrow(1, t, 1), cache));
        util::set_fused_kernels_enabled(true);
        return at::cat(steps, 1).to(at::kFloat);
      };
      const auto plain = decode(false);
      for (const bool vector_loads : {false, true}) {
        kernels.set(util::Kernel::decode_vector, vector_loads);
        const auto fused = decode(true);
        INFO(c10::toString(dtype) << ", vector loads " << vector_loads);
        const double err = (fused - plain).pow(2).mean().item<double>() / plain.pow(2).mean().item<double>();
        // bfloat16 keeps 3 fewer bits than half: 64 times the squared rounding, bounded at 4x here.
        CHECK(err < (dtype == at::kBFloat16 ? 4e-4 : 1e-4));
      }
    }
  }
}

TEST_CASE("read_reference parses a reference file and names what is wrong") {
  test::TempDir dir("cur4llm_genref");
  const auto good = dir / "good.json";
  std::ofstream(good) << R"({"model": "llama_gqa", "location": "fixture", "transformers_version": "5.17.0",
    "cases": [{"name": "single", "max_new_tokens": 3, "prompt_ids": [[1, 5, 9]], "generated_ids": [[7, 7, 2]]},
              {"name": "batch", "max_new_tokens": 2, "prompt_ids": [[1], [1, 4]], "generated_ids": [[3, 3], [8, 9]]}]})";
  const auto ref = test::read_reference(good);
  CHECK(ref.model == "llama_gqa");
  CHECK(ref.location == "fixture");
  REQUIRE(ref.cases.size() == 2);
  CHECK(ref.cases[0].name == "single");
  CHECK(ref.cases[0].max_new_tokens == 3);
  CHECK(ref.cases[0].prompt_ids == std::vector<std::vector<int64_t>>{{1, 5, 9}});
  CHECK(ref.cases[0].generated_ids == std::vector<std::vector<int64_t>>{{7, 7, 2}});
  CHECK(ref.cases[1].prompt_ids.size() == 2);
  CHECK(ref.cases[1].generated_ids[1] == std::vector<int64_t>{8, 9});

  const auto rows = dir / "rows.json";
  std::ofstream(rows) << R"({"model": "m", "cases": [{"name": "x", "max_new_tokens": 1, "prompt_ids": [[1], [2]],
                              "generated_ids": [[3]]}]})";
  CHECK_THROWS_WITH(test::read_reference(rows), Catch::Contains("same rows"));
  const auto ids = dir / "ids.json";
  std::ofstream(ids) << R"({"model": "m", "cases": [{"name": "x", "max_new_tokens": 1, "prompt_ids": [["a"]],
                             "generated_ids": [[3]]}]})";
  CHECK_THROWS_WITH(test::read_reference(ids), Catch::Contains("prompt_ids"));
  CHECK_THROWS_AS(test::read_reference(dir / "absent.json"), std::runtime_error);
}

TEST_CASE("greedy tokens equal transformers' generate() (tests/data/generate_reference)") {
  const fs::path folder = test::fixture_dir() / "generate_reference";
  if (!fs::is_directory(folder)) {
    WARN("SKIPPED: tests/data/generate_reference not found (scripts/generate_reference.py writes it)");
    return;
  }
  int files = 0;
  for (const auto& entry : fs::directory_iterator(folder)) {
    if (entry.path().extension() != ".json") continue;
    const auto ref = test::read_reference(entry.path());
    fs::path model;
    if (ref.location == "shared") {
      const auto shared = test::shared_data_dir();
      if (!shared) {
        WARN("SKIPPED: " << ref.model << ": ../shared/data not found");
        continue;
      }
      model = *shared / "models" / ref.model;
    } else {
      model = model_dir(ref.model);
    }
    auto lm = CausalLM::load(model);
    ++files;
    for (const auto& c : ref.cases) {
      INFO(ref.model << " / " << c.name);
      const auto r = generate::generate(*lm, c.prompt_ids, greedy(c.max_new_tokens));
      REQUIRE(r.sequences.size() == c.generated_ids.size());
      for (size_t b = 0; b < c.generated_ids.size(); ++b) {
        INFO("row " << b);
        CHECK(r.sequences[b].tokens == c.generated_ids[b]);
      }
    }
  }
  CHECK(files > 0);
}
