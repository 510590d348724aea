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
/// Whether packed int4 products of a few tokens bring their codes into shared memory by
/// asynchronous copies, several chunks ahead of the tensor cores, instead of loading them into
/// registers. The default comes from CUR4LLM_INT4_PIPELINE ("1": on); settable at run time.
bool int4_pipeline_enabled();
void set_int4_pipeline_enabled(bool on);
/// Whether decoding attention reads the KV cache 16 bytes a lane (head dims that are whole
/// 16-byte pieces) instead of one element a lane. The default comes from CUR4LLM_DECODE_VECTOR
/// ("1": on); settable at run time.
bool decode_vector_loads_enabled();
void set_decode_vector_loads_enabled(bool on);
/// Whether the LLaMA family's input norms run inside the products that follow them where those
/// take the tensor-core kernel (packed int4, and dense layers with dense_mma_enabled): a
/// decoding layer then launches no norm kernel. The default comes from CUR4LLM_NORM_IN_PRODUCT
/// ("1": on); settable at run time.
bool norm_in_product_enabled();
void set_norm_in_product_enabled(bool on);

}  // namespace cur4llm::util
