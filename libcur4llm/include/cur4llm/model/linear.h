#pragma once
/// The slot a Linear layer sits in: dense now, factorized forms later, all
/// behind one interface so a layer can be swapped by name.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace cur4llm::model {

/// An RMSNorm of a product's input, as the LLaMA family normalises a layer's input: x /
/// sqrt(mean(x^2) + eps) over the last dim, in float32, rounded to x's dtype, times `weight`.
struct InputNorm {
  at::Tensor weight;
  double eps = 1e-6;
  /// The norm alone, computed as transformers computes it.
  at::Tensor apply(const at::Tensor& x) const;
};

/// y = f(x) for x of shape [..., in_features] and y of shape [..., out_features].
class LinearSlot {
 public:
  virtual ~LinearSlot() = default;
  virtual at::Tensor forward(const at::Tensor& x) const = 0;
  virtual int64_t in_features() const = 0;
  virtual int64_t out_features() const = 0;
  /// Parameters actually stored (weights of every factor, bias excluded).
  virtual int64_t weight_params() const = 0;
  /// "dense", "cur", "svd", ...
  virtual std::string kind() const = 0;
  /// Named tensors to save, relative to the layer name ("weight", "bias", ...).
  virtual std::vector<std::pair<std::string, at::Tensor>> state() const = 0;
  /// The dense weight this layer computes ([out, in]); for analysis and tests.
  virtual at::Tensor reconstruct_weight() const = 0;

  /// One slot whose output is this slot's and then each of `others`' side by side (their
  /// output features stacked, same input), with its own copy of their parameters; null where
  /// this kind of slot cannot stack with those (the default). CausalLM::group_projections
  /// uses it for the projections that read one input.
  virtual std::shared_ptr<LinearSlot> stacked_with(const std::vector<const LinearSlot*>& others) const;
  /// For a slot made by stacked_with: the slot computing its output features [begin,
  /// begin + count), sharing its storage (no copy); null where the kind has none (the default).
  virtual std::shared_ptr<LinearSlot> rows(int64_t begin, int64_t count) const;

  /// residual + forward(x), for `residual` [..., out_features] moved in by a caller that
  /// holds it alone: a kind may add its product into it in place, in the same pass (the sum
  /// then rounded once). The default adds forward(x).
  virtual at::Tensor forward_add(at::Tensor residual, const at::Tensor& x) const;
  /// For a slot whose output features are a gate projection's and then an up projection's
  /// (half each, as CausalLM::group_projections stacks them): silu(gate) * up as the separate
  /// steps compute it, in one pass where the kind has one; undefined otherwise (the default),
  /// and the caller splits forward(x).
  virtual at::Tensor silu_gate(const at::Tensor& x) const;
  /// forward(norm.apply(x)), the norm computed in the product's pass where the kind can (a few
  /// tokens on the tensor cores, util::Kernel::norm_in_product); undefined otherwise (the
  /// default), and the caller normalises x first. The result may differ from the separate
  /// steps' by roundings: x times the norm's weight is rounded, not x normalised.
  virtual at::Tensor forward_normed(const at::Tensor& x, const InputNorm& norm) const;
  /// silu_gate(norm.apply(x)) likewise.
  virtual at::Tensor silu_gate_normed(const at::Tensor& x, const InputNorm& norm) const;
};

/// Whether nothing but the caller's handle holds `t` or its storage (a residual that
/// forward_add may overwrite).
bool sole_owner(const at::Tensor& t);

/// An ordinary Linear layer: y = x W^T + b.
class DenseLinear final : public LinearSlot {
 public:
  /// `weight` is [out, in]; `bias` is [out] or undefined.
  DenseLinear(at::Tensor weight, at::Tensor bias);

  at::Tensor forward(const at::Tensor& x) const override;
  int64_t in_features() const override;
  int64_t out_features() const override;
  int64_t weight_params() const override;
  std::string kind() const override { return "dense"; }
  std::vector<std::pair<std::string, at::Tensor>> state() const override;
  at::Tensor reconstruct_weight() const override { return weight_; }
  /// Dense slots of one dtype and device, all with a bias or none.
  std::shared_ptr<LinearSlot> stacked_with(const std::vector<const LinearSlot*>& others) const override;
  std::shared_ptr<LinearSlot> rows(int64_t begin, int64_t count) const override;
  /// On CUDA, without a bias: the product goes into the residual as the matrix product's C
  /// operand (beta = 1), one pass less than a product and then an addition; with
  /// util::Kernel::dense_mma and a few tokens, in the tensor-core kernel's launch.
  at::Tensor forward_add(at::Tensor residual, const at::Tensor& x) const override;
  /// Where dense layers take the tensor-core kernel for a few tokens (util::Kernel::dense_mma).
  at::Tensor silu_gate(const at::Tensor& x) const override;
  /// There too, with util::Kernel::norm_in_product.
  at::Tensor forward_normed(const at::Tensor& x, const InputNorm& norm) const override;
  at::Tensor silu_gate_normed(const at::Tensor& x, const InputNorm& norm) const override;

  const at::Tensor& weight() const { return weight_; }
  const at::Tensor& bias() const { return bias_; }

 private:
  at::Tensor weight_;
  at::Tensor bias_;
};

using LinearPtr = std::shared_ptr<LinearSlot>;

/// A slot that stands in for another and answers for it: everything but
/// forward() is the inner slot's. Observers (statistics, recorders) derive
/// from it and override forward().
class ForwardingSlot : public LinearSlot {
 public:
  explicit ForwardingSlot(LinearPtr inner) : inner_(std::move(inner)) {}
  at::Tensor forward(const at::Tensor& x) const override { return inner_->forward(x); }
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  int64_t weight_params() const override { return inner_->weight_params(); }
  std::string kind() const override { return inner_->kind(); }
  std::vector<std::pair<std::string, at::Tensor>> state() const override { return inner_->state(); }
  at::Tensor reconstruct_weight() const override { return inner_->reconstruct_weight(); }
  const LinearPtr& inner() const { return inner_; }

 private:
  LinearPtr inner_;
};

}  // namespace cur4llm::model
