// Attention of a decoding step: a few new queries per KV head against the cached keys and
// values, split over the key axis so that every multiprocessor reads part of the cache
// (one query row per KV head leaves most of the GPU idle in a kernel that tiles queries).
//
// Pass 1: block (b, kv, chunk) takes kDecodeChunk keys; each warp a quarter of them, kRound at
// a time (their loads issued together), then one key after the other: the lanes split the head
// dimension, a shuffle sum gives each query row's score, and
// the warp keeps a running max, sum of exponentials and weighted sum of values per row (the
// online softmax). The block's warps merge in shared memory and write (max, sum, values) of
// the chunk. Pass 2: one block per (b, kv, row) merges the chunks and writes the output.
#include "fused_kernels.h"
#include "kernel_types.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace cur4llm::fused::kernels {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeChunk = 32;  // keys per block of pass 1: 8 per warp
constexpr int kRound = 4;         // keys a warp loads together (their loads in flight at once)

__device__ inline float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// q [B, KV, R, d], keys [B, KV, cap, d], values [B, KV, cap, dv] (last dims contiguous),
// mask [B, R, S] additive (element type); partial [B, KV, chunks, R, dv + 2] float.
template <typename T, int ROWS, int PER>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    decode_attention_chunk(const T* __restrict__ q, const T* __restrict__ keys, const T* __restrict__ values,
                           const T* __restrict__ mask, float* __restrict__ partial, int kv_heads, int rows,
                           int64_t cap, int64_t length, int d, int dv, float scale, int64_t mask_row_stride,
                           int64_t mask_batch_stride) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int chunks = static_cast<int>((length + kDecodeChunk - 1) / kDecodeChunk);
  const int chunk = blockIdx.x % chunks;
  const int bh = blockIdx.x / chunks;  // b * kv_heads + kv
  const int b = bh / kv_heads;
  const int vper = (dv + 31) / 32;

  float qv[ROWS][PER];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = lane + 32 * i;
      const int64_t at = (static_cast<int64_t>(bh) * rows + (r < rows ? r : rows - 1)) * d + (e < d ? e : d - 1);
      qv[r][i] = e < d ? Elem<T>::load(q[at]) * scale : 0.f;
    }
  }
  float m[ROWS], l[ROWS], o[ROWS][PER];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i) o[r][i] = 0.f;
  }
  const T* kb = keys + static_cast<int64_t>(bh) * cap * d;
  const T* vb = values + static_cast<int64_t>(bh) * cap * dv;
  const T* mb = mask + b * mask_batch_stride;
  constexpr int kPerWarp = kDecodeChunk / kDecodeWarps;
  const int64_t first = static_cast<int64_t>(chunk) * kDecodeChunk + warp * kPerWarp;
  for (int round = 0; round < kPerWarp; round += kRound) {
    float kv[kRound][PER], vv[kRound][PER];
    // Loads with clamped indices, none of them conditional, so that all are in flight at once:
    // slots past `length` are skipped below, elements past d meet zeros of q, and those past dv
    // are never written out.
#pragma unroll
    for (int k = 0; k < kRound; ++k) {
      const int64_t s = first + round + k < length ? first + round + k : length - 1;
#pragma unroll
      for (int i = 0; i < PER; ++i) {
        const int e = lane + 32 * i;
        kv[k][i] = Elem<T>::load(kb[s * d + (e < d ? e : d - 1)]);
        vv[k][i] = Elem<T>::load(vb[s * dv + (e < dv ? e : dv - 1)]);
      }
    }
#pragma unroll
    for (int k = 0; k < kRound; ++k) {
      const int64_t s = first + round + k;
      if (s >= length) break;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (r >= rows) break;
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < PER; ++i) dot = fmaf(qv[r][i], kv[k][i], dot);
        const float score = warp_sum(dot) + Elem<T>::load(mb[r * mask_row_stride + s]);
        if (score == -INFINITY) continue;  // a masked slot (the same in every lane)
        const float m_new = fmaxf(m[r], score);
        const float keep = __expf(m[r] - m_new), p = __expf(score - m_new);
        l[r] = l[r] * keep + p;
#pragma unroll
        for (int i = 0; i < PER; ++i) o[r][i] = fmaf(o[r][i], keep, p * vv[k][i]);
        m[r] = m_new;
      }
    }
  }
  // The block's warps merge: each writes its state, warp 0 combines and writes the chunk's.
  extern __shared__ float smem[];  // [kDecodeWarps][ROWS][dv + 2]
  const int width = dv + 2;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (r >= rows) break;
    float* w = smem + (warp * ROWS + r) * width;
    if (lane == 0) w[0] = m[r], w[1] = l[r];
#pragma unroll
    for (int i = 0; i < PER; ++i) {
      const int e = lane + 32 * i;
      if (i < vper && e < dv) w[2 + e] = o[r][i];
    }
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < rows * dv; idx += blockDim.x) {
    const int r = idx / dv, e = idx % dv;
    float mm = -INFINITY;
    for (int k = 0; k < kDecodeWarps; ++k) mm = fmaxf(mm, smem[(k * ROWS + r) * width]);
    float ll = 0.f, oo = 0.f;
    if (mm != -INFINITY) {
      for (int k = 0; k < kDecodeWarps; ++k) {
        const float* w = smem + (k * ROWS + r) * width;
        const float f = __expf(w[0] - mm);
        ll += w[1] * f;
        oo += w[2 + e] * f;
      }
    }
    float* out = partial + ((static_cast<int64_t>(bh) * chunks + chunk) * rows + r) * width;
    if (e == 0) out[0] = mm, out[1] = ll;
    out[2 + e] = oo;
  }
}

// One block per (b, kv, row): out[e] = sum_c o_c[e] exp(m_c - M) / sum_c l_c exp(m_c - M).
// The chunks' maxima go through shared memory once; the loops carry no branch, so that their
// loads overlap.
template <typename T>
__global__ void decode_attention_merge(const float* __restrict__ partial, T* __restrict__ out, int chunks, int rows,
                                       int dv) {
  extern __shared__ float weight[];  // [chunks]: exp(m_c - M), then the denominator at [chunks]
  const int bhr = blockIdx.x;  // (b * kv + kv) * rows + r
  const int bh = bhr / rows, r = bhr % rows;
  const int width = dv + 2;
  const float* base = partial + (static_cast<int64_t>(bh) * chunks * rows + r) * width;
  const int64_t step = static_cast<int64_t>(rows) * width;  // from one chunk to the next
  __shared__ float reduce[32];
  float mm = -INFINITY;
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) mm = fmaxf(mm, base[c * step]);
#pragma unroll
  for (int o = 16; o > 0; o /= 2) mm = fmaxf(mm, __shfl_xor_sync(0xffffffffu, mm, o));
  if (threadIdx.x % 32 == 0) reduce[threadIdx.x / 32] = mm;
  __syncthreads();
  mm = -INFINITY;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) mm = fmaxf(mm, reduce[w]);
  for (int c = threadIdx.x; c < chunks; c += blockDim.x) {
    const float m = base[c * step];
    weight[c] = m == -INFINITY ? 0.f : __expf(m - mm);  // a chunk that saw no slot counts nothing
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    float l = 0.f;
    for (int c = threadIdx.x; c < chunks; c += 32) l += base[c * step + 1] * weight[c];
#pragma unroll
    for (int o = 16; o > 0; o /= 2) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (threadIdx.x == 0) weight[chunks] = l;
  }
  __syncthreads();
  const float inv = 1.f / weight[chunks];
  for (int e = threadIdx.x; e < dv; e += blockDim.x) {
    float acc = 0.f;
#pragma unroll 8
    for (int c = 0; c < chunks; ++c) acc = fmaf(base[c * step + 2 + e], weight[c], acc);
    out[static_cast<int64_t>(bhr) * dv + e] = Elem<T>::store(acc * inv);
  }
}

template <typename T, int ROWS, int PER>
int launch_rows(const void* q, const void* keys, const void* values, const void* mask, float* partial, void* out,
                int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length, int64_t d, int64_t dv,
                float scale, int64_t mask_row_stride, int64_t mask_batch_stride, cudaStream_t stream) {
  const int64_t chunks = (length + kDecodeChunk - 1) / kDecodeChunk;
  const size_t smem = sizeof(float) * kDecodeWarps * ROWS * (dv + 2);
  decode_attention_chunk<T, ROWS, PER>
      <<<static_cast<unsigned>(batch * kv_heads * chunks), kDecodeWarps * 32, smem, stream>>>(
          static_cast<const T*>(q), static_cast<const T*>(keys), static_cast<const T*>(values),
          static_cast<const T*>(mask), partial, static_cast<int>(kv_heads), static_cast<int>(rows), cap, length,
          static_cast<int>(d), static_cast<int>(dv), scale, mask_row_stride, mask_batch_stride);
  const int threads = static_cast<int>(dv < 128 ? 32 * ((dv + 31) / 32) : 128);
  decode_attention_merge<T><<<static_cast<unsigned>(batch * kv_heads * rows), threads,
                              sizeof(float) * static_cast<size_t>(chunks + 1), stream>>>(
      partial, static_cast<T*>(out), static_cast<int>(chunks), static_cast<int>(rows), static_cast<int>(dv));
  return static_cast<int>(cudaGetLastError());
}

template <typename T, int PER>
int launch_per(const void* q, const void* keys, const void* values, const void* mask, float* partial, void* out,
               int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length, int64_t d, int64_t dv,
               float scale, int64_t mask_row_stride, int64_t mask_batch_stride, cudaStream_t stream) {
  if (rows <= 1) {
    return launch_rows<T, 1, PER>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap, length, d, dv,
                                  scale, mask_row_stride, mask_batch_stride, stream);
  }
  if (rows <= 4) {
    return launch_rows<T, 4, PER>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap, length, d, dv,
                                  scale, mask_row_stride, mask_batch_stride, stream);
  }
  return launch_rows<T, kDecodeMaxRows, PER>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap, length,
                                             d, dv, scale, mask_row_stride, mask_batch_stride, stream);
}

template <typename T>
int launch_decode_attention(const void* q, const void* keys, const void* values, const void* mask, float* partial,
                            void* out, int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length,
                            int64_t d, int64_t dv, float scale, int64_t mask_row_stride, int64_t mask_batch_stride,
                            cudaStream_t stream) {
  // Each lane holds PER elements of a head's dimension: 4 up to 128, 8 up to 256.
  if (d <= 128 && dv <= 128) {
    return launch_per<T, 4>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap, length, d, dv, scale,
                            mask_row_stride, mask_batch_stride, stream);
  }
  return launch_per<T, 8>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap, length, d, dv, scale,
                          mask_row_stride, mask_batch_stride, stream);
}

}  // namespace

int64_t decode_attention_workspace(int64_t batch, int64_t kv_heads, int64_t rows, int64_t length, int64_t dv) {
  const int64_t chunks = (length + kDecodeChunk - 1) / kDecodeChunk;
  return batch * kv_heads * chunks * rows * (dv + 2);
}

int decode_attention(const void* q, const void* keys, const void* values, const void* mask, float* workspace,
                     void* out, int dtype, int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length,
                     int64_t d, int64_t dv, float scale, int64_t mask_row_stride, int64_t mask_batch_stride,
                     void* stream) {
  if (rows < 1 || rows > kDecodeMaxRows || d < 1 || d > kDecodeMaxHeadDim || dv < 1 || dv > kDecodeMaxHeadDim ||
      length < 1 || length > cap) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0:
      return launch_decode_attention<float>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap, length,
                                            d, dv, scale, mask_row_stride, mask_batch_stride, s);
    case 1:
      return launch_decode_attention<__half>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap, length,
                                             d, dv, scale, mask_row_stride, mask_batch_stride, s);
    case 2:
      return launch_decode_attention<__nv_bfloat16>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap,
                                                    length, d, dv, scale, mask_row_stride, mask_batch_stride, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cur4llm::fused::kernels
