// block_attention on the GPU: a block's queries over [prefix[:len] ; block ; suffix], the three
// segments read in place. This file: the plan (which kernel, tiles, split of the keys), the
// launcher, the split-KV combine kernel, and the kernel for fp32 inputs, which computes on the
// CUDA cores. bf16 / fp16 inputs go to the tensor-core kernel, attention_mma_cuda.cu.
// Specification: mini_dlm/ops.py: block_attention_reference (same op as csrc/attention_cpu.cpp).
// No torch headers (the glue is attention_cuda_glue.cpp):
//
//   nvcc -arch=sm_90 -O3 -Icsrc -c csrc/attention_cuda.cu
//
// Roofline: bytes ~ B H (2 b + 2 (len + b + Ls)) D bytes_per_elem, flops = 4 b (len + b + Ls) D
// per (batch row, head). In fp32 the intensity is b / 2 = 16 flop/byte at b = 32: at ~4.3 TB/s
// that needs ~70 TFLOP/s, about all an H200's fp32 CUDA cores have, so this kernel is
// compute-bound near half the bandwidth; the tensor-core kernel is not (notes 05).
//
// fp32 kernel (attention_fwd): FlashAttention-2's loop order, split over the keys like
// flash-decoding. One CTA (4 warps) per (tile of BQ queries, batch row * head, split); warp w
// owns BQ / 4 rows. Split s takes a contiguous run of the row's TK-key tiles (cta_view).
//     stage  Q (BQ x D, times 1/sqrt(D)) once, then per tile K (TK x D) and V (TK x D) into
//            shared memory; 16-byte loads when every pointer and stride allows (decided on the
//            host), keys past Lk_r zero-filled, never read;
//     S      = Q K^T, lanes over keys, each lane its keys for all the warp's rows;
//     online softmax per row (warp shuffles): m' = max(m, max_j S_j), P = e^(S - m'),
//            l = l e^(m - m') + sum_j P_j, O = O e^(m - m'); keys past Lk_r have S = -inf, P = 0;
//     O     += P V, lanes over d, O in registers.
// Split-KV: with num_splits > 1 each CTA writes O unnormalised with its m and l to fp32
// scratch (an empty split: O = 0, m = -inf, l = 0), and attention_combine merges the splits:
// M = max_s m_s, out = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s.
#include <algorithm>

#include "attention_cuda.cuh"

namespace mini_dlm {

namespace {

constexpr int NWARPS = 4, NT = 32 * NWARPS;  // threads per CTA
constexpr int MAX_SPLITS = 32;               // attention_combine holds one split per lane
constexpr int MIN_TILES_PER_SPLIT = 4;       // a split's partial O (BQ x D fp32) costs ~ one K/V tile

// Tile sizes per head dim; static shared memory (Qs + Ks + Vs + Ps) stays under 48 KB:
// D=32: 29 KB, D=64: 28.5 KB, D=128: 42.5 KB. Larger tiles do not fit: TK = 64 at D = 64 needs
// 49 KB, BQ = 32 at D = 128 needs 51 KB.
template <int D>
struct Tile {
  static constexpr int BQ = D <= 64 ? 32 : 16;  // queries per CTA
  static constexpr int TK = D <= 32 ? 64 : 32;  // keys per staged K/V tile
  static constexpr int RW = BQ / NWARPS;        // query rows per warp
  static constexpr int KPL = TK / 32;           // keys per lane in S = Q K^T
  static constexpr int DPL = D / 32;            // dims per lane in O += P V
  static constexpr int KP = D + 4;              // Ks row pitch: float4 reads across keys hit distinct banks
};

// dst[0 .. CH) = scale * src[0 .. CH), CH = 16 / sizeof(T): one 16-byte load, float4 stores.
template <typename T>
__device__ __forceinline__ void load16(float* dst, const T* src, float scale) {
  constexpr int CH = 16 / sizeof(T);
  const int4 raw = __ldg(reinterpret_cast<const int4*>(src));
  const T* x = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int e = 0; e < CH; e += 4)
    *reinterpret_cast<float4*>(dst + e) =
        make_float4(to_float(x[e]) * scale, to_float(x[e + 1]) * scale, to_float(x[e + 2]) * scale,
                    to_float(x[e + 3]) * scale);
}

// Stage ROWS rows of D elements into fp32 shared memory dst (row pitch LD floats), all threads
// of the CTA: row i is scale * row_ptr(i), or zeros where row_ptr(i) is nullptr (a key or query
// past the end: its memory is never read). VEC: 16-byte chunks, else one element per thread.
template <typename T, int D, bool VEC, int ROWS, int LD, typename RowPtr>
__device__ __forceinline__ void stage(float* dst, RowPtr row_ptr, float scale) {
  if constexpr (VEC) {
    constexpr int CH = 16 / sizeof(T), CPR = D / CH;  // elements per chunk, chunks per row
    for (int idx = threadIdx.x; idx < ROWS * CPR; idx += NT) {
      const int i = idx / CPR, c = idx % CPR;
      float* d = dst + i * LD + c * CH;
      const T* src = row_ptr(i);
      if (src != nullptr) {
        load16(d, src + c * CH, scale);
      } else {
#pragma unroll
        for (int e = 0; e < CH; e += 4) *reinterpret_cast<float4*>(d + e) = make_float4(0.f, 0.f, 0.f, 0.f);
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += NT) {
      const int i = idx / D, c = idx % D;
      const T* src = row_ptr(i);
      dst[i * LD + c] = src != nullptr ? to_float(__ldg(src + c)) * scale : 0.f;
    }
  }
}

// n consecutive floats from shared memory in one vector load (n = 1, 2 or 4).
template <int N>
__device__ __forceinline__ void load_n(const float* src, float (&x)[N]) {
  if constexpr (N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(src);
    x[0] = t.x, x[1] = t.y, x[2] = t.z, x[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(src);
    x[0] = t.x, x[1] = t.y;
  } else {
    x[0] = *src;
  }
}

// grid: x = (batch row * H + head) * q_tiles + query tile, y = split. NT threads.
template <typename T, int D, bool VEC>
__global__ void __launch_bounds__(NT) attention_fwd(const __grid_constant__ Params p) {
  using C = Tile<D>;
  constexpr int BQ = C::BQ, TK = C::TK, RW = C::RW, KPL = C::KPL, DPL = C::DPL, KP = C::KP;
  __shared__ __align__(16) float Qs[BQ][D];   // queries, pre-scaled by 1/sqrt(D)
  __shared__ __align__(16) float Ks[TK][KP];  // one K tile, rows padded
  __shared__ __align__(16) float Vs[TK][D];   // one V tile
  __shared__ __align__(16) float Ps[BQ][TK];  // P of the tile, each warp its own rows

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const CtaView<T> cta = cta_view<T>(p, BQ, TK);  // this CTA's queries, keys and share of the key tiles
  const KeyMap<T>& km = cta.keys;
  const int64_t Lk = cta.Lk, t_begin = cta.t_begin, t_end = cta.t_end;
  const int nq = cta.nq;
  const float scale = 1.f / sqrtf((float)D);  // IEEE sqrt and division (not rsqrtf), as the CPU op
  stage<T, D, VEC, BQ, D>(&Qs[0][0], [&](int i) { return i < nq ? cta.q + i * cta.q_st : nullptr; }, scale);

  float o[RW][DPL] = {};  // O for the warp's rows, dims lane * DPL .. + DPL
  float m[RW], l[RW];     // running max and sum per row (the same in every lane)
#pragma unroll
  for (int i = 0; i < RW; ++i) m[i] = -CUDART_INF_F, l[i] = 0.f;
  const int row0 = warp * RW;  // first query row of this warp in the tile

  for (int64_t t = t_begin; t < t_end; ++t) {
    const int64_t j0 = t * TK;  // first key of the tile; j0 < Lk, so each tile has a valid key
    __syncthreads();            // every warp is done with the previous tile's Ks / Vs / Ps
    stage<T, D, VEC, TK, KP>(&Ks[0][0], [&](int jj) { return j0 + jj < Lk ? km.key(j0 + jj) : nullptr; }, 1.f);
    stage<T, D, VEC, TK, D>(&Vs[0][0], [&](int jj) { return j0 + jj < Lk ? km.value(j0 + jj) : nullptr; }, 1.f);
    __syncthreads();

    // S (RW x TK) = Q K^T: lane owns keys lane + 32 u; Q reads are warp broadcasts.
    float s[RW][KPL] = {};
#pragma unroll
    for (int d = 0; d < D; d += 4) {
      float4 kv[KPL];
#pragma unroll
      for (int u = 0; u < KPL; ++u) kv[u] = *reinterpret_cast<const float4*>(&Ks[lane + 32 * u][d]);
#pragma unroll
      for (int i = 0; i < RW; ++i) {
        const float4 qv = *reinterpret_cast<const float4*>(&Qs[row0 + i][d]);
#pragma unroll
        for (int u = 0; u < KPL; ++u) {
          s[i][u] = fmaf(qv.x, kv[u].x, s[i][u]);
          s[i][u] = fmaf(qv.y, kv[u].y, s[i][u]);
          s[i][u] = fmaf(qv.z, kv[u].z, s[i][u]);
          s[i][u] = fmaf(qv.w, kv[u].w, s[i][u]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < KPL; ++u)
      if (j0 + lane + 32 * u >= Lk)  // past the row's last key (zero-filled): no weight
#pragma unroll
        for (int i = 0; i < RW; ++i) s[i][u] = -CUDART_INF_F;

    // Online softmax, row by row. m_new is finite (key j0 is valid), so alpha = e^(-inf) = 0 on
    // the first tile and masked keys get e^(-inf) = 0, both without NaN.
#pragma unroll
    for (int i = 0; i < RW; ++i) {
      float mx = s[i][0];
#pragma unroll
      for (int u = 1; u < KPL; ++u) mx = fmaxf(mx, s[i][u]);
      const float m_new = fmaxf(m[i], warp_max(mx));
      const float alpha = expf(m[i] - m_new);  // rescales what came before
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < KPL; ++u) {
        const float pj = expf(s[i][u] - m_new);
        Ps[row0 + i][lane + 32 * u] = pj;
        sum += pj;
      }
      l[i] = l[i] * alpha + warp_sum(sum);
      m[i] = m_new;
#pragma unroll
      for (int e = 0; e < DPL; ++e) o[i][e] *= alpha;
    }
    __syncwarp();  // the warp's P rows are written; only this warp reads them

    // O (RW x D) += P (RW x TK) V (TK x D): lane owns dims lane * DPL ..; P reads are broadcasts.
#pragma unroll 2
    for (int jj = 0; jj < TK; jj += 4) {
      float pr[RW][4];
#pragma unroll
      for (int i = 0; i < RW; ++i) load_n<4>(&Ps[row0 + i][jj], pr[i]);
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float vv[DPL];
        load_n<DPL>(&Vs[jj + u][lane * DPL], vv);
#pragma unroll
        for (int i = 0; i < RW; ++i)
#pragma unroll
          for (int e = 0; e < DPL; ++e) o[i][e] += pr[i][u] * vv[e];
      }
    }
  }

  // Epilogue: rows of the output are (r, h, q0 + row0 + i), contiguous (B, H, b, D).
#pragma unroll
  for (int i = 0; i < RW; ++i) {
    if (row0 + i >= nq) break;  // padding rows of the last query tile (warp-uniform)
    const int64_t row = cta.bh * p.b + cta.q0 + row0 + i;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + row * D + lane * DPL;
#pragma unroll
      for (int e = 0; e < DPL; ++e) out[e] = from_float<T>(o[i][e] / l[i]);
    } else {
      const int64_t prow = blockIdx.y * (p.B * p.H * p.b) + row;  // O = 0, m = -inf, l = 0 if empty
      float* op = p.o_part + prow * D + lane * DPL;
#pragma unroll
      for (int e = 0; e < DPL; ++e) op[e] = o[i][e];
      if (lane == 0) p.ml_part[prow] = make_float2(m[i], l[i]);
    }
  }
}

// Merge the splits (log-sum-exp): one warp per output row, lane s holds split s's (m, l).
// rows = B H b. Some split of every row is non-empty (the block's keys), so M is finite.
template <typename T>
__global__ void __launch_bounds__(NT) attention_combine(const float* __restrict__ o_part,
                                                        const float2* __restrict__ ml_part, T* __restrict__ out,
                                                        int64_t rows, int D, int num_splits) {
  const int64_t row = (int64_t)blockIdx.x * NWARPS + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps
  const float2 ml = lane < num_splits ? ml_part[lane * rows + row] : make_float2(-CUDART_INF_F, 0.f);
  const float M = warp_max(ml.x);
  const float w = expf(ml.x - M);      // e^(m_s - M); 0 for empty splits and idle lanes
  const float L = warp_sum(w * ml.y);  // sum_s e^(m_s - M) l_s
  for (int d = lane; d < D; d += 32) {  // D is a multiple of 32: every lane runs every pass
    float acc = 0.f;
    for (int s = 0; s < num_splits; ++s) acc += __shfl_sync(FULL_MASK, w, s) * o_part[(s * rows + row) * D + d];
    out[row * D + d] = from_float<T>(acc / L);
  }
}

template <int D>
void launch_fp32(const Params& p, bool vec, cudaStream_t stream) {
  const int64_t q_tiles = (p.b + p.BQ - 1) / p.BQ;
  const dim3 grid((unsigned)(p.B * p.H * q_tiles), (unsigned)p.num_splits);
  if (vec)
    attention_fwd<float, D, true><<<grid, NT, 0, stream>>>(p);
  else
    attention_fwd<float, D, false><<<grid, NT, 0, stream>>>(p);
}

template <typename T>
void launch_combine(const Params& p, int D, cudaStream_t stream) {
  const int64_t rows = p.B * p.H * p.b;
  attention_combine<T><<<(unsigned)((rows + NWARPS - 1) / NWARPS), NT, 0, stream>>>(p.o_part, p.ml_part,
                                                                                      static_cast<T*>(p.out), rows, D,
                                                                                      p.num_splits);
}

}  // namespace

// -- host functions called by the torch glue (attention_cuda_glue.cpp) with checked arguments.

// fp32: the CUDA-core kernel with Tile<D>; bf16 / fp16: the tensor-core kernel with one warp per
// 16 queries (at most 4, or 2 at D = 128, which keeps its shared memory under 48 KB).
// Splits: 1 when the CTAs already give every SM two, else enough for that, at most MAX_SPLITS
// and at most one per MIN_TILES_PER_SPLIT tiles of the longest row (Lc + b + Ls keys).
AttentionPlan block_attention_cuda_plan(const AttentionCudaArgs& a) {
  AttentionPlan plan{};
  const int D = (int)a.D;
  plan.tensor_cores = a.dtype != F32;
  if (plan.tensor_cores) {
    const int max_warps = D <= 64 ? 4 : 2;
    plan.warps = (int)std::min<int64_t>(max_warps, (a.b + 15) / 16);
    plan.BQ = 16 * plan.warps;
    plan.TK = mma_keys_per_tile(D);
  } else {
    plan.warps = NWARPS;
    plan.BQ = D == 128 ? Tile<128>::BQ : D == 64 ? Tile<64>::BQ : Tile<32>::BQ;
    plan.TK = D == 128 ? Tile<128>::TK : D == 64 ? Tile<64>::TK : Tile<32>::TK;
  }
  const int64_t elem = a.dtype == F32 ? 4 : 2, chunk = 16 / elem;
  plan.vec = true;  // 16-byte loads: every base 16-byte aligned and every stride whole chunks
  for (int i = 0; i < 7; ++i) {
    if (a.in[i] == nullptr) continue;
    if (reinterpret_cast<uintptr_t>(a.in[i]) % 16 != 0) plan.vec = false;
    for (int d = 0; d < 3; ++d)
      if (a.strides[i][d] % chunk != 0) plan.vec = false;
  }
  const int64_t ctas = a.B * a.H * ((a.b + plan.BQ - 1) / plan.BQ), want = 2 * (int64_t)a.num_sms;
  int64_t splits = 1;
  if (ctas > 0 && ctas < want) {
    const int64_t tiles = (a.Lc + a.b + a.Ls + plan.TK - 1) / plan.TK;
    splits = std::min<int64_t>({(want + ctas - 1) / ctas, MAX_SPLITS, (tiles + MIN_TILES_PER_SPLIT - 1) / MIN_TILES_PER_SPLIT});
    splits = std::max<int64_t>(splits, 1);
  }
  plan.num_splits = (int)splits;
  // split partials: O (splits, B H b, D) then (m, l) (splits, B H b, 2), fp32
  plan.workspace_bytes = splits > 1 ? splits * a.B * a.H * a.b * (a.D + 2) * (int64_t)sizeof(float) : 0;
  return plan;
}

void block_attention_cuda(const AttentionCudaArgs& a, const AttentionPlan& plan, void* workspace,
                          cudaStream_t stream) {
  if (a.B * a.H == 0) return;  // nothing to compute (b >= 1 is checked)
  Params p;
  for (int i = 0; i < 7; ++i) {
    p.in[i] = a.in[i];
    for (int d = 0; d < 3; ++d) p.st[i][d] = a.strides[i][d];
  }
  const int64_t rows = a.B * a.H * a.b;
  p.prefix_len = a.prefix_len;
  p.out = a.out;
  p.o_part = plan.num_splits > 1 ? static_cast<float*>(workspace) : nullptr;
  p.ml_part = plan.num_splits > 1 ? reinterpret_cast<float2*>(static_cast<float*>(workspace) + plan.num_splits * rows * a.D)
                                  : nullptr;
  p.B = a.B, p.H = a.H, p.b = a.b, p.Lc = a.Lc, p.Ls = a.Ls;
  p.num_splits = plan.num_splits, p.BQ = plan.BQ, p.TK = plan.TK;
  const int D = (int)a.D;
  if (plan.tensor_cores) {
    launch_attention_mma(p, a.dtype, D, plan.vec, plan.warps, stream);
  } else if (D == 32) {
    launch_fp32<32>(p, plan.vec, stream);
  } else if (D == 64) {
    launch_fp32<64>(p, plan.vec, stream);
  } else {
    launch_fp32<128>(p, plan.vec, stream);
  }
  if (plan.num_splits == 1) return;
  if (a.dtype == F32) launch_combine<float>(p, D, stream);
  else if (a.dtype == BF16) launch_combine<__nv_bfloat16>(p, D, stream);
  else launch_combine<__half>(p, D, stream);
}

}  // namespace mini_dlm
