// Torch glue for the CUDA block_attention (csrc/attention_cuda.cu): argument checks, the output
// and split scratch buffers, the current stream, and the CUDA registration. Built only in CUDA
// builds (setup.py); the kernels themselves stay torch-free.
//
// STATUS: untested draft, like attention_cuda.cu: syntax-checked with g++ against torch's
// headers only. It must pass tests/test_ext.py (and compute-sanitizer) on a GPU.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include "attention_args.h"

namespace mini_dlm {

int block_attention_num_splits(int64_t B, int64_t H, int64_t b, int64_t D, int64_t max_keys, int num_sms);
void launch_block_attention(int dtype, int64_t B, int64_t H, int64_t b, int64_t D, int64_t Lc, int64_t Ls,
                            const void* const tensors[7], const int64_t strides[21], const int64_t* prefix_len,
                            void* out, float* scratch, int num_splits, cudaStream_t stream);

at::Tensor block_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
                                const c10::optional<at::Tensor>& prefix_len, const c10::optional<at::Tensor>& k_suffix,
                                const c10::optional<at::Tensor>& v_suffix) {
  const AttentionArgs a = check_attention_args(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix);
  TORCH_CHECK(q.is_cuda(), "block_attention_cuda: q must be on a CUDA device");
  const auto dt = q.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "block_attention_cuda: q must be float32, bfloat16 or float16 (mini_dlm.ops runs the reference for "
              "other dtypes), got ",
              dt);
  TORCH_CHECK(a.D == 32 || a.D == 64 || a.D == 128,
              "block_attention_cuda: head dim D must be 32, 64 or 128 (ops.CUDA_HEAD_DIMS), got ", a.D);

  const c10::cuda::CUDAGuard guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int num_sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, q.get_device()));

  // The seven K/V/Q tensors as pointers and (dims 0, 1, 2) strides; absent ones nullptr.
  const at::Tensor* ts[7] = {&q,
                             &k,
                             &v,
                             k_prefix ? &*k_prefix : nullptr,
                             v_prefix ? &*v_prefix : nullptr,
                             k_suffix ? &*k_suffix : nullptr,
                             v_suffix ? &*v_suffix : nullptr};
  const void* ptrs[7];
  int64_t strides[21];
  for (int i = 0; i < 7; ++i) {
    ptrs[i] = ts[i] != nullptr ? ts[i]->data_ptr() : nullptr;
    for (int d = 0; d < 3; ++d) strides[3 * i + d] = ts[i] != nullptr ? ts[i]->stride(d) : 0;
  }
  const at::Tensor plen = prefix_len ? prefix_len->contiguous() : at::Tensor();  // read on the device

  at::Tensor out = at::empty({a.B, a.H, a.b, a.D}, q.options());  // contiguous
  const int splits = block_attention_num_splits(a.B, a.H, a.b, a.D, a.Lc + a.b + a.Ls, num_sms);
  // split partials: O (splits, B H b, D) then (m, l) (splits, B H b, 2), fp32
  at::Tensor scratch =
      splits > 1 ? at::empty({splits * a.B * a.H * a.b * (a.D + 2)}, q.options().dtype(at::kFloat)) : at::Tensor();

  launch_block_attention(dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2, a.B, a.H, a.b, a.D, a.Lc, a.Ls, ptrs,
                         strides, plen.defined() ? plen.data_ptr<int64_t>() : nullptr, out.data_ptr(),
                         splits > 1 ? scratch.data_ptr<float>() : nullptr, splits, stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(mini_dlm, CUDA, m) { m.impl("block_attention", &block_attention_cuda); }

}  // namespace mini_dlm
