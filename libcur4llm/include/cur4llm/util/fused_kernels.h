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
/// Whether dense 16-bit Linear layers take cur4llm's tensor-core kernel for steps of at most 8
/// tokens (decoding), with the residual's addition or the SiLU gate in its launch, instead of
/// cuBLAS. The default comes from CUR4LLM_DENSE_MMA ("1": on); settable at run time.
bool dense_mma_enabled();
void set_dense_mma_enabled(bool on);

}  // namespace cur4llm::util
