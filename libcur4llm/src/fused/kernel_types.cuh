#pragma once
// Internal, for the .cu files of libcur4llm/src/fused: element types as the kernels read and
// write them.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cstring>

namespace cur4llm::fused::kernels {

// Conversions that round as ATen does (round to nearest even).
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  __device__ static float load(float v) { return v; }
  __device__ static float store(float v) { return v; }
};
template <>
struct Elem<__half> {
  __device__ static float load(__half v) { return __half2float(v); }
  __device__ static __half store(float v) { return __float2half_rn(v); }
};
template <>
struct Elem<__nv_bfloat16> {
  __device__ static float load(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ static __nv_bfloat16 store(float v) { return __float2bfloat16_rn(v); }
};

// Rounds a float to the element type and back.
template <typename T>
__device__ inline float round_to(float v) {
  return Elem<T>::load(Elem<T>::store(v));
}

// SiLU gate of one element: round(silu(g)) * u, with silu(g) = g / (1 + exp(-g)) as ATen
// computes it (the caller rounds the product).
template <typename T>
__device__ inline float silu_mul_one(float g, float u) {
  const float act = round_to<T>(g / (1.0f + expf(-g)));
  return act * u;
}

// The bytes of f read as a To (a register's 16-bit pairs, a 16-byte load's elements).
template <typename To, typename From>
__device__ inline To bits_as(const From& f) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To t;
  memcpy(&t, &f, sizeof(To));
  return t;
}

// 16 bytes of elements, for vectorised loads and stores.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

// Attribute A of the current device (host code), asked once per device (launches may come from
// several threads); 0 where it cannot be asked.
template <cudaDeviceAttr A>
inline int device_attribute() {
  static std::atomic<int> value[64] = {};  // 0: not asked yet
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
  int v = value[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    if (cudaDeviceGetAttribute(&v, A, dev) != cudaSuccess) return 0;
    value[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

}  // namespace cur4llm::fused::kernels
