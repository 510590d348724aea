// cur4llm's own CUDA kernels: the memory-bound steps of the forward pass and
// of the cross-entropy that ATen would run as several passes over a tensor.
// Plain CUDA (no LibTorch headers); fused_ops_cuda.cpp calls these launchers.
#include "fused_kernels.h"
#include "kernel_types.cuh"

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace cur4llm::fused::kernels {
namespace {

template <typename T>
bool aligned16(const void* p, int64_t stride_elems) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (stride_elems * static_cast<int64_t>(sizeof(T))) % 16 == 0;
}

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

// ---------------------------------------------------------------------------------------------
// Block reductions.

// Folds (m2, s2) into the running (max, sum of exp(x - max)) pair (m, s).
__device__ inline void lse_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * expf(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * expf(m2 - m);
  }
}

template <int THREADS>
__device__ inline void block_lse(float& m, float& s) {
  static_assert(THREADS % 32 == 0 && THREADS <= 1024, "whole warps");
  __shared__ float sm[THREADS / 32], ss[THREADS / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    lse_merge(m, s, m2, s2);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < THREADS / 32 ? sm[lane] : -INFINITY;
    s = lane < THREADS / 32 ? ss[lane] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
      lse_merge(m, s, m2, s2);
    }
  }
}

template <int THREADS>
__device__ inline float block_sum(float v) {
  __shared__ float partial[THREADS / 32];
  __shared__ float total;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < THREADS / 32 ? partial[lane] : 0.f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    if (lane == 0) total = v;
  }
  __syncthreads();
  return total;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy: one block per row, one read of the row.

template <typename T, bool kVec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    token_nll_kernel(const T* __restrict__ logits, int64_t cols, int64_t row_stride, const int64_t* __restrict__ labels,
                     float* __restrict__ out) {
  const T* x = logits + static_cast<int64_t>(blockIdx.x) * row_stride;
  float m = -INFINITY, s = 0.f;
  int64_t done = 0;
  if constexpr (kVec) {
    constexpr int K = Pack<T>::kSize;
    const int64_t packs = cols / K;
    const Pack<T>* px = reinterpret_cast<const Pack<T>*>(x);
    for (int64_t i = threadIdx.x; i < packs; i += THREADS) {
      const Pack<T> p = px[i];
      float f[K];
      float local = -INFINITY;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        f[j] = Elem<T>::load(p.v[j]);
        local = fmaxf(local, f[j]);
      }
      if (local > m) {
        s = m == -INFINITY ? 0.f : s * expf(m - local);
        m = local;
      }
      if (m != -INFINITY) {
#pragma unroll
        for (int j = 0; j < K; ++j) s += expf(f[j] - m);
      }
    }
    done = packs * K;
  }
  for (int64_t i = done + threadIdx.x; i < cols; i += THREADS) {
    const float f = Elem<T>::load(x[i]);
    lse_merge(m, s, f, 1.f);
  }
  block_lse<THREADS>(m, s);
  if (threadIdx.x == 0) {
    const int64_t label = labels[blockIdx.x];
    const float lse = m + logf(s);
    out[blockIdx.x] = (label >= 0 && label < cols) ? lse - Elem<T>::load(x[label]) : NAN;
  }
}

template <typename T>
int launch_token_nll(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, const int64_t* labels,
                     float* out, void* stream) {
  if (rows <= 0) return 0;
  constexpr int kThreads = 512;
  const T* x = static_cast<const T*>(logits);
  if (aligned16<T>(logits, row_stride)) {
    token_nll_kernel<T, true, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(
        x, cols, row_stride, labels, out);
  } else {
    token_nll_kernel<T, false, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(
        x, cols, row_stride, labels, out);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// RMSNorm: one block per row; the row is read twice (the second time from cache).

template <typename T, bool kVec, int THREADS>
__global__ void __launch_bounds__(THREADS)
    rms_norm_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, int64_t cols, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = out + row * cols;
  constexpr int K = kVec ? Pack<T>::kSize : 1;
  float ss = 0.f;
  if constexpr (kVec) {
    const Pack<T>* px = reinterpret_cast<const Pack<T>*>(xr);
    for (int64_t i = threadIdx.x; i < cols / K; i += THREADS) {
      const Pack<T> p = px[i];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float f = Elem<T>::load(p.v[j]);
        ss += f * f;
      }
    }
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += THREADS) {
      const float f = Elem<T>::load(xr[i]);
      ss += f * f;
    }
  }
  const float total = block_sum<THREADS>(ss);
  // As ATen: mean = sum * (1/n), then rsqrt(mean + eps), all in float.
  const float r = rsqrtf(total * (1.0f / static_cast<float>(cols)) + eps);
  if constexpr (kVec) {
    const Pack<T>* px = reinterpret_cast<const Pack<T>*>(xr);
    const Pack<T>* pw = reinterpret_cast<const Pack<T>*>(w);
    Pack<T>* py = reinterpret_cast<Pack<T>*>(yr);
    for (int64_t i = threadIdx.x; i < cols / K; i += THREADS) {
      const Pack<T> p = px[i], q = pw[i];
      Pack<T> o;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float normed = round_to<T>(Elem<T>::load(p.v[j]) * r);
        o.v[j] = Elem<T>::store(Elem<T>::load(q.v[j]) * normed);
      }
      py[i] = o;
    }
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += THREADS) {
      const float normed = round_to<T>(Elem<T>::load(xr[i]) * r);
      yr[i] = Elem<T>::store(Elem<T>::load(w[i]) * normed);
    }
  }
}

template <typename T>
int launch_rms_norm(const void* x, const void* w, void* out, int64_t rows, int64_t cols, float eps, void* stream) {
  if (rows <= 0) return 0;
  constexpr int kThreads = 256;
  const T* px = static_cast<const T*>(x);
  const T* pw = static_cast<const T*>(w);
  T* py = static_cast<T*>(out);
  if (aligned16<T>(x, cols) && aligned16<T>(w, cols) && aligned16<T>(out, cols) && cols % Pack<T>::kSize == 0) {
    rms_norm_kernel<T, true, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(px, pw, py, cols, eps);
  } else {
    rms_norm_kernel<T, false, kThreads><<<static_cast<unsigned>(rows), kThreads, 0, as_stream(stream)>>>(px, pw, py, cols, eps);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding: one thread per (token, head, pair j < dim/2).

// Where a row's (token, head) finds its cos/sin: table row `position` of table `tbl`.
struct RotaryTables {
  const float* cos;
  const float* sin;
  int64_t seq_len;           // without positions: token n sits at n % seq_len
  const int64_t* positions;  // or: token n sits at positions[n]
  int64_t tables;            // 1, or one per group of heads / tables heads
  int64_t table_rows;
  __device__ int64_t offset(int64_t token, int64_t head, int64_t heads, int64_t dim) const {
    const int64_t pos = positions != nullptr ? positions[token] : token % seq_len;
    const int64_t tbl = tables > 1 ? head / (heads / tables) : 0;
    return (tbl * table_rows + pos) * dim;
  }
};

// One rotated pair: x1 = x[j] and x2 = x[j + half] against the table row's cos/sin at j (c, s
// point there). rotate_half(x) = cat(-x2, x1); every product and the sum rounded as ATen rounds
// them. The three rotary kernels below share it.
template <typename T>
__device__ inline void rotate_pair(float x1, float x2, const float* c, const float* s, int64_t half, T& lo, T& hi) {
  const float c1 = round_to<T>(c[0]), s1 = round_to<T>(s[0]);
  const float c2 = round_to<T>(c[half]), s2 = round_to<T>(s[half]);
  lo = Elem<T>::store(round_to<T>(x1 * c1) + round_to<T>(-x2 * s1));
  hi = Elem<T>::store(round_to<T>(x2 * c2) + round_to<T>(x1 * s2));
}

template <typename T>
__global__ void rotary_kernel(const T* __restrict__ x, RotaryTables tab, T* __restrict__ out, int64_t tokens,
                              int64_t heads, int64_t dim, int64_t x_token_stride) {
  const int64_t half = dim / 2;
  const int64_t total = tokens * heads * half;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % half;
    const int64_t th = idx / half;  // token * heads + head
    const int64_t token = th / heads, head = th - token * heads;
    const int64_t at = tab.offset(token, head, heads, dim);
    const int64_t base = th * dim;
    const int64_t in = token * x_token_stride + head * dim;
    rotate_pair<T>(Elem<T>::load(x[in + j]), Elem<T>::load(x[in + j + half]), tab.cos + at + j, tab.sin + at + j,
                   half, out[base + j], out[base + j + half]);
  }
}

// The same arithmetic on 16-byte packs: one thread per (token, head, pack of
// pairs), so the index arithmetic is paid once per pack, not per element.
template <typename T>
__global__ void rotary_pack_kernel(const T* __restrict__ x, RotaryTables tab, T* __restrict__ out, int64_t rows,
                                   int64_t heads, int64_t dim, int64_t x_token_stride) {
  constexpr int K = Pack<T>::kSize;
  const int64_t half = dim / 2, packs = half / K;
  const int64_t total = rows * packs;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / packs;  // token * heads + head
    const int64_t j = (idx - row * packs) * K;
    const int64_t token = row / heads, head = row - token * heads;
    const int64_t at = tab.offset(token, head, heads, dim);
    const int64_t base = row * dim;
    const int64_t in = token * x_token_stride + head * dim;
    const Pack<T> a = *reinterpret_cast<const Pack<T>*>(x + in + j);
    const Pack<T> b = *reinterpret_cast<const Pack<T>*>(x + in + j + half);
    const float* c = tab.cos + at + j;
    const float* sn = tab.sin + at + j;
    Pack<T> oa, ob;
#pragma unroll
    for (int e = 0; e < K; ++e) {
      rotate_pair<T>(Elem<T>::load(a.v[e]), Elem<T>::load(b.v[e]), c + e, sn + e, half, oa.v[e], ob.v[e]);
    }
    *reinterpret_cast<Pack<T>*>(out + base + j) = oa;
    *reinterpret_cast<Pack<T>*>(out + base + j + half) = ob;
  }
}

template <typename T>
int launch_rotary(const void* x, const RotaryTables& tab, void* out, int64_t tokens, int64_t heads, int64_t dim,
                  int64_t x_token_stride, void* stream) {
  const int64_t total = tokens * heads * (dim / 2);
  if (total <= 0) return 0;
  constexpr int kThreads = 256;
  constexpr int K = Pack<T>::kSize;
  const bool vec = (dim / 2) % K == 0 && aligned16<T>(x, dim / 2) && aligned16<T>(out, dim / 2) &&
                   aligned16<T>(x, x_token_stride);
  const int64_t work = vec ? total / K : total;
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  if (vec) {
    rotary_pack_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
        static_cast<const T*>(x), tab, static_cast<T*>(out), tokens * heads, heads, dim, x_token_stride);
  } else {
    rotary_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(static_cast<const T*>(x), tab, static_cast<T*>(out),
                                                               tokens, heads, dim, x_token_stride);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// A decoding step's query, key and value in one launch: q rotated into q_out, k rotated and v
// copied into their KV-cache slots. Work items, in order: the query pairs, the key pairs, the
// values; one thread each (a step has a few tokens, so the launch, not the loop, is the cost).
// The roundings are rotary_kernel's.

struct StepLayout {
  int64_t batch, tokens, heads, kv_heads, dk, dv;
  int64_t q_stride, k_stride, v_stride;  // elements between consecutive tokens of q, k, v
  int64_t cap, start;                    // cache slots per row; the step's first slot
};

template <typename T>
__global__ void rotary_step_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   RotaryTables tab, StepLayout L, T* __restrict__ q_out,
                                   T* __restrict__ keys, T* __restrict__ values) {
  const int64_t rows = L.batch * L.tokens, half = L.dk / 2;
  const int64_t nq = rows * L.heads * half, nk = rows * L.kv_heads * half, nv = rows * L.kv_heads * L.dv;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < nq + nk + nv;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (idx < nq + nk) {
      const bool is_q = idx < nq;
      const int64_t i = is_q ? idx : idx - nq;
      const int64_t heads = is_q ? L.heads : L.kv_heads;
      const int64_t j = i % half, th = i / half, row = th / heads, head = th - row * heads;
      const T* x = (is_q ? q + row * L.q_stride : k + row * L.k_stride) + head * L.dk;
      // Queries take their KV head's table (heads / tables of them a table), keys their own.
      const int64_t at = tab.offset(row, head, heads, L.dk);
      T* out;
      if (is_q) {
        out = q_out + th * L.dk;
      } else {  // slot start + t of row b, KV head `head`
        const int64_t b = row / L.tokens, t = row - b * L.tokens;
        out = keys + ((b * L.kv_heads + head) * L.cap + L.start + t) * L.dk;
      }
      rotate_pair<T>(Elem<T>::load(x[j]), Elem<T>::load(x[j + half]), tab.cos + at + j, tab.sin + at + j, half,
                     out[j], out[j + half]);
    } else {
      const int64_t i = idx - nq - nk;
      const int64_t e = i % L.dv, th = i / L.dv, row = th / L.kv_heads, head = th - row * L.kv_heads;
      const int64_t b = row / L.tokens, t = row - b * L.tokens;
      values[((b * L.kv_heads + head) * L.cap + L.start + t) * L.dv + e] = v[row * L.v_stride + head * L.dv + e];
    }
  }
}

template <typename T>
int launch_rotary_step(const void* q, const void* k, const void* v, const RotaryTables& tab, const StepLayout& L,
                       void* q_out, void* keys, void* values, void* stream) {
  const int64_t rows = L.batch * L.tokens;
  const int64_t total = rows * ((L.heads + L.kv_heads) * (L.dk / 2) + L.kv_heads * L.dv);
  if (total <= 0) return 0;
  constexpr int kThreads = 256;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  rotary_step_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), tab, L,
      static_cast<T*>(q_out), static_cast<T*>(keys), static_cast<T*>(values));
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// LayerNorm (OPT), optionally after a residual addition: one block per row.
// With y: s = to_dtype(x + y), written to sum_out; without: s = x. Then
// out = to_dtype((s - mean) * rstd * w + b) with mean and variance in float,
// as ATen's layer_norm computes them (its Welford updates may round differently
// in the last float bit). Passes 2 and 3 read s back (this thread's own
// writes or reads, from cache).

template <typename T, int THREADS>
__global__ void __launch_bounds__(THREADS)
    layer_norm_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                      const T* __restrict__ b, T* __restrict__ sum_out, T* __restrict__ out, int64_t cols, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  const T* yr = y ? y + row * cols : nullptr;
  T* sr = y ? sum_out + row * cols : nullptr;
  T* outr = out + row * cols;
  float total = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += THREADS) {
    float v = Elem<T>::load(xr[i]);
    if (yr) {
      v = round_to<T>(v + Elem<T>::load(yr[i]));
      sr[i] = Elem<T>::store(v);
    }
    total += v;
  }
  const float mean = block_sum<THREADS>(total) / static_cast<float>(cols);
  const T* src = sr ? sr : xr;
  float sq = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += THREADS) {
    const float d = Elem<T>::load(src[i]) - mean;
    sq += d * d;
  }
  const float rstd = rsqrtf(block_sum<THREADS>(sq) / static_cast<float>(cols) + eps);
  for (int64_t i = threadIdx.x; i < cols; i += THREADS) {
    float o = (Elem<T>::load(src[i]) - mean) * rstd;
    if (w) o = o * Elem<T>::load(w[i]);
    if (b) o = o + Elem<T>::load(b[i]);
    outr[i] = Elem<T>::store(o);
  }
}

template <typename T>
int launch_layer_norm(const void* x, const void* y, const void* w, const void* b, void* sum_out, void* out,
                      int64_t rows, int64_t cols, float eps, void* stream) {
  if (y && !sum_out) return static_cast<int>(cudaErrorInvalidValue);
  if (rows <= 0 || cols <= 0) return 0;
  auto args = [&](auto kernel, int threads) {
    kernel<<<static_cast<unsigned>(rows), threads, 0, as_stream(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(y), static_cast<const T*>(w), static_cast<const T*>(b),
        static_cast<T*>(sum_out), static_cast<T*>(out), cols, eps);
  };
  if (cols <= 1024) {
    args(layer_norm_kernel<T, 128>, 128);
  } else {
    args(layer_norm_kernel<T, 512>, 512);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// SiLU gate: out = round(silu(g)) * u (silu_mul_one, kernel_types.cuh).

// gate and up are [rows, cols], rows gate_stride and up_stride elements apart; out is [rows, cols], contiguous.
template <typename T, bool kVec>
__global__ void silu_mul_kernel(const T* __restrict__ gate, const T* __restrict__ up, T* __restrict__ out,
                                int64_t rows, int64_t cols, int64_t gate_stride, int64_t up_stride) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;  // columns of each row handled by packs
  if constexpr (kVec) {
    constexpr int K = Pack<T>::kSize;
    const int64_t packs = cols / K;
    for (int64_t i = first; i < rows * packs; i += stride) {
      const int64_t r = i / packs, c = (i - r * packs) * K;
      const Pack<T> g = *reinterpret_cast<const Pack<T>*>(gate + r * gate_stride + c);
      const Pack<T> u = *reinterpret_cast<const Pack<T>*>(up + r * up_stride + c);
      Pack<T> o;
#pragma unroll
      for (int j = 0; j < K; ++j) o.v[j] = Elem<T>::store(silu_mul_one<T>(Elem<T>::load(g.v[j]), Elem<T>::load(u.v[j])));
      *reinterpret_cast<Pack<T>*>(out + r * cols + c) = o;
    }
    done = packs * K;
  }
  const int64_t rest = cols - done;
  for (int64_t i = first; i < rows * rest; i += stride) {
    const int64_t r = i / rest, c = done + (i - r * rest);
    out[r * cols + c] =
        Elem<T>::store(silu_mul_one<T>(Elem<T>::load(gate[r * gate_stride + c]), Elem<T>::load(up[r * up_stride + c])));
  }
}

template <typename T>
int launch_silu_mul(const void* gate, const void* up, void* out, int64_t rows, int64_t cols, int64_t gate_stride,
                    int64_t up_stride, void* stream) {
  if (rows <= 0 || cols <= 0) return 0;
  constexpr int kThreads = 256;
  // One row: only the pointers need alignment (a tail of fewer than a pack goes element by element).
  const bool vec = aligned16<T>(gate, rows > 1 ? gate_stride : 0) && aligned16<T>(up, rows > 1 ? up_stride : 0) &&
                   aligned16<T>(out, rows > 1 ? cols : 0) && (rows == 1 || cols % Pack<T>::kSize == 0);
  const int64_t work = vec ? rows * (cols / Pack<T>::kSize) + rows * (cols % Pack<T>::kSize) : rows * cols;
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  const unsigned grid = static_cast<unsigned>(blocks < (int64_t{1} << 20) ? blocks : (int64_t{1} << 20));
  const T* g = static_cast<const T*>(gate);
  const T* u = static_cast<const T*>(up);
  T* o = static_cast<T*>(out);
  if (vec) {
    silu_mul_kernel<T, true><<<grid, kThreads, 0, as_stream(stream)>>>(g, u, o, rows, cols, gate_stride, up_stride);
  } else {
    silu_mul_kernel<T, false><<<grid, kThreads, 0, as_stream(stream)>>>(g, u, o, rows, cols, gate_stride, up_stride);
  }
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// Low-rank forward for a few tokens: up to three GEMV stages (r, u, c) in one
// cooperative launch, a warp per output row, the grid synchronised between stages.

constexpr int kMaxTok = static_cast<int>(kLowRankMaxTokens);

template <typename T>
__device__ inline float load_elem(const T* p, int64_t i) {
  return Elem<T>::load(p[i]);
}

// Eight consecutive values starting at p[i] (i a multiple of 8, p 16-byte aligned there).
template <typename T>
__device__ inline void load8(const T* p, int64_t i, float (&f)[8]) {
  if constexpr (sizeof(T) == 2) {
    const Pack<T> v = *reinterpret_cast<const Pack<T>*>(p + i);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = Elem<T>::load(v.v[j]);
  } else {
    const float4 a = *reinterpret_cast<const float4*>(p + i);
    const float4 b = *reinterpret_cast<const float4*>(p + i + 4);
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w;
    f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
  }
}

// out[t, row] = sum_j mat[row, j] * vin[t, j] (+ bias[row]) for every row, warp by warp.
// The result is rounded to T; written as T to out_t, else as float to out_f.
template <typename T, typename In>
__device__ void gemv_rows(const T* __restrict__ mat, int64_t rows, int64_t cols, const In* __restrict__ vin,
                          int64_t tokens, const T* __restrict__ bias, float* __restrict__ out_f, T* __restrict__ out_t) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  const bool vec = cols % 8 == 0 && reinterpret_cast<uintptr_t>(mat) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(vin) % 16 == 0;
  for (int64_t row = warp; row < rows; row += warps) {
    const T* m = mat + row * cols;
    float acc[kMaxTok];
#pragma unroll
    for (int t = 0; t < kMaxTok; ++t) acc[t] = 0.f;
    if (vec) {
      for (int64_t j = static_cast<int64_t>(lane) * 8; j < cols; j += 32 * 8) {
        float w[8];
        load8(m, j, w);
#pragma unroll
        for (int t = 0; t < kMaxTok; ++t) {
          if (t < tokens) {
            float v[8];
            load8(vin, t * cols + j, v);
#pragma unroll
            for (int q = 0; q < 8; ++q) acc[t] += w[q] * v[q];
          }
        }
      }
    } else {
      for (int64_t j = lane; j < cols; j += 32) {
        const float w = Elem<T>::load(m[j]);
#pragma unroll
        for (int t = 0; t < kMaxTok; ++t) {
          if (t < tokens) acc[t] += w * load_elem(vin, t * cols + j);
        }
      }
    }
#pragma unroll
    for (int t = 0; t < kMaxTok; ++t) {
      for (int offset = 16; offset > 0; offset /= 2) acc[t] += __shfl_xor_sync(0xffffffffu, acc[t], offset);
    }
    if (lane == 0) {
      const float b = bias ? Elem<T>::load(bias[row]) : 0.f;
#pragma unroll
      for (int t = 0; t < kMaxTok; ++t) {
        if (t >= tokens) break;
        const float v = acc[t] + b;
        if (out_t) {
          out_t[t * rows + row] = Elem<T>::store(v);
        } else {
          out_f[t * rows + row] = round_to<T>(v);
        }
      }
    }
  }
}

template <typename T>
__global__ void lowrank_kernel(const T* x, int64_t tokens, const T* r, const T* u, const T* c, const T* bias, T* y,
                               float* scratch, int64_t in, int64_t k, int64_t out) {
  namespace cg = cooperative_groups;
  float* t1 = scratch;               // [tokens, k]: r x
  float* t2 = scratch + tokens * k;  // [tokens, k]: u (r x)
  gemv_rows<T, T>(r, k, in, x, tokens, nullptr, t1, nullptr);
  cg::this_grid().sync();
  const float* mid = t1;
  if (u) {
    gemv_rows<T, float>(u, k, k, t1, tokens, nullptr, t2, nullptr);
    cg::this_grid().sync();
    mid = t2;
  }
  gemv_rows<T, float>(c, out, k, mid, tokens, bias, nullptr, y);
}

template <typename T>
int launch_lowrank(const void* x, int64_t tokens, const void* r, const void* u, const void* c, const void* bias,
                   void* y, float* scratch, int64_t in, int64_t k, int64_t out, void* stream) {
  if (tokens < 1 || tokens > kLowRankMaxTokens) return static_cast<int>(cudaErrorInvalidValue);
  constexpr int kThreads = 256;
  // As many blocks as can be resident at once (a cooperative launch needs them all resident).
  // Looked up once per device (kept for up to 16 devices).
  static int resident[16] = {0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return static_cast<int>(err);
  int slot = device >= 0 && device < 16 ? device : 0;
  if (resident[slot] <= 0) {
    int sms = 0, per_sm = 0;
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (err == cudaSuccess) err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, lowrank_kernel<T>, kThreads, 0);
    if (err != cudaSuccess) return static_cast<int>(err);
    resident[slot] = sms * (per_sm > 0 ? per_sm : 1);
  }
  const int64_t needed = (std::max(std::max(in, k), out) * 32 + kThreads - 1) / kThreads;  // a warp per row
  int grid = resident[slot];
  if (needed < grid) grid = static_cast<int>(needed);
  const T* px = static_cast<const T*>(x);
  const T* pr = static_cast<const T*>(r);
  const T* pu = static_cast<const T*>(u);
  const T* pc = static_cast<const T*>(c);
  const T* pb = static_cast<const T*>(bias);
  T* py = static_cast<T*>(y);
  void* params[] = {&px, &tokens, &pr, &pu, &pc, &pb, &py, &scratch, &in, &k, &out};
  err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(lowrank_kernel<T>), dim3(grid), dim3(kThreads), params,
                                    0, as_stream(stream));
  if (err != cudaSuccess) return static_cast<int>(err);
  return static_cast<int>(cudaGetLastError());
}

// ---------------------------------------------------------------------------------------------
// Weight-only packed matrix-vector products (decoding with int4/int8 weights).

// Layout: a block of kPackedWarps warps owns kPackedRows output rows and splits their columns
// between its warps in slices of 256: in a slice, lane l takes the 8 columns 8l..8l+7, so a
// warp reads one row's codes for 256 columns in one coalesced 128-byte (int4) or 256-byte
// (int8) sweep and every token's 256 inputs in one 512-byte sweep (bf16/fp16), shared by the
// block's rows. A warp takes packed_unroll<TOKENS>() consecutive slices per pass, their loads
// all issued before any is used: at one or two tokens the product is bound by how many bytes are
// in flight, not by arithmetic. Weights are never rounded to the element type (dequantize_tensor
// rounds them); sums are in float. Warps meet in shared memory.
constexpr int kPackedWarps = 4;
constexpr int kPackedRows = 4;
constexpr int kPackedSlice = 256;

// Few tokens: slices per warp and pass, and 8-column pieces per lane in a slice (8 * V columns:
// V = 4 reads a lane's codes in 16- or 32-byte loads, where columns and groups are multiples of
// 32). Both set how many bytes are in flight, which bounds the product at one or two tokens.
template <int TOKENS, int V>
__host__ __device__ constexpr int packed_unroll() {
  return V == 4 ? 1 : (TOKENS <= 2 ? 4 : 2);
}

// 8 consecutive inputs as float, read in 16-byte packs (p 16-byte aligned).
template <typename T>
__device__ inline void load8(const T* p, float out[8]) {
  constexpr int K = Pack<T>::kSize;  // 8 for half and bfloat16, 4 for float
  const auto* packs = reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
  for (int i = 0; i < 8 / K; ++i) {
    const Pack<T> v = packs[i];
#pragma unroll
    for (int j = 0; j < K; ++j) out[i * K + j] = Elem<T>::load(v.v[j]);
  }
}

// The 8 codes of one lane's slice: one 32-bit word at 4 bits, two at 8 bits.
template <int BITS>
struct Codes8 {
  static constexpr uint32_t kMask = (1u << BITS) - 1u;
  static constexpr int kPerWord = 32 / BITS;  // 8 or 4 codes
  static constexpr int kInPlace = 23 / BITS;  // codes of a word inside a float's 23 mantissa bits: 5 or 2
  uint32_t w[BITS / 4];
  __device__ void load(const uint8_t* p) {
    if constexpr (BITS == 4) {
      w[0] = *reinterpret_cast<const uint32_t*>(p);
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(p);
      w[0] = v.x, w[1] = v.y;
    }
  }
  // Code j as a float, exactly: OR it into the mantissa of 2^23 and take 2^23 away.
  __device__ float get(int j) const {
    const uint32_t code = (w[(j * BITS) / 32] >> ((j * BITS) % 32)) & kMask;
    return __uint_as_float(0x4B000000u | code) - 8388608.f;
  }
  // Code j times 2^(BITS * place(j)), exactly, in one logic operation and one subtraction: the
  // code is masked where it lies in its word and ORed into the mantissa of 2^23. Codes that
  // reach bit 23 (the exponent's) are shifted down first: those from bit 20 of an int4 word,
  // from bit 16 of an int8 one (one shift per word).
  __device__ float placed(int j) const {
    const uint32_t word = w[j / kPerWord];
    const int k = j % kPerWord;
    const uint32_t bits = k < kInPlace ? word & (kMask << (BITS * k))
                                       : (word >> (BITS * kInPlace)) & (kMask << (BITS * (k - kInPlace)));
    return __uint_as_float(0x4B000000u | bits) - 8388608.f;
  }
  // 2^-(BITS * place(j)): the factor on column j's input that undoes placed()'s.
  __device__ static constexpr float unplace(int j) {
    const int k = j % kPerWord;
    return 1.f / static_cast<float>(1u << (BITS * (k < kInPlace ? k : k - kInPlace)));
  }
};

// Few tokens: per 8 columns of one group (scale s, zero z) a row adds
// s * (sum_j code_j x_j - z * sum_j x_j). The inputs, their sum and their placed() factors are
// worked out once per 8 columns and token for all rows, which leaves each weight one logic
// operation, one subtraction and one multiply-add per token. A lane takes 8 * V consecutive
// columns of a slice (one group: group % (8 * V) == 0), a warp U slices per pass.
template <typename T, int BITS, int TOKENS, int V>
__device__ inline void packed_rows_few_tokens(const T* __restrict__ x, int tokens, const uint8_t* __restrict__ q,
                                              const __half* __restrict__ scales, const __half* __restrict__ zeros,
                                              const __half* __restrict__ colmul, int64_t rows, int64_t cols,
                                              int64_t group, int64_t row0, int warp, int lane,
                                              float (&acc)[kPackedRows][TOKENS]) {
  constexpr int U = packed_unroll<TOKENS, V>();
  constexpr int kSlice = 32 * 8 * V;             // columns of one warp-wide sweep
  constexpr int kWords = V * BITS / 4;           // 32-bit code words of a lane's piece
  const int64_t row_bytes = cols * BITS / 8, groups = (cols + group - 1) / group;
  for (int64_t base = static_cast<int64_t>(warp) * U * kSlice + lane * 8 * V; base < cols;
       base += static_cast<int64_t>(kPackedWarps) * U * kSlice) {
    // Every load of the pass first, so that they are in flight together.
    uint32_t words[U][kPackedRows][kWords];
    float scale[U][kPackedRows], zero[U][kPackedRows];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c = base + u * kSlice;
      const int64_t g = c / group;
#pragma unroll
      for (int r = 0; r < kPackedRows; ++r) {
        const int64_t row = row0 + r < rows ? row0 + r : rows - 1;  // a partial last block repeats a row
        if (c < cols) {
          const uint8_t* p = q + row * row_bytes + c * BITS / 8;
          if constexpr (kWords % 4 == 0) {
#pragma unroll
            for (int i = 0; i < kWords / 4; ++i) {
              const uint4 v = reinterpret_cast<const uint4*>(p)[i];
              words[u][r][4 * i] = v.x, words[u][r][4 * i + 1] = v.y, words[u][r][4 * i + 2] = v.z,
                                 words[u][r][4 * i + 3] = v.w;
            }
          } else if constexpr (kWords == 2) {
            const uint2 v = *reinterpret_cast<const uint2*>(p);
            words[u][r][0] = v.x, words[u][r][1] = v.y;
          } else {
            words[u][r][0] = *reinterpret_cast<const uint32_t*>(p);
          }
          scale[u][r] = __half2float(scales[row * groups + g]);
          zero[u][r] = __half2float(zeros[row * groups + g]);
        } else {
#pragma unroll
          for (int i = 0; i < kWords; ++i) words[u][r][i] = 0u;
          scale[u][r] = zero[u][r] = 0.f;
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t c0 = base + u * kSlice;
      if (c0 >= cols) break;  // the slices after it are out too
#pragma unroll
      for (int v = 0; v < V; ++v) {
        const int64_t c = c0 + 8 * v;
        float xs[TOKENS][8], xsum[TOKENS];
        float m[8];
        if (colmul != nullptr) load8<__half>(colmul + c, m);  // activation-aware formats: column c times colmul[c]
#pragma unroll
        for (int t = 0; t < TOKENS; ++t) {
          xsum[t] = 0.f;
#pragma unroll
          for (int j = 0; j < 8; ++j) xs[t][j] = 0.f;
          if (t < tokens) {
            load8<T>(x + static_cast<int64_t>(t) * cols + c, xs[t]);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
              if (colmul != nullptr) xs[t][j] *= m[j];
              xsum[t] += xs[t][j];
              xs[t][j] *= Codes8<BITS>::unplace(j);
            }
          }
        }
#pragma unroll
        for (int r = 0; r < kPackedRows; ++r) {
          Codes8<BITS> codes;
#pragma unroll
          for (int i = 0; i < BITS / 4; ++i) codes.w[i] = words[u][r][v * (BITS / 4) + i];
          float f[8];
#pragma unroll
          for (int j = 0; j < 8; ++j) f[j] = codes.placed(j);
#pragma unroll
          for (int t = 0; t < TOKENS; ++t) {
            float dot = 0.f;
#pragma unroll
            for (int j = 0; j < 8; ++j) dot = fmaf(f[j], xs[t][j], dot);
            acc[r][t] = fmaf(scale[u][r], fmaf(-zero[u][r], xsum[t], dot), acc[r][t]);
          }
        }
      }
    }
  }
}

// Many tokens: each weight is rebuilt once, (code - zero) * scale, and used for every token.
template <typename T, int BITS, int TOKENS>
__device__ inline void packed_rows_many_tokens(const T* __restrict__ x, int tokens, const uint8_t* __restrict__ q,
                                               const __half* __restrict__ scales, const __half* __restrict__ zeros,
                                               const __half* __restrict__ colmul, int64_t rows, int64_t cols,
                                               int64_t group, int64_t row0, int warp, int lane,
                                               float (&acc)[kPackedRows][TOKENS]) {
  const int64_t row_bytes = cols * BITS / 8, groups = (cols + group - 1) / group;
  for (int64_t c = (static_cast<int64_t>(warp) * 32 + lane) * 8; c < cols; c += kPackedWarps * kPackedSlice) {
    Codes8<BITS> codes[kPackedRows];
    float scale[kPackedRows], offset[kPackedRows];
    const int64_t g = c / group;
#pragma unroll
    for (int r = 0; r < kPackedRows; ++r) {
      const int64_t row = row0 + r < rows ? row0 + r : rows - 1;  // a partial last block repeats a row
      codes[r].load(q + row * row_bytes + c * BITS / 8);
      scale[r] = __half2float(scales[row * groups + g]);
      offset[r] = -scale[r] * __half2float(zeros[row * groups + g]);
    }
    float w[kPackedRows][8];
#pragma unroll
    for (int r = 0; r < kPackedRows; ++r) {
#pragma unroll
      for (int j = 0; j < 8; ++j) w[r][j] = fmaf(codes[r].get(j), scale[r], offset[r]);
    }
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) {
      if (t < tokens) {
        float xv[8];
        load8<T>(x + static_cast<int64_t>(t) * cols + c, xv);
        if (colmul != nullptr) {  // activation-aware formats: column c of w times colmul[c]
          float m[8];
          load8<__half>(colmul + c, m);
#pragma unroll
          for (int j = 0; j < 8; ++j) xv[j] *= m[j];
        }
#pragma unroll
        for (int r = 0; r < kPackedRows; ++r) {
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[r][t] = fmaf(xv[j], w[r][j], acc[r][t]);
        }
      }
    }
  }
}

template <typename T, int BITS, int TOKENS, int V>
__global__ void __launch_bounds__(kPackedWarps * 32)
    packed_linear_kernel(const T* __restrict__ x, int tokens, const uint8_t* __restrict__ q,
                         const __half* __restrict__ scales, const __half* __restrict__ zeros,
                         const T* __restrict__ bias, const __half* __restrict__ colmul, T* __restrict__ y,
                         int64_t rows, int64_t cols, int64_t group) {
  __shared__ float partial[kPackedWarps][kPackedRows][TOKENS];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kPackedRows;
  float acc[kPackedRows][TOKENS];
#pragma unroll
  for (int r = 0; r < kPackedRows; ++r) {
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) acc[r][t] = 0.f;
  }
  if constexpr (TOKENS <= 4) {
    packed_rows_few_tokens<T, BITS, TOKENS, V>(x, tokens, q, scales, zeros, colmul, rows, cols, group, row0, warp,
                                               lane, acc);
  } else {
    packed_rows_many_tokens<T, BITS, TOKENS>(x, tokens, q, scales, zeros, colmul, rows, cols, group, row0, warp, lane,
                                             acc);
  }
#pragma unroll
  for (int r = 0; r < kPackedRows; ++r) {
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) {
      float v = acc[r][t];
      for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
      if (lane == 0) partial[warp][r][t] = v;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kPackedRows * TOKENS; i += blockDim.x) {
    const int r = i / TOKENS, t = i % TOKENS;
    const int64_t row = row0 + r;
    if (row >= rows || t >= tokens) continue;
    float v = 0.f;
#pragma unroll
    for (int k = 0; k < kPackedWarps; ++k) v += partial[k][r][t];
    // As at::linear (addmm): the bias joins the float sum, rounded once.
    if (bias != nullptr) v += Elem<T>::load(bias[row]);
    y[static_cast<int64_t>(t) * rows + row] = Elem<T>::store(v);
  }
}

// Any shape: a warp per output row, lane l taking columns l, l + 32, ... one at a time (reads
// stay coalesced, a byte or nibble of codes each). For the layers the sliced kernel does not
// take: columns no multiple of 8 (a factorized layer's rank), inputs off 16 bytes.
template <typename T, int BITS, int TOKENS>
__global__ void __launch_bounds__(256)
    packed_linear_any_kernel(const T* __restrict__ x, int tokens, const uint8_t* __restrict__ q,
                             const __half* __restrict__ scales, const __half* __restrict__ zeros,
                             const T* __restrict__ bias, const __half* __restrict__ colmul, T* __restrict__ y,
                             int64_t rows, int64_t cols, int64_t group) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  const int64_t row_bytes = (cols * BITS + 7) / 8, groups = (cols + group - 1) / group;
  const uint8_t* qr = q + row * row_bytes;
  float acc[TOKENS];
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) acc[t] = 0.f;
  for (int64_t c = lane; c < cols; c += 32) {
    const uint32_t byte = qr[c * BITS / 8];
    const uint32_t code = BITS == 8 ? byte : (byte >> ((c % 2) * 4)) & 15u;
    const int64_t g = row * groups + c / group;
    float w = (static_cast<float>(code) - __half2float(zeros[g])) * __half2float(scales[g]);
    if (colmul != nullptr) w *= __half2float(colmul[c]);
#pragma unroll
    for (int t = 0; t < TOKENS; ++t) {
      if (t < tokens) acc[t] = fmaf(Elem<T>::load(x[static_cast<int64_t>(t) * cols + c]), w, acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < TOKENS; ++t) {
    float v = acc[t];
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0 && t < tokens) {
      if (bias != nullptr) v += Elem<T>::load(bias[row]);
      y[static_cast<int64_t>(t) * rows + row] = Elem<T>::store(v);
    }
  }
}

// Which kernel serves a shape: the column-at-a-time one, or the sliced one with 8 columns a lane
// (V = 1) or, where columns and groups are multiples of 32 and the codes 16-byte aligned, 32 (V = 4).
enum class PackedPath { kAny, kSliced8, kSliced32 };

template <typename T, int BITS, int TOKENS>
void launch_packed_tokens(PackedPath path, const T* x, int tokens, const uint8_t* q, const __half* scales,
                          const __half* zeros, const T* bias, const __half* colmul, T* y, int64_t rows, int64_t cols,
                          int64_t group, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>((rows + kPackedRows - 1) / kPackedRows);
  if constexpr (TOKENS <= 4) {  // many tokens take 8 columns a lane either way
    if (path == PackedPath::kSliced32) {
      packed_linear_kernel<T, BITS, TOKENS, 4>
          <<<blocks, kPackedWarps * 32, 0, stream>>>(x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group);
      return;
    }
  }
  if (path != PackedPath::kAny) {
    packed_linear_kernel<T, BITS, TOKENS, 1>
        <<<blocks, kPackedWarps * 32, 0, stream>>>(x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group);
  } else {
    packed_linear_any_kernel<T, BITS, TOKENS>
        <<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(x, tokens, q, scales, zeros, bias, colmul, y,
                                                                     rows, cols, group);
  }
}

template <typename T, int BITS>
void launch_packed_bits(PackedPath sliced, const T* x, int tokens, const uint8_t* q, const __half* scales,
                        const __half* zeros, const T* bias, const __half* colmul, T* y, int64_t rows, int64_t cols,
                        int64_t group, cudaStream_t stream) {
  // Templated on a token bound so that each count keeps only the accumulators it needs.
  if (tokens <= 1) {
    launch_packed_tokens<T, BITS, 1>(sliced, x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group, stream);
  } else if (tokens <= 2) {
    launch_packed_tokens<T, BITS, 2>(sliced, x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group, stream);
  } else if (tokens <= 4) {
    launch_packed_tokens<T, BITS, 4>(sliced, x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group, stream);
  } else if (tokens <= 8) {
    launch_packed_tokens<T, BITS, 8>(sliced, x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group, stream);
  } else {
    launch_packed_tokens<T, BITS, 16>(sliced, x, tokens, q, scales, zeros, bias, colmul, y, rows, cols, group, stream);
  }
}

template <typename T>
int launch_packed_linear(const void* x, int64_t tokens, const uint8_t* q, const void* scales, const void* zeros,
                         const void* bias, const void* input_scales, void* y, int bits, int64_t rows, int64_t cols,
                         int64_t group, void* stream) {
  static_assert(kPackedMaxTokens <= 16, "the packed kernels are instantiated for at most 16 tokens");
  if (tokens < 1 || tokens > kPackedMaxTokens || (bits != 4 && bits != 8) || group < 1 || cols < 1) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  // The sliced kernel reads 8 columns at a time: x and the multipliers in 16-byte packs, codes in 4 or 8 bytes
  // (or 32 columns, codes in 16 or 32 bytes).
  PackedPath sliced = PackedPath::kAny;
  if (cols % 8 == 0 && group % 8 == 0 && aligned16<T>(x, cols) && aligned16<__half>(input_scales, 0) &&
      reinterpret_cast<uintptr_t>(q) % 8 == 0) {
    sliced = cols % 32 == 0 && group % 32 == 0 && reinterpret_cast<uintptr_t>(q) % 16 == 0 ? PackedPath::kSliced32
                                                                                          : PackedPath::kSliced8;
  }
  const auto* px = static_cast<const T*>(x);
  const auto* ps = static_cast<const __half*>(scales);
  const auto* pz = static_cast<const __half*>(zeros);
  const auto* pb = static_cast<const T*>(bias);
  const auto* pm = static_cast<const __half*>(input_scales);
  auto* py = static_cast<T*>(y);
  const int n = static_cast<int>(tokens);
  if (bits == 4) {
    launch_packed_bits<T, 4>(sliced, px, n, q, ps, pz, pb, pm, py, rows, cols, group, as_stream(stream));
  } else {
    launch_packed_bits<T, 8>(sliced, px, n, q, ps, pz, pb, pm, py, rows, cols, group, as_stream(stream));
  }
  return static_cast<int>(cudaGetLastError());
}

// A packed weight rebuilt in the element type (the weight a prefill's matrix product takes):
// each thread one weight, w = (code - zero) * scale [* multiplier] in float, then rounded, the
// operations and their order dequantize_tensor's. Block (column tile, row slot): rows go
// blockIdx.y, blockIdx.y + gridDim.y, ...
template <typename T>
__global__ void dequantize_packed_kernel(const uint8_t* __restrict__ q, const __half* __restrict__ scales,
                                         const __half* __restrict__ zeros, const __half* __restrict__ colmul,
                                         T* __restrict__ w, int bits, int64_t rows, int64_t cols, int64_t group) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const int64_t row_bytes = (cols * bits + 7) / 8, groups = (cols + group - 1) / group, gi = c / group;
  const int shift = bits == 4 ? static_cast<int>(c % 2) * 4 : 0;
  const int64_t byte = bits == 4 ? c / 2 : c;
  const float m = colmul != nullptr ? __half2float(colmul[c]) : 1.f;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const int code = (q[r * row_bytes + byte] >> shift) & (bits == 4 ? 0xF : 0xFF);
    float v = (static_cast<float>(code) - __half2float(zeros[r * groups + gi])) * __half2float(scales[r * groups + gi]);
    if (colmul != nullptr) v = v * m;
    w[r * cols + c] = Elem<T>::store(v);
  }
}

template <typename T>
int launch_dequantize_packed(const uint8_t* q, const void* scales, const void* zeros, const void* input_scales, void* w,
                             int bits, int64_t rows, int64_t cols, int64_t group, void* stream) {
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>((cols + kThreads - 1) / kThreads),
                  static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  dequantize_packed_kernel<T><<<grid, kThreads, 0, as_stream(stream)>>>(
      q, static_cast<const __half*>(scales), static_cast<const __half*>(zeros),
      static_cast<const __half*>(input_scales), static_cast<T*>(w), bits, rows, cols, group);
  return static_cast<int>(cudaGetLastError());
}

constexpr int kBadDtype = static_cast<int>(cudaErrorInvalidValue);

}  // namespace

int dequantize_packed(const uint8_t* q, const void* scales, const void* zeros, const void* input_scales, void* w,
                      int dtype, int bits, int64_t rows, int64_t cols, int64_t group, void* stream) {
  if ((bits != 4 && bits != 8) || rows < 1 || cols < 1 || group < 1) return kBadDtype;
  switch (dtype) {
    case 0: return launch_dequantize_packed<float>(q, scales, zeros, input_scales, w, bits, rows, cols, group, stream);
    case 1: return launch_dequantize_packed<__half>(q, scales, zeros, input_scales, w, bits, rows, cols, group, stream);
    case 2:
      return launch_dequantize_packed<__nv_bfloat16>(q, scales, zeros, input_scales, w, bits, rows, cols, group, stream);
  }
  return kBadDtype;
}

int token_nll(const void* logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, const int64_t* labels,
              float* out, void* stream) {
  switch (dtype) {
    case 0: return launch_token_nll<float>(logits, rows, cols, row_stride, labels, out, stream);
    case 1: return launch_token_nll<__half>(logits, rows, cols, row_stride, labels, out, stream);
    case 2: return launch_token_nll<__nv_bfloat16>(logits, rows, cols, row_stride, labels, out, stream);
  }
  return kBadDtype;
}

int rms_norm(const void* x, const void* w, void* out, int dtype, int64_t rows, int64_t cols, float eps, void* stream) {
  switch (dtype) {
    case 0: return launch_rms_norm<float>(x, w, out, rows, cols, eps, stream);
    case 1: return launch_rms_norm<__half>(x, w, out, rows, cols, eps, stream);
    case 2: return launch_rms_norm<__nv_bfloat16>(x, w, out, rows, cols, eps, stream);
  }
  return kBadDtype;
}

int rotary(const void* x, const float* cos, const float* sin, void* out, int dtype, int64_t tokens, int64_t seq_len,
           int64_t heads, int64_t dim, void* stream, const int64_t* positions, int64_t tables, int64_t table_rows,
           int64_t x_token_stride) {
  const RotaryTables tab{cos, sin, seq_len, positions, tables < 1 ? 1 : tables, table_rows};
  const int64_t xs = x_token_stride > 0 ? x_token_stride : heads * dim;
  switch (dtype) {
    case 0: return launch_rotary<float>(x, tab, out, tokens, heads, dim, xs, stream);
    case 1: return launch_rotary<__half>(x, tab, out, tokens, heads, dim, xs, stream);
    case 2: return launch_rotary<__nv_bfloat16>(x, tab, out, tokens, heads, dim, xs, stream);
  }
  return kBadDtype;
}

int rotary_step(const void* q, const void* k, const void* v, const float* cos, const float* sin,
                const int64_t* positions, int64_t tables, int64_t table_rows, int dtype, int64_t batch, int64_t tokens,
                int64_t heads, int64_t kv_heads, int64_t dk, int64_t dv, int64_t q_stride, int64_t k_stride,
                int64_t v_stride, void* q_out, void* keys, void* values, int64_t cap, int64_t start, void* stream) {
  const RotaryTables tab{cos, sin, 1, positions, tables < 1 ? 1 : tables, table_rows};
  const StepLayout L{batch, tokens, heads, kv_heads, dk, dv, q_stride, k_stride, v_stride, cap, start};
  switch (dtype) {
    case 0: return launch_rotary_step<float>(q, k, v, tab, L, q_out, keys, values, stream);
    case 1: return launch_rotary_step<__half>(q, k, v, tab, L, q_out, keys, values, stream);
    case 2: return launch_rotary_step<__nv_bfloat16>(q, k, v, tab, L, q_out, keys, values, stream);
  }
  return kBadDtype;
}

int layer_norm(const void* x, const void* y, const void* w, const void* b, void* sum_out, void* out, int dtype,
               int64_t rows, int64_t cols, float eps, void* stream) {
  switch (dtype) {
    case 0: return launch_layer_norm<float>(x, y, w, b, sum_out, out, rows, cols, eps, stream);
    case 1: return launch_layer_norm<__half>(x, y, w, b, sum_out, out, rows, cols, eps, stream);
    case 2: return launch_layer_norm<__nv_bfloat16>(x, y, w, b, sum_out, out, rows, cols, eps, stream);
  }
  return kBadDtype;
}

int lowrank_forward(const void* x, int64_t tokens, const void* r, const void* u, const void* c, const void* bias,
                    void* y, float* scratch, int dtype, int64_t in, int64_t k, int64_t out, void* stream) {
  switch (dtype) {
    case 0: return launch_lowrank<float>(x, tokens, r, u, c, bias, y, scratch, in, k, out, stream);
    case 1: return launch_lowrank<__half>(x, tokens, r, u, c, bias, y, scratch, in, k, out, stream);
    case 2: return launch_lowrank<__nv_bfloat16>(x, tokens, r, u, c, bias, y, scratch, in, k, out, stream);
  }
  return kBadDtype;
}

int silu_mul(const void* gate, const void* up, void* out, int dtype, int64_t rows, int64_t cols, int64_t gate_stride,
             int64_t up_stride, void* stream) {
  switch (dtype) {
    case 0: return launch_silu_mul<float>(gate, up, out, rows, cols, gate_stride, up_stride, stream);
    case 1: return launch_silu_mul<__half>(gate, up, out, rows, cols, gate_stride, up_stride, stream);
    case 2: return launch_silu_mul<__nv_bfloat16>(gate, up, out, rows, cols, gate_stride, up_stride, stream);
  }
  return kBadDtype;
}

int packed_linear(const void* x, int64_t tokens, const uint8_t* q, const void* scales, const void* zeros,
                  const void* bias, const void* input_scales, void* y, int dtype, int bits, int64_t rows,
                  int64_t cols, int64_t group, void* stream) {
  switch (dtype) {
    case 0:
      return launch_packed_linear<float>(x, tokens, q, scales, zeros, bias, input_scales, y, bits, rows, cols, group,
                                         stream);
    case 1:
      return launch_packed_linear<__half>(x, tokens, q, scales, zeros, bias, input_scales, y, bits, rows, cols, group,
                                          stream);
    case 2:
      return launch_packed_linear<__nv_bfloat16>(x, tokens, q, scales, zeros, bias, input_scales, y, bits, rows, cols,
                                                 group, stream);
  }
  return kBadDtype;
}

}  // namespace cur4llm::fused::kernels
