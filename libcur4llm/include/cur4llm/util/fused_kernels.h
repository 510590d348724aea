#pragma once
/// cur4llm's own CUDA kernels for memory-bound steps (LLaMA's RMSNorm, rotary
/// embedding and SiLU gate; the cross-entropy over the vocabulary). They give
/// what the ATen operations they replace give, up to the order of additions in
/// reductions; docs/performance.md has the measurements. Built when CMake finds
/// a CUDA LibTorch and CUR4LLM_CUDA_KERNELS is ON (the default).
///
/// @internal
/// Internal: used by cur4llm's own apps, tests and benchmarks; not part of the
/// public API (left out of <cur4llm/cur4llm.h> and of the API reference) and may change.

namespace cur4llm::util {

/// Whether this build contains the kernels.
bool fused_kernels_built();
/// Whether they are used (built, and not turned off). Default on; the
/// environment variable CUR4LLM_FUSED_KERNELS=0 turns them off at start.
bool fused_kernels_enabled();
/// Turns them on or off at run time (no effect on builds without them), e.g.
/// to compare against the plain ATen operations.
void set_fused_kernels_enabled(bool on);
/// cur4llm's kernels that can be switched one by one, e.g. to measure one against what
/// runs without it. Each is on unless its environment variable is "0" at start;
/// set_kernel_enabled() switches it at run time. docs/architecture.md describes them and
/// the measurements that put them on.
enum class Kernel {
  /// CUR4LLM_DENSE_MMA: dense 16-bit Linear layers' steps of at most 8 tokens
  /// (decoding) on the tensor-core kernel, with the residual's addition or the SiLU gate in
  /// its launch, instead of cuBLAS.
  dense_mma,
  /// CUR4LLM_NORM_IN_PRODUCT: the LLaMA family's input norms run inside the
  /// products that follow them where those take the tensor-core kernel (packed int4, and
  /// dense layers with dense_mma): a decoding layer then launches no norm kernel.
  norm_in_product,
  /// CUR4LLM_DECODE_VECTOR: decoding attention reads the KV cache 16 bytes a
  /// lane (head dims that are whole 16-byte pieces) instead of one element a lane.
  decode_vector,
  /// CUR4LLM_PACKED_PREFILL: a packed layer given more tokens than its fused
  /// products take (a prefill) rebuilds its weight in one launch instead of through
  /// dequantize_tensor's steps (the same weight, bit for bit).
  packed_prefill,
};
/// Whether `kernel` is on (false in builds without the kernels).
bool kernel_enabled(Kernel kernel);
/// Turns it on or off (no effect in builds without the kernels).
void set_kernel_enabled(Kernel kernel, bool on);

}  // namespace cur4llm::util
