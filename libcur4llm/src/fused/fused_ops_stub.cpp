// Builds without cur4llm's CUDA kernels: the fused operations are never enabled.
#include "fused_ops.h"

#include <cur4llm/util/fused_kernels.h>
#include <cur4llm/util/memory.h>

#include <stdexcept>

namespace cur4llm {

namespace util {
bool fused_kernels_built() { return false; }
bool fused_kernels_enabled() { return false; }
void set_fused_kernels_enabled(bool) {}
bool kernel_enabled(Kernel) { return false; }
void set_kernel_enabled(Kernel, bool) {}
}  // namespace util

namespace detail {
std::vector<std::pair<std::string, int64_t>> device_memory_peaks(bool) { return {}; }
}  // namespace detail

namespace fused {
namespace {
[[noreturn]] void absent() { throw std::logic_error("internal: fused kernels are not built in"); }
}  // namespace

bool enabled_for(const at::Tensor&) { return false; }
at::Tensor token_nll(const at::Tensor&, const at::Tensor&) { absent(); }
at::Tensor rms_norm(const at::Tensor&, const at::Tensor&, double) { absent(); }
at::Tensor rotary(const at::Tensor&, const at::Tensor&, const at::Tensor&) { absent(); }
at::Tensor rotary_at(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { absent(); }
at::Tensor layer_norm(const at::Tensor&, const at::Tensor&, const at::Tensor&, double) { absent(); }
std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                 const at::Tensor&, double) {
  absent();
}
at::Tensor silu_mul(const at::Tensor&, const at::Tensor&) { absent(); }
at::Tensor rotary_step(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t) {
  return {};
}
at::Tensor decode_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, const at::Tensor&,
                            double) {
  return {};
}
bool lowrank_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) {
  return false;
}
at::Tensor lowrank_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&) {
  absent();
}

bool packed_linear_applies(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int, int64_t,
                           int64_t, const at::Tensor&, const at::Tensor&) {
  return false;
}
at::Tensor packed_linear(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int, int64_t,
                         int64_t, const at::Tensor&, const at::Tensor&) {
  absent();
}

at::Tensor packed_dequantize(const at::Tensor&, const at::Tensor&, const at::Tensor&, int, int64_t, int64_t,
                             const at::Tensor&, at::ScalarType) {
  return {};
}

at::Tensor packed_linear_mma(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int, int64_t,
                             int64_t, const at::Tensor&, const at::Tensor&, const MmaExtras&) {
  return {};
}
at::Tensor dense_linear_mma(const at::Tensor&, const at::Tensor&, const at::Tensor&, const MmaExtras&) { return {}; }

at::Tensor causal_attention_cudnn(const at::Tensor&, const at::Tensor&, const at::Tensor&, double) { return {}; }
at::Tensor masked_attention(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&) { return {}; }

struct SideStream::Impl {};
SideStream::SideStream(c10::Device) {}
SideStream::~SideStream() = default;
void SideStream::run(const std::function<void()>& fn) { fn(); }
void SideStream::wait() {}
void SideStream::join(const std::vector<at::Tensor>&) {}

struct PrivateStream::Impl {};
PrivateStream::PrivateStream(c10::Device) {}
PrivateStream::~PrivateStream() = default;

}  // namespace fused
}  // namespace cur4llm
