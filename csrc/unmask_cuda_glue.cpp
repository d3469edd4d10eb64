// Torch glue for the CUDA unmask (csrc/unmask_cuda.cu): argument checks, the workspace, the
// current stream, and the CUDA registration. Built only in CUDA builds (setup.py). Reads no
// tensor value and copies nothing to the device, so a sampler step can be captured in a CUDA
// graph; value preconditions are device-side asserts in the kernels.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <vector>

#include "unmask_args.h"
#include "unmask_cuda.h"

namespace mini_dlm {

// ids ascending and distinct, at most kMaxBannedCuda of them (they travel as kernel arguments).
static std::vector<int64_t> distinct_ids(at::IntArrayRef list, const char* what) {
  std::vector<int64_t> ids(list.begin(), list.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  TORCH_CHECK(ids.size() <= static_cast<size_t>(kMaxBannedCuda), "unmask (CUDA): at most ", kMaxBannedCuda, " ",
              what, " ids (mini_dlm.ops runs the reference for more), got ", ids.size());
  return ids;
}

at::Tensor unmask_cuda_op(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& eligible, at::IntArrayRef banned,
                          at::IntArrayRef demote, const c10::optional<at::Tensor>& k, double tau, double factor, c10::string_view rule,
                          c10::string_view kind_name, const c10::optional<at::Tensor>& scores, double temperature,
                          int64_t seed) {
  const UnmaskArgs a =
      check_unmask_args(logits, tokens, eligible, banned, demote, k, tau, factor, rule, kind_name, scores);
  TORCH_CHECK(logits.is_cuda(), "unmask (CUDA): logits must be on a CUDA device");
  const auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "unmask (CUDA): logits must be float32, bfloat16 or float16 (mini_dlm.ops runs the reference for "
              "float64), got ", dt);
  TORCH_CHECK(a.V < INT_MAX && a.L < INT_MAX, "unmask (CUDA): L and V must be below 2^31");
  const std::vector<int64_t> ids = distinct_ids(banned, "banned"), demoted = distinct_ids(demote, "demoted");

  const c10::cuda::CUDAGuard guard(logits.device());
  UnmaskCudaArgs c{};
  c.dtype = dt == at::kFloat ? 0 : dt == at::kBFloat16 ? 1 : 2;
  c.B = a.B, c.L = a.L, c.V = a.V;
  c.logits = logits.data_ptr(), c.logits_sb = logits.stride(0), c.logits_si = logits.stride(1);
  c.tokens = tokens.data_ptr<int64_t>(), c.tokens_sb = tokens.stride(0), c.tokens_si = tokens.stride(1);
  c.eligible = eligible.data_ptr<bool>(), c.eligible_sb = eligible.stride(0), c.eligible_si = eligible.stride(1);
  c.n_banned = static_cast<int>(ids.size());
  for (size_t j = 0; j < ids.size(); ++j) c.banned[j] = static_cast<int>(ids[j]);
  c.n_demote = static_cast<int>(demoted.size());
  for (size_t j = 0; j < demoted.size(); ++j) c.demote[j] = static_cast<int>(demoted[j]);
  c.kind = a.kind, c.rule = a.rule;
  if (a.rule == SCHEDULE) c.k = k->data_ptr<int64_t>(), c.k_s = k->stride(0);
  c.tau = tau, c.factor = factor;
  if (a.kind == RANDOM) c.scores = scores->data_ptr<double>(), c.scores_sb = scores->stride(0), c.scores_si = scores->stride(1);
  c.temperature = temperature, c.seed = static_cast<uint64_t>(seed);
  at::Tensor count = at::empty({a.B}, tokens.options());
  at::Tensor workspace = at::empty({unmask_cuda_workspace_bytes(a.B, a.L)}, logits.options().dtype(at::kByte));
  c.count = count.data_ptr<int64_t>(), c.workspace = workspace.data_ptr();
  unmask_cuda(c, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return count;
}

TORCH_LIBRARY_IMPL(mini_dlm, CUDA, m) { m.impl("unmask", &unmask_cuda_op); }

}  // namespace mini_dlm
