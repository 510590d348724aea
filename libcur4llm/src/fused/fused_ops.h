#pragma once
// Internal: fused CUDA versions of memory-bound steps, as at::Tensor functions.
// Each gives what the unfused ATen sequence named in its comment gives (the
// same roundings to the tensor's dtype; reductions may add in another order).
// Callers check enabled_for() first: it is false on the CPU, on builds without
// the kernels (CUR4LLM_CUDA_KERNELS=OFF, LibTorch 1.13) and when turned off
// through util::set_fused_kernels_enabled or CUR4LLM_FUSED_KERNELS=0.

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace cur4llm::fused {

/// True when the kernels may run on `t`: a CUDA tensor of float, half or
/// bfloat16 that autograd does not track (the kernels have no backward).
bool enabled_for(const at::Tensor& t);

/// logits [n, vocab] (last dim contiguous), labels int64 [n] -> float [n]:
/// logsumexp(logits.float(), -1) - logits.float().gather(1, labels).
at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& labels);

/// LLaMA RMSNorm of x [..., h] with weight [h]:
/// weight * (x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).to(x.dtype).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

/// Rotary embedding of x [B, T, heads, dim] (contiguous) with float cos/sin [T, dim]:
/// x * cos.to(dtype) + rotate_half(x) * sin.to(dtype), same layout as x.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

/// Rotary embedding of x [B, T, heads, dim] (contiguous) at positions (int64 [B, T] on x's
/// device, each below N) with float tables cos/sin [N, dim] (every head) or [tables, N, dim]
/// (head h takes table h / (heads / tables): narrowed heads), as
/// x * cos.to(dtype) + rotate_half(x) * sin.to(dtype) with the rows the positions pick.
at::Tensor rotary_at(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions);

/// A decoding step's rotary embedding and KV-cache writes in one launch: returns q [B, T, heads,
/// dk] rotated (rotary_at's result), and writes k [B, T, kv, dk] rotated and v [B, T, kv, dv]
/// into slots start .. start + T - 1 of a layer's cache keys [B, kv, cap, dk] and values
/// [B, kv, cap, dv]. cos/sin [N, dk] or [kv, N, dk] (narrowed heads: per KV head), positions
/// [B, T]. q, k, v may be parts of one grouped product (rows further apart). Undefined where it
/// does not apply (kernels disabled, more than 8 tokens a row, other shapes or layouts): the
/// caller then rotates and writes as before.
at::Tensor rotary_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                       const at::Tensor& sin, const at::Tensor& positions, const at::Tensor& keys,
                       const at::Tensor& values, int64_t start);

/// at::layer_norm(x, {h}, weight, bias, eps) over the last dim h of x
/// (weight, bias [h] in x's dtype, or undefined).
at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

/// {s, at::layer_norm(s, {h}, weight, bias, eps)} with s = x + y (equal shapes), in one pass.
std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps);

/// at::silu(gate) * up for equal-shaped contiguous tensors.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

/// Whether lowrank_forward serves x [..., in] with these factors: kernels
/// enabled, at most 8 tokens, at most 32 MiB of factors (2 MiB while the
/// current stream is being captured into a CUDA graph), one dtype and device,
/// nothing tracked by autograd.
bool lowrank_applies(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                     const at::Tensor& bias);

/// at::linear(at::linear(at::linear(x, r), u), c, bias) (u undefined: skipped)
/// for a few tokens, in one kernel launch (decoding).
at::Tensor lowrank_forward(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                           const at::Tensor& bias);

/// Whether packed_linear serves x [..., cols] with this packed weight: kernels
/// enabled for x, at most 16 tokens, 4 or 8 bits, uint8 codes and fp16
/// scales/zeros on x's device (contiguous), bias in x's dtype, input_scales
/// (activation-aware formats: column multipliers of the weight) undefined or
/// fp16 [cols] on x's device.
bool packed_linear_applies(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                           const at::Tensor& input_scales = {});

/// at::linear(x, dequantize(qweight, scales, zeros), bias) without the
/// dequantized weight: the codes are read once, inside the product, and each
/// weight is rebuilt in float (not rounded to x's dtype) (decoding).
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                         const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                         const at::Tensor& input_scales = {});

/// dequantize_tensor's weight for a packed weight as packed_linear takes it (bits 4 or 8) in
/// `dtype`, rebuilt in one launch, bit for bit the same: the weight a packed layer's prefill
/// multiplies. Undefined where it does not apply (kernels disabled, not on CUDA, other bits or
/// dtypes, inconsistent shapes), and the caller takes dequantize_tensor.
at::Tensor packed_dequantize(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& zeros, int bits,
                             int64_t cols, int64_t group, const at::Tensor& input_scales, at::ScalarType dtype);

/// What may run in a tensor-core product's launch besides the product (packed_linear_mma,
/// dense_linear_mma).
struct MmaExtras {
  /// [..., rows], contiguous, x's dtype and device: the result is residual + product, written
  /// into `residual` and rounded once (the caller makes sure nothing else reads it).
  at::Tensor residual;
  /// The weight's rows are a gate projection's and then an up projection's (rows / 2 each): the
  /// result [..., rows / 2] is silu_mul(gate, up).
  bool silu_gate = false;
  /// Where defined ([cols], x's dtype and device, contiguous): the product of RMSNorm(x) =
  /// x / sqrt(mean(x^2) + norm_eps) * norm_weight instead of x, the norm computed in the launch.
  at::Tensor norm_weight;
  double norm_eps = 0;

  /// The product added into `residual`.
  static MmaExtras into(at::Tensor residual) {
    MmaExtras e;
    e.residual = std::move(residual);
    return e;
  }
  /// The SiLU gate of a stacked [gate; up] weight.
  static MmaExtras gate() {
    MmaExtras e;
    e.silu_gate = true;
    return e;
  }
  /// The product of the input's RMSNorm, gated where `silu_gate` (the norm runs in the launch
  /// only where util::Kernel::norm_in_product is on).
  static MmaExtras normed(at::Tensor norm_weight, double norm_eps, bool silu_gate) {
    MmaExtras e;
    e.silu_gate = silu_gate;
    e.norm_weight = std::move(norm_weight), e.norm_eps = norm_eps;
    return e;
  }
};

/// A product of at most 8 tokens on the tensor cores, with `extras` in the same launch;
/// undefined where that kernel does not take the inputs (the caller then runs the steps
/// apart): x half or bfloat16, cols a multiple of 128, aligned storage, compute capability 8.0
/// or later.
/// packed_linear_mma: a packed weight as packed_linear takes it, 4 bits, group a multiple of 128.
at::Tensor packed_linear_mma(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                             const at::Tensor& input_scales, const MmaExtras& extras = {});
/// dense_linear_mma: weight [rows, cols] and bias in x's dtype on x's device, contiguous.
at::Tensor dense_linear_mma(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const MmaExtras& extras = {});

/// Causal attention of q, k, v [B, heads, T, dim] (equal head counts, last
/// dim contiguous) through cuDNN's fused kernel, as at::scaled_dot_product_attention
/// with is_causal computes it, scores scaled by `scale` (0: 1/sqrt(dim)); the
/// output is [B, heads, T, dim] laid out like q.
/// Undefined where it does not apply, and the caller takes
/// at::scaled_dot_product_attention: kernels disabled, not half/bfloat16, a GPU
/// before compute capability 9.0 (where cuDNN is not the faster kernel), fewer
/// than 128 positions (decoding; ATen's choice), a head
/// dim above 128 or not a multiple of 8, tensors with gaps between their rows or
/// heads (a KV cache's slices: see the definition), cuDNN attention turned off
/// (at::globalContext().setSDPUseCuDNN(false)), LibTorch before 2.5, or an
/// earlier call with the same head dim that cuDNN refused.
at::Tensor causal_attention_cudnn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale = 0);

/// softmax(q k^T / sqrt(d) + mask) v through PyTorch's memory-efficient kernel for q [B, H, R, d],
/// k [B, H, S, d], v [B, H, S, dv] (last dims contiguous; keys and values may be the first S slots
/// of a KV cache) and `mask` [B, 1, R, S] additive in q's dtype, its rows 16-element aligned
/// (Step::additive_mask). Output [B, H, R, dv]. ATen's own choice for a mask is cuDNN on Hopper,
/// which builds a plan for every new shape (a first run of task scoring on an H200 took 1.4 s
/// longer than the second with it, 0.1 s with this kernel); this kernel builds none.
/// Undefined where it does not apply, and the caller takes at::scaled_dot_product_attention:
/// kernels disabled, not half/bfloat16, head dims above 128 or not multiples of 8, another mask
/// layout, memory-efficient attention turned off (setSDPUseMemEfficient(false)),
/// CUR4LLM_MASKED_ATTENTION=sdpa in the environment, LibTorch before 2.1, or an earlier call that
/// the kernel refused.
at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask);

/// Attention of a decoding step: softmax(q k^T * scale + mask) v for q [B, kv, R, d] (the R
/// query rows of each KV head, contiguous) against the first `length` slots of a KV cache's
/// keys [B, kv, cap, d] and values [B, kv, cap, dv] (contiguous), with `mask` [B, 1, R, length]
/// additive in q's dtype (-inf: not attended; every row attends to a slot). Output
/// [B, kv, R, dv]. The key axis is split over the GPU's multiprocessors (one query row per
/// head leaves a query-tiled kernel mostly idle). Undefined where it does not apply, and the
/// caller takes at::scaled_dot_product_attention: kernels disabled, more than 8 rows per KV
/// head, head dims above 256, other layouts or dtypes, CUR4LLM_DECODE_ATTENTION=0 in the environment.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t length,
                            const at::Tensor& mask, double scale);

/// A second, high-priority CUDA stream, fed by a host thread of its own, for
/// work that overlaps the current stream's (the sweep decomposes the next
/// layer while the current one's forward passes are queued and run): run()
/// hands a function to that thread and returns at once; the function sees the
/// side stream as current and the creating thread's autograd mode, and its host
/// synchronisations wait for the side stream only. The function must not touch
/// what the calling thread changes meanwhile. Off CUDA, and in builds without
/// the kernels, run() simply calls its function and join() does nothing.
class SideStream {
 public:
  explicit SideStream(c10::Device device);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  /// Starts fn on the side stream's thread, after the previous function has returned.
  void run(const std::function<void()>& fn);
  /// Waits until the last function has returned; rethrows its exception.
  void wait();
  /// wait(), then the current stream waits for the work it queued on the side stream;
  /// `tensors` (made there) are marked as used by the current stream, so that
  /// their memory is not reused before its work on them is done.
  void join(const std::vector<at::Tensor>& tensors);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// For its life, the calling thread's CUDA work on `device` goes to a
/// non-blocking stream from LibTorch's pool, ordered after the work queued
/// before and before the work queued after. Solvers that copy through the
/// legacy default stream (which waits for every blocking stream) then do not
/// wait for the work queued here: the sweep's forward passes no longer hold up
/// the decompositions on the side stream. Tensors made in the scope should not
/// outlive it unless used only on its stream. Off CUDA, and in builds without
/// the kernels, it does nothing.
class PrivateStream {
 public:
  explicit PrivateStream(c10::Device device);
  ~PrivateStream();
  PrivateStream(const PrivateStream&) = delete;
  PrivateStream& operator=(const PrivateStream&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cur4llm::fused
