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

/// at::silu(gate) * up for equal-shaped contiguous tensors.
at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up);

/// Whether lowrank_forward serves x [..., in] with these factors: kernels
/// enabled, at most 8 tokens, at most 32 MiB of factors, one dtype and device,
/// nothing tracked by autograd.
bool lowrank_applies(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                     const at::Tensor& bias);

/// at::linear(at::linear(at::linear(x, r), u), c, bias) (u undefined: skipped)
/// for a few tokens, in one kernel launch (decoding).
at::Tensor lowrank_forward(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                           const at::Tensor& bias);

/// A second, high-priority CUDA stream for work that overlaps the current
/// stream's (the sweep decomposes the next layer while the current one's
/// forward passes run). Off CUDA, and in builds without the kernels, run()
/// simply calls its function and join() does nothing.
class SideStream {
 public:
  explicit SideStream(c10::Device device);
  ~SideStream();
  SideStream(const SideStream&) = delete;
  SideStream& operator=(const SideStream&) = delete;
  /// Calls fn with the side stream current (its host synchronisations wait for the side stream only).
  void run(const std::function<void()>& fn);
  /// The current stream waits for the work queued on the side stream so far;
  /// `tensors` (made there) are marked as used by the current stream, so that
  /// their memory is not reused before its work on them is done.
  void join(const std::vector<at::Tensor>& tensors);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace cur4llm::fused
