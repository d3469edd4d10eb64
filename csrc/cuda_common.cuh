// Small device helpers both CUDA kernels share (unmask_cuda.cu, attention_cuda.cu). No torch
// headers: the kernels compile with nvcc alone.
#pragma once
#include <assert.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

namespace mini_dlm {

enum DType { F32 = 0, BF16 = 1, F16 = 2 };  // the codes the torch glue passes

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(FULL_MASK, x, o);
  return x;
}

}  // namespace mini_dlm

// A precondition the host cannot check without waiting for the device (a value inside a device
// tensor): a device-side assert, as PyTorch's own CUDA kernels do for an index out of range.
// It stops the kernel; the next synchronising call raises "CUDA error: device-side assert
// triggered", and the message names the condition. Unlike assert(), it ignores NDEBUG.
// The failing branch calls a function that never returns, so the compiler keeps no register
// alive for it: called inline, the assert cost the fp32 attention kernel 20-60 registers.
[[noreturn]] __device__ __noinline__ inline void md_device_fail(const char* what, const char* file, unsigned line,
                                                                const char* function) {
  __assert_fail(what, file, line, function);
  __trap();  // (not reached)
}
#define MD_DEVICE_CHECK(cond)                                                                       \
  do {                                                                                              \
    if (!(cond)) md_device_fail(#cond, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
  } while (0)
