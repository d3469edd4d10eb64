// Torch glue for the CUDA unmask (csrc/unmask_cuda.cu): checks, scratch buffers, the current
// stream, and the CUDA registration. Built only in CUDA builds (setup.py); the kernels
// themselves stay torch-free.
//
// STATUS: untested draft, like unmask_cuda.cu: syntax-checked with g++ against torch's headers
// only. setup.py builds it whenever torch sees a GPU; it must pass tests/test_ext.py and
// compute-sanitizer on a GPU before anyone relies on it.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include <vector>

#include "unmask_args.h"

namespace mini_dlm {

void launch_unmask_scan(const void* logits, int dtype, int64_t B, int64_t L, int64_t V, int64_t stride_b,
                        int64_t stride_i, const bool* eligible, const uint32_t* banned, int kind, double temperature,
                        uint64_t seed, int64_t* x0, double* conf, int* empty_row, cudaStream_t stream);
void launch_unmask_select(int64_t B, int64_t L, int64_t* tokens, int64_t tok_sb, int64_t tok_si, bool* eligible,
                          const int64_t* x0, const double* conf, const double* scores, int kind, int rule,
                          const int64_t* k, double tau, double factor, int32_t* order, int64_t* count,
                          cudaStream_t stream);

at::Tensor unmask_cuda(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& eligible, at::IntArrayRef banned,
                       const c10::optional<at::Tensor>& k, double tau, double factor, c10::string_view rule,
                       c10::string_view kind_name, const c10::optional<at::Tensor>& scores, double temperature,
                       int64_t seed) {
  const UnmaskArgs a = check_unmask_args(logits, tokens, eligible, banned, k, tau, factor, rule, kind_name, scores);
  TORCH_CHECK(logits.is_cuda(), "unmask_cuda: logits must be on a CUDA device");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "unmask_cuda: logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK(eligible.is_contiguous(), "unmask_cuda: eligible must be contiguous (it is written in place)");
  const int64_t B = a.B, L = a.L, V = a.V;
  const int kind = a.kind, rule_code = a.rule;

  std::vector<int32_t> bits((V + 31) / 32, 0);  // the banned ids as a bit set, copied to the device
  for (int64_t id : banned) bits[id >> 5] |= static_cast<int32_t>(1u << (id & 31));
  const c10::cuda::CUDAGuard guard(logits.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto on_device = [&](at::ScalarType t) { return logits.options().dtype(t); };
  const at::Tensor banned_bits =
      at::from_blob(bits.data(), {static_cast<int64_t>(bits.size())}, at::kInt).to(logits.device());
  at::Tensor x0 = at::empty({B * L}, on_device(at::kLong));
  at::Tensor conf = at::empty({B * L}, on_device(at::kDouble));
  at::Tensor order = at::empty({B * L}, on_device(at::kInt));
  at::Tensor count = at::empty({B}, on_device(at::kLong));
  at::Tensor empty_row = at::zeros({1}, on_device(at::kInt));
  const at::Tensor k_c = rule_code == SCHEDULE ? k->contiguous() : at::Tensor();
  const at::Tensor scores_c = kind == RANDOM ? scores->contiguous() : at::Tensor();

  launch_unmask_scan(logits.data_ptr(), dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2, B, L, V,
                     logits.stride(0), logits.stride(1), eligible.data_ptr<bool>(),
                     reinterpret_cast<const uint32_t*>(banned_bits.data_ptr<int32_t>()), kind, temperature,
                     static_cast<uint64_t>(seed), x0.data_ptr<int64_t>(), conf.data_ptr<double>(),
                     empty_row.data_ptr<int>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // one host sync: an all -inf eligible row is a caller error the CPU path reports too
  TORCH_CHECK(empty_row.item<int>() == 0, "unmask: an eligible position has no finite logit outside the banned ids");
  launch_unmask_select(B, L, tokens.data_ptr<int64_t>(), tokens.stride(0), tokens.stride(1), eligible.data_ptr<bool>(),
                       x0.data_ptr<int64_t>(), conf.data_ptr<double>(),
                       kind == RANDOM ? scores_c.data_ptr<double>() : nullptr, kind, rule_code,
                       rule_code == SCHEDULE ? k_c.data_ptr<int64_t>() : nullptr, tau, factor, order.data_ptr<int32_t>(),
                       count.data_ptr<int64_t>(), stream);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return count;
}

TORCH_LIBRARY_IMPL(mini_dlm, CUDA, m) { m.impl("unmask", &unmask_cuda); }

}  // namespace mini_dlm
