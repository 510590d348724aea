#pragma once
// Checks of a Linear slot's products of a few tokens (16-bit, on CUDA) against exact float64
// sums, shared by the tests of the dense and packed tensor-core paths; and the model-sized
// LLaMA shape those kernels (and the vectorised ones) take.

#include <cur4llm/model/linear.h>
#include <cur4llm/util/fused_kernels.h>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

namespace cur4llm::test {

/// A LLaMA of model-sized widths (hidden 1024, MLP 2816: multiples of 128; head dim 128, GQA
/// with 4 query heads per KV head), two layers, a small vocabulary.
inline constexpr const char* kModelSizedLlama =
    R"({"model_type": "llama", "vocab_size": 512, "hidden_size": 1024, "num_hidden_layers": 2,
        "intermediate_size": 2816, "num_attention_heads": 8, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "hidden_act": "silu"})";

/// Sets cur4llm's switchable kernels (util::Kernel) for its life, then puts back what they were.
class KernelScope {
 public:
  KernelScope(std::initializer_list<std::pair<util::Kernel, bool>> settings) {
    for (const auto& [kernel, on] : settings) set(kernel, on);
  }
  ~KernelScope() {
    for (const auto& [kernel, was] : saved_) util::set_kernel_enabled(kernel, was);
  }
  KernelScope(const KernelScope&) = delete;
  KernelScope& operator=(const KernelScope&) = delete;
  void set(util::Kernel kernel, bool on) {
    const bool seen = std::any_of(saved_.begin(), saved_.end(), [&](const auto& s) { return s.first == kernel; });
    if (!seen) saved_.emplace_back(kernel, util::kernel_enabled(kernel));
    util::set_kernel_enabled(kernel, on);
  }

 private:
  std::vector<std::pair<util::Kernel, bool>> saved_;
};

/// Half a unit in the last place, relative, of half or bfloat16.
inline double half_ulp(at::ScalarType dtype) { return std::ldexp(1.0, dtype == at::kHalf ? -11 : -8); }

/// |got - want| <= scale * eps + 1e-5 (1 + max |want|) everywhere: one rounding to the dtype
/// and the float sums' error.
inline bool within_rounding(const at::Tensor& got, const at::Tensor& want, const at::Tensor& scale, double eps) {
  const auto err = (got.to(at::kDouble) - want).abs();
  const auto allowed = scale * eps + 1e-5 * (1 + want.abs().max().item<double>());
  return (err <= allowed).all().item<bool>();
}

/// slot.forward(x) against `exact` (x W^T + b in float64), then slot.forward_add: the
/// residual's sum rounded once, in the residual's own storage when the caller holds it alone,
/// in a new tensor (the residual left as it was) when someone else holds it too.
inline void check_forward_and_add(const model::LinearSlot& slot, const at::Tensor& x, const at::Tensor& exact,
                                  at::Generator& gen) {
  const double eps = half_ulp(x.scalar_type());
  CHECK(within_rounding(slot.forward(x), exact, exact.abs(), eps));
  const auto residual = at::randn(exact.sizes(), gen).to(x.device(), x.scalar_type());
  const auto want = exact + residual.to(at::kDouble);
  auto mine = residual.clone();
  const void* storage = mine.data_ptr();
  const auto sum = slot.forward_add(std::move(mine), x);
  CHECK(sum.data_ptr() == storage);
  CHECK(within_rounding(sum, want, want.abs(), eps));
  auto held = residual.clone();
  const auto apart = slot.forward_add(held, x);
  CHECK(at::equal(held, residual));
  CHECK(apart.data_ptr() != held.data_ptr());
  CHECK(within_rounding(apart, want, want.abs() + exact.abs(), eps));  // rounded twice there
}

/// A stacked [gate; up] slot's silu_gate(x) against silu(gate) * up from the exact products
/// `exact` [tokens, 2 * half], rounded as the separate steps round them (a product rounded the
/// other way of a tie moves it by a unit, hence the wider bound).
inline void check_gated(const at::Tensor& got, at::ScalarType dtype, const at::Tensor& exact) {
  const int64_t half = exact.size(1) / 2;
  const auto g = exact.narrow(1, 0, half).to(dtype).to(at::kDouble);
  const auto u = exact.narrow(1, half, half).to(dtype).to(at::kDouble);
  const auto act = (g / (1 + at::exp(-g))).to(dtype).to(at::kDouble);
  REQUIRE(got.defined());
  CHECK(got.sizes() == at::IntArrayRef{exact.size(0), half});
  CHECK(within_rounding(got, act * u, 4 * (act.abs() + g.abs()) * u.abs(), half_ulp(dtype)));
}
inline void check_silu_gate(const model::LinearSlot& stacked, const at::Tensor& x, const at::Tensor& exact) {
  check_gated(stacked.silu_gate(x), x.scalar_type(), exact);
}

/// The input the tensor-core kernels multiply when they compute an input norm in their launch,
/// in float64: x times the norm's weight rounded to x's dtype (that product is exact in
/// float), and each token's 1 / sqrt(mean(x^2) + eps), which scales its sums.
inline std::pair<at::Tensor, at::Tensor> normed_input(const at::Tensor& x, const model::InputNorm& norm) {
  const auto xd = x.to(at::kDouble);
  const auto scaled = (xd * norm.weight.to(at::kDouble)).to(x.scalar_type()).to(at::kDouble);
  const auto inv_rms = at::rsqrt(xd.pow(2).mean(-1, /*keepdim=*/true) + norm.eps);
  return {scaled, inv_rms};
}

/// slot.forward_normed(x, norm) against (x * weight) W^T * inv_rms + b in float64 (`weight_exact`
/// W [rows, cols], `bias` undefined or [rows]), one rounding; and silu_gate_normed, for a slot
/// that stacks [gate; up] (`gated`), against the gate of those exact products.
inline void check_normed(const model::LinearSlot& slot, const at::Tensor& x, const model::InputNorm& norm,
                         const at::Tensor& weight_exact, const at::Tensor& bias, bool gated) {
  const auto [scaled, inv_rms] = normed_input(x, norm);
  auto exact = at::matmul(scaled, weight_exact.t()) * inv_rms;
  if (bias.defined()) exact = exact + bias.to(at::kDouble);
  const auto got = slot.forward_normed(x, norm);
  REQUIRE(got.defined());
  CHECK(within_rounding(got, exact, exact.abs(), half_ulp(x.scalar_type())));
  if (gated) check_gated(slot.silu_gate_normed(x, norm), x.scalar_type(), exact);
}

}  // namespace cur4llm::test
