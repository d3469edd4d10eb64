// unmask on the CPU: one denoising decision (notes/03, notes/04, notes/05), in place.
// Specification: mini_dlm/ops.py: unmask_reference. Same selections and tokens; confidences
// to float64 rounding (the sums run in another order).
//
// Roofline: the op reads rows_read * V logits once; everything else is O(B * L). On a CPU the
// reference's cost is dominated by materialising float64 probabilities for every eligible row
// (several passes over (N, V) tensors); this kernel reads each row into cache once and keeps
// a handful of numbers per row.
//
// Algorithm
//   1. For every eligible (b, i), in parallel over rows, over v = 0..V-1 (banned ids skipped,
//      as if their logit were -inf), in float64: max m, the first argmax, the runner-up value,
//      with a temperature the first argmax of l + T * gumbel(seed, (b L + i) V + v), then
//      s = sum e^(l - m) and t = sum e^(l - m) (l - m) (see scan_row).
//      c = e^(l[x0] - m) / s | (1 - e^(l2 - m)) / s | t / s - log s | scores[b, i];
//      c = -inf if x0 is a demoted id.
//   2. For every batch row b, in parallel over b: sort its eligible positions by c (high
//      first, stable: lowest position first on ties), pick the prefix the mode asks for
//      (schedule: k[b]; threshold: all with c >= tau, at least 1; factor / factor_strict:
//      the run of ranks that pass factor_bound, then factor_commits, unmask.h), write x0 into
//      tokens and clear eligible.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "hash.h"
#include "unmask_args.h"

namespace mini_dlm {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Two passes over a row of V logits -> guess x0 and its confidence. Returns false if every
// allowed logit is -inf (nothing can be predicted).
//   pass 1 (no exp): max m, first argmax, runner-up value; with a temperature, the first
//                    argmax of l + T * gumbel.
//   pass 2 (one exp per logit): s = sum e^(l - m), and t = sum e^(l - m) (l - m) for entropy.
// The online single-pass form (rescale s when m grows, csrc/unmask_cuda.cu) is what the
// GPU kernel uses, where the row is read from HBM once; on a CPU the row is in cache for the
// second pass and skipping the rescaling branch is cheaper.
template <typename scalar_t>
bool scan_row(const scalar_t* row, int64_t V, const char* banned, int kind, double temperature,
              uint64_t key, uint64_t base, int64_t* x0_out, double* c_out) {
  double m = -kInf, second = -kInf, best_noisy = -kInf;
  int64_t argmax = -1, x0 = -1;
  for (int64_t v = 0; v < V; ++v) {
    if (banned[v]) continue;
    const double l = static_cast<double>(row[v]);
    if (l > m) {
      second = m, m = l, argmax = v;  // first index on ties: only a strictly larger l moves it
    } else if (l > second) {
      second = l;
    }
    if (temperature > 0 && l != -kInf) {
      const double noisy = gumbel_score(l, temperature, gumbel(key, base + static_cast<uint64_t>(v)));
      if (noisy > best_noisy) best_noisy = noisy, x0 = v;
    }
  }
  if (argmax < 0 || m == -kInf) return false;
  if (temperature <= 0) x0 = argmax;
  *x0_out = x0;
  if (kind == RANDOM) return true;  // the caller's score is the confidence: no sums needed
  double s = 0.0, t = 0.0;
  if (kind == ENTROPY) {
    for (int64_t v = 0; v < V; ++v) {
      const double z = static_cast<double>(row[v]) - m;
      if (banned[v] || z == -kInf) continue;
      const double e = std::exp(z);
      s += e, t += e * z;
    }
  } else {
    for (int64_t v = 0; v < V; ++v) s += banned[v] ? 0.0 : std::exp(static_cast<double>(row[v]) - m);
  }
  if (kind == LOW_CONFIDENCE) *c_out = std::exp(static_cast<double>(row[x0]) - m) / s;
  else if (kind == MARGIN) *c_out = (1.0 - std::exp(second - m)) / s;
  else if (kind == ENTROPY) *c_out = t / s - std::log(s);
  return true;
}

}  // namespace

at::Tensor unmask_cpu(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& eligible, at::IntArrayRef banned,
                      at::IntArrayRef demote, const c10::optional<at::Tensor>& k, double tau, double factor, c10::string_view rule,
                      c10::string_view kind_name, const c10::optional<at::Tensor>& scores, double temperature,
                      int64_t seed) {
  // -- every input checked at the boundary
  const UnmaskArgs a =
      check_unmask_args(logits, tokens, eligible, banned, demote, k, tau, factor, rule, kind_name, scores);
  TORCH_CHECK(logits.device().is_cpu(), "unmask_cpu: logits must be on the CPU");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "unmask: logits must be floating point, got ",
              logits.scalar_type());
  const int64_t B = a.B, L = a.L, V = a.V;
  const int kind = a.kind;
  const bool schedule = a.rule == SCHEDULE, threshold = a.rule == THRESHOLD;

  std::vector<char> is_banned(V, 0), is_demoted(V, 0);
  for (int64_t id : banned) is_banned[id] = 1;
  for (int64_t id : demote) is_demoted[id] = 1;
  const uint64_t key = splitmix64(static_cast<uint64_t>(seed));
  std::vector<int64_t> x0(B * L, 0);
  std::vector<double> conf(B * L, -kInf);
  auto tok = tokens.accessor<int64_t, 2>();
  auto elig = eligible.accessor<bool, 2>();
  std::atomic<bool> empty_row{false};
  const at::Tensor scores_c = kind == RANDOM ? scores->contiguous() : at::Tensor();
  const double* sc = kind == RANDOM ? scores_c.data_ptr<double>() : nullptr;

  // -- 1. one pass over each eligible row
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "unmask_cpu", [&] {
    const scalar_t* base = logits.data_ptr<scalar_t>();
    const int64_t sb = logits.stride(0), si = logits.stride(1);
    at::parallel_for(0, B * L, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / L, i = r % L;
        if (!elig[b][i]) continue;  // ineligible rows are never read
        const uint64_t index = static_cast<uint64_t>(r) * static_cast<uint64_t>(V);
        if (!scan_row<scalar_t>(base + b * sb + i * si, V, is_banned.data(), kind, temperature, key, index, &x0[r],
                                &conf[r]))
          empty_row = true;
        if (kind == RANDOM) conf[r] = sc[r];
        if (is_demoted[x0[r]]) conf[r] = -kInf;  // committed after every other guess
      }
    });
  });
  TORCH_CHECK(!empty_row, "unmask: an eligible position has no finite logit outside the banned ids");

  // -- 2. per batch row: rank the eligible positions, commit a prefix
  at::Tensor count = at::zeros({B}, tokens.options());
  auto cnt = count.accessor<int64_t, 1>();
  const at::Tensor k_c = schedule ? k->contiguous() : at::Tensor();
  const int64_t* kk = schedule ? k_c.data_ptr<int64_t>() : nullptr;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order;
    for (int64_t b = begin; b < end; ++b) {
      order.clear();
      for (int64_t i = 0; i < L; ++i)
        if (elig[b][i]) order.push_back(i);
      const double* c = conf.data() + b * L;
      std::stable_sort(order.begin(), order.end(), [&](int64_t p, int64_t q) { return c[p] > c[q]; });
      const int64_t n_elig = static_cast<int64_t>(order.size());
      int64_t n = 0;
      if (schedule) {
        n = std::min(std::max<int64_t>(kk[b], 0), n_elig);
      } else if (threshold) {
        while (n < n_elig && c[order[n]] >= tau) ++n;  // {c >= tau} is a prefix of the order
        n = std::min(std::max<int64_t>(n, 1), n_elig);
      } else {  // factor rules: the ranks that pass, then Fast-dLLM's exceptions
        while (n < n_elig && c[order[n]] >= factor_bound(a.rule, factor, n)) ++n;
        n = factor_commits(a.rule, n, n_elig);
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = order[j];
        tok[b][i] = x0[b * L + i];
        elig[b][i] = false;
      }
      cnt[b] = n;
    }
  });
  return count;
}

TORCH_LIBRARY_IMPL(mini_dlm, CPU, m) { m.impl("unmask", &unmask_cpu); }

}  // namespace mini_dlm
