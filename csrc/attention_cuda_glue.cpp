// Torch glue for the CUDA block_attention (attention_cuda.cu, attention_mma_cuda.cu): argument
// checks, the output and split workspace, the current stream, and the CUDA registration. Built
// only in CUDA builds (setup.py). Reads no tensor value (prefix_len is checked on the device),
// so a sampler step can be captured in a CUDA graph.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include "attention_args.h"
#include "attention_cuda.h"

namespace mini_dlm {

// The device's multiprocessor count (it decides the split of the keys), asked once per device:
// no driver call on every attention call.
static int multiprocessors(int device) {
  static int count[64] = {};
  TORCH_CHECK(device >= 0 && device < 64, "block_attention (CUDA): device index ", device, " out of range");
  if (count[device] == 0) C10_CUDA_CHECK(cudaDeviceGetAttribute(&count[device], cudaDevAttrMultiProcessorCount, device));
  return count[device];
}

at::Tensor block_attention_cuda_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
                                   const c10::optional<at::Tensor>& prefix_len,
                                   const c10::optional<at::Tensor>& k_suffix,
                                   const c10::optional<at::Tensor>& v_suffix) {
  const AttentionArgs a = check_attention_args(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix);
  TORCH_CHECK(q.is_cuda(), "block_attention (CUDA): q must be on a CUDA device");
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "block_attention (CUDA): q must be float32, bfloat16 or float16 (mini_dlm.ops runs the reference for "
              "other dtypes), got ", dt);
  TORCH_CHECK(a.D == 32 || a.D == 64 || a.D == 128,
              "block_attention (CUDA): head dim D must be 32, 64 or 128 (ops.CUDA_HEAD_DIMS), got ", a.D);

  const c10::cuda::CUDAGuard guard(q.device());
  AttentionCudaArgs c{};
  c.dtype = dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2;
  c.B = a.B, c.H = a.H, c.b = a.b, c.D = a.D, c.Lc = a.Lc, c.Ls = a.Ls;
  const at::Tensor* ts[7] = {&q, &k, &v, k_prefix ? &*k_prefix : nullptr, v_prefix ? &*v_prefix : nullptr,
                             k_suffix ? &*k_suffix : nullptr, v_suffix ? &*v_suffix : nullptr};
  for (int i = 0; i < 7; ++i) {
    c.in[i] = ts[i] != nullptr ? ts[i]->data_ptr() : nullptr;
    for (int d = 0; d < 3; ++d) c.strides[i][d] = ts[i] != nullptr ? ts[i]->stride(d) : 0;
  }
  const at::Tensor plen = prefix_len ? prefix_len->contiguous() : at::Tensor();  // (a copy on the device, if any)
  c.prefix_len = plen.defined() ? plen.data_ptr<int64_t>() : nullptr;
  at::Tensor out = at::empty({a.B, a.H, a.b, a.D}, q.options());  // contiguous
  c.out = out.data_ptr();
  c.num_sms = multiprocessors(q.get_device());

  const AttentionPlan plan = block_attention_cuda_plan(c);
  at::Tensor workspace = at::empty({plan.workspace_bytes}, q.options().dtype(at::kByte));
  block_attention_cuda(c, plan, plan.workspace_bytes ? workspace.data_ptr() : nullptr,
                       c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(mini_dlm, CUDA, m) { m.impl("block_attention", &block_attention_cuda_op); }

}  // namespace mini_dlm
