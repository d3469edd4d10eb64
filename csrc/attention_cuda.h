// The CUDA block_attention as its torch glue (attention_cuda_glue.cpp) calls it: plain pointers
// and element strides, no torch types, so that the .cu files compile with nvcc alone.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

namespace mini_dlm {

struct AttentionCudaArgs {
  int dtype;                      // DType (cuda_common.cuh): F32, BF16, F16
  int64_t B, H, b, D, Lc, Ls;     // D in {32, 64, 128}; Lc = Ls = 0 where the segment is absent
  const void* in[7];              // q, k, v, k_prefix, v_prefix, k_suffix, v_suffix (absent: nullptr)
  int64_t strides[7][3];          // their element strides in dims 0, 1, 2 (dim 3 has stride 1)
  const int64_t* prefix_len;      // (B,) on the device, or nullptr
  void* out;                      // (B, H, b, D) contiguous, q's dtype
  int num_sms;                    // of the device: decides the split of the keys
};

// How the launch is cut: which kernel, its tiles, and the split of each row's keys over CTAs.
struct AttentionPlan {
  bool tensor_cores;      // bf16 / fp16: mma.sync (attention_mma_cuda.cu); fp32: CUDA cores
  bool vec;               // every row 16-byte aligned: 16-byte (cp.async) loads
  int warps, BQ, TK;      // warps per CTA, queries per CTA, keys per K/V tile
  int num_splits;         // CTAs per (query tile, batch row, head), each a run of key tiles
  int64_t workspace_bytes;  // fp32 partials of the splits (0 when num_splits == 1)
};

AttentionPlan block_attention_cuda_plan(const AttentionCudaArgs& a);

// Launches on stream; never synchronises with the host. workspace: plan.workspace_bytes of
// device memory. Device-side assert: prefix_len[r] outside [0, Lc].
void block_attention_cuda(const AttentionCudaArgs& a, const AttentionPlan& plan, void* workspace,
                          cudaStream_t stream);

}  // namespace mini_dlm
