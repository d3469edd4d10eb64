// unmask on the GPU: one denoising decision, in place, with no host synchronisation.
// Specification: mini_dlm/ops.py: unmask_reference. Same selections, tokens and counts; the
// confidences agree with its float64 values to about 1e-7 relative (see "Precision").
// No torch headers (the glue is unmask_cuda_glue.cpp):
//
//   nvcc -arch=sm_90 -O3 -Icsrc -c csrc/unmask_cuda.cu
//
// Roofline: bytes = rows_read * V * bytes_per_logit; everything else is O(B L). H200, B=64,
// L=256, V=32768 bf16, every row eligible: 1.07 GB, about 250 us at 4.3 TB/s; one block of 32
// eligible per batch row: 134 MB, about 31 us. Per logit the scan spends one exp2f and a few
// fp32 operations; doubles appear once per 16-byte chunk, so it stays memory-bound.
//
// Kernel 1, unmask_scan: one warp per (b, i) row; a row that is not eligible is never read.
//   The row is read as a scalar head up to its first 16-byte boundary (rows of V = 50257 bf16
//   logits are not aligned), then whole 16-byte chunks (8 bf16 / 8 fp16 / 4 fp32 logits), four
//   loads in flight per lane, then a scalar tail. Each lane keeps an online softmax state of
//   the logits it saw (RowState: max m, its first index, runner-up, s = 1 + s_rest, t), which
//   fold_chunk updates once per chunk:
//     in fp32  the chunk's max and runner-up, e_j = 2^((l_j - m) log2(e)), and the chunk sums
//              es = sum e_j, ts = sum e_j (l_j - m), leaving out the row's max itself;
//     in double, once per chunk: if the chunk holds a new max, rescale s and t to it (the old
//              max joins the rest), then s_rest += es, t += ts.
//   Banned ids never enter the hot loop: each lane knows its next chunk that holds one, and only
//   that chunk masks them to -inf. With a temperature, every logit also gets its Gumbel score
//   l + T g in double (hash.h: the same noise as the reference, rounded as it rounds) and the
//   first argmax of that is x0. The 32 lane states merge by warp shuffles (merge), lane 0 writes
//   x0 and the confidence c: e^(l[x0] - m) / s, (1 - e^(l2 - m)) / s or t / s - log s (exps and
//   logs in double).
// Kernel 2, unmask_select: one block per batch row.
//   Compacts the row's eligible positions (in position order) with a block-wide ballot scan,
//   their c set to -inf where the guess is a demoted id, and finds the best one (highest c,
//   lowest position on ties). Then
//     threshold  commit {c >= tau} and the best one: no sort;
//     schedule   rank each eligible position: rank = #{q : c_q > c_p, or c_q = c_p and q < p},
//                counted against tiles of the compacted list in shared memory (O(n^2 / threads):
//                microseconds for a block of 32 or a canvas of 1024); commit rank < k;
//     factor     the same ranks; run = the first rank r with c < factor_bound(r) (a block
//                minimum; unmask.h), n = factor_commits(run) (Fast-dLLM's exceptions, or none
//                for factor_strict); commit rank < n.
//   Writes tokens and eligible in place and the count of the row.
//
// Precision. s = 1 + s_rest with the max's own e = 1 kept out of the fp32 sums: a near-certain
// row (a lead of 17+ nats) keeps its tiny terms, so c < 1 as in float64 and tau = 1 commits one
// position (tests: test_unmask_tau_one_on_near_certain_rows). The e_j are fp32 (about 1e-7
// relative each), so two positions whose float64 confidences differ by less than that may
// order differently from the reference; equal rows (exact ties) give equal c and order by position.
#include <limits.h>

#include "cuda_common.cuh"
#include "hash.h"
#include "unmask_cuda.h"

namespace mini_dlm {

namespace {

constexpr int SCAN_THREADS = 256;  // 8 rows per block
constexpr int UNROLL = 4;          // 16-byte loads in flight per lane
constexpr int SELECT_THREADS = 256;
constexpr float LOG2E = 1.4426950408889634f;

// Everything the scan reads and writes, from UnmaskCudaArgs (kernel arguments: no copies).
struct ScanParams {
  const void* logits;
  int64_t logits_sb, logits_si, B, L;
  int V;
  const bool* eligible;
  int64_t eligible_sb, eligible_si;
  int n_banned;
  int banned[kMaxBannedCuda];
  int kind;
  double temperature;
  uint64_t key;  // splitmix64(seed)
  int64_t* x0;   // (B L) out
  double* conf;  // (B L) out
};

// The online softmax state of the logits a lane (and, after merge, the warp) has seen.
struct RowState {
  float m;        // max logit; -inf while nothing allowed was seen
  float second;   // the runner-up value (equal to m on a tie)
  int argmax;     // first index of m; -1 while nothing was seen
  double s_rest;  // sum over the other logits of e^(l - m): s = 1 + s_rest
  double t;       // sum of e^(l - m) (l - m): the entropy term
  double noisy;   // temperature > 0: the best Gumbel score l + T g ...
  int x0;         // ... and its first index
};

__device__ __forceinline__ RowState empty_state() {
  return {-CUDART_INF_F, -CUDART_INF_F, -1, 0.0, 0.0, -CUDART_INF, -1};
}

// Fold N logits x (banned ones already -inf), indices v0 .. v0 + N - 1, all above the lane's
// earlier indices, into st.
template <int N>
__device__ __forceinline__ void fold_chunk(RowState& st, const float (&x)[N], int v0) {
  float cm = x[0], c2 = -CUDART_INF_F;  // the chunk's max (first index ci) and runner-up
  int ci = 0;
#pragma unroll
  for (int j = 1; j < N; ++j) {
    if (x[j] > cm) c2 = cm, cm = x[j], ci = j;
    else c2 = fmaxf(c2, x[j]);
  }
  if (cm == -CUDART_INF_F) return;  // nothing allowed here
  int skip = -1;                    // the position of the row's max within this chunk, if here
  if (cm > st.m) {                  // a new max: rescale what came before, in double
    if (st.argmax >= 0) {
      const double d = (double)st.m - (double)cm, a = exp(d), s_old = 1.0 + st.s_rest;
      st.t = a * (st.t + d * s_old);
      st.s_rest = a * s_old;  // the old max is one of the rest now
      st.second = fmaxf(st.m, c2);
    } else {
      st.second = c2;
    }
    st.m = cm, st.argmax = v0 + ci, skip = ci;
  } else {
    st.second = fmaxf(st.second, cm);
  }
  float es = 0.f, ts = 0.f;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (j == skip) continue;  // e = 1 and l - m = 0: counted by the "1 +" of s
    const float z = x[j] - st.m;
    const float e = exp2f(z * LOG2E);
    es += e;
    ts += e > 0.f ? e * z : 0.f;  // (-inf * 0 would be NaN)
  }
  st.s_rest += (double)es, st.t += (double)ts;
}

// Temperature > 0: the first argmax of the Gumbel scores l + T g, in double like the reference.
template <int N>
__device__ __forceinline__ void sample_chunk(RowState& st, const float (&x)[N], int v0, const ScanParams& p,
                                             uint64_t base) {
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (x[j] == -CUDART_INF_F) continue;
    const double score = gumbel_score((double)x[j], p.temperature, gumbel(p.key, base + (uint64_t)(v0 + j)));
    if (score > st.noisy) st.noisy = score, st.x0 = v0 + j;  // strict: the first index wins
  }
}

// a <- the state of both sets of logits
__device__ __forceinline__ void merge(RowState& a, const RowState& b) {
  if (b.argmax >= 0) {
    if (a.argmax < 0) {
      a.m = b.m, a.second = b.second, a.argmax = b.argmax, a.s_rest = b.s_rest, a.t = b.t;
    } else {
      const bool b_wins = b.m > a.m || (b.m == a.m && b.argmax < a.argmax);
      const RowState& hi = b_wins ? b : a;
      const RowState& lo = b_wins ? a : b;
      const double d = (double)lo.m - (double)hi.m, w = exp(d), s_lo = 1.0 + lo.s_rest;
      const double s_rest = hi.s_rest + w * s_lo, t = hi.t + w * (lo.t + d * s_lo);
      const float second = fmaxf(hi.second, lo.m), m = hi.m;
      const int argmax = hi.argmax;
      a.m = m, a.second = second, a.argmax = argmax, a.s_rest = s_rest, a.t = t;
    }
  }
  if (b.x0 >= 0 && (a.x0 < 0 || b.noisy > a.noisy || (b.noisy == a.noisy && b.x0 < a.x0))) a.noisy = b.noisy, a.x0 = b.x0;
}

__device__ __forceinline__ RowState shfl_xor(const RowState& a, int o) {
  RowState b;
  b.m = __shfl_xor_sync(FULL_MASK, a.m, o);
  b.second = __shfl_xor_sync(FULL_MASK, a.second, o);
  b.argmax = __shfl_xor_sync(FULL_MASK, a.argmax, o);
  b.s_rest = __shfl_xor_sync(FULL_MASK, a.s_rest, o);
  b.t = __shfl_xor_sync(FULL_MASK, a.t, o);
  b.noisy = __shfl_xor_sync(FULL_MASK, a.noisy, o);
  b.x0 = __shfl_xor_sync(FULL_MASK, a.x0, o);
  return b;
}

// Is v one of the n ids?
__device__ __forceinline__ bool contains(const int* ids, int n, int64_t v) {
  for (int k = 0; k < n; ++k)
    if (ids[k] == v) return true;
  return false;
}

__device__ __forceinline__ bool is_banned(const ScanParams& p, int v) { return contains(p.banned, p.n_banned, v); }

// The first chunk >= from, among this lane's chunks (c = lane mod 32), that holds a banned id;
// INT_MAX if none. Chunk c covers logits head + c VEC .. head + c VEC + VEC - 1.
__device__ int next_banned_chunk(const ScanParams& p, int head, int vec, int n_chunks, int lane, int from) {
  int best = INT_MAX;
  for (int k = 0; k < p.n_banned; ++k) {
    if (p.banned[k] < head) continue;
    const int c = (p.banned[k] - head) / vec;
    if (c >= from && c < n_chunks && c % 32 == lane && c < best) best = c;
  }
  return best;
}

template <typename T, bool SAMPLE>
__device__ __forceinline__ void consume_one(RowState& st, const T* row, int v, const ScanParams& p, uint64_t base) {
  const float x[1] = {is_banned(p, v) ? -CUDART_INF_F : to_float(row[v])};
  fold_chunk<1>(st, x, v);
  if (SAMPLE) sample_chunk<1>(st, x, v, p, base);
}

// grid: ceil(B L / 8) blocks of 8 warps; warp w of block k scans row r = 8 k + w = b L + i.
template <typename T, bool SAMPLE>
__global__ void __launch_bounds__(SCAN_THREADS) unmask_scan(const __grid_constant__ ScanParams p) {
  constexpr int VEC = 16 / sizeof(T);  // logits per 16-byte chunk
  const int64_t r = (int64_t)blockIdx.x * (SCAN_THREADS / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= p.B * p.L) return;
  const int64_t b = r / p.L, i = r % p.L;
  if (!p.eligible[b * p.eligible_sb + i * p.eligible_si]) return;  // the whole warp leaves
  const T* row = static_cast<const T*>(p.logits) + b * p.logits_sb + i * p.logits_si;  // 64-bit offsets
  const uint64_t base = (uint64_t)r * (uint64_t)p.V;  // the noise index of logit (b, i, 0)

  const int head = min(p.V, (int)((16 - (uintptr_t)row % 16) % 16 / sizeof(T)));  // up to a 16-byte boundary
  const int n_chunks = (p.V - head) / VEC, tail = head + n_chunks * VEC;
  RowState st = empty_state();
  if (lane < head) consume_one<T, SAMPLE>(st, row, lane, p, base);

  const int4* chunks = reinterpret_cast<const int4*>(row + head);
  int banned_chunk = next_banned_chunk(p, head, VEC, n_chunks, lane, 0);
  for (int c0 = lane; c0 < n_chunks; c0 += 32 * UNROLL) {
    int4 raw[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u)  // all loads first: UNROLL of them in flight
      if (c0 + 32 * u < n_chunks) raw[u] = __ldg(chunks + c0 + 32 * u);
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int c = c0 + 32 * u, v0 = head + c * VEC;
      if (c >= n_chunks) break;
      const T* e = reinterpret_cast<const T*>(&raw[u]);
      float x[VEC];
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[j] = to_float(e[j]);
      if (c == banned_chunk) {  // rare: mask the banned ids of this chunk
#pragma unroll
        for (int j = 0; j < VEC; ++j)
          if (is_banned(p, v0 + j)) x[j] = -CUDART_INF_F;
        banned_chunk = next_banned_chunk(p, head, VEC, n_chunks, lane, c + 1);
      }
      fold_chunk<VEC>(st, x, v0);
      if (SAMPLE) sample_chunk<VEC>(st, x, v0, p, base);
    }
  }
  if (tail + lane < p.V) consume_one<T, SAMPLE>(st, row, tail + lane, p, base);

#pragma unroll
  for (int o = 16; o > 0; o /= 2) merge(st, shfl_xor(st, o));
  if (lane != 0) return;
  MD_DEVICE_CHECK(st.argmax >= 0 && "unmask: an eligible position has no finite logit outside the banned ids");
  const int x0 = SAMPLE ? st.x0 : st.argmax;
  const double s = 1.0 + st.s_rest, m = st.m;
  p.x0[r] = x0;
  if (p.kind == LOW_CONFIDENCE) p.conf[r] = exp((double)to_float(row[x0]) - m) / s;
  else if (p.kind == MARGIN) p.conf[r] = (1.0 - exp((double)st.second - m)) / s;
  else if (p.kind == ENTROPY) p.conf[r] = st.t / s - log(s);
}

// Everything the selection reads and writes, from UnmaskCudaArgs.
struct SelectParams {
  int64_t L;
  int64_t* tokens;
  int64_t tokens_sb, tokens_si;
  bool* eligible;
  int64_t eligible_sb, eligible_si;
  const int64_t* x0;     // (B L) from the scan
  const double* conf;    // (B L) from the scan, or
  const double* scores;  // kind RANDOM: the caller's scores, strided
  int64_t scores_sb, scores_si;
  int rule;
  const int64_t* k;
  int64_t k_s;
  double tau, factor;
  int n_demote;
  int demote[kMaxBannedCuda];  // guesses of these ids score -inf
  double* list_c;  // (B L) scratch: row b's eligible positions, compacted in position order,
  int* list_i;     //   their confidences and positions,
  int* list_rank;  //   and their ranks (0 = best)
  int64_t* count;
};

// Does (c, i) rank before (c2, i2)? Higher confidence first, then the lower position.
__device__ __forceinline__ bool before(double c, int i, double c2, int i2) { return c > c2 || (c == c2 && i < i2); }

// op over x of every thread of the block (op: a sum or a min), returned to every thread. Uses
// red[] (one slot per warp).
template <typename Op>
__device__ int block_reduce(int x, int* red, Op op) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = op(x, __shfl_xor_sync(FULL_MASK, x, o));
  __syncthreads();  // red[] may still be read by an earlier call
  if (lane == 0) red[warp] = x;
  __syncthreads();
  int all = red[0];
  for (int w = 1; w < SELECT_THREADS / 32; ++w) all = op(all, red[w]);
  return all;
}

// rank of each of the n compacted positions -> list_rank. All threads call it (it syncs).
__device__ void rank_all(const double* lc, const int* li, int* lr, int n) {
  __shared__ double tile_c[SELECT_THREADS];
  __shared__ int tile_i[SELECT_THREADS];
  for (int p0 = 0; p0 < n; p0 += SELECT_THREADS) {
    const int q = p0 + threadIdx.x;
    const double c = q < n ? lc[q] : 0.0;
    const int i = q < n ? li[q] : 0;
    int rank = 0;
    for (int t0 = 0; t0 < n; t0 += SELECT_THREADS) {
      __syncthreads();  // the previous tile has been read
      if (t0 + threadIdx.x < n) tile_c[threadIdx.x] = lc[t0 + threadIdx.x], tile_i[threadIdx.x] = li[t0 + threadIdx.x];
      __syncthreads();
      const int nt = min(SELECT_THREADS, n - t0);
      for (int j = 0; j < nt; ++j) rank += before(tile_c[j], tile_i[j], c, i);
    }
    if (q < n) lr[q] = rank;
  }
  __syncthreads();  // every rank is written
}

// grid: B blocks of SELECT_THREADS; block b selects in batch row b.
__global__ void __launch_bounds__(SELECT_THREADS) unmask_select(const __grid_constant__ SelectParams p) {
  __shared__ int red[SELECT_THREADS / 32];
  __shared__ double best_c_w[SELECT_THREADS / 32];
  __shared__ int best_i_w[SELECT_THREADS / 32];
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  double* lc = p.list_c + b * p.L;
  int* li = p.list_i + b * p.L;
  int* lr = p.list_rank + b * p.L;

  // -- 1. compact the eligible positions in position order; the best of them
  int n = 0;  // eligible positions so far, the same in every thread
  double best_c = -CUDART_INF;
  int best_i = INT_MAX;
  for (int64_t i0 = 0; i0 < p.L; i0 += SELECT_THREADS) {
    const int i = (int)(i0 + threadIdx.x);
    const bool e = i < p.L && p.eligible[b * p.eligible_sb + i * p.eligible_si];
    const unsigned ballot = __ballot_sync(FULL_MASK, e);
    if (lane == 0) red[warp] = __popc(ballot);
    __syncthreads();
    int slot = n + __popc(ballot & ((1u << lane) - 1u)), total = 0;  // eligible before me
    for (int w = 0; w < SELECT_THREADS / 32; ++w) {
      slot += w < warp ? red[w] : 0;
      total += red[w];
    }
    if (e) {
      double c = p.scores != nullptr ? p.scores[b * p.scores_sb + i * p.scores_si] : p.conf[b * p.L + i];
      if (contains(p.demote, p.n_demote, p.x0[b * p.L + i])) c = -CUDART_INF;  // committed after all others
      lc[slot] = c, li[slot] = i;
      if (before(c, i, best_c, best_i)) best_c = c, best_i = i;
    }
    n += total;
    __syncthreads();  // red[] is reused
  }
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const double c = __shfl_xor_sync(FULL_MASK, best_c, o);
    const int i = __shfl_xor_sync(FULL_MASK, best_i, o);
    if (before(c, i, best_c, best_i)) best_c = c, best_i = i;
  }
  if (lane == 0) best_c_w[warp] = best_c, best_i_w[warp] = best_i;
  __syncthreads();  // also makes lc / li visible to the whole block
  for (int w = 0; w < SELECT_THREADS / 32; ++w)
    if (before(best_c_w[w], best_i_w[w], best_c, best_i)) best_c = best_c_w[w], best_i = best_i_w[w];

  // -- 2. the rule decides; commit
  int n_commit = 0;  // schedule / factor: commit the n_commit best (the ranks below it)
  if (p.rule == SCHEDULE) {
    n_commit = (int)min(max(p.k[b * p.k_s], (int64_t)0), (int64_t)n);  // k < 0 commits nothing, as on the CPU
    if (0 < n_commit && n_commit < n) rank_all(lc, li, lr, n);        // (all or none needs no ranks)
  } else if (p.rule == FACTOR || p.rule == FACTOR_STRICT) {
    rank_all(lc, li, lr, n);
    int first_fail = n;  // the first rank below its bound: the ranks before it pass (a run)
    for (int q = threadIdx.x; q < n; q += SELECT_THREADS)
      if (lc[q] < factor_bound(p.rule, p.factor, lr[q])) first_fail = min(first_fail, lr[q]);
    const int run = block_reduce(first_fail, red, [](int a, int b) { return min(a, b); });
    n_commit = (int)factor_commits(p.rule, run, n);
  }
  int mine = 0;
  for (int q = threadIdx.x; q < n; q += SELECT_THREADS) {
    const int i = li[q];
    const bool commit = p.rule == THRESHOLD ? lc[q] >= p.tau || i == best_i
                        : n_commit == n     ? true
                        : n_commit == 0     ? false
                                            : lr[q] < n_commit;
    if (commit) {
      p.tokens[b * p.tokens_sb + i * p.tokens_si] = p.x0[b * p.L + i];
      p.eligible[b * p.eligible_sb + i * p.eligible_si] = false;
      ++mine;
    }
  }
  const int total = block_reduce(mine, red, [](int a, int b) { return a + b; });
  if (threadIdx.x == 0) p.count[b] = total;
}

size_t align16(size_t n) { return (n + 15) / 16 * 16; }

}  // namespace

int64_t unmask_cuda_workspace_bytes(int64_t B, int64_t L) {
  const size_t n = (size_t)B * (size_t)L;  // x0, conf, list_c, list_i, list_rank
  return (int64_t)(align16(8 * n) * 3 + align16(4 * n) * 2);
}

void unmask_cuda(const UnmaskCudaArgs& a, cudaStream_t stream) {
  if (a.B == 0) return;
  const size_t n = (size_t)a.B * (size_t)a.L;
  char* ws = static_cast<char*>(a.workspace);
  int64_t* x0 = reinterpret_cast<int64_t*>(ws);
  double* conf = reinterpret_cast<double*>(ws + align16(8 * n));
  double* list_c = reinterpret_cast<double*>(ws + 2 * align16(8 * n));
  int* list_i = reinterpret_cast<int*>(ws + 3 * align16(8 * n));
  int* list_rank = reinterpret_cast<int*>(ws + 3 * align16(8 * n) + align16(4 * n));

  if (n > 0) {
    ScanParams s;
    s.logits = a.logits, s.logits_sb = a.logits_sb, s.logits_si = a.logits_si, s.B = a.B, s.L = a.L, s.V = (int)a.V;
    s.eligible = a.eligible, s.eligible_sb = a.eligible_sb, s.eligible_si = a.eligible_si;
    s.n_banned = a.n_banned;
    for (int k = 0; k < kMaxBannedCuda; ++k) s.banned[k] = k < a.n_banned ? a.banned[k] : -1;
    s.kind = a.kind, s.temperature = a.temperature, s.key = splitmix64(a.seed), s.x0 = x0, s.conf = conf;
    const unsigned blocks = (unsigned)((n + SCAN_THREADS / 32 - 1) / (SCAN_THREADS / 32));
    const bool sample = a.temperature > 0;
    if (a.dtype == F32)
      sample ? unmask_scan<float, true><<<blocks, SCAN_THREADS, 0, stream>>>(s)
             : unmask_scan<float, false><<<blocks, SCAN_THREADS, 0, stream>>>(s);
    else if (a.dtype == BF16)
      sample ? unmask_scan<__nv_bfloat16, true><<<blocks, SCAN_THREADS, 0, stream>>>(s)
             : unmask_scan<__nv_bfloat16, false><<<blocks, SCAN_THREADS, 0, stream>>>(s);
    else
      sample ? unmask_scan<__half, true><<<blocks, SCAN_THREADS, 0, stream>>>(s)
             : unmask_scan<__half, false><<<blocks, SCAN_THREADS, 0, stream>>>(s);
  }
  SelectParams q;
  q.L = a.L, q.tokens = a.tokens, q.tokens_sb = a.tokens_sb, q.tokens_si = a.tokens_si;
  q.eligible = a.eligible, q.eligible_sb = a.eligible_sb, q.eligible_si = a.eligible_si;
  q.x0 = x0, q.conf = conf, q.scores = a.kind == RANDOM ? a.scores : nullptr;
  q.scores_sb = a.scores_sb, q.scores_si = a.scores_si;
  q.rule = a.rule, q.k = a.k, q.k_s = a.k_s, q.tau = a.tau, q.factor = a.factor;
  q.n_demote = a.n_demote;
  for (int k = 0; k < kMaxBannedCuda; ++k) q.demote[k] = k < a.n_demote ? a.demote[k] : -1;
  q.list_c = list_c, q.list_i = list_i, q.list_rank = list_rank, q.count = a.count;
  unmask_select<<<(unsigned)a.B, SELECT_THREADS, 0, stream>>>(q);
}

}  // namespace mini_dlm
