// The fused operations on CUDA: checks, then the launchers of fused_kernels.cu
// on the current stream of the tensor's device.
#include "fused_ops.h"

#include "fused_kernels.h"

#include <cur4llm/util/fused_kernels.h>
#include <cur4llm/util/memory.h>

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/version.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <iterator>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <utility>

namespace cur4llm {
namespace {

// Whether the environment variable `name` is set to `value`.
bool environment_says(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

bool enabled_by_environment() {
  return !(environment_says("CUR4LLM_FUSED_KERNELS", "0") || environment_says("CUR4LLM_FUSED_KERNELS", "off"));
}

// A fused ATen kernel that threw for the inputs `bit` stands for (a head dim, or every input):
// never tried again for them (`refused`), said once on stderr.
[[maybe_unused]] void refuse(std::atomic<uint32_t>& refused, uint32_t bit, const std::string& kernel,
                             const c10::Error& e) {
  refused.fetch_or(bit);
  fmt::print(stderr, "note: {} refused ({}); using at::scaled_dot_product_attention\n", kernel,
             std::string(e.what_without_backtrace()).substr(0, 200));
}

std::atomic<bool>& enabled_flag() {
  static std::atomic<bool> flag{enabled_by_environment()};
  return flag;
}

// The switchable kernels (util::Kernel), in its order: each on unless its environment variable
// says "0" (the defaults measured: docs/architecture.md).
constexpr int kKernels = static_cast<int>(util::Kernel::packed_prefill) + 1;
std::array<std::atomic<bool>, kKernels>& kernel_flags() {
  static std::array<std::atomic<bool>, kKernels> flags;  // false until read below
  static const bool read = [] {
    const char* const names[] = {"CUR4LLM_DENSE_MMA", "CUR4LLM_NORM_IN_PRODUCT", "CUR4LLM_DECODE_VECTOR",
                                 "CUR4LLM_PACKED_PREFILL"};
    static_assert(std::size(names) == kKernels, "one environment variable per util::Kernel");
    for (int i = 0; i < kKernels; ++i) flags[i].store(!environment_says(names[i], "0"));
    return true;
  }();
  (void)read;
  return flags;
}
bool switched_on(util::Kernel kernel) { return kernel_flags()[static_cast<int>(kernel)].load(); }

int dtype_code(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return 0;
    case at::kHalf: return 1;
    case at::kBFloat16: return 2;
    default: throw std::invalid_argument(fmt::format("fused kernels: unsupported dtype {}", c10::toString(dtype)));
  }
}
int dtype_code(const at::Tensor& t) { return dtype_code(t.scalar_type()); }

void* current_stream(const at::Tensor& t) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(t.device().index()).stream());
}

void check(int err, const char* what) {
  if (err != 0) throw std::runtime_error(fmt::format("CUDA kernel {} failed to launch (error {})", what, err));
}

}  // namespace

namespace util {
bool fused_kernels_built() { return true; }
bool fused_kernels_enabled() { return enabled_flag().load(); }
void set_fused_kernels_enabled(bool on) { enabled_flag().store(on); }
bool kernel_enabled(Kernel kernel) { return switched_on(kernel); }
void set_kernel_enabled(Kernel kernel, bool on) { kernel_flags()[static_cast<int>(kernel)].store(on); }
}  // namespace util

namespace fused {

bool enabled_for(const at::Tensor& t) {
  // The kernels have no backward: tensors that autograd tracks take the ATen path.
  if (!enabled_flag().load() || !t.defined() || !t.is_cuda() || t.requires_grad()) return false;
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16;
}

at::Tensor token_nll(const at::Tensor& logits, const at::Tensor& labels) {
  if (logits.dim() != 2 || logits.stride(1) != 1 || labels.dim() != 1 || labels.size(0) != logits.size(0)) {
    throw std::invalid_argument("fused::token_nll: logits [n, vocab] with contiguous rows and labels [n]");
  }
  c10::cuda::CUDAGuard guard(logits.device());
  auto lab = labels.to(logits.device(), at::kLong).contiguous();
  auto out = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  check(kernels::token_nll(logits.data_ptr(), dtype_code(logits), logits.size(0), logits.size(1), logits.stride(0),
                           lab.data_ptr<int64_t>(), out.data_ptr<float>(), current_stream(logits)),
        "token_nll");
  return out;
}

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t h = x.size(-1);
  if (weight.dim() != 1 || weight.size(0) != h || weight.scalar_type() != x.scalar_type()) {
    throw std::invalid_argument("fused::rms_norm: weight must be [hidden] in the input's dtype");
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto wc = weight.contiguous();
  auto out = at::empty_like(xc);
  check(kernels::rms_norm(xc.data_ptr(), wc.data_ptr(), out.data_ptr(), dtype_code(xc), xc.numel() / h, h,
                          static_cast<float>(eps), current_stream(xc)),
        "rms_norm");
  return out;
}

namespace {

// x read as rows of its dimensions from `lead` on, those laid out contiguously: how many
// elements apart its rows are (the dimensions before `lead` collapsed into one stride), or
// nullopt where they are not evenly spaced. A view of the first columns of a contiguous
// [rows, wider] tensor (one part of a grouped product) has rows `wider` apart.
std::optional<int64_t> row_stride(const at::Tensor& x, int64_t lead) {
  int64_t inner = 1;
  for (int64_t d = x.dim() - 1; d >= lead; --d) {
    if (x.size(d) != 1 && x.stride(d) != inner) return std::nullopt;
    inner *= x.size(d);
  }
  std::optional<int64_t> stride;
  int64_t expected = 0;
  for (int64_t d = lead - 1; d >= 0; --d) {
    if (x.size(d) == 1) continue;
    if (!stride) {
      stride = x.stride(d);
    } else if (x.stride(d) != expected) {
      return std::nullopt;
    }
    expected = x.stride(d) * x.size(d);
  }
  if (!stride) return inner;  // one row
  return *stride >= inner ? stride : std::nullopt;
}

// x itself where its rows (from dimension `lead` on) are evenly spaced, else a contiguous copy;
// and that spacing.
std::pair<at::Tensor, int64_t> evenly_spaced(const at::Tensor& x, int64_t lead) {
  if (const auto stride = row_stride(x, lead)) return {x, *stride};
  auto xc = x.contiguous();
  int64_t inner = 1;
  for (int64_t d = lead; d < xc.dim(); ++d) inner *= xc.size(d);
  return {xc, inner};
}

}  // namespace

at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  if (x.dim() != 4 || cos.dim() != 2 || cos.size(0) != x.size(1) || cos.size(1) != x.size(3) ||
      sin.sizes() != cos.sizes() || x.size(3) % 2 != 0) {
    throw std::invalid_argument("fused::rotary: x [B, T, heads, dim] with cos/sin [T, dim]");
  }
  c10::cuda::CUDAGuard guard(x.device());
  const auto [xc, token_stride] = evenly_spaced(x, 2);
  auto c = cos.to(x.device(), at::kFloat).contiguous();
  auto s = sin.to(x.device(), at::kFloat).contiguous();
  auto out = at::empty(xc.sizes(), xc.options());
  check(kernels::rotary(xc.data_ptr(), c.data_ptr<float>(), s.data_ptr<float>(), out.data_ptr(), dtype_code(xc),
                        xc.size(0) * xc.size(1), xc.size(1), xc.size(2), xc.size(3), current_stream(xc), nullptr, 1,
                        0, token_stride),
        "rotary");
  return out;
}

at::Tensor rotary_at(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& positions) {
  const bool shared = cos.dim() == 2;
  const int64_t tables = shared ? 1 : cos.size(0);
  if (x.dim() != 4 || (cos.dim() != 2 && cos.dim() != 3) || sin.sizes() != cos.sizes() ||
      cos.size(-1) != x.size(3) || x.size(3) % 2 != 0 || tables < 1 || x.size(2) % tables != 0 ||
      positions.scalar_type() != at::kLong || positions.dim() != 2 || positions.size(0) != x.size(0) ||
      positions.size(1) != x.size(1) || positions.device() != x.device()) {
    throw std::invalid_argument(
        "fused::rotary_at: x [B, T, heads, dim], cos/sin [N, dim] or [tables, N, dim] (tables dividing heads), "
        "int64 positions [B, T] on x's device");
  }
  c10::cuda::CUDAGuard guard(x.device());
  const auto [xc, token_stride] = evenly_spaced(x, 2);
  auto c = cos.to(x.device(), at::kFloat).contiguous();
  auto s = sin.to(x.device(), at::kFloat).contiguous();
  auto pos = positions.contiguous();
  auto out = at::empty(xc.sizes(), xc.options());
  check(kernels::rotary(xc.data_ptr(), c.data_ptr<float>(), s.data_ptr<float>(), out.data_ptr(), dtype_code(xc),
                        xc.size(0) * xc.size(1), /*seq_len=*/1, xc.size(2), xc.size(3), current_stream(xc),
                        pos.data_ptr<int64_t>(), tables, c.size(-2), token_stride),
        "rotary_at");
  return out;
}

at::Tensor rotary_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                       const at::Tensor& sin, const at::Tensor& positions, const at::Tensor& keys,
                       const at::Tensor& values, int64_t start) {
  if (!enabled_for(q) || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return {};
  const int64_t b = q.size(0), t = q.size(1), heads = q.size(2), dk = q.size(3), kv = k.size(2), dv = v.size(3);
  const bool shared = cos.dim() == 2;
  const int64_t tables = shared ? 1 : cos.size(0);
  const auto dtype = q.scalar_type();
  if (t > kernels::kDecodeMaxRows || k.size(0) != b || k.size(1) != t || k.size(3) != dk || v.size(0) != b ||
      v.size(1) != t || v.size(2) != kv || dk % 2 != 0 || kv < 1 || heads % kv != 0 || k.scalar_type() != dtype ||
      v.scalar_type() != dtype || (cos.dim() != 2 && cos.dim() != 3) || cos.size(-1) != dk ||
      sin.sizes() != cos.sizes() || (!shared && kv % tables != 0) || positions.scalar_type() != at::kLong ||
      positions.dim() != 2 || positions.size(0) != b || positions.size(1) != t || !positions.is_contiguous() ||
      positions.device() != q.device() || !keys.is_contiguous() || !values.is_contiguous() || keys.dim() != 4 ||
      values.dim() != 4 || keys.size(0) != b || keys.size(1) != kv || keys.size(3) != dk ||
      values.sizes() != at::IntArrayRef({b, kv, keys.size(2), dv}) || keys.scalar_type() != dtype ||
      values.scalar_type() != dtype || start < 0 || start + t > keys.size(2)) {
    return {};
  }
  const auto qs = row_stride(q, 2), ks = row_stride(k, 2), vs = row_stride(v, 2);
  if (!qs || !ks || !vs) return {};
  c10::cuda::CUDAGuard guard(q.device());
  auto c = cos.to(q.device(), at::kFloat).contiguous();
  auto s = sin.to(q.device(), at::kFloat).contiguous();
  auto out = at::empty({b, t, heads, dk}, q.options());
  check(kernels::rotary_step(q.data_ptr(), k.data_ptr(), v.data_ptr(), c.data_ptr<float>(), s.data_ptr<float>(),
                             positions.data_ptr<int64_t>(), tables, c.size(-2), dtype_code(q), b, t, heads, kv, dk, dv,
                             *qs, *ks, *vs, out.data_ptr(), keys.data_ptr(), values.data_ptr(), keys.size(2), start,
                             current_stream(q)),
        "rotary_step");
  return out;
}

namespace {

at::Tensor norm_param(const at::Tensor& p, const at::Tensor& x, const char* what) {
  if (!p.defined()) return p;
  if (p.dim() != 1 || p.size(0) != x.size(-1) || p.scalar_type() != x.scalar_type() || p.device() != x.device()) {
    throw std::invalid_argument(fmt::format("fused::layer_norm: {} must be [hidden] in the input's dtype", what));
  }
  return p.contiguous();
}

// s (if sum) and the normalised rows of x (+ y).
void run_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias,
                    double eps, const at::Tensor& sum, const at::Tensor& out) {
  const int64_t h = x.size(-1);
  auto w = norm_param(weight, x, "weight");
  auto b = norm_param(bias, x, "bias");
  check(kernels::layer_norm(x.data_ptr(), y.defined() ? y.data_ptr() : nullptr, w.defined() ? w.data_ptr() : nullptr,
                            b.defined() ? b.data_ptr() : nullptr, sum.defined() ? sum.data_ptr() : nullptr,
                            out.data_ptr(), dtype_code(x), x.numel() / std::max<int64_t>(1, h), h,
                            static_cast<float>(eps), current_stream(x)),
        "layer_norm");
}

}  // namespace

at::Tensor layer_norm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto out = at::empty_like(xc);
  run_layer_norm(xc, at::Tensor(), weight, bias, eps, at::Tensor(), out);
  return out;
}

std::pair<at::Tensor, at::Tensor> add_layer_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight,
                                                 const at::Tensor& bias, double eps) {
  if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type()) {
    throw std::invalid_argument("fused::add_layer_norm: x and y must have the same shape and dtype");
  }
  c10::cuda::CUDAGuard guard(x.device());
  auto xc = x.contiguous();
  auto yc = y.contiguous();
  auto sum = at::empty_like(xc);
  auto out = at::empty_like(xc);
  run_layer_norm(xc, yc, weight, bias, eps, sum, out);
  return {sum, out};
}

at::Tensor silu_mul(const at::Tensor& gate, const at::Tensor& up) {
  if (gate.sizes() != up.sizes() || gate.scalar_type() != up.scalar_type()) {
    throw std::invalid_argument("fused::silu_mul: gate and up must have the same shape and dtype");
  }
  c10::cuda::CUDAGuard guard(gate.device());
  // Rows of the last dimension; gate and up may be parts of one grouped product (rows further apart).
  const int64_t lead = std::max<int64_t>(0, gate.dim() - 1);
  const auto [g, gate_stride] = evenly_spaced(gate, lead);
  const auto [u, up_stride] = evenly_spaced(up, lead);
  auto out = at::empty(gate.sizes(), gate.options());
  int64_t cols = gate.dim() == 0 ? 1 : gate.size(-1);
  int64_t rows = cols == 0 ? 0 : gate.numel() / cols;
  if (gate_stride == cols && up_stride == cols) cols = gate.numel(), rows = 1;  // both contiguous: one row
  check(kernels::silu_mul(g.data_ptr(), u.data_ptr(), out.data_ptr(), dtype_code(g), rows, cols, gate_stride, up_stride,
                          current_stream(g)),
        "silu_mul");
  return out;
}

bool lowrank_applies(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                     const at::Tensor& bias) {
  if (!enabled_for(x) || x.dim() < 1 || r.dim() != 2 || c.dim() != 2 || x.size(-1) != r.size(1)) return false;
  if (x.numel() / std::max<int64_t>(1, x.size(-1)) > kernels::kLowRankMaxTokens) return false;
  // Eagerly, the single launch wins up to about 32 MiB of factors (above it
  // cuBLAS's matrix-vector products read faster than this kernel's warp-per-row
  // stages). Under CUDA-graph capture there are no launch overheads to save,
  // and the plain chain wins above about 2 MiB (docs/performance.md).
  const int64_t bytes = (r.numel() + (u.defined() ? u.numel() : 0) + c.numel()) * static_cast<int64_t>(x.element_size());
  if (bytes > (int64_t{32} << 20)) return false;
  if (bytes > (int64_t{2} << 20)) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(c10::cuda::getCurrentCUDAStream(x.device().index()).stream(), &status) != cudaSuccess) {
      (void)cudaGetLastError();
    }
    if (status != cudaStreamCaptureStatusNone) return false;
  }
  auto same = [&](const at::Tensor& t) {
    return !t.defined() || (t.device() == x.device() && t.scalar_type() == x.scalar_type() && !t.requires_grad() &&
                            t.is_contiguous());
  };
  return r.defined() && c.defined() && same(r) && same(u) && same(c) && same(bias) && c.size(1) == r.size(0) &&
         (!u.defined() || (u.size(0) == r.size(0) && u.size(1) == r.size(0))) &&
         (!bias.defined() || bias.numel() == c.size(0));
}

at::Tensor lowrank_forward(const at::Tensor& x, const at::Tensor& r, const at::Tensor& u, const at::Tensor& c,
                           const at::Tensor& bias) {
  if (!lowrank_applies(x, r, u, c, bias)) throw std::invalid_argument("fused::lowrank_forward: unsupported inputs");
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t in = r.size(1), k = r.size(0), out = c.size(0);
  auto x2 = x.reshape({-1, in}).contiguous();
  const int64_t tokens = x2.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = out;
  auto y = at::empty({tokens, out}, x.options());
  if (tokens == 0) return y.view(sizes);
  auto scratch = at::empty({2 * tokens * k}, x.options().dtype(at::kFloat));
  check(kernels::lowrank_forward(x2.data_ptr(), tokens, r.data_ptr(), u.defined() ? u.data_ptr() : nullptr,
                                 c.data_ptr(), bias.defined() ? bias.data_ptr() : nullptr, y.data_ptr(),
                                 scratch.data_ptr<float>(), dtype_code(x2), in, k, out, current_stream(x2)),
        "lowrank_forward");
  return y.view(sizes);
}

namespace {

// Whether a packed weight (4 or 8 bits) is laid out as the packed kernels read it, all on `device`:
// codes [rows, ceil(cols * bits / 8)] uint8, fp16 scales and zeros [rows, groups], input scales
// fp16 [cols] or undefined, each contiguous.
bool packed_weight_fits(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& zeros, int bits,
                        int64_t cols, int64_t group, const at::Tensor& input_scales, c10::Device device) {
  if ((bits != 4 && bits != 8) || group < 1 || cols < 1 || !qweight.defined() || qweight.dim() != 2) return false;
  auto on = [&](const at::Tensor& t, at::ScalarType type) {
    return t.defined() && t.device() == device && t.scalar_type() == type && t.is_contiguous();
  };
  const int64_t rows = qweight.size(0), groups = (cols + group - 1) / group;  // the last one may be partial
  return on(qweight, at::kByte) && qweight.size(1) == (cols * bits + 7) / 8 && on(scales, at::kHalf) &&
         on(zeros, at::kHalf) && scales.dim() == 2 && scales.size(0) == rows && scales.size(1) == groups &&
         zeros.sizes() == scales.sizes() &&
         (!input_scales.defined() ||
          (on(input_scales, at::kHalf) && input_scales.dim() == 1 && input_scales.size(0) == cols));
}

}  // namespace

bool packed_linear_applies(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                           const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                           const at::Tensor& input_scales) {
  if (!enabled_for(x) || x.dim() < 1 || x.size(-1) != cols) return false;
  if (x.numel() / std::max<int64_t>(1, cols) > kernels::kPackedMaxTokens) return false;
  if (!packed_weight_fits(qweight, scales, zeros, bits, cols, group, input_scales, x.device())) return false;
  return !bias.defined() || (bias.device() == x.device() && bias.scalar_type() == x.scalar_type() &&
                             bias.is_contiguous() && bias.numel() == qweight.size(0) && !bias.requires_grad());
}

at::Tensor packed_dequantize(const at::Tensor& qweight, const at::Tensor& scales, const at::Tensor& zeros, int bits,
                             int64_t cols, int64_t group, const at::Tensor& input_scales, at::ScalarType dtype) {
  if (!enabled_flag().load() || !switched_on(util::Kernel::packed_prefill) || !qweight.defined() || !qweight.is_cuda() ||
      (dtype != at::kFloat && dtype != at::kHalf && dtype != at::kBFloat16) ||
      !packed_weight_fits(qweight, scales, zeros, bits, cols, group, input_scales, qweight.device())) {
    return {};
  }
  c10::cuda::CUDAGuard guard(qweight.device());
  const int64_t rows = qweight.size(0);
  auto w = at::empty({rows, cols}, qweight.options().dtype(dtype));
  if (rows == 0) return w;
  check(kernels::dequantize_packed(qweight.data_ptr<uint8_t>(), scales.data_ptr(), zeros.data_ptr(),
                                   input_scales.defined() ? input_scales.data_ptr() : nullptr, w.data_ptr(),
                                   dtype_code(dtype), bits, rows, cols, group, current_stream(qweight)),
        "dequantize_packed");
  return w;
}

namespace {

// Runs the tensor-core kernel on `a` (x2 the contiguous [tokens, cols] input it points at), its
// output into `residual` (in place) where given, or into a new tensor; undefined where the
// kernel does not take the shape.
at::Tensor run_linear_mma(kernels::MmaLinearArgs a, const at::Tensor& x, const at::Tensor& x2, const MmaExtras& extras) {
  const at::Tensor& residual = extras.residual;
  const at::Tensor& norm = extras.norm_weight;
  a.x = x2.data_ptr();
  a.dtype = dtype_code(x2), a.tokens = static_cast<int>(std::min<int64_t>(x2.size(0), kernels::kLinearMmaMaxTokens + 1));
  a.silu_pair = extras.silu_gate;
  if (x2.size(0) == 0 || !kernels::linear_mma_fits(a)) return {};
  const int64_t out = extras.silu_gate ? a.rows / 2 : a.rows;
  if (residual.defined()) {
    if (extras.silu_gate || residual.requires_grad() || !residual.is_contiguous() ||
        residual.device() != x.device() || residual.scalar_type() != x.scalar_type() || residual.dim() < 1 ||
        residual.size(-1) != out || residual.numel() != x2.size(0) * out) {
      return {};
    }
  }
  if (norm.defined()) {
    if (!switched_on(util::Kernel::norm_in_product) || norm.requires_grad() || !norm.is_contiguous() || norm.device() != x.device() ||
        norm.scalar_type() != x.scalar_type() || norm.numel() != a.cols ||
        reinterpret_cast<uintptr_t>(norm.data_ptr()) % 16 != 0) {
      return {};
    }
    a.norm_weight = norm.data_ptr();
    a.norm_eps = static_cast<float>(extras.norm_eps);
  }
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = residual;
  if (!y.defined()) {
    auto sizes = x.sizes().vec();
    sizes.back() = out;
    y = at::empty(sizes, x.options());
  }
  a.residual = residual.defined() ? residual.data_ptr() : nullptr;
  a.y = y.data_ptr();
  check(kernels::linear_mma(a, current_stream(x2)), "linear_mma");
  return y;
}

// The packed int4 weight's arguments (x2: x as [tokens, cols], contiguous), for inputs
// packed_linear_applies accepts.
at::Tensor run_packed_mma(const at::Tensor& x, const at::Tensor& x2, const at::Tensor& qweight,
                          const at::Tensor& scales, const at::Tensor& zeros, int64_t cols, int64_t group,
                          const at::Tensor& bias, const at::Tensor& input_scales, const MmaExtras& extras) {
  kernels::MmaLinearArgs a;
  a.q = qweight.data_ptr<uint8_t>(), a.scales = scales.data_ptr(), a.zeros = zeros.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.colmul = input_scales.defined() ? input_scales.data_ptr() : nullptr;
  a.rows = qweight.size(0), a.cols = cols, a.group = group;
  return run_linear_mma(a, x, x2, extras);
}

}  // namespace

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                         const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                         const at::Tensor& input_scales) {
  if (!packed_linear_applies(x, qweight, scales, zeros, bits, cols, group, bias, input_scales)) {
    throw std::invalid_argument("fused::packed_linear: unsupported inputs");
  }
  c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = qweight.size(0);
  auto x2 = x.reshape({-1, cols}).contiguous();
  const int64_t tokens = x2.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = rows;
  if (bits == 4 && tokens > 0) {  // the tensor cores where they take the shape
    auto y = run_packed_mma(x, x2, qweight, scales, zeros, cols, group, bias, input_scales, {});
    if (y.defined()) return y;
  }
  auto y = at::empty({tokens, rows}, x.options());
  if (tokens == 0 || rows == 0) return y.view(sizes);
  check(kernels::packed_linear(x2.data_ptr(), tokens, qweight.data_ptr<uint8_t>(), scales.data_ptr(), zeros.data_ptr(),
                               bias.defined() ? bias.data_ptr() : nullptr,
                               input_scales.defined() ? input_scales.data_ptr() : nullptr, y.data_ptr(), dtype_code(x2),
                               bits, rows, cols, group, current_stream(x2)),
        "packed_linear");
  return y.view(sizes);
}

at::Tensor packed_linear_mma(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                             const at::Tensor& zeros, int bits, int64_t cols, int64_t group, const at::Tensor& bias,
                             const at::Tensor& input_scales, const MmaExtras& extras) {
  if (bits != 4 || !packed_linear_applies(x, qweight, scales, zeros, bits, cols, group, bias, input_scales)) return {};
  return run_packed_mma(x, x.reshape({-1, cols}).contiguous(), qweight, scales, zeros, cols, group, bias, input_scales,
                        extras);
}

at::Tensor dense_linear_mma(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            const MmaExtras& extras) {
  if (!enabled_for(x) || x.dim() < 1 || weight.dim() != 2 || x.size(-1) != weight.size(1)) return {};
  auto on_x = [&](const at::Tensor& t) {
    return t.device() == x.device() && t.scalar_type() == x.scalar_type() && t.is_contiguous() && !t.requires_grad();
  };
  if (!on_x(weight) || (bias.defined() && (!on_x(bias) || bias.numel() != weight.size(0)))) return {};
  const int64_t cols = weight.size(1);
  if (x.numel() / std::max<int64_t>(1, cols) > kernels::kLinearMmaMaxTokens) return {};
  const auto x2 = x.reshape({-1, cols}).contiguous();
  kernels::MmaLinearArgs a;
  a.weight = weight.data_ptr();
  a.bias = bias.defined() ? bias.data_ptr() : nullptr;
  a.rows = weight.size(0), a.cols = cols;
  return run_linear_mma(a, x, x2, extras);
}

at::Tensor causal_attention_cudnn(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 5)
  // Bit dim / 8 set: cuDNN refused that head dim once (a version without it), so it is not asked again.
  static std::atomic<uint32_t> refused_dims{0};
  if (!enabled_for(q) || !at::globalContext().userEnabledCuDNNSDP()) return {};
  const auto dtype = q.scalar_type();
  if ((dtype != at::kHalf && dtype != at::kBFloat16) || k.scalar_type() != dtype || v.scalar_type() != dtype) return {};
  // Short sequences (decoding) take ATen's choice.
  if (q.dim() != 4 || k.sizes() != q.sizes() || v.sizes() != q.sizes() || q.size(2) < 128) return {};
  const int64_t dim = q.size(3);
  if (dim > 128 || dim % 8 != 0) return {};
  // [B, H, S, D] with no gaps, laid out so or as [B, S, H, D] transposed: a KV cache's slice (rows
  // `capacity` apart) gave wrong sums in half precision on an H100 (cuDNN 9, PyTorch 2.11) and
  // goes to ATen's choice.
  const auto packed = [](const at::Tensor& t) {
    const int64_t h = t.size(1), s = t.size(2), d = t.size(3);
    return t.stride(3) == 1 && (t.size(0) == 1 || t.stride(0) == h * s * d) &&
           ((t.stride(2) == d && t.stride(1) == s * d) || (t.stride(1) == d && t.stride(2) == h * d));
  };
  if (!packed(q) || !packed(k) || !packed(v)) return {};
  const uint32_t bit = uint32_t{1} << (dim / 8);
  if ((refused_dims.load() & bit) != 0) return {};
  if (at::cuda::getDeviceProperties(q.device().index())->major < 9) return {};
  std::optional<double> s;
  if (scale > 0) s = scale;
  try {
    return std::get<0>(at::_scaled_dot_product_cudnn_attention(q, k, v, /*attn_bias=*/std::nullopt,
                                                                /*compute_log_sumexp=*/false, /*dropout_p=*/0.0,
                                                                /*is_causal=*/true, /*return_debug_mask=*/false, s));
  } catch (const c10::Error& e) {
    refuse(refused_dims, bit, fmt::format("cuDNN attention for head dim {}", dim), e);
    return {};
  }
#else
  (void)q, (void)k, (void)v, (void)scale;
  return {};
#endif
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask) {
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  static const bool off = environment_says("CUR4LLM_MASKED_ATTENTION", "sdpa");
  static std::atomic<uint32_t> refused{0};
  if (off || refused.load() != 0 || !enabled_for(q) || !at::globalContext().userEnabledMemEfficientSDP()) return {};
  const auto dtype = q.scalar_type();
  if ((dtype != at::kHalf && dtype != at::kBFloat16) || k.scalar_type() != dtype || v.scalar_type() != dtype ||
      mask.scalar_type() != dtype) {
    return {};
  }
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4 || mask.dim() != 4) return {};
  const int64_t b = q.size(0), h = q.size(1), r = q.size(2), d = q.size(3), s = k.size(2);
  if (k.size(0) != b || k.size(1) != h || k.size(3) != d || v.size(0) != b || v.size(1) != h || v.size(2) != s) return {};
  if (d > 128 || d % 8 != 0 || v.size(3) > 128 || v.size(3) % 8 != 0) return {};
  if (q.stride(3) != 1 || k.stride(3) != 1 || v.stride(3) != 1) return {};
  if (mask.size(0) != b || mask.size(1) != 1 || mask.size(2) != r || mask.size(3) != s || mask.stride(3) != 1 ||
      mask.stride(2) % 16 != 0) {
    return {};
  }
  try {
    return std::get<0>(at::_scaled_dot_product_efficient_attention(q, k, v, mask.expand({b, h, r, s}),
                                                                   /*compute_log_sumexp=*/false, /*dropout_p=*/0.0,
                                                                   /*is_causal=*/false));
  } catch (const c10::Error& e) {
    refuse(refused, 1, "memory-efficient attention", e);
    return {};
  }
#else
  (void)q, (void)k, (void)v, (void)mask;
  return {};
#endif
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, int64_t length,
                            const at::Tensor& mask, double scale) {
  // CUR4LLM_DECODE_ATTENTION=0 leaves decoding attention to ATen (the other kernels stay on).
  static const bool off = environment_says("CUR4LLM_DECODE_ATTENTION", "0");
  if (off || !enabled_for(q) || q.dim() != 4 || keys.dim() != 4 || values.dim() != 4 || mask.dim() != 4) return {};
  const auto dtype = q.scalar_type();
  if (keys.scalar_type() != dtype || values.scalar_type() != dtype || mask.scalar_type() != dtype) return {};
  if (keys.device() != q.device() || values.device() != q.device() || mask.device() != q.device()) return {};
  const int64_t batch = q.size(0), kv = q.size(1), rows = q.size(2), d = q.size(3), dv = values.size(3);
  if (rows > kernels::kDecodeMaxRows || d > kernels::kDecodeMaxHeadDim || dv > kernels::kDecodeMaxHeadDim) return {};
  if (keys.size(0) != batch || keys.size(1) != kv || keys.size(3) != d || values.size(0) != batch ||
      values.size(1) != kv || values.size(2) != keys.size(2) || length < 1 || length > keys.size(2)) {
    return {};
  }
  if (!q.is_contiguous() || !keys.is_contiguous() || !values.is_contiguous()) return {};
  if (mask.size(0) != batch || mask.size(1) != 1 || mask.size(2) != rows || mask.size(3) != length ||
      mask.stride(3) != 1) {
    return {};
  }
  c10::cuda::CUDAGuard guard(q.device());
  auto work = at::empty({kernels::decode_attention_workspace(batch, kv, rows, length, dv)},
                        q.options().dtype(at::kFloat));
  auto out = at::empty({batch, kv, rows, dv}, q.options());
  check(kernels::decode_attention(q.data_ptr(), keys.data_ptr(), values.data_ptr(), mask.data_ptr(),
                                  work.data_ptr<float>(), out.data_ptr(), dtype_code(q), batch, kv, rows,
                                  keys.size(2), length, d, dv, static_cast<float>(scale), mask.stride(2),
                                  mask.stride(0), switched_on(util::Kernel::decode_vector), current_stream(q)),
        "decode_attention");
  return out;
}

// The side stream's work runs on a host thread of its own, so that its host
// synchronisations (an eigensolver's, a data-dependent branch's) block neither
// the thread that queues the current stream's work nor that stream.
struct SideStream::Impl {
  c10::Device device;
  c10::cuda::CUDAStream stream;
  cudaEvent_t done = nullptr;
  std::thread worker;
  std::mutex mutex;
  std::condition_variable changed;
  std::function<void()> job;  // set: queued or running
  bool busy = false;
  bool stop = false;
  std::exception_ptr error;

  void loop(bool inference_mode, bool grad_mode) {
    c10::InferenceMode inference(inference_mode);
    c10::AutoGradMode grad(grad_mode);
    c10::cuda::CUDAGuard device_guard(device);
    c10::cuda::CUDAStreamGuard stream_guard(stream);
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      changed.wait(lock, [&] { return stop || job; });
      if (!job) return;
      auto fn = std::move(job);
      lock.unlock();
      std::exception_ptr e;
      try {
        fn();
      } catch (...) {
        e = std::current_exception();
      }
      lock.lock();
      job = nullptr;
      busy = false;
      error = e;
      changed.notify_all();
    }
  }

  // Waits for the running job; rethrows its exception.
  void wait() {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&] { return !busy; });
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
};

SideStream::SideStream(c10::Device device) {
  if (!device.is_cuda()) return;
  const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
  c10::cuda::CUDAGuard guard(index);
  impl_.reset(new Impl{c10::Device(c10::kCUDA, index), c10::cuda::getStreamFromPool(/*isHighPriority=*/true, index)});
  if (cudaEventCreateWithFlags(&impl_->done, cudaEventDisableTiming) != cudaSuccess) {
    impl_.reset();
    (void)cudaGetLastError();
    return;
  }
  // The worker works in the creating thread's autograd mode.
  impl_->worker = std::thread([impl = impl_.get(), inference = c10::InferenceMode::is_enabled(),
                               grad = c10::GradMode::is_enabled()] { impl->loop(inference, grad); });
}

SideStream::~SideStream() {
  if (!impl_) return;
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stop = true;
  }
  impl_->changed.notify_all();
  impl_->worker.join();  // a queued job still runs: it may use what its caller owns
  if (impl_->done) (void)cudaEventDestroy(impl_->done);
}

void SideStream::run(const std::function<void()>& fn) {
  if (!impl_) return fn();
  impl_->wait();
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->job = fn;
    impl_->busy = true;
  }
  impl_->changed.notify_all();
}

void SideStream::wait() {
  if (impl_) impl_->wait();
}

void SideStream::join(const std::vector<at::Tensor>& tensors) {
  if (!impl_) return;
  impl_->wait();
  c10::cuda::CUDAGuard guard(impl_->device);
  const auto current = c10::cuda::getCurrentCUDAStream(impl_->device.index());
  check(static_cast<int>(cudaEventRecord(impl_->done, impl_->stream.stream())), "side-stream event record");
  check(static_cast<int>(cudaStreamWaitEvent(current.stream(), impl_->done, 0)), "side-stream event wait");
  for (const auto& t : tensors) {
    if (t.defined() && t.is_cuda() && t.has_storage()) {
      c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), current);
    }
  }
}

struct PrivateStream::Impl {
  c10::cuda::CUDAStream before;
  c10::cuda::CUDAStream own;
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  cudaEvent_t event = nullptr;
};

namespace {
// `waiter` waits for the work queued on `first` so far.
void order_after(cudaEvent_t event, const c10::cuda::CUDAStream& first, const c10::cuda::CUDAStream& waiter) {
  check(static_cast<int>(cudaEventRecord(event, first.stream())), "stream event record");
  check(static_cast<int>(cudaStreamWaitEvent(waiter.stream(), event, 0)), "stream event wait");
}
}  // namespace

PrivateStream::PrivateStream(c10::Device device) {
  if (!device.is_cuda()) return;
  const auto index = device.has_index() ? device.index() : c10::cuda::current_device();
  c10::cuda::CUDAGuard device_guard(index);
  std::unique_ptr<Impl> impl(new Impl{c10::cuda::getCurrentCUDAStream(index),
                                      c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)});
  if (cudaEventCreateWithFlags(&impl->event, cudaEventDisableTiming) != cudaSuccess) {
    (void)cudaGetLastError();
    return;  // the work stays where it was
  }
  order_after(impl->event, impl->before, impl->own);
  impl->guard.emplace(impl->own);
  impl_ = std::move(impl);
}

PrivateStream::~PrivateStream() {
  if (!impl_) return;
  impl_->guard.reset();
  try {
    order_after(impl_->event, impl_->own, impl_->before);
  } catch (...) {
    (void)cudaStreamSynchronize(impl_->own.stream());
  }
  (void)cudaEventDestroy(impl_->event);
}

}  // namespace fused

namespace detail {
std::vector<std::pair<std::string, int64_t>> device_memory_peaks(bool reset) {
  std::vector<std::pair<std::string, int64_t>> out;
  if (!at::cuda::is_available()) return out;
  const auto count = static_cast<c10::DeviceIndex>(c10::cuda::device_count());
  for (c10::DeviceIndex i = 0; i < count; ++i) {
    decltype(c10::cuda::CUDACachingAllocator::getDeviceStats(0)) stats;
    try {
      stats = c10::cuda::CUDACachingAllocator::getDeviceStats(i);
    } catch (const c10::Error&) {
      continue;  // the allocator is not set up yet (nothing ran on CUDA): nothing to report or reset
    }
    const auto& allocated = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
    if (allocated.allocated == 0) continue;  // never used: leave its context uncreated
    if (reset) {
      c10::cuda::CUDACachingAllocator::resetPeakStats(i);
    } else {
      out.emplace_back(fmt::format("cuda:{}", i), allocated.peak);
    }
  }
  return out;
}
}  // namespace detail
}  // namespace cur4llm
