// The argument checks both block_attention backends share (attention_cpu.cpp,
// attention_cuda_glue.cpp), and the strided view of one K/V segment the kernels read in place.
// Uses torch headers, so only .cpp files include it.
#pragma once
#include <torch/types.h>

namespace mini_dlm {

struct AttentionArgs {
  int64_t B, H, b, D, Lc, Ls;  // batch, heads, block length, head dim, prefix slots, suffix length
};

inline void check_kv(const at::Tensor& q, const at::Tensor& t, const char* name, int64_t n) {
  TORCH_CHECK(t.dim() == 4 && t.size(0) == q.size(0) && t.size(1) == q.size(1) && t.size(2) == n &&
                  t.size(3) == q.size(3),
              "block_attention: ", name, " must be (", q.size(0), ", ", q.size(1), ", ", n, ", ", q.size(3), "), got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), "block_attention: ", name, " must have q's dtype ",
              q.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == q.device(), "block_attention: ", name, " must be on q's device");
  TORCH_CHECK(t.stride(3) == 1, "block_attention: ", name, " must be contiguous in D (stride(3) == 1)");
}

// Every input of torch.ops.mini_dlm.block_attention checked at the boundary (RuntimeError).
// Any strides are fine except along D. Dtype and head-dim limits of a backend are its own check.
inline AttentionArgs check_attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const c10::optional<at::Tensor>& k_prefix,
                                          const c10::optional<at::Tensor>& v_prefix,
                                          const c10::optional<at::Tensor>& prefix_len,
                                          const c10::optional<at::Tensor>& k_suffix,
                                          const c10::optional<at::Tensor>& v_suffix) {
  TORCH_CHECK(q.dim() == 4, "block_attention: q must be (B, H, b, D), got ", q.dim(), " dims");
  TORCH_CHECK(q.size(2) > 0, "block_attention: the block must hold at least one position");
  const int64_t b = q.size(2);
  check_kv(q, q, "q", b);
  check_kv(q, k, "k", b);
  check_kv(q, v, "v", b);
  TORCH_CHECK(k_prefix.has_value() == v_prefix.has_value() && k_prefix.has_value() == prefix_len.has_value(),
              "block_attention: give k_prefix, v_prefix and prefix_len together, or none of them");
  TORCH_CHECK(k_suffix.has_value() == v_suffix.has_value(), "block_attention: give k_suffix and v_suffix together");
  int64_t Lc = 0, Ls = 0;
  if (k_prefix.has_value()) {
    Lc = k_prefix->dim() == 4 ? k_prefix->size(2) : -1;
    check_kv(q, *k_prefix, "k_prefix", Lc);
    check_kv(q, *v_prefix, "v_prefix", Lc);
    TORCH_CHECK(prefix_len->dim() == 1 && prefix_len->size(0) == q.size(0) &&
                    prefix_len->scalar_type() == at::kLong && prefix_len->device() == q.device(),
                "block_attention: prefix_len must be (", q.size(0), ",) int64 on q's device");
  }
  if (k_suffix.has_value()) {
    Ls = k_suffix->dim() == 4 ? k_suffix->size(2) : -1;
    check_kv(q, *k_suffix, "k_suffix", Ls);
    check_kv(q, *v_suffix, "v_suffix", Ls);
  }
  return {q.size(0), q.size(1), b, q.size(3), Lc, Ls};
}

}  // namespace mini_dlm
