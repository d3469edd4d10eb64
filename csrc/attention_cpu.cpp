// block_attention on the CPU: a block's queries over [prefix[:len] ; block ; suffix], the three
// segments read in place (notes/04, notes/05).
// Specification: mini_dlm/ops.py: block_attention_reference. Values agree to fp32 rounding
// (float64 inputs: float64 rounding); the sums run in another order.
//
// Roofline: the op reads q, the block's k/v, each row's valid prefix and the suffix once:
// bytes ~ B H (2 b + 2 (len + b + Ls)) D bytes_per_elem, and computes 4 b (len + b + Ls) D flops
// per (batch row, head). The reference first copies the whole cache into one tensor
// (torch.cat, then masked_fill over it) and only then attends; this kernel never copies it.
//
// Algorithm: FlashAttention-2's loop order, on a CPU.
//   One task per (batch row, head, tile of Tq queries), in parallel (at::parallel_for).
//   The task keeps its queries (scaled by 1/sqrt(D)), an output accumulator O, and per query
//   the running max m and running sum l, all in acc_t (float32; float64 for float64 inputs).
//   For each tile of Tk keys of each segment (only the row's first prefix_len slots of the
//   prefix, all of the block and the suffix):
//     stage  K^T (D x Tk) and V (Tk x D), converted to acc_t (the CPU's "shared memory");
//     S      = Q K^T for the tile, as D axpy's over the keys (loops gcc vectorises);
//     online softmax: m' = max(m, max_j S_j), P = exp(S - m'), l = l e^(m - m') + sum_j P_j,
//            O = O e^(m - m') + P V;
//   and at the end O / l, converted to q's dtype.
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "attention_args.h"

namespace mini_dlm {

namespace {

constexpr int64_t Tq = 32;  // queries per task
constexpr int64_t Tk = 64;  // keys per staged tile

// One K/V segment of one (batch row, head): row t of K is k + t * st (contiguous in D).
template <typename scalar_t>
struct Segment {
  const scalar_t* k;
  const scalar_t* v;
  int64_t k_st, v_st, n;  // row strides, number of keys used
};

template <typename scalar_t>
Segment<scalar_t> segment(const at::Tensor& k, const at::Tensor& v, int64_t bi, int64_t hi, int64_t n) {
  const auto* kp = k.data_ptr<scalar_t>() + bi * k.stride(0) + hi * k.stride(1);
  const auto* vp = v.data_ptr<scalar_t>() + bi * v.stride(0) + hi * v.stride(1);
  return {kp, vp, k.stride(2), v.stride(2), n};
}

// e^x for x <= 0, the softmax's only exp (scores minus their running max). float: a branch-free
// Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2, then e^r by its degree-7 Taylor
// polynomial (error < 1e-8 relative) times 2^k built from the exponent bits, so that a loop of
// them vectorises; std::exp is a scalar libm call. Below -87.3 the result is held at ~1e-38
// (an error of 1e-38 in a sum that is at least 1). double keeps std::exp.
inline float exp_nonpos(float x) {
  x = std::max(x, -87.3f);
  const float k = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round(x / ln2): 1.5 * 2^23 trick
  const float r = (x - k * 0.693359375f) + k * 2.12194440e-4f;  // x - k ln2, ln2 in two parts
  float p = 1.f / 5040;
  for (float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = p * r + c;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // 2^k, k in [-126, 0]
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_nonpos(double x) { return std::exp(x); }

// A 32-byte SIMD register of acc_t (GCC/Clang vector extension): the compiler emits the
// instructions -march=native allows (AVX2/AVX-512 here, NEON on ARM). W lanes.
template <typename T>
struct Simd {
  typedef T vec __attribute__((vector_size(32)));
  static constexpr int W = 32 / sizeof(T);
  static vec load(const T* p) {
    vec v;
    std::memcpy(&v, p, sizeof(vec));
    return v;
  }
  static void store(T* p, const vec& v) { std::memcpy(p, &v, sizeof(vec)); }
};

// S (nq x Tk) = Q (nq x D) K^T, with K^T staged as D x Tk. Register tiles of 4 queries x 16
// keys: each staged key vector is loaded once for 4 queries; the sums never leave registers.
template <typename acc_t>
void scores_tile(const acc_t* __restrict Q, const acc_t* __restrict KT, acc_t* __restrict S, int64_t nq, int64_t D,
                 int64_t Dp) {
  using V = Simd<acc_t>;
  constexpr int N = 16 / V::W;  // vectors per 16 keys
  for (int64_t r0 = 0; r0 < nq; r0 += 4)
    for (int64_t j0 = 0; j0 < Tk; j0 += 16) {
      typename V::vec acc[4][N] = {};
      for (int64_t d = 0; d < D; ++d) {
        typename V::vec k[N];
        for (int n = 0; n < N; ++n) k[n] = V::load(KT + d * Tk + j0 + n * V::W);
        for (int rr = 0; rr < 4; ++rr) {
          const acc_t qv = Q[(r0 + rr) * Dp + d];
          for (int n = 0; n < N; ++n) acc[rr][n] += qv * k[n];
        }
      }
      for (int rr = 0; rr < 4; ++rr)
        for (int n = 0; n < N; ++n) V::store(S + (r0 + rr) * Tk + j0 + n * V::W, acc[rr][n]);
    }
}

// O (nq x Dp) += P (nq x Tk) V (nk x Dp), register tiles of 4 queries x 16 dims.
template <typename acc_t>
void weighted_sum_tile(const acc_t* __restrict P, const acc_t* __restrict Vt, acc_t* __restrict O, int64_t nq,
                       int64_t nk, int64_t Dp) {
  using V = Simd<acc_t>;
  constexpr int N = 16 / V::W;
  for (int64_t r0 = 0; r0 < nq; r0 += 4)
    for (int64_t d0 = 0; d0 < Dp; d0 += 16) {
      typename V::vec acc[4][N];
      for (int rr = 0; rr < 4; ++rr)
        for (int n = 0; n < N; ++n) acc[rr][n] = V::load(O + (r0 + rr) * Dp + d0 + n * V::W);
      for (int64_t j = 0; j < nk; ++j) {
        typename V::vec v[N];
        for (int n = 0; n < N; ++n) v[n] = V::load(Vt + j * Dp + d0 + n * V::W);
        for (int rr = 0; rr < 4; ++rr) {
          const acc_t p = P[(r0 + rr) * Tk + j];
          for (int n = 0; n < N; ++n) acc[rr][n] += p * v[n];
        }
      }
      for (int rr = 0; rr < 4; ++rr)
        for (int n = 0; n < N; ++n) V::store(O + (r0 + rr) * Dp + d0 + n * V::W, acc[rr][n]);
    }
}

// One task: nq <= Tq queries of one (batch row, head) over its segments. Buffers padded with
// zeros to whole register tiles (rows to 4, D to Dp, a multiple of 16), so the tile loops
// need no edge cases; padded keys get p = 0, padded dims are never written out.
template <typename scalar_t, typename acc_t>
void attend_task(const Segment<scalar_t>* segs, int n_segs, const scalar_t* q, int64_t q_st, int64_t nq, int64_t D,
                 scalar_t* out, int64_t o_st, std::vector<acc_t>& work) {
  const int64_t Dp = (D + 15) / 16 * 16, nq4 = (nq + 3) / 4 * 4;
  // work: Q (Tq x Dp) | O (Tq x Dp) | KT (D x Tk) | V (Tk x Dp) | S (Tq x Tk) | m (Tq) | l (Tq)
  work.assign(2 * Tq * Dp + D * Tk + Tk * Dp + Tq * Tk + 2 * Tq, acc_t(0));
  acc_t* Q = work.data();
  acc_t* O = Q + Tq * Dp;
  acc_t* KT = O + Tq * Dp;
  acc_t* Vt = KT + D * Tk;
  acc_t* S = Vt + Tk * Dp;
  acc_t* m = S + Tq * Tk;
  acc_t* l = m + Tq;
  const acc_t scale = acc_t(1) / std::sqrt(acc_t(D));
  for (int64_t r = 0; r < nq; ++r)
    for (int64_t d = 0; d < D; ++d) Q[r * Dp + d] = static_cast<acc_t>(q[r * q_st + d]) * scale;
  std::fill(m, m + Tq, -std::numeric_limits<acc_t>::infinity());
  for (int s = 0; s < n_segs; ++s) {
    const Segment<scalar_t>& seg = segs[s];
    for (int64_t t0 = 0; t0 < seg.n; t0 += Tk) {
      const int64_t nk = std::min(Tk, seg.n - t0);
      for (int64_t j = 0; j < nk; ++j) {  // stage the tile: K transposed, V as is
        const scalar_t* kr = seg.k + (t0 + j) * seg.k_st;
        const scalar_t* vr = seg.v + (t0 + j) * seg.v_st;
        for (int64_t d = 0; d < D; ++d) {
          KT[d * Tk + j] = static_cast<acc_t>(kr[d]);
          Vt[j * Dp + d] = static_cast<acc_t>(vr[d]);
        }
      }
      scores_tile(Q, KT, S, nq4, D, Dp);
      for (int64_t r = 0; r < nq; ++r) {  // online softmax, row by row
        acc_t* Sr = S + r * Tk;
        const acc_t m_new = std::max(m[r], *std::max_element(Sr, Sr + nk));
        // rescales what came before (on the first tile O = l = 0, so alpha's value is moot)
        const acc_t alpha = exp_nonpos(m[r] - m_new);
        acc_t sum = 0;
        for (int64_t j = 0; j < nk; ++j) {
          Sr[j] = exp_nonpos(Sr[j] - m_new);
          sum += Sr[j];
        }
        m[r] = m_new;
        l[r] = l[r] * alpha + sum;
        for (int64_t d = 0; d < Dp; ++d) O[r * Dp + d] *= alpha;
      }
      weighted_sum_tile(S, Vt, O, nq4, nk, Dp);
    }
  }
  for (int64_t r = 0; r < nq; ++r)
    for (int64_t d = 0; d < D; ++d) out[r * o_st + d] = static_cast<scalar_t>(O[r * Dp + d] / l[r]);
}

}  // namespace

at::Tensor block_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const c10::optional<at::Tensor>& k_prefix, const c10::optional<at::Tensor>& v_prefix,
                               const c10::optional<at::Tensor>& prefix_len, const c10::optional<at::Tensor>& k_suffix,
                               const c10::optional<at::Tensor>& v_suffix) {
  const AttentionArgs a = check_attention_args(q, k, v, k_prefix, v_prefix, prefix_len, k_suffix, v_suffix);
  TORCH_CHECK(q.device().is_cpu(), "block_attention_cpu: q must be on the CPU");
  std::vector<int64_t> len(a.B, 0);
  if (prefix_len.has_value()) {
    const at::Tensor pl = prefix_len->contiguous();
    for (int64_t r = 0; r < a.B; ++r) {
      len[r] = pl.data_ptr<int64_t>()[r];
      TORCH_CHECK(0 <= len[r] && len[r] <= a.Lc, "block_attention: prefix_len[", r, "] = ", len[r],
                  " outside [0, ", a.Lc, "]");
    }
  }
  at::Tensor out = at::empty({a.B, a.H, a.b, a.D}, q.options());
  const int64_t n_qt = (a.b + Tq - 1) / Tq;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "block_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::parallel_for(0, a.B * a.H * n_qt, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> work;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / (a.H * n_qt), hi = task / n_qt % a.H, r0 = task % n_qt * Tq;
        Segment<scalar_t> segs[3];
        int n_segs = 0;
        if (a.Lc > 0 && len[bi] > 0) segs[n_segs++] = segment<scalar_t>(*k_prefix, *v_prefix, bi, hi, len[bi]);
        segs[n_segs++] = segment<scalar_t>(k, v, bi, hi, a.b);
        if (a.Ls > 0) segs[n_segs++] = segment<scalar_t>(*k_suffix, *v_suffix, bi, hi, a.Ls);
        const scalar_t* qp = q.data_ptr<scalar_t>() + bi * q.stride(0) + hi * q.stride(1) + r0 * q.stride(2);
        scalar_t* op = out.data_ptr<scalar_t>() + ((bi * a.H + hi) * a.b + r0) * a.D;
        attend_task<scalar_t, acc_t>(segs, n_segs, qp, q.stride(2), std::min(Tq, a.b - r0), a.D, op, a.D, work);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(mini_dlm, CPU, m) { m.impl("block_attention", &block_attention_cpu); }

}  // namespace mini_dlm
