// Codes and small rules every unmask backend shares (CPU, CUDA, the torch glue). No torch or
// CUDA headers.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MD_RULE __host__ __device__ __forceinline__
#else
#define MD_RULE inline
#endif

namespace mini_dlm {

enum Kind { LOW_CONFIDENCE = 0, MARGIN = 1, ENTROPY = 2, RANDOM = 3 };  // how a guess is scored
// which guesses commit: LLaDA's schedule, Fast-dLLM's threshold, Fast-dLLM's factor rule as its
// code does it (FACTOR) or as the strict longest run (FACTOR_STRICT); see ops.py: factor_count
enum Rule { SCHEDULE = 0, THRESHOLD = 1, FACTOR = 2, FACTOR_STRICT = 3 };

// The factor rules, over a row's eligible scores sorted high to low, c[0] >= c[1] >= ...:
// the score at 0-based rank r passes when it reaches factor_bound(rule, factor, r), which is
// 1 - f / (r + 2) (the paper's 1 - f / (n + 1) at 1-based rank n) except at rank 0: -1 in
// Fast-dLLM's code, -inf (always passes) in the strict rule.
MD_RULE double factor_bound(int rule, double factor, int64_t r) {
  if (r == 0) return rule == FACTOR ? -1.0 : -INFINITY;
  return 1.0 - factor / static_cast<double>(r + 2);
}

// run: how many ranks pass before the first that fails (n if none), of n eligible ->
// how many commit. Strict: run. Fast-dLLM's code: one more when the first failing rank is the
// first (r = 0) or the last (r = n - 1).
MD_RULE int64_t factor_commits(int rule, int64_t run, int64_t n) {
  return rule == FACTOR && run < n && (run == 0 || run == n - 1) ? run + 1 : run;
}

}  // namespace mini_dlm
