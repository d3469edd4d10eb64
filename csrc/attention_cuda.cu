// block_attention on the GPU: a block's queries over [prefix[:len] ; block ; suffix], the three
// segments read in place (DESIGN.md sections 5 and 8). No torch headers: raw pointers, element
// strides and a cudaStream_t, so that this file compiles with nvcc -arch=sm_90 on a machine whose
// torch is the CPU build (.ci/run does that). The torch glue is csrc/attention_cuda.cpp.
// Specification: mini_dlm/ops.py: block_attention_reference (same op as csrc/attention_cpu.cpp).
//
// STATUS: compiled by CI for sm_90, never run: no GPU has been available. It must be validated
// by tests/test_ext.py (and compute-sanitizer) on a GPU before anyone relies on it.
//
//   nvcc -arch=sm_90 -std=c++17 -O3 -Icsrc -c csrc/attention_cuda.cu
//
// Roofline: bytes ~ B H (2 b + 2 (len + b + Ls)) D bytes_per_elem, flops = 4 b (len + b + Ls) D
// per (batch row, head). H200, B=64, H=12, D=64, Lc=1024, b=32 bf16 reads ~214 MB: ~50 us at
// ~4.3 TB/s. The same case is 6.6 GFLOP: >= ~100 us on the fp32 CUDA cores (~67 TFLOP/s), so
// this SIMT kernel is compute-bound at twice the memory floor or more; reaching the floor needs
// tensor cores (mma on bf16/fp16 tiles), the next step once this version is validated.
//
// Algorithm: FlashAttention-2's loop order, split over the keys like flash-decoding.
//   Row r of the batch sees Lk_r = len_r + b + Ls keys, numbered 0 .. Lk_r - 1 in the order
//   prefix, block, suffix ("virtual" keys: KeyMap turns j into a pointer into its segment).
//   One CTA (4 warps) per (tile of BQ queries, batch row * head, split); warp w owns BQ / 4 rows.
//   Split s of num_splits takes a contiguous run of the row's TK-key tiles (empty for short rows).
//     stage  Q (BQ x D, times 1/sqrt(D)) once, then per tile K (TK x D) and V (TK x D), all
//            converted to fp32 in shared memory; 16-byte loads when every pointer and stride
//            allows (decided on the host), keys past Lk_r zero-filled, never read;
//     S      = Q K^T, lanes over keys, each lane its keys for all the warp's rows;
//     online softmax per row (warp shuffles): m' = max(m, max_j S_j), P = e^(S - m'),
//            l = l e^(m - m') + sum_j P_j, O = O e^(m - m'); keys past Lk_r have S = -inf, P = 0;
//     O     += P V, lanes over d, O in registers (fp32).
//   num_splits == 1: the CTA writes O / l in q's dtype. Otherwise it writes O unnormalised with
//   its m and l to fp32 scratch (an empty split: O = 0, m = -inf, l = 0), and attention_combine
//   merges the splits: M = max_s m_s, out = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>
#include <stdint.h>

namespace mini_dlm {

namespace {

constexpr int NWARPS = 4, NT = 32 * NWARPS;  // threads per CTA
constexpr int MAX_SPLITS = 32;               // attention_combine holds one split per lane
constexpr int MIN_TILES_PER_SPLIT = 4;       // a split's partial O (BQ x D fp32) costs ~ one K/V tile
constexpr unsigned FULL = 0xffffffffu;

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

// Everything the kernel reads, as the launcher received it. in[]: q, k, v, k_prefix, v_prefix,
// k_suffix, v_suffix; st[i]: element strides of in[i] in dims 0, 1, 2 (dim 3 is contiguous).
struct Params {
  const void* in[7];
  int64_t st[7][3];
  const int64_t* prefix_len;  // (B,) or nullptr
  void* out;                  // (B, H, b, D) contiguous, q's dtype (num_splits == 1)
  float* o_part;              // (num_splits, B H b, D) unnormalised O (num_splits > 1)
  float2* ml_part;            // (num_splits, B H b) (m, l)
  int64_t B, H, b, Lc, Ls;
  int num_splits;
};
enum { Q = 0, K = 1, V = 2, KPRE = 3, VPRE = 4, KSUF = 5, VSUF = 6 };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half(x); }

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(FULL, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) x += __shfl_xor_sync(FULL, x, o);
  return x;
}

// Virtual key j of one (batch row, head) -> its K and V rows: j < len in the prefix, then the
// block, then the suffix. Callers keep j < len + b + Ls, so an absent segment is never touched.
template <typename T>
struct KeyMap {
  const T *kp, *vp, *k, *v, *ks, *vs;  // row 0 of each segment for this (batch row, head)
  int64_t kp_st, vp_st, k_st, v_st, ks_st, vs_st, len, b;
  __device__ __forceinline__ const T* key(int64_t j) const {
    return j < len ? kp + j * kp_st : j < len + b ? k + (j - len) * k_st : ks + (j - len - b) * ks_st;
  }
  __device__ __forceinline__ const T* value(int64_t j) const {
    return j < len ? vp + j * vp_st : j < len + b ? v + (j - len) * v_st : vs + (j - len - b) * vs_st;
  }
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
__global__ void __launch_bounds__(NT) attention_fwd(const Params p) {
  using C = Tile<D>;
  constexpr int BQ = C::BQ, TK = C::TK, RW = C::RW, KPL = C::KPL, DPL = C::DPL, KP = C::KP;
  __shared__ __align__(16) float Qs[BQ][D];   // queries, pre-scaled by 1/sqrt(D)
  __shared__ __align__(16) float Ks[TK][KP];  // one K tile, rows padded
  __shared__ __align__(16) float Vs[TK][D];   // one V tile
  __shared__ __align__(16) float Ps[BQ][TK];  // P of the tile, each warp its own rows

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t q_tiles = (p.b + BQ - 1) / BQ;
  const int64_t bh = (int64_t)blockIdx.x / q_tiles, q0 = (int64_t)blockIdx.x % q_tiles * BQ;
  const int64_t r = bh / p.H, h = bh % p.H;
  const int nq = (int)min((int64_t)BQ, p.b - q0);  // queries in this tile, >= 1
  const int split = blockIdx.y;

  // Clamped to [0, Lc]: a bad prefix_len must not read outside the prefix (the Python wrapper
  // and the CPU op raise on it; here there is no host sync to check it).
  const int64_t len = p.prefix_len != nullptr ? min(max(p.prefix_len[r], (int64_t)0), p.Lc) : 0;
  const int64_t Lk = len + p.b + p.Ls;  // keys of this row
  const T* base[7];                     // row 0 of each tensor for (r, h); 64-bit offsets
#pragma unroll
  for (int i = 0; i < 7; ++i)
    base[i] = p.in[i] != nullptr ? static_cast<const T*>(p.in[i]) + r * p.st[i][0] + h * p.st[i][1] : nullptr;
  const KeyMap<T> km{base[KPRE],    base[VPRE],    base[K],       base[V],       base[KSUF], base[VSUF],
                     p.st[KPRE][2], p.st[VPRE][2], p.st[K][2],    p.st[V][2],    p.st[KSUF][2],
                     p.st[VSUF][2], len,           p.b};

  // This split's tiles [t_begin, t_end) of the row's ceil(Lk / TK): an even share, maybe none.
  const int64_t tiles = (Lk + TK - 1) / TK;
  const int64_t per_split = (tiles + p.num_splits - 1) / p.num_splits;
  const int64_t t_begin = split * per_split, t_end = min(t_begin + per_split, tiles);

  const T* qb = base[Q] + q0 * p.st[Q][2];
  const int64_t q_st = p.st[Q][2];
  const float scale = 1.f / sqrtf((float)D);  // IEEE sqrt and division (not rsqrtf), as the CPU op
  stage<T, D, VEC, BQ, D>(&Qs[0][0], [&](int i) { return i < nq ? qb + i * q_st : nullptr; }, scale);

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
    const int64_t row = bh * p.b + q0 + row0 + i;
    if (p.num_splits == 1) {
      T* out = static_cast<T*>(p.out) + row * D + lane * DPL;
#pragma unroll
      for (int e = 0; e < DPL; ++e) out[e] = from_float<T>(o[i][e] / l[i]);
    } else {
      const int64_t prow = split * (p.B * p.H * p.b) + row;  // O = 0, m = -inf, l = 0 if empty
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
    for (int s = 0; s < num_splits; ++s) acc += __shfl_sync(FULL, w, s) * o_part[(s * rows + row) * D + d];
    out[row * D + d] = from_float<T>(acc / L);
  }
}

template <typename T, int D>
void launch_tiles(const Params& p, bool vec, cudaStream_t stream) {
  const int64_t q_tiles = (p.b + Tile<D>::BQ - 1) / Tile<D>::BQ;
  const dim3 grid((unsigned)(p.B * p.H * q_tiles), (unsigned)p.num_splits);
  if (vec)
    attention_fwd<T, D, true><<<grid, NT, 0, stream>>>(p);
  else
    attention_fwd<T, D, false><<<grid, NT, 0, stream>>>(p);
  if (p.num_splits > 1) {
    const int64_t rows = p.B * p.H * p.b;
    attention_combine<T><<<(unsigned)((rows + NWARPS - 1) / NWARPS), NT, 0, stream>>>(
        p.o_part, p.ml_part, static_cast<T*>(p.out), rows, D, p.num_splits);
  }
}

template <typename T>
void launch_typed(const Params& p, int64_t D, bool vec, cudaStream_t stream) {
  if (D == 32) launch_tiles<T, 32>(p, vec, stream);
  else if (D == 64) launch_tiles<T, 64>(p, vec, stream);
  else launch_tiles<T, 128>(p, vec, stream);
}

}  // namespace

// -- host functions called by the torch glue (csrc/attention_cuda.cpp) with checked arguments.

// Splits of each row's keys: 1 when B H q_tiles CTAs already give every SM two, else enough
// splits for that, at most MAX_SPLITS and at most one per MIN_TILES_PER_SPLIT tiles of the
// longest row (max_keys = Lc + b + Ls). D in {32, 64, 128}.
int block_attention_num_splits(int64_t B, int64_t H, int64_t b, int64_t D, int64_t max_keys, int num_sms) {
  const int BQ = D == 128 ? Tile<128>::BQ : D == 64 ? Tile<64>::BQ : Tile<32>::BQ;
  const int TK = D == 128 ? Tile<128>::TK : D == 64 ? Tile<64>::TK : Tile<32>::TK;
  const int64_t ctas = B * H * ((b + BQ - 1) / BQ), want = 2 * (int64_t)num_sms;
  if (ctas <= 0 || ctas >= want) return 1;
  int64_t splits = (want + ctas - 1) / ctas;
  const int64_t tiles = (max_keys + TK - 1) / TK;
  splits = splits < MAX_SPLITS ? splits : MAX_SPLITS;
  const int64_t by_tiles = (tiles + MIN_TILES_PER_SPLIT - 1) / MIN_TILES_PER_SPLIT;
  splits = splits < by_tiles ? splits : by_tiles;
  return splits > 1 ? (int)splits : 1;
}

// dtype: 0 float32, 1 bfloat16, 2 float16. D in {32, 64, 128}. tensors[7]: q, k, v, k_prefix,
// v_prefix, k_suffix, v_suffix (absent ones nullptr, with Lc or Ls 0); strides[21]: their element
// strides in dims 0, 1, 2, three per tensor in the same order (dim 3 has stride 1).
// prefix_len: (B,) int64 on the device, or nullptr. out: (B, H, b, D) contiguous, q's dtype.
// num_splits: from block_attention_num_splits (1 .. MAX_SPLITS). scratch (num_splits > 1 only):
// num_splits * B * H * b * (D + 2) floats, O then (m, l). Launches on stream; no host sync.
void launch_block_attention(int dtype, int64_t B, int64_t H, int64_t b, int64_t D, int64_t Lc, int64_t Ls,
                            const void* const tensors[7], const int64_t strides[21], const int64_t* prefix_len,
                            void* out, float* scratch, int num_splits, cudaStream_t stream) {
  if (B * H == 0) return;  // nothing to compute (b >= 1 is checked)
  Params p;
  const int64_t elem = dtype == 0 ? 4 : 2, chunk = 16 / elem;
  bool vec = true;  // 16-byte loads: every base 16-byte aligned and every stride whole chunks
  for (int i = 0; i < 7; ++i) {
    p.in[i] = tensors[i];
    for (int d = 0; d < 3; ++d) {
      p.st[i][d] = strides[3 * i + d];
      if (tensors[i] != nullptr && p.st[i][d] % chunk != 0) vec = false;
    }
    if (reinterpret_cast<uintptr_t>(tensors[i]) % 16 != 0) vec = false;
  }
  const int64_t rows = B * H * b;
  p.prefix_len = prefix_len;
  p.out = out;
  p.o_part = num_splits > 1 ? scratch : nullptr;
  p.ml_part = num_splits > 1 ? reinterpret_cast<float2*>(scratch + num_splits * rows * D) : nullptr;
  p.B = B, p.H = H, p.b = b, p.Lc = Lc, p.Ls = Ls;
  p.num_splits = num_splits;
  if (dtype == 0) launch_typed<float>(p, D, vec, stream);
  else if (dtype == 1) launch_typed<__nv_bfloat16>(p, D, vec, stream);
  else launch_typed<__half>(p, D, vec, stream);
}

}  // namespace mini_dlm
