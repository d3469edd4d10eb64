// What the two CUDA block_attention kernels share: their parameters, the map from a row's
// "virtual" key index to its segment (prefix, block, suffix), and each CTA's share of the keys.
// Device code, no torch headers; included by attention_cuda.cu and attention_mma_cuda.cu.
#pragma once
#include "attention_cuda.h"
#include "cuda_common.cuh"

namespace mini_dlm {

enum Tensor7 { Q = 0, K = 1, V = 2, KPRE = 3, VPRE = 4, KSUF = 5, VSUF = 6 };

// Everything a kernel reads, as the launcher received it (a kernel argument: no copies).
struct Params {
  const void* in[7];          // Tensor7 order
  int64_t st[7][3];           // element strides of in[i] in dims 0, 1, 2 (dim 3 is contiguous)
  const int64_t* prefix_len;  // (B,) or nullptr
  void* out;                  // (B, H, b, D) contiguous, q's dtype (num_splits == 1)
  float* o_part;              // (num_splits, B H b, D) unnormalised O (num_splits > 1)
  float2* ml_part;            // (num_splits, B H b) (m, l), m in natural-log units
  int64_t B, H, b, Lc, Ls;
  int num_splits, BQ, TK;     // splits, queries per CTA, keys per tile (AttentionPlan)
};

// Key j of one (batch row, head) -> its K and V rows: j < len in the prefix, then the block,
// then the suffix. Callers keep j < len + b + Ls, so an absent segment is never touched.
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

// One CTA's view: grid x = (batch row * H + head) * q_tiles + query tile, y = split.
template <typename T>
struct CtaView {
  int64_t bh, q0;       // (batch row, head) pair; first query of the tile
  int nq;               // queries in this tile (>= 1)
  int64_t Lk;           // keys of this row: len + b + Ls
  int64_t t_begin, t_end;  // this split's run of TK-key tiles (maybe empty)
  const T* q;           // query q0 of (batch row, head)
  int64_t q_st;
  KeyMap<T> keys;
};

// BQ, TK: the kernel's tile sizes (p.BQ, p.TK; compile-time constants where the kernel has them)
template <typename T>
__device__ __forceinline__ CtaView<T> cta_view(const Params& p, int BQ, int TK) {
  const int64_t q_tiles = (p.b + BQ - 1) / BQ;
  CtaView<T> c;
  c.bh = (int64_t)blockIdx.x / q_tiles;
  c.q0 = (int64_t)blockIdx.x % q_tiles * BQ;
  c.nq = (int)min((int64_t)BQ, p.b - c.q0);
  const int64_t r = c.bh / p.H, h = c.bh % p.H;
  const int64_t len = p.prefix_len != nullptr ? p.prefix_len[r] : 0;
  MD_DEVICE_CHECK(0 <= len && len <= p.Lc && "block_attention: prefix_len outside [0, Lc]");
  c.Lk = len + p.b + p.Ls;
  const T* base[7];  // row 0 of each tensor for (r, h); 64-bit offsets
#pragma unroll
  for (int i = 0; i < 7; ++i)
    base[i] = p.in[i] != nullptr ? static_cast<const T*>(p.in[i]) + r * p.st[i][0] + h * p.st[i][1] : nullptr;
  c.keys = KeyMap<T>{base[KPRE],    base[VPRE],    base[K],       base[V],    base[KSUF],
                     base[VSUF],    p.st[KPRE][2], p.st[VPRE][2], p.st[K][2], p.st[V][2],
                     p.st[KSUF][2], p.st[VSUF][2], len,           p.b};
  const int64_t tiles = (c.Lk + TK - 1) / TK, per_split = (tiles + p.num_splits - 1) / p.num_splits;
  c.t_begin = min(tiles, (int64_t)blockIdx.y * per_split);
  c.t_end = min(tiles, c.t_begin + per_split);
  c.q_st = p.st[Q][2];
  c.q = base[Q] + c.q0 * c.q_st;
  return c;
}

// The tensor-core kernel, for bf16 / fp16 (attention_mma_cuda.cu): its keys per tile, its
// dynamic shared memory for BQ queries, and its launch (a grid of B H q_tiles x num_splits).
int mma_keys_per_tile(int D);
size_t mma_smem_bytes(int D, int BQ);
void launch_attention_mma(const Params& p, int dtype, int D, bool vec, int warps, cudaStream_t stream);

}  // namespace mini_dlm
