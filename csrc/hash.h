// Counter-based random numbers shared by the CPU and CUDA kernels (no torch headers).
// Same bits as mini_dlm/ops.py: uniform_hash / gumbel_noise, so every backend draws the
// same Gumbel noise for logit (b, i, v):  u = ((h >> 12) + 0.5) / 2^52,
// h = splitmix64(splitmix64(seed) ^ ((b * L + i) * V + v)),  g = -log(-log(u)).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MD_HD __host__ __device__ __forceinline__
#else
#define MD_HD inline
#endif

namespace mini_dlm {

MD_HD uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// key = splitmix64(seed), computed once per call; index = flat logit index
MD_HD double gumbel(uint64_t key, uint64_t index) {
  double u = ((double)(splitmix64(key ^ index) >> 12) + 0.5) * 0x1p-52;
  return -log(-log(u));
}

// The perturbed logit l + T g, rounded twice (product, then sum) as the float64 reference
// computes it. C++ lets a compiler fuse the two into one FMA (one rounding): gcc does on x86
// with -march=native, nvcc does by default, and the argmax can then differ at a near-tie.
MD_HD double gumbel_score(double l, double temperature, double g) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(l, __dmul_rn(temperature, g));
#else
  volatile double tg = temperature * g;  // volatile: the product is rounded and stored first
  return l + tg;
#endif
}

}  // namespace mini_dlm
