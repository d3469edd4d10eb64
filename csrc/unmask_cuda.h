// The CUDA unmask as its torch glue (unmask_cuda_glue.cpp) calls it: plain pointers and element
// strides, no torch types, so that unmask_cuda.cu compiles with nvcc alone.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "unmask.h"

namespace mini_dlm {

// Banned ids and demoted ids travel inside the kernel arguments (no host-to-device copy per
// call), at most this many of each; more go to the PyTorch reference (mini_dlm/ops.py:
// MAX_BANNED_CUDA must match).
constexpr int kMaxBannedCuda = 16;

struct UnmaskCudaArgs {
  int dtype;  // DType (cuda_common.cuh): F32, BF16, F16
  int64_t B, L, V;
  const void* logits;  // row (b, i) at logits + b * logits_sb + i * logits_si elements, contiguous in V
  int64_t logits_sb, logits_si;
  int64_t* tokens;  // written in place
  int64_t tokens_sb, tokens_si;
  bool* eligible;  // read, then cleared where committed
  int64_t eligible_sb, eligible_si;
  int n_banned;
  int banned[kMaxBannedCuda];  // ascending, distinct
  int n_demote;
  int demote[kMaxBannedCuda];  // ascending, distinct: guesses of these ids score -inf
  int kind, rule;              // Kind, Rule (unmask.h)
  const int64_t* k;            // rule SCHEDULE: k[b * k_s]
  int64_t k_s;
  double tau, factor;
  const double* scores;  // kind RANDOM: scores[b * scores_sb + i * scores_si]
  int64_t scores_sb, scores_si;
  double temperature;
  uint64_t seed;
  int64_t* count;   // (B,) out: positions committed per batch row
  void* workspace;  // unmask_cuda_workspace_bytes(B, L) bytes of device memory, 16-byte aligned
};

int64_t unmask_cuda_workspace_bytes(int64_t B, int64_t L);

// Launches the two kernels on stream. Never synchronises with the host, so it can be captured
// in a CUDA graph. Device-side asserts: an eligible row with no allowed finite logit.
void unmask_cuda(const UnmaskCudaArgs& a, cudaStream_t stream);

}  // namespace mini_dlm
