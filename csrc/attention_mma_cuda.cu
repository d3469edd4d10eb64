// block_attention on tensor cores, for bf16 and fp16: FlashAttention-2 with mma.sync.
// Specification: mini_dlm/ops.py: block_attention_reference (scores, softmax and sums in fp32).
// Host side, split-KV and the fp32 kernel: attention_cuda.cu. No torch headers:
//
//   nvcc -arch=sm_90 -O3 -Icsrc -c csrc/attention_mma_cuda.cu
//
// Roofline. Per (batch row, head) the op reads K and V, 2 Lk D e bytes (e = 2), and computes
// 4 b Lk D flops: 2 b / e = 32 flops per byte at b = 32, far below an H200's bf16 tensor-core
// ridge (~200), so it is bound by memory once the products run on tensor cores (on the fp32
// CUDA cores the same work is compute-bound at about half the bandwidth: notes 05).
// B=64, H=12, D=64, Lc=1024, b=32: 214 MB, about 50 us at 4.3 TB/s.
//
// Algorithm. One CTA of W warps per (tile of BQ = 16 W queries, batch row x head, split); warp w
// owns queries 16 w .. 16 w + 15 of the tile. Shared memory, all bf16 (fp16) as in HBM:
// Q (BQ x D) and two buffers of K and V tiles (TK x D each), rows padded by 16 bytes so the
// 8 rows an ldmatrix reads fall in distinct banks.
//   1. Q and the first K/V tile: 16-byte cp.async (zero-filled past the row's last key); the
//      warp loads its Q rows into A fragments once (ldmatrix).
//   2. For each K/V tile of this split, while cp.async fills the other buffer with the next:
//        S  = Q K^T               mma m16n8k16: K rows are B's columns (ldmatrix, no transpose);
//        S' = S log2(e) / sqrt(D), -inf past the last key;
//        m' = max(m, rowmax S')   (the 4 lanes of a row meet by two shuffles),
//        P  = 2^(S' - m'),        l = l 2^(m - m') + rowsum P,  O = O 2^(m - m');
//        O += P V                 P's fp32 accumulators, packed to bf16 pairs, are already the
//                                 A fragments of the next mma; V through ldmatrix .trans.
//   3. O / l to q's dtype, or (split-KV) O, m, l to fp32 partials for attention_combine.
#include <type_traits>

#include "attention_cuda.cuh"
#include "ptx.cuh"

namespace mini_dlm {

namespace {

constexpr float LOG2E = 1.4426950408889634f, LN2 = 0.6931471805599453f;

template <int D>
struct MmaShape {
  static constexpr int TK = D <= 64 ? 64 : 32;  // keys per K/V tile
  static constexpr int P = D + 8;               // shared-memory row pitch in elements (+16 bytes)
  static constexpr int KD = D / 16;             // k-steps of S = Q K^T (over D)
  static constexpr int NS = TK / 8;             // n-tiles of S (8 keys each)
  static constexpr int NO = D / 8;              // n-tiles of O (8 dims each)
};

template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same_v<T, __half>) mma_16816_f16(d, a, b, d);
  else mma_16816_bf16(d, a, b, d);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) return pack_f16x2(lo, hi);
  else return pack_bf16x2(lo, hi);
}

// rows x D elements into shared memory (pitch P): row i from row_ptr(i), zeros where it gives
// nullptr. VEC: 16-byte cp.async (the caller commits and waits); else plain element copies.
template <typename T, int D, bool VEC, typename RowPtr>
__device__ __forceinline__ void load_rows(T* dst, int rows, RowPtr row_ptr, const void* any_global) {
  constexpr int P = MmaShape<D>::P, CH = 8, CPR = D / CH;  // 8 elements per 16 bytes
  for (int idx = threadIdx.x; idx < rows * CPR; idx += blockDim.x) {
    const int i = idx / CPR, c = idx % CPR;
    const T* src = row_ptr(i);
    T* d = dst + i * P + c * CH;
    if constexpr (VEC) {
      cp_async_16(d, src != nullptr ? src + c * CH : any_global, src != nullptr);
    } else {
#pragma unroll
      for (int e = 0; e < CH; ++e) d[e] = src != nullptr ? src[c * CH + e] : from_float<T>(0.f);
    }
  }
}

// __launch_bounds__(128, 1): shared memory, not registers, limits the CTAs per SM (about 42 KB
// each); with no minimum given, ptxas capped the D = 32 element-load version at 128 registers
// and spilled.
template <typename T, int D, bool VEC>
__global__ void __launch_bounds__(128, 1) attention_mma(const __grid_constant__ Params p) {
  using S = MmaShape<D>;
  constexpr int TK = S::TK, P = S::P, KD = S::KD, NS = S::NS, NO = S::NO;
  extern __shared__ __align__(16) unsigned char smem[];
  T* Qs = reinterpret_cast<T*>(smem);  // BQ x P
  T* Ks = Qs + p.BQ * P;               // 2 buffers of TK x P
  T* Vs = Ks + 2 * TK * P;             // 2 buffers of TK x P

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
  const CtaView<T> cta = cta_view<T>(p, p.BQ, TK);
  const KeyMap<T>& km = cta.keys;
  const float scale = LOG2E / sqrtf((float)D);  // scores in log2 units: exp2f is the fast exp

  auto load_tile = [&](int64_t t, int buf) {  // keys t TK .. t TK + TK - 1 into buffer buf
    const int64_t j0 = t * TK;
    load_rows<T, D, VEC>(Ks + buf * TK * P, TK, [&](int jj) { return j0 + jj < cta.Lk ? km.key(j0 + jj) : nullptr; },
                         p.in[Q]);
    load_rows<T, D, VEC>(Vs + buf * TK * P, TK, [&](int jj) { return j0 + jj < cta.Lk ? km.value(j0 + jj) : nullptr; },
                         p.in[Q]);
  };

  // -- 1. Q and the first tile; the warp's Q rows as A fragments (one per 16 dims)
  load_rows<T, D, VEC>(Qs, p.BQ, [&](int i) { return i < cta.nq ? cta.q + i * cta.q_st : nullptr; }, p.in[Q]);
  if (cta.t_begin < cta.t_end) load_tile(cta.t_begin, 0);
  if constexpr (VEC) {
    cp_async_commit();
    cp_async_wait<0>();
  }
  __syncthreads();
  uint32_t qa[KD][4];
#pragma unroll
  for (int kd = 0; kd < KD; ++kd)  // lanes 8i..8i+7 address matrix i: rows +8 for i odd, dims +8 for i >= 2
    ldmatrix_x4(qa[kd], Qs + (warp * 16 + (lane / 8) % 2 * 8 + lane % 8) * P + kd * 16 + lane / 16 * 8);

  float o[NO][4] = {};                            // O: rows g and g + 8 of the warp's 16, dims 8 n + 2 tq, + 1
  float m[2] = {-CUDART_INF_F, -CUDART_INF_F};   // running max of rows g and g + 8 (log2 units)
  float l[2] = {0.f, 0.f};                        // running sums, this lane's share (4 lanes per row)

  // -- 2. the K/V tiles of this split
  for (int64_t t = cta.t_begin; t < cta.t_end; ++t) {
    const int buf = (int)((t - cta.t_begin) & 1);
    if (t + 1 < cta.t_end) {
      load_tile(t + 1, buf ^ 1);  // in flight while this tile is used
      if constexpr (VEC) cp_async_commit();
    }
    const T* Kt = Ks + buf * TK * P;
    const T* Vt = Vs + buf * TK * P;

    // S = Q K^T: per 16 dims, one ldmatrix_x4 gives the B fragments of two 8-key n-tiles
    float s[NS][4] = {};
#pragma unroll
    for (int kd = 0; kd < KD; ++kd) {
#pragma unroll
      for (int n = 0; n < NS; n += 2) {
        uint32_t kb[4];  // matrices: keys +0 / +8 (i >= 2) x dims +0 / +8 (i odd)
        ldmatrix_x4(kb, Kt + (n * 8 + lane / 16 * 8 + lane % 8) * P + kd * 16 + (lane / 8) % 2 * 8);
        mma<T>(s[n], qa[kd], {kb[0], kb[1]});
        mma<T>(s[n + 1], qa[kd], {kb[2], kb[3]});
      }
    }

    // online softmax; c0, c1 belong to row g, c2, c3 to row g + 8; key j0 + 8 n + 2 tq + (e & 1)
    const int64_t j0 = t * TK;
    float mx[2] = {-CUDART_INF_F, -CUDART_INF_F};
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const bool valid = j0 + n * 8 + 2 * tq + (e & 1) < cta.Lk;
        s[n][e] = valid ? s[n][e] * scale : -CUDART_INF_F;
        mx[e / 2] = fmaxf(mx[e / 2], s[n][e]);
      }
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL_MASK, mx[h], 1));
      mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL_MASK, mx[h], 2));
      const float m_new = fmaxf(m[h], mx[h]);  // finite: key j0 exists
      alpha[h] = exp2f(m[h] - m_new);           // 0 on the first tile (m = -inf)
      m[h] = m_new;
      l[h] *= alpha[h];
    }
#pragma unroll
    for (int n = 0; n < NS; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[n][e] = exp2f(s[n][e] - m[e / 2]);  // P; 0 past the last key
        l[e / 2] += s[n][e];
      }
#pragma unroll
    for (int n = 0; n < NO; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[n][e] *= alpha[e / 2];

    // O += P V: the C fragments of key n-tiles 2 kk and 2 kk + 1 are the A fragment of keys 16 kk ..
#pragma unroll
    for (int kk = 0; kk < TK / 16; ++kk) {
      const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                              pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < NO; n += 2) {
        uint32_t vb[4];  // .trans; matrices: keys +0 / +8 (i odd) x dims +0 / +8 (i >= 2)
        ldmatrix_x4_trans(vb, Vt + (kk * 16 + (lane / 8) % 2 * 8 + lane % 8) * P + n * 8 + lane / 16 * 8);
        mma<T>(o[n], pa, {vb[0], vb[1]});
        mma<T>(o[n + 1], pa, {vb[2], vb[3]});
      }
    }

    if (t + 1 < cta.t_end) {
      if constexpr (VEC) cp_async_wait<0>();
    }
    __syncthreads();  // the next tile is in; nobody reads this buffer any more
  }

  // -- 3. epilogue: rows q0 + 16 warp + g (h = 0) and + 8 (h = 1)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(FULL_MASK, l[h], 1);
    l[h] += __shfl_xor_sync(FULL_MASK, l[h], 2);
    const int qi = warp * 16 + g + 8 * h;  // query within the tile
    if (qi >= cta.nq) continue;
    const int64_t row = cta.bh * p.b + cta.q0 + qi;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + row * D + 2 * tq;
#pragma unroll
      for (int n = 0; n < NO; ++n)
        *reinterpret_cast<uint32_t*>(out + 8 * n) = pack2<T>(o[n][2 * h] / l[h], o[n][2 * h + 1] / l[h]);
    } else {
      const int64_t prow = blockIdx.y * (p.B * p.H * p.b) + row;  // O = 0, m = -inf, l = 0 if empty
      float* op = p.o_part + prow * D + 2 * tq;
#pragma unroll
      for (int n = 0; n < NO; ++n) *reinterpret_cast<float2*>(op + 8 * n) = make_float2(o[n][2 * h], o[n][2 * h + 1]);
      if (tq == 0) p.ml_part[prow] = make_float2(m[h] * LN2, l[h]);
    }
  }
}

template <typename T, int D>
void launch_typed(const Params& p, bool vec, int warps, cudaStream_t stream) {
  using S = MmaShape<D>;
  const size_t smem = mma_smem_bytes(D, p.BQ);  // under 48 KB (the planner's choice of BQ): no opt-in
  const int64_t q_tiles = (p.b + p.BQ - 1) / p.BQ;
  const dim3 grid((unsigned)(p.B * p.H * q_tiles), (unsigned)p.num_splits);
  if (vec)
    attention_mma<T, D, true><<<grid, 32 * warps, smem, stream>>>(p);
  else
    attention_mma<T, D, false><<<grid, 32 * warps, smem, stream>>>(p);
}

template <typename T>
void launch_dims(const Params& p, int D, bool vec, int warps, cudaStream_t stream) {
  if (D == 32) launch_typed<T, 32>(p, vec, warps, stream);
  else if (D == 64) launch_typed<T, 64>(p, vec, warps, stream);
  else launch_typed<T, 128>(p, vec, warps, stream);
}

}  // namespace

int mma_keys_per_tile(int D) { return D <= 64 ? MmaShape<64>::TK : MmaShape<128>::TK; }

size_t mma_smem_bytes(int D, int BQ) { return (size_t)(BQ + 4 * mma_keys_per_tile(D)) * (D + 8) * 2; }

void launch_attention_mma(const Params& p, int dtype, int D, bool vec, int warps, cudaStream_t stream) {
  if (dtype == BF16) launch_dims<__nv_bfloat16>(p, D, vec, warps, stream);
  else launch_dims<__half>(p, D, vec, warps, stream);
}

}  // namespace mini_dlm
