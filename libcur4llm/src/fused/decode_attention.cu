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
// decode_attention_vec is pass 1 with 16-byte loads (more keys in flight a lane, longer chunks
// sized to the GPU), where the head dims allow it and the caller asks for it.
#include "fused_kernels.h"
#include "kernel_types.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

namespace cur4llm::fused::kernels {
namespace {

constexpr int kDecodeWarps = 4;
constexpr int kDecodeChunk = 32;  // keys per block of pass 1: 8 per warp
constexpr int kRound = 4;         // keys a warp loads together (their loads in flight at once)

// The sum over each aligned group of G lanes (G a power of two up to 32), in every lane of it.
template <int G>
__device__ inline float group_sum(float v) {
#pragma unroll
  for (int o = G / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// The block's warps' states (smem [kDecodeWarps][ROWS][dv + 2]: max, sum, values) merged into the
// chunk's entry of partial.
template <int ROWS>
__device__ inline void merge_warps(const float* smem, float* partial, int bh, int chunks, int chunk, int rows,
                                   int dv) {
  const int width = dv + 2;
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
        const float score = group_sum<32>(dot) + Elem<T>::load(mb[r * mask_row_stride + s]);
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
  merge_warps<ROWS>(smem, partial, bh, chunks, chunk, rows, dv);
}

// The same pass 1 with 16-byte loads: a key's row is read by G lanes (G a power of two, E
// elements each, E = 16 / sizeof(T)), so a warp reads 32 / G keys at once; a lane keeps NK keys'
// loads in flight (keys kg, kg + 32/G, ... of the warp's round, kg = lane / G). The G lanes of a
// key sum its score by shuffles; the round's scores of a lane group then update one online
// softmax state per group (one rescaling a round), and the groups of a warp merge at the end.
// Block (b, kv, chunk) takes `per_block` keys, a multiple of the warps' rounds.
template <typename T, int ROWS, int G, int NK>
__global__ void __launch_bounds__(kDecodeWarps * 32)
    decode_attention_vec(const T* __restrict__ q, const T* __restrict__ keys, const T* __restrict__ values,
                         const T* __restrict__ mask, float* __restrict__ partial, int kv_heads, int rows, int64_t cap,
                         int64_t length, int d, int dv, float scale, int64_t mask_row_stride,
                         int64_t mask_batch_stride, int per_block) {
  constexpr int E = 16 / sizeof(T), KPW = 32 / G;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int kg = lane / G, sub = lane % G;
  const int chunks = static_cast<int>((length + per_block - 1) / per_block);
  const int chunk = blockIdx.x % chunks;
  const int bh = blockIdx.x / chunks;
  const int b = bh / kv_heads;
  const bool has_k = sub * E < d, has_v = sub * E < dv;

  float qv[ROWS][E];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int64_t row = (static_cast<int64_t>(bh) * rows + (r < rows ? r : rows - 1)) * d;
#pragma unroll
    for (int i = 0; i < E; ++i) qv[r][i] = has_k ? Elem<T>::load(q[row + sub * E + i]) * scale : 0.f;
  }
  float m[ROWS], l[ROWS], o[ROWS][E];
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    m[r] = -INFINITY, l[r] = 0.f;
#pragma unroll
    for (int i = 0; i < E; ++i) o[r][i] = 0.f;
  }
  const T* kb = keys + static_cast<int64_t>(bh) * cap * d + (has_k ? sub * E : 0);
  const T* vb = values + static_cast<int64_t>(bh) * cap * dv + (has_v ? sub * E : 0);
  const T* mb = mask + b * mask_batch_stride;
  constexpr int kRoundKeys = KPW * NK;  // a warp's keys a round
  const int per_warp = per_block / kDecodeWarps;
  const int64_t first = static_cast<int64_t>(chunk) * per_block + warp * per_warp;
  const int64_t end = min(first + per_warp, length);
  for (int64_t round = first; round < end; round += kRoundKeys) {
    uint4 kv[NK], vv[NK];
    float bias[NK][ROWS];
    // Every load of the round first (indices clamped, none conditional), then the arithmetic.
#pragma unroll
    for (int j = 0; j < NK; ++j) {
      const int64_t s_raw = round + kg + KPW * j;
      const int64_t s = s_raw < end ? s_raw : end - 1;
      kv[j] = __ldg(reinterpret_cast<const uint4*>(kb + s * d));
      vv[j] = __ldg(reinterpret_cast<const uint4*>(vb + s * dv));
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        bias[j][r] = s_raw < end && r < rows ? Elem<T>::load(mb[r * mask_row_stride + s]) : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r >= rows) break;
      float score[NK];
      float top = m[r];
#pragma unroll
      for (int j = 0; j < NK; ++j) {
        const auto ks = bits_as<Pack<T>>(kv[j]);
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < E; ++i) dot = fmaf(qv[r][i], Elem<T>::load(ks.v[i]), dot);
        score[j] = group_sum<G>(dot) + bias[j][r];
        top = fmaxf(top, score[j]);
      }
      if (top == -INFINITY) continue;  // every slot of the round masked, nothing seen before
      const float keep = __expf(m[r] - top);
      l[r] *= keep;
#pragma unroll
      for (int i = 0; i < E; ++i) o[r][i] *= keep;
#pragma unroll
      for (int j = 0; j < NK; ++j) {
        const float pj = __expf(score[j] - top);  // 0 for a masked slot
        const auto vs = bits_as<Pack<T>>(vv[j]);
        l[r] += pj;
        // A masked slot adds nothing, whatever its cache holds (0 times inf would be NaN).
#pragma unroll
        for (int i = 0; i < E; ++i) o[r][i] = pj > 0.f ? fmaf(pj, Elem<T>::load(vs.v[i]), o[r][i]) : o[r][i];
      }
      m[r] = top;
    }
  }
  // The warp's key groups merge (every lane ends with the warp's state), then the warps merge
  // in shared memory as in decode_attention_chunk.
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int off = G; off < 32; off *= 2) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[r], off), l2 = __shfl_xor_sync(0xffffffffu, l[r], off);
      const float top = fmaxf(m[r], m2);
      const float f = top == -INFINITY ? 0.f : __expf(m[r] - top), f2 = top == -INFINITY ? 0.f : __expf(m2 - top);
      l[r] = l[r] * f + l2 * f2;
#pragma unroll
      for (int i = 0; i < E; ++i) o[r][i] = o[r][i] * f + __shfl_xor_sync(0xffffffffu, o[r][i], off) * f2;
      m[r] = top;
    }
  }
  extern __shared__ float smem[];  // [kDecodeWarps][ROWS][dv + 2]
  const int width = dv + 2;
  if (kg == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r >= rows) break;
      float* w = smem + (warp * ROWS + r) * width;
      if (sub == 0) w[0] = m[r], w[1] = l[r];
      if (has_v) {
#pragma unroll
        for (int i = 0; i < E; ++i) w[2 + sub * E + i] = o[r][i];
      }
    }
  }
  __syncthreads();
  merge_warps<ROWS>(smem, partial, bh, chunks, chunk, rows, dv);
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
    l = group_sum<32>(l);
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

// Pass 2 over the chunks pass 1 wrote; the launches' error, if any.
template <typename T>
int launch_merge(const float* partial, void* out, int64_t heads, int64_t rows, int64_t chunks, int64_t dv,
                 cudaStream_t stream) {
  const int threads = static_cast<int>(dv < 128 ? 32 * ((dv + 31) / 32) : 128);
  decode_attention_merge<T><<<static_cast<unsigned>(heads * rows), threads,
                              sizeof(float) * static_cast<size_t>(chunks + 1), stream>>>(
      partial, static_cast<T*>(out), static_cast<int>(chunks), static_cast<int>(rows), static_cast<int>(dv));
  return static_cast<int>(cudaGetLastError());
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
  return launch_merge<T>(partial, out, batch * kv_heads, rows, chunks, dv, stream);
}

// f(std::integral_constant<int, R>()) for the fewest rows R of 1, 4 and kDecodeMaxRows that hold `rows`.
template <typename F>
int by_rows(int64_t rows, F&& f) {
  if (rows <= 1) return f(std::integral_constant<int, 1>());
  if (rows <= 4) return f(std::integral_constant<int, 4>());
  return f(std::integral_constant<int, static_cast<int>(kDecodeMaxRows)>());
}

template <typename T, int PER>
int launch_per(const void* q, const void* keys, const void* values, const void* mask, float* partial, void* out,
               int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length, int64_t d, int64_t dv,
               float scale, int64_t mask_row_stride, int64_t mask_batch_stride, cudaStream_t stream) {
  return by_rows(rows, [&](auto r) {
    return launch_rows<T, decltype(r)::value, PER>(q, keys, values, mask, partial, out, batch, kv_heads, rows, cap,
                                                    length, d, dv, scale, mask_row_stride, mask_batch_stride, stream);
  });
}

// The 16-byte kernel: a block's keys are whole rounds of its warps, about four blocks per
// multiprocessor when the cache is long enough, never fewer than kDecodeChunk keys (so that
// decode_attention_workspace covers the chunks).
template <typename T, int ROWS, int G>
int launch_vec(const void* q, const void* keys, const void* values, const void* mask, float* partial, void* out,
               int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length, int64_t d, int64_t dv,
               float scale, int64_t mask_row_stride, int64_t mask_batch_stride, cudaStream_t stream) {
  constexpr int NK = ROWS == 1 ? 8 : ROWS <= 4 ? 4 : 2;  // registers: NK x (2 loads + ROWS mask values)
  constexpr int64_t kBlockRound = kDecodeWarps * (32 / G) * NK;
  const int64_t heads = batch * kv_heads;
  const int64_t sms = std::max(1, device_attribute<cudaDevAttrMultiProcessorCount>());
  const int64_t want = std::max<int64_t>(1, 4 * sms / std::max<int64_t>(1, heads));
  int64_t rounds = (length + want * kBlockRound - 1) / (want * kBlockRound);
  rounds = std::max<int64_t>(rounds, (kDecodeChunk + kBlockRound - 1) / kBlockRound);
  const int64_t per_block = rounds * kBlockRound;
  const int64_t chunks = (length + per_block - 1) / per_block;
  const size_t smem = sizeof(float) * kDecodeWarps * ROWS * (dv + 2);
  decode_attention_vec<T, ROWS, G, NK><<<static_cast<unsigned>(heads * chunks), kDecodeWarps * 32, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(keys), static_cast<const T*>(values),
      static_cast<const T*>(mask), partial, static_cast<int>(kv_heads), static_cast<int>(rows), cap, length,
      static_cast<int>(d), static_cast<int>(dv), scale, mask_row_stride, mask_batch_stride,
      static_cast<int>(per_block));
  return launch_merge<T>(partial, out, heads, rows, chunks, dv, stream);
}

template <typename T>
int launch_decode_attention(const void* q, const void* keys, const void* values, const void* mask, float* partial,
                            void* out, int64_t batch, int64_t kv_heads, int64_t rows, int64_t cap, int64_t length,
                            int64_t d, int64_t dv, float scale, int64_t mask_row_stride, int64_t mask_batch_stride,
                            bool vector_loads, cudaStream_t stream) {
  // 16-byte loads where the head dims are whole 16-byte pieces and the cache is aligned.
  constexpr int64_t E = 16 / sizeof(T);
  const int64_t lanes = std::max(d, dv) / E;
  const bool aligned = reinterpret_cast<uintptr_t>(keys) % 16 == 0 && reinterpret_cast<uintptr_t>(values) % 16 == 0;
  if (vector_loads && aligned && d % E == 0 && dv % E == 0 && lanes <= 32) {
    auto run = [&](auto g) {
      return by_rows(rows, [&](auto r) {
        return launch_vec<T, decltype(r)::value, decltype(g)::value>(q, keys, values, mask, partial, out, batch,
                                                                    kv_heads, rows, cap, length, d, dv, scale,
                                                                    mask_row_stride, mask_batch_stride, stream);
      });
    };
    if (lanes <= 8) return run(std::integral_constant<int, 8>());
    if (lanes <= 16) return run(std::integral_constant<int, 16>());
    return run(std::integral_constant<int, 32>());
  }
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
                     bool vector_loads, void* stream) {
  if (rows < 1 || rows > kDecodeMaxRows || d < 1 || d > kDecodeMaxHeadDim || dv < 1 || dv > kDecodeMaxHeadDim ||
      length < 1 || length > cap) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0:
      return launch_decode_attention<float>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap, length,
                                            d, dv, scale, mask_row_stride, mask_batch_stride, vector_loads, s);
    case 1:
      return launch_decode_attention<__half>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap, length,
                                             d, dv, scale, mask_row_stride, mask_batch_stride, vector_loads, s);
    case 2:
      return launch_decode_attention<__nv_bfloat16>(q, keys, values, mask, workspace, out, batch, kv_heads, rows, cap,
                                                    length, d, dv, scale, mask_row_stride, mask_batch_stride,
                                                    vector_loads, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

}  // namespace cur4llm::fused::kernels
