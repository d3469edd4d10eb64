// unmask on the CPU: one denoising decision (DESIGN.md sections 3, 4 and 8), in place.
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
//      c = e^(l[x0] - m) / s | (1 - e^(l2 - m)) / s | t / s - log s | scores[b, i].
//   2. For every batch row b, in parallel over b: sort its eligible positions by c (high
//      first, stable: lowest position first on ties), pick the prefix the mode asks for
//      (schedule: k[b]; threshold: all with c >= tau, at least 1; factor: longest run with
//      c(n) >= 1 - f / (n + 1), at least 1), write x0 into tokens and clear eligible.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "hash.h"

namespace mini_dlm {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

enum Kind { LOW_CONFIDENCE = 0, MARGIN = 1, ENTROPY = 2, RANDOM = 3 };

int kind_of(c10::string_view kind) {
  if (kind == "low_confidence") return LOW_CONFIDENCE;
  if (kind == "margin") return MARGIN;
  if (kind == "entropy") return ENTROPY;
  if (kind == "random") return RANDOM;
  TORCH_CHECK(false, "unmask: kind must be low_confidence, margin, entropy or random, got ", kind);
  return -1;
}

// Two passes over a row of V logits -> guess x0 and its confidence. Returns false if every
// allowed logit is -inf (nothing can be predicted).
//   pass 1 (no exp): max m, first argmax, runner-up value; with a temperature, the first
//                    argmax of l + T * gumbel.
//   pass 2 (one exp per logit): s = sum e^(l - m), and t = sum e^(l - m) (l - m) for entropy.
// The online single-pass form of DESIGN.md section 8 (rescale s when m grows) is what the
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
      const double noisy = l + temperature * gumbel(key, base + static_cast<uint64_t>(v));
      if (noisy > best_noisy) best_noisy = noisy, x0 = v;
    }
  }
  if (argmax < 0 || m == -kInf) return false;
  if (temperature <= 0) x0 = argmax;
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
  *x0_out = x0;
  if (kind == LOW_CONFIDENCE) *c_out = std::exp(static_cast<double>(row[x0]) - m) / s;
  else if (kind == MARGIN) *c_out = (1.0 - std::exp(second - m)) / s;
  else if (kind == ENTROPY) *c_out = t / s - std::log(s);
  return true;
}

}  // namespace

at::Tensor unmask_cpu(const at::Tensor& logits, at::Tensor& tokens, at::Tensor& eligible, at::IntArrayRef banned,
                      const c10::optional<at::Tensor>& k, double tau, double factor, c10::string_view rule,
                      c10::string_view kind_name, const c10::optional<at::Tensor>& scores, double temperature,
                      int64_t seed) {
  // -- every input checked at the boundary
  TORCH_CHECK(logits.dim() == 3, "unmask: logits must be (B, L, V), got ", logits.dim(), " dims");
  TORCH_CHECK(logits.device().is_cpu(), "unmask_cpu: logits must be on the CPU");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "unmask: logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.stride(2) == 1, "unmask: logits must be contiguous in V");
  const int64_t B = logits.size(0), L = logits.size(1), V = logits.size(2);
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(0) == B && tokens.size(1) == L && tokens.scalar_type() == at::kLong,
              "unmask: tokens must be (", B, ", ", L, ") int64");
  TORCH_CHECK(eligible.dim() == 2 && eligible.size(0) == B && eligible.size(1) == L &&
                  eligible.scalar_type() == at::kBool,
              "unmask: eligible must be (", B, ", ", L, ") bool");
  TORCH_CHECK(tokens.device().is_cpu() && eligible.device().is_cpu(), "unmask_cpu: tokens, eligible on the CPU");
  TORCH_CHECK(!banned.empty(), "unmask: banned must hold at least the mask token");
  for (int64_t id : banned) TORCH_CHECK(0 <= id && id < V, "unmask: banned id ", id, " outside [0, ", V, ")");
  const bool schedule = rule == "schedule", threshold = rule == "threshold", by_factor = rule == "factor";
  TORCH_CHECK(schedule || threshold || by_factor, "unmask: rule must be schedule, threshold or factor");
  TORCH_CHECK(!schedule || (k.has_value() && k->dim() == 1 && k->size(0) == B && k->scalar_type() == at::kLong &&
                            k->device().is_cpu()),
              "unmask: schedule mode needs k of shape (", B, ",) int64 on the CPU");
  TORCH_CHECK(!by_factor || factor > 0, "unmask: factor must be > 0");
  TORCH_CHECK(!std::isnan(tau), "unmask: tau must be a number");
  const int kind = kind_of(kind_name);
  TORCH_CHECK(kind != RANDOM || (scores.has_value() && scores->dim() == 2 && scores->size(0) == B &&
                                 scores->size(1) == L && scores->scalar_type() == at::kDouble &&
                                 scores->device().is_cpu()),
              "unmask: kind='random' needs scores of shape (", B, ", ", L, ") float64 on the CPU");

  std::vector<char> is_banned(V, 0);
  for (int64_t id : banned) is_banned[id] = 1;
  const uint64_t key = splitmix64(static_cast<uint64_t>(seed));
  std::vector<int64_t> x0(B * L, 0);
  std::vector<double> conf(B * L, -kInf);
  auto tok = tokens.accessor<int64_t, 2>();
  auto elig = eligible.accessor<bool, 2>();
  std::atomic<bool> empty_row{false};

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
      }
    });
  });
  TORCH_CHECK(!empty_row, "unmask: an eligible position has no finite logit outside the banned ids");
  if (kind == RANDOM) {
    auto sc = scores->accessor<double, 2>();
    for (int64_t r = 0; r < B * L; ++r)
      if (elig[r / L][r % L]) conf[r] = sc[r / L][r % L];
  }

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
      } else {
        n = std::min<int64_t>(1, n_elig);  // c(1) always goes
        while (n < n_elig && c[order[n]] >= 1.0 - factor / static_cast<double>(n + 2)) ++n;
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
