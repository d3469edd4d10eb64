// The argument checks both unmask backends share (unmask_cpu.cpp, unmask_cuda_glue.cpp). Uses
// torch headers, so only .cpp files include it.
#pragma once
#include <torch/types.h>

#include <cmath>

#include "unmask.h"

namespace mini_dlm {

struct UnmaskArgs {
  int64_t B, L, V;
  int rule, kind;
};

// Every input of torch.ops.mini_dlm.unmask checked at the boundary (RuntimeError on failure);
// all tensors must live on the logits' device. Dtype limits of a backend are its own check.
inline UnmaskArgs check_unmask_args(const at::Tensor& logits, const at::Tensor& tokens, const at::Tensor& eligible,
                                    at::IntArrayRef banned, at::IntArrayRef demote,
                                    const c10::optional<at::Tensor>& k, double tau,
                                    double factor, c10::string_view rule, c10::string_view kind,
                                    const c10::optional<at::Tensor>& scores) {
  TORCH_CHECK(logits.dim() == 3, "unmask: logits must be (B, L, V), got ", logits.dim(), " dims");
  TORCH_CHECK(logits.stride(2) == 1, "unmask: logits must be contiguous in V");
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2);
  const auto dev = logits.device();
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(0) == B && tokens.size(1) == L && tokens.scalar_type() == at::kLong,
              "unmask: tokens must be (", B, ", ", L, ") int64");
  TORCH_CHECK(eligible.dim() == 2 && eligible.size(0) == B && eligible.size(1) == L &&
                  eligible.scalar_type() == at::kBool,
              "unmask: eligible must be (", B, ", ", L, ") bool");
  TORCH_CHECK(tokens.device() == dev && eligible.device() == dev,
              "unmask: logits, tokens and eligible must be on one device");
  TORCH_CHECK(!banned.empty(), "unmask: banned must hold at least the mask token");
  for (int64_t id : banned) TORCH_CHECK(0 <= id && id < V, "unmask: banned id ", id, " outside [0, ", V, ")");
  for (int64_t id : demote) TORCH_CHECK(0 <= id && id < V, "unmask: demoted id ", id, " outside [0, ", V, ")");
  const int r = rule == "schedule" ? SCHEDULE : rule == "threshold" ? THRESHOLD : rule == "factor" ? FACTOR
              : rule == "factor_strict" ? FACTOR_STRICT : -1;
  TORCH_CHECK(r >= 0, "unmask: rule must be schedule, threshold, factor or factor_strict, got ", rule);
  TORCH_CHECK(r != SCHEDULE || (k.has_value() && k->dim() == 1 && k->size(0) == B &&
                                k->scalar_type() == at::kLong && k->device() == dev),
              "unmask: schedule mode needs k of shape (", B, ",) int64 on the logits' device");
  TORCH_CHECK((r != FACTOR && r != FACTOR_STRICT) || factor > 0, "unmask: factor must be > 0");
  TORCH_CHECK(!std::isnan(tau), "unmask: tau must be a number");
  const int c = kind == "low_confidence" ? LOW_CONFIDENCE : kind == "margin" ? MARGIN
              : kind == "entropy" ? ENTROPY : kind == "random" ? RANDOM : -1;
  TORCH_CHECK(c >= 0, "unmask: kind must be low_confidence, margin, entropy or random, got ", kind);
  TORCH_CHECK(c != RANDOM || (scores.has_value() && scores->dim() == 2 && scores->size(0) == B &&
                              scores->size(1) == L && scores->scalar_type() == at::kDouble &&
                              scores->device() == dev),
              "unmask: kind='random' needs scores of shape (", B, ", ", L, ") float64 on the logits' device");
  return {B, L, V, r, c};
}

}  // namespace mini_dlm
