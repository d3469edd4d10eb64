// unmask on the GPU: the two kernels and their launchers. No torch headers: raw pointers and a
// cudaStream_t, so that this file compiles with nvcc -arch=sm_90 on a machine whose torch is
// the CPU build (.ci/run does that). The torch glue (checks, allocation, the current stream,
// TORCH_LIBRARY_IMPL(mini_dlm, CUDA, m)) belongs in a file built only in CUDA builds.
//
// STATUS: compiled by CI with nvcc for sm_90, but never run: no GPU has been available. setup.py
// builds it whenever torch sees a GPU; it must be validated against mini_dlm/ops.py:
// unmask_reference (tests/test_ext.py, compute-sanitizer) on a GPU before anyone relies on it.
//
//   nvcc -arch=sm_90 -std=c++17 -O3 -Icsrc -c csrc/unmask_cuda.cu
//
// Roofline: bytes = rows_read * V * bytes_per_logit. H200, B=64, L=256, V=32768 bf16, all
// rows eligible: 1.07 GB, about 250 us at ~4.3 TB/s (DESIGN.md section 8).
//
// Kernel 1, unmask_scan: one warp per (b, i) row; ineligible rows return at once.
//   Each lane walks its share of the row (16-byte vector loads when the row is aligned) and
//   keeps an online-softmax state in registers (accurate fp32 expf, the sum s in double: values
//   agree with the float64 reference to fp32 rounding): m (max), s = sum e^(l - m),
//   t = sum e^(l - m) (l - m), argmax (first index), runner-up, and with a temperature the
//   first argmax of l + T * gumbel in float64 (the same noise as the reference).
//   The 32 lane states merge by warp shuffles (merge_state). Lane 0 writes x0 and c.
// Kernel 2, unmask_select: one thread per batch row (eligible counts are small: one block):
//   insertion-sorts its eligible positions by (c high first, position low first), commits
//   the prefix the rule asks for, writes tokens / eligible in place and the count.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

#include "hash.h"

namespace mini_dlm {

enum DType { F32 = 0, BF16 = 1, F16 = 2 };
enum Kind { LOW_CONFIDENCE = 0, MARGIN = 1, ENTROPY = 2, RANDOM = 3 };
enum Rule { SCHEDULE = 0, THRESHOLD = 1, FACTOR = 2 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// s is a double: with the confidence 1 / s of a near-certain row, a float s rounds to exactly 1
// once the runner-ups sum below 6e-8, where the float64 reference still sees c < 1 (and tau = 1
// would commit several positions). The exps stay fp32.
struct State {
  float m, t, second;
  double s;
  int64_t argmax;
  double noisy;
  int64_t x0;
};

__device__ __forceinline__ void init_state(State& a) {
  a.m = -CUDART_INF_F, a.s = 0.0, a.t = 0.f, a.second = -CUDART_INF_F, a.argmax = -1;
  a.noisy = -CUDART_INF, a.x0 = -1;
}

// add logit l of token v (visited in increasing v within a lane)
__device__ __forceinline__ void push(State& a, float l, int64_t v, double temperature, uint64_t key, uint64_t base) {
  if (l == -CUDART_INF_F) return;
  if (l > a.m) {
    if (a.m == -CUDART_INF_F) {
      a.s = 1.0, a.t = 0.f;
    } else {
      const float e = expf(a.m - l);
      a.t = e * (a.t + (a.m - l) * (float)a.s);
      a.s = (double)e * a.s + 1.0;
    }
    a.second = a.m, a.m = l, a.argmax = v;
  } else {
    const float e = expf(l - a.m);
    a.s += (double)e, a.t += e * (l - a.m);
    if (l > a.second) a.second = l;
  }
  if (temperature > 0) {
    const double noisy = (double)l + temperature * gumbel(key, base + (uint64_t)v);
    if (noisy > a.noisy || (noisy == a.noisy && v < a.x0)) a.noisy = noisy, a.x0 = v;
  }
}

// a <- merge(a, b): the state of the union of the two sets of logits
__device__ __forceinline__ void merge_state(State& a, const State& b) {
  if (b.argmax >= 0) {
    if (a.argmax < 0) {
      a.m = b.m, a.s = b.s, a.t = b.t, a.second = b.second, a.argmax = b.argmax;
    } else {
      const float m = fmaxf(a.m, b.m);
      const float ea = expf(a.m - m), eb = expf(b.m - m);
      const float t = ea * (a.t + (a.m - m) * (float)a.s) + eb * (b.t + (b.m - m) * (float)b.s);
      const float second = fmaxf(fmaxf(a.second, b.second), fminf(a.m, b.m));
      const int64_t arg = a.m > b.m ? a.argmax : b.m > a.m ? b.argmax : min(a.argmax, b.argmax);
      a.s = (double)ea * a.s + (double)eb * b.s, a.t = t, a.m = m, a.second = second, a.argmax = arg;
    }
  }
  if (b.x0 >= 0 && (a.x0 < 0 || b.noisy > a.noisy || (b.noisy == a.noisy && b.x0 < a.x0)))
    a.noisy = b.noisy, a.x0 = b.x0;
}

__device__ __forceinline__ State shfl_down(const State& a, int delta) {
  State b;
  b.m = __shfl_down_sync(0xffffffffu, a.m, delta);
  b.s = __shfl_down_sync(0xffffffffu, a.s, delta);
  b.t = __shfl_down_sync(0xffffffffu, a.t, delta);
  b.second = __shfl_down_sync(0xffffffffu, a.second, delta);
  b.argmax = __shfl_down_sync(0xffffffffu, a.argmax, delta);
  b.noisy = __shfl_down_sync(0xffffffffu, a.noisy, delta);
  b.x0 = __shfl_down_sync(0xffffffffu, a.x0, delta);
  return b;
}

__device__ __forceinline__ bool is_banned(const uint32_t* bits, int64_t v) { return (bits[v >> 5] >> (v & 31)) & 1u; }

template <typename T>
__global__ void unmask_scan(const T* __restrict__ logits, int64_t B, int64_t L, int64_t V, int64_t stride_b,
                            int64_t stride_i, const bool* __restrict__ eligible, const uint32_t* __restrict__ banned,
                            int kind, double temperature, uint64_t key, int64_t* __restrict__ x0,
                            double* __restrict__ conf, int* __restrict__ empty_row) {
  const int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;  // one warp per row
  const int lane = threadIdx.x % 32;
  if (r >= B * L || !eligible[r]) return;  // whole warps leave together: r is per warp
  const int64_t b = r / L, i = r % L;
  const T* row = logits + b * stride_b + i * stride_i;  // 64-bit offsets
  const uint64_t base = (uint64_t)r * (uint64_t)V;
  State st;
  init_state(st);
  constexpr int VEC = 16 / sizeof(T);  // elements per 16-byte load
  const bool aligned = ((uintptr_t)row % 16 == 0) && (V % VEC == 0);
  if (aligned) {
    const int4* row4 = reinterpret_cast<const int4*>(row);
    for (int64_t c = lane; c < V / VEC; c += 32) {
      const int4 chunk = __ldg(row4 + c);
      const T* x = reinterpret_cast<const T*>(&chunk);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const int64_t v = c * VEC + j;
        if (!is_banned(banned, v)) push(st, to_float(x[j]), v, temperature, key, base);
      }
    }
  } else {
    for (int64_t v = lane; v < V; v += 32)
      if (!is_banned(banned, v)) push(st, to_float(row[v]), v, temperature, key, base);
  }
#pragma unroll
  for (int delta = 16; delta > 0; delta /= 2) merge_state(st, shfl_down(st, delta));
  if (lane != 0) return;
  if (st.argmax < 0) {
    atomicExch(empty_row, 1);
    return;
  }
  const int64_t g = temperature > 0 ? st.x0 : st.argmax;
  x0[r] = g;
  if (kind == LOW_CONFIDENCE) conf[r] = (double)expf(to_float(row[g]) - st.m) / st.s;
  else if (kind == MARGIN) conf[r] = (double)(1.f - expf(st.second - st.m)) / st.s;
  else if (kind == ENTROPY) conf[r] = (double)st.t / st.s - log(st.s);
}

__global__ void unmask_select(int64_t B, int64_t L, int64_t* __restrict__ tokens, int64_t tok_sb, int64_t tok_si,
                              bool* __restrict__ eligible, const int64_t* __restrict__ x0,
                              const double* __restrict__ conf, const double* __restrict__ scores, int kind, int rule,
                              const int64_t* __restrict__ k, double tau, double factor, int32_t* __restrict__ order,
                              int64_t* __restrict__ count) {
  const int64_t b = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (b >= B) return;
  const double* c = kind == RANDOM ? scores + b * L : conf + b * L;
  int32_t* ord = order + b * L;
  int64_t n_elig = 0;
  for (int64_t i = 0; i < L; ++i) {  // insertion sort: c high first, position low first
    if (!eligible[b * L + i]) continue;
    int64_t j = n_elig++;
    while (j > 0 && c[ord[j - 1]] < c[i]) ord[j] = ord[j - 1], --j;  // strict: equal c keep order
    ord[j] = (int32_t)i;
  }
  int64_t n = 0;
  if (rule == SCHEDULE) {
    n = min(max(k[b], (int64_t)0), n_elig);
  } else if (rule == THRESHOLD) {
    while (n < n_elig && c[ord[n]] >= tau) ++n;
    n = min(max(n, (int64_t)1), n_elig);
  } else {
    n = min((int64_t)1, n_elig);
    while (n < n_elig && c[ord[n]] >= 1.0 - factor / (double)(n + 2)) ++n;
  }
  for (int64_t j = 0; j < n; ++j) {
    const int64_t i = ord[j];
    tokens[b * tok_sb + i * tok_si] = x0[b * L + i];
    eligible[b * L + i] = false;
  }
  count[b] = n;
}

// -- launchers: called by the torch glue with checked, device-resident arguments.
// eligible, x0, conf, order: contiguous (B, L); banned: ceil(V / 32) words of bits.
void launch_unmask_scan(const void* logits, int dtype, int64_t B, int64_t L, int64_t V, int64_t stride_b,
                        int64_t stride_i, const bool* eligible, const uint32_t* banned, int kind, double temperature,
                        uint64_t seed, int64_t* x0, double* conf, int* empty_row, cudaStream_t stream) {
  const int warps = 8;  // rows per block of 256 threads
  const int64_t blocks = (B * L + warps - 1) / warps;
  if (blocks == 0) return;
  const uint64_t key = splitmix64(seed);
  if (dtype == F32)
    unmask_scan<float><<<blocks, 32 * warps, 0, stream>>>((const float*)logits, B, L, V, stride_b, stride_i, eligible,
                                                          banned, kind, temperature, key, x0, conf, empty_row);
  else if (dtype == BF16)
    unmask_scan<__nv_bfloat16><<<blocks, 32 * warps, 0, stream>>>((const __nv_bfloat16*)logits, B, L, V, stride_b,
                                                                  stride_i, eligible, banned, kind, temperature, key,
                                                                  x0, conf, empty_row);
  else
    unmask_scan<__half><<<blocks, 32 * warps, 0, stream>>>((const __half*)logits, B, L, V, stride_b, stride_i, eligible,
                                                           banned, kind, temperature, key, x0, conf, empty_row);
}

void launch_unmask_select(int64_t B, int64_t L, int64_t* tokens, int64_t tok_sb, int64_t tok_si, bool* eligible,
                          const int64_t* x0, const double* conf, const double* scores, int kind, int rule,
                          const int64_t* k, double tau, double factor, int32_t* order, int64_t* count,
                          cudaStream_t stream) {
  if (B == 0) return;
  const int threads = 128;
  unmask_select<<<(B + threads - 1) / threads, threads, 0, stream>>>(B, L, tokens, tok_sb, tok_si, eligible, x0, conf,
                                                                     scores, kind, rule, k, tau, factor, order, count);
}

}  // namespace mini_dlm
