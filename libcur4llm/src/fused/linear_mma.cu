// Products of a few tokens (a decoding step) on the tensor cores: packed int4 weights, and
// 16-bit dense ones.
//
// The scalar packed kernels of fused_kernels.cu spend three instructions on every weight
// (rebuild the code as a float, then multiply-add). Here a warp rebuilds codes two at a time as
// 16-bit floats (three instructions for two weights) and lets mma.sync m16n8k16 do the products:
// the weights are the mma's A (16 rows x 16 columns), the tokens its B (up to 8 of them as the
// 8 columns of N), sums in float. Dense 16-bit weights go
// to the mma as they are; what the kernel adds over cuBLAS for them is the launch's epilogue
// (the residual's addition, the SiLU gate) and no split of the columns across launches.
//
// Layout of the work. A block takes two tiles of 16 rows (rows 32b..32b+31, or, for a SiLU
// pair, gate rows 16b.. and the up rows half a matrix further) and its warps (8 for dense
// weights, 16 for int4) split the columns in chunks of 128 (for int4, inside one quantization
// group: group % 128 == 0): lane (g, c) of a warp (g = lane / 4, c = lane % 4) reads the 32 columns c*32..c*32+31 of a chunk for each of
// its rows (g and g + 8 of each tile) and the same columns of token g's input.
//
// The mma's k index need not follow the columns: any order that A and B share gives the same
// sum. Lane (g, c) supplies the k slots 2c, 2c+1, 2c+8, 2c+9 of every mma, and for 8 columns
// 8j..8j+7 of its strip two mmas take
//   h = 0: slots (2c, 2c+1) <- columns (0, 4), slots (2c+8, 2c+9) <- columns (1, 5);
//   h = 1: slots (2c, 2c+1) <- columns (2, 6), slots (2c+8, 2c+9) <- columns (3, 7)
// (+ 8j). 16-bit values (inputs, dense weights) are paired so by byte permutes. int4 codes
// (one 32-bit word for 8 columns, code i in bits 4i..4i+3): ((word >> 4i) & 0x000F000F) holds
// codes i and i + 4 in the low bits of two 16-bit halves; OR-ing in the bits of the base,
// 128.0 (bfloat16) or 1024.0 (half), whose unit in the last place is 1, makes them base + code
// exactly, and one paired subtraction of base + zero leaves code - zero, exact
// (|code - zero| <= 15). Each int4 chunk's sums are then scaled by their rows' group scales.
//
// Measured on an H100 (docs/generate.md), the int4 products gained about 10% over the scalar
// kernel and read their codes at about 1.7 TB/s; a weight small enough for the L2 cache is read
// no faster (docs/architecture.md), so memory is not what bounds them.
//
// int4 weights are not rounded to the element type; products are exact and summed in float
// (the tensor cores' accumulation), the result rounded once.
//
// Keeping more of the loads in flight by copying each warp's chunks into shared memory
// (cp.async, several chunks ahead of the tensor cores) was slower at every shape measured on an
// H100 (docs/architecture.md), so the loads stay in registers.
//
// An input norm (MmaLinearArgs::norm_weight), in both kernels: the lanes multiply their inputs
// by the norm's weight and sum their squares, and each token's 1 / sqrt(mean + eps) scales its
// sums before the bias, the residual or the gate.
#include "fused_kernels.h"
#include "kernel_types.cuh"

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

namespace cur4llm::fused::kernels {
namespace {

constexpr int kChunk = 128;     // columns a warp takes at a time: 4 lanes x 32
constexpr int kTileRows = 16;   // the mma's M

// mma.sync m16n8k16 of 16-bit TYPE ("f16", "bf16") into float: d += a b (registers as the
// PTX ISA lays out the fragments).
#define CUR4LLM_MMA_M16N8K16(TYPE)                                                                        \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." TYPE "." TYPE                                     \
               ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"                            \
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                           \
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1))

// The 16-bit element types: the base that int4 codes are OR-ed into (128.0 in bfloat16, 1024.0
// in half: their unit in the last place is 1), a paired subtraction, the mma.
template <typename T>
struct Mma16 {
  static constexpr bool kHalf = std::is_same_v<T, __half>;
  using Pair = std::conditional_t<kHalf, __half2, __nv_bfloat162>;
  static constexpr uint32_t kMagic = kHalf ? 0x64006400u : 0x43004300u;  // the base in both halves
  static constexpr float kBase = kHalf ? 1024.f : 128.f;
  __device__ static uint32_t pair(float v) {
    if constexpr (kHalf) {
      return bits_as<uint32_t>(__float2half2_rn(v));
    } else {
      return bits_as<uint32_t>(__float2bfloat162_rn(v));
    }
  }
  __device__ static uint32_t sub(uint32_t a, uint32_t b) {
    return bits_as<uint32_t>(__hsub2(bits_as<Pair>(a), bits_as<Pair>(b)));
  }
  __device__ static void mma(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                             uint32_t b1) {
    if constexpr (kHalf) {
      CUR4LLM_MMA_M16N8K16("f16");
    } else {
      CUR4LLM_MMA_M16N8K16("bf16");
    }
  }
};

#undef CUR4LLM_MMA_M16N8K16

__device__ inline uint4 load16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

__device__ inline uint32_t word(const uint4& v, int j) { return j == 0 ? v.x : j == 1 ? v.y : j == 2 ? v.z : v.w; }

// 8 inputs times their columns' multipliers (activation-aware formats), rounded to T.
template <typename T>
__device__ inline uint4 times_colmul(uint4 v, uint4 m) {
  auto xs = bits_as<Pack<T>>(v);
  const auto ms = bits_as<Pack<__half>>(m);
#pragma unroll
  for (int j = 0; j < 8; ++j) xs.v[j] = Elem<T>::store(Elem<T>::load(xs.v[j]) * __half2float(ms.v[j]));
  return bits_as<uint4>(xs);
}

// An RMSNorm of the input inside the product: the lane's 32 inputs of a chunk (token g) add their
// squares to `squares` and are multiplied by the norm's weight `w` at their columns, rounded to
// T; the token's 1 / sqrt(mean + eps) scales the sums at the end (finish).
template <typename T>
__device__ inline void norm_inputs(uint4 (&xv)[4], const T* w, float& squares) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    auto xs = bits_as<Pack<T>>(xv[i]);
    const auto ws = bits_as<Pack<T>>(load16(w + 8 * i));
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float v = Elem<T>::load(xs.v[j]);
      squares = fmaf(v, v, squares);
      xs.v[j] = Elem<T>::store(v * Elem<T>::load(ws.v[j]));
    }
    xv[i] = bits_as<uint4>(xs);
  }
}

// The two register pairs of 8 16-bit values v0..v7 that mma h (0 or 1) takes: (v[2h], v[2h+4])
// for slots (2c, 2c+1), (v[2h+1], v[2h+5]) for slots (2c+8, 2c+9).
__device__ inline void pairs(const uint4& v, int h, uint32_t& low, uint32_t& high) {
  const uint32_t a = h == 0 ? v.x : v.y, b = h == 0 ? v.z : v.w;
  low = __byte_perm(a, b, 0x5410);
  high = __byte_perm(a, b, 0x7632);
}

// Rows of the block and of the lane. Tile A: rows first_a.. (below limit_a); tile B: first_a +
// offset_b.. (below rows). The block's row i (0..31) is tile A's row i, then tile B's row
// i - 16; a row past the end repeats the last (read, never written). The lane's rows i = 0..3
// are rows g and g + 8 of tile A, then of tile B: the block's rows in_block(i, g).
struct Rows {
  int64_t first_a, first_b, limit_a, offset_b, rows;
  int64_t lane[4];
  __device__ static int in_block(int i, int g) { return (i / 2) * kTileRows + g + 8 * (i % 2); }
  __device__ int64_t row(int i) const {
    return i < kTileRows ? min(first_a + i, limit_a - 1) : min(first_b + i - kTileRows, rows - 1);
  }
  __device__ Rows(const MmaLinearArgs& p, int g) : rows(p.rows) {
    const int64_t step = p.silu_pair ? kTileRows : 2 * kTileRows;
    offset_b = p.silu_pair ? p.rows / 2 : kTileRows;
    limit_a = p.silu_pair ? p.rows / 2 : p.rows;
    first_a = static_cast<int64_t>(blockIdx.x) * step;
    first_b = first_a + offset_b;
#pragma unroll
    for (int i = 0; i < 4; ++i) lane[i] = row(in_block(i, g));
  }
};

// The block's warps' sums meet in shared memory; thread i then writes output (tile, lane, k) of
// i: the bias joins the float sum (as at::linear's addmm), so does the residual (addmm_ with
// beta 1), rounded once; or, for a SiLU pair, the gate's and up's sums are rounded and gated.
// With an input norm, each token's sums are first scaled by 1 / sqrt(mean of its squares + eps)
// (`squares`: the lane's part of token lane / 4's). part: shared memory for kPartFloats floats
// a warp, warp w's at part + w * kPartFloats.
constexpr int kPartFloats = 256 + 8;
template <typename T, int W>
__device__ inline void finish(const MmaLinearArgs& p, const Rows& rows, const float (&acc)[2][4], float squares,
                              float* part) {
  constexpr int stride = kPartFloats;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int k = 0; k < 4; ++k) part[warp * stride + (t * 32 + lane) * 4 + k] = acc[t][k];
  }
  const bool normed = p.norm_weight != nullptr;
  if (normed) {
    squares += __shfl_xor_sync(0xffffffffu, squares, 1);  // the 4 lanes of one token
    squares += __shfl_xor_sync(0xffffffffu, squares, 2);
    if (lane % 4 == 0) part[warp * stride + 256 + lane / 4] = squares;
  }
  __syncthreads();
  auto norm_scale = [&](int token) {
    if (!normed) return 1.f;
    float total = 0.f;
#pragma unroll
    for (int wp = 0; wp < W; ++wp) total += part[wp * stride + 256 + token];
    return rsqrtf(total / static_cast<float>(p.cols) + p.norm_eps);
  };
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  for (int i = threadIdx.x; i < 2 * 32 * 4; i += W * 32) {
    const int tile = i / 128, l = (i / 4) % 32, k = i % 4;
    const int token = 2 * (l % 4) + k % 2;  // acc[t]: (row g, tokens 2c, 2c + 1), then row g + 8
    const int64_t in_tile = l / 4 + 8 * (k / 2);
    if (token >= p.tokens) continue;
    auto sum = [&](int t) {
      float v = 0.f;
#pragma unroll
      for (int wp = 0; wp < W; ++wp) v += part[wp * stride + (t * 32 + l) * 4 + k];
      return v;
    };
    if (p.silu_pair) {
      const int64_t r = rows.first_a + in_tile;
      if (tile != 0 || r >= rows.limit_a) continue;
      const float scale = norm_scale(token);
      float gate = sum(0) * scale, up = sum(1) * scale;
      if (bias != nullptr) gate += Elem<T>::load(bias[r]), up += Elem<T>::load(bias[r + rows.offset_b]);
      y[token * rows.limit_a + r] = Elem<T>::store(silu_mul_one<T>(round_to<T>(gate), round_to<T>(up)));
      continue;
    }
    const int64_t r = (tile == 0 ? rows.first_a : rows.first_b) + in_tile;
    if (r >= p.rows) continue;
    float v = sum(tile) * norm_scale(token);
    if (bias != nullptr) v += Elem<T>::load(bias[r]);
    if (p.residual != nullptr) v += Elem<T>::load(static_cast<const T*>(p.residual)[token * p.rows + r]);
    y[token * p.rows + r] = Elem<T>::store(v);
  }
}

// The 16 mmas of a chunk into d: for each 8 columns j of the lane's strip and each half h, the
// inputs' register pair and, for each tile t, the weights' fragment from a(t, j, h, a0..a3).
template <typename T, typename Fragment>
__device__ inline void chunk_mmas(const uint4 (&xv)[4], float (&d)[2][4], Fragment&& a) {
#pragma unroll
  for (int j = 0; j < 4; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      uint32_t b0, b1;
      pairs(xv[j], h, b0, b1);
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        uint32_t a0, a1, a2, a3;
        a(t, j, h, a0, a1, a2, a3);
        Mma16<T>::mma(d[t], a0, a1, a2, a3, b0, b1);
      }
    }
  }
}

// The lane's 32 inputs of chunk ch as the product takes them: times the input norm's weight
// (their squares summed into `squares`) and the activation-aware multipliers, where given.
template <typename T>
__device__ inline void prepare_inputs(const MmaLinearArgs& p, int64_t ch, int c, uint4 (&xv)[4], float& squares) {
  const int64_t at = ch * kChunk + c * 32;
  if (p.norm_weight != nullptr) norm_inputs<T>(xv, static_cast<const T*>(p.norm_weight) + at, squares);
  if (p.colmul != nullptr) {
    const auto* colmul = static_cast<const __half*>(p.colmul);
#pragma unroll
    for (int i = 0; i < 4; ++i) xv[i] = times_colmul<T>(xv[i], load16(colmul + at + 8 * i));
  }
}

// One chunk of int4 products into acc: the lane's codes of rows g, g + 8 of each tile (w),
// their group's scales and zero points, and its inputs (xv).
template <typename T>
__device__ inline void int4_chunk(const uint4 (&w)[4], const uint4 (&xv)[4], const float (&scale)[4],
                                  const float (&zero)[4], float (&acc)[2][4]) {
  using M = Mma16<T>;
  uint32_t base_zero[4];  // (base + zero) in both halves, per row
#pragma unroll
  for (int i = 0; i < 4; ++i) base_zero[i] = M::pair(M::kBase + zero[i]);
  auto codes = [&](uint32_t wd, int shift, uint32_t bz) {
    return M::sub(((wd >> shift) & 0x000F000Fu) | M::kMagic, bz);
  };
  float d[2][4] = {};
  chunk_mmas<T>(xv, d, [&](int t, int j, int h, uint32_t& a0, uint32_t& a1, uint32_t& a2, uint32_t& a3) {
    const uint32_t lo = word(w[2 * t], j), hi = word(w[2 * t + 1], j);  // rows g, g + 8
    a0 = codes(lo, 8 * h, base_zero[2 * t]), a1 = codes(hi, 8 * h, base_zero[2 * t + 1]);
    a2 = codes(lo, 8 * h + 4, base_zero[2 * t]), a3 = codes(hi, 8 * h + 4, base_zero[2 * t + 1]);
  });
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    acc[t][0] = fmaf(scale[2 * t], d[t][0], acc[t][0]);
    acc[t][1] = fmaf(scale[2 * t], d[t][1], acc[t][1]);
    acc[t][2] = fmaf(scale[2 * t + 1], d[t][2], acc[t][2]);
    acc[t][3] = fmaf(scale[2 * t + 1], d[t][3], acc[t][3]);
  }
}

// Packed int4 weights. W: warps of a block; kUnroll: consecutive chunks whose loads a warp
// issues together; kMinBlocks: blocks a multiprocessor must hold (bounds the registers).
template <typename T, int W, int kUnroll, int kMinBlocks>
__global__ void __launch_bounds__(W * 32, kMinBlocks) int4_mma_kernel(const MmaLinearArgs p) {
  static_assert(Pack<T>::kSize == 8, "16-bit elements");
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, c = lane % 4;
  const Rows rows(p, g);
  const int64_t row_bytes = p.cols / 2, groups = (p.cols + p.group - 1) / p.group;
  const bool has_x = g < p.tokens;  // lanes of token g >= tokens feed zeros
  const T* xr = static_cast<const T*>(p.x) + (has_x ? g : 0) * p.cols + c * 32;
  const int chunks = static_cast<int>(p.cols / kChunk);
  const auto* scales = static_cast<const __half*>(p.scales);
  const auto* zeros = static_cast<const __half*>(p.zeros);

  float acc[2][4] = {}, squares = 0.f;
  for (int base = warp * kUnroll; base < chunks; base += W * kUnroll) {
    // Every load of the pass first, so that they are in flight together.
    uint4 w[kUnroll][4], xv[kUnroll][4];
    float scale[kUnroll][4], zero[kUnroll][4];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int ch = base + u;
      if (ch >= chunks) break;
      const int64_t gi = static_cast<int64_t>(ch) * kChunk / p.group;
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        w[u][i] = load16(p.q + rows.lane[i] * row_bytes + static_cast<int64_t>(ch) * (kChunk / 2) + c * 16);
        scale[u][i] = __half2float(scales[rows.lane[i] * groups + gi]);
        zero[u][i] = __half2float(zeros[rows.lane[i] * groups + gi]);
        xv[u][i] = has_x ? load16(xr + static_cast<int64_t>(ch) * kChunk + 8 * i) : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int ch = base + u;
      if (ch >= chunks) break;
      if (has_x) prepare_inputs<T>(p, ch, c, xv[u], squares);
      int4_chunk<T>(w[u], xv[u], scale[u], zero[u], acc);
    }
  }
  __shared__ float part[W * kPartFloats];
  finish<T, W>(p, rows, acc, squares, part);
}

// Dense 16-bit weights [rows, cols] (row-major, x's type): each chunk's 64 bytes a row and lane,
// straight into the mma, its float accumulators kept across chunks.
template <typename T, int W>
__global__ void __launch_bounds__(W * 32, 16 / W) dense_mma_kernel(const MmaLinearArgs p) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, c = lane % 4;
  const Rows rows(p, g);
  const T* wt = static_cast<const T*>(p.weight);
  const bool has_x = g < p.tokens;
  const T* xr = static_cast<const T*>(p.x) + (has_x ? g : 0) * p.cols + c * 32;
  const int chunks = static_cast<int>(p.cols / kChunk);
  float acc[2][4] = {}, squares = 0.f;
  for (int ch = warp; ch < chunks; ch += W) {
    uint4 w[4][4], xv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const T* wr = wt + rows.lane[i] * p.cols + static_cast<int64_t>(ch) * kChunk + c * 32;
#pragma unroll
      for (int j = 0; j < 4; ++j) w[i][j] = load16(wr + 8 * j);
      xv[i] = has_x ? load16(xr + static_cast<int64_t>(ch) * kChunk + 8 * i) : make_uint4(0, 0, 0, 0);
    }
    if (has_x) prepare_inputs<T>(p, ch, c, xv, squares);  // the norm (no multipliers for dense weights)
    chunk_mmas<T>(xv, acc, [&](int t, int j, int h, uint32_t& a0, uint32_t& a1, uint32_t& a2, uint32_t& a3) {
      pairs(w[2 * t][j], h, a0, a2);      // row g
      pairs(w[2 * t + 1][j], h, a1, a3);  // row g + 8
    });
  }
  __shared__ float part[W * kPartFloats];
  finish<T, W>(p, rows, acc, squares, part);
}

// Compute capability 8.0 or later (mma.sync with bfloat16).
bool device_has_mma() { return device_attribute<cudaDevAttrComputeCapabilityMajor>() >= 8; }

// CUR4LLM_PACKED_MMA=0 keeps int4 on the scalar kernels (fused_kernels.cu).
bool packed_allowed() {
  static const bool allowed = [] {
    const char* v = std::getenv("CUR4LLM_PACKED_MMA");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  return allowed;
}

template <typename T>
void launch(const MmaLinearArgs& a, dim3 grid, cudaStream_t s) {
  if (a.weight != nullptr) {
    constexpr int W = 8;
    dense_mma_kernel<T, W><<<grid, W * 32, 0, s>>>(a);
    return;
  }
  // 16 warps a block, each loading one chunk at a time, one block a multiprocessor: of eleven
  // launch shapes measured on an H100 (docs/architecture.md) the fastest whole int4 step, and
  // no register spills (119 registers; two chunks at a time spilled at 128).
  int4_mma_kernel<T, 16, 1, 1><<<grid, 16 * 32, 0, s>>>(a);
}

bool aligned(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool linear_mma_fits(const MmaLinearArgs& a) {
  if ((a.dtype != 1 && a.dtype != 2) || a.tokens < 1 || a.tokens > kLinearMmaMaxTokens || a.rows < 1) return false;
  if (a.cols < kChunk || a.cols % kChunk != 0) return false;
  if (a.silu_pair && a.rows % 2 != 0) return false;
  if ((a.weight == nullptr) == (a.q == nullptr)) return false;  // one kind of weight
  if (a.q != nullptr && (a.group < kChunk || a.group % kChunk != 0 || !packed_allowed())) return false;
  if (!aligned(a.x) || !aligned(a.q) || !aligned(a.weight) || !aligned(a.colmul)) return false;
  return device_has_mma();
}

int linear_mma(const MmaLinearArgs& a, void* stream) {
  const int64_t blocks = a.silu_pair ? (a.rows / 2 + kTileRows - 1) / kTileRows
                                     : (a.rows + 2 * kTileRows - 1) / (2 * kTileRows);
  const auto s = static_cast<cudaStream_t>(stream);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (a.dtype == 1) {
    launch<__half>(a, grid, s);
  } else {
    launch<__nv_bfloat16>(a, grid, s);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace cur4llm::fused::kernels
