// Block-sparse attention on CUDA, forward and backward, over the tiles of a block layout (see sparse_attention.h
// for the tensors, the layout and the return codes). The semantics are exactly those of the CPU op
// hf_sparse::sparse_attention (kernels/csrc/cpu/attention.cpp) and of its autograd formula: scores
// s = scale * q.k + key_bias on the allowed (query, key) pairs only, an online softmax (FlashAttention-2) so no
// score row is ever stored whole, exp of arguments below -87 taken as exactly 0 (as the CPU kernel does), and a
// row with no allowed key giving out = 0 and lse = -inf (and no gradient).
//
// Plain SIMT code (fp32 FMAs on CUDA cores, fp32 accumulation for every input dtype): this file is compile-checked
// on machines without a GPU, so it is kept simple enough to be checked by reading; mma.sync / WMMA tiles and
// cp.async double buffering are the obvious next steps once a GPU test exists.
//
// Kernels and their shared memory (fp32 everywhere; BQ = block_q rounded up to a multiple of 8, D = head_dim,
// LD = D + 4: a padded row stride so that a 16-byte load by 8 consecutive lanes of rows lane, lane + 1, ... hits
// all 32 banks once, because (D + 4) mod 32 = 4 for every supported D):
//   forward   one CTA per (query block, head, batch), 32 * BQ / 8 threads: one warp per 8 query rows. Q (BQ x D,
//             pre-scaled) stays in shared memory; each listed key tile streams K (64 x LD) and V (64 x D) through
//             it, and each warp keeps its 8 rows of O, the running max and the running sum in registers.
//             bytes = 4 * (BQ * D + 64 * LD + 64 * D + BQ * 64)
//   dQ        the same grid; Q and dO (BQ x D each) stay, K and V (64 x LD each) stream, dS (BQ x 64) per tile,
//             lse and delta per row. bytes = 4 * (2 * BQ * D + 2 * 64 * LD + BQ * 64 + 2 * BQ)
//   dK, dV    one CTA per (key block, kv head, batch), 256 threads: one warp per 8 keys. K and V (64 x D) stay;
//             the CTA walks the transposed layout (the query blocks that use this key block), for every query
//             head of the kv head's group, 32 query rows (one per lane) at a time: Q and dO chunks (32 x LD),
//             P^T and dS^T (64 x 32). bytes = 4 * (2 * 64 * D + 2 * 32 * LD + 2 * 64 * 32)
//   delta     rowsum(dO * O) - d_lse per query row into the workspace, one warp per row, before dQ and dK/dV.
// For D = 64, block_q = 64: 65 KiB (forward), 82.5 KiB (dQ), 65 KiB (dK/dV). For D = 128, block_q = 128: 161 KiB,
// 227 KiB and 113 KiB: the dQ kernel then just fits an sm_90 (227 KiB per block) but not an sm_80 (163 KiB), where
// D = 128 needs block_q <= 72; the launchers check the device's limit and return HF_SPARSE_ATTN_ERR_SHARED_MEMORY.
// Registers: the forward and dQ kernels are built for up to 512 threads, so at most 128 registers per thread.
//
// Why the transposed layout for dK / dV rather than atomics: one CTA per key block owns that block's dK and dV
// rows outright, summing over its query blocks and over the query heads of a grouped kv head in a fixed order, so
// the result is deterministic (atomicAdd into fp32 would not be), needs no zero-initialised fp32 buffer and no
// conversion pass for fp16 / bf16, and no CTA ever waits on another. The price is recomputing S and dP once in the
// dQ kernel and once in the dK/dV kernel, and a CSC copy of the layout (cheap: built once per layout on the host
// with hf_sparse_attention_transpose_layout).
#include "sparse_attention.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kKeyBlock = HF_SPARSE_ATTN_KEY_BLOCK;  // keys per block: one 64-bit mask word per query row
constexpr int kRowsPerWarp = 8;                      // forward and dQ: query rows per warp
constexpr int kKeysPerWarp = 8;                      // dK/dV: keys per warp, so 8 warps cover a key block
constexpr int kChunk = 32;                           // dK/dV: query rows per step, one per lane
constexpr int kDkdvThreads = 32 * kKeyBlock / kKeysPerWarp;                      // 256
constexpr int kMaxThreads = 32 * HF_SPARSE_ATTN_MAX_BLOCK_Q / kRowsPerWarp;      // 512
constexpr int kDeltaThreads = 256;
constexpr float kMinExpArg = -87.0f;  // the CPU kernel's exp gives exactly 0 below this; so does ours
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kChunk == 32, "the dK/dV kernel gives one query row of a chunk to each lane");
static_assert(kKeyBlock == 2 * 32, "the forward and dQ kernels give two keys of a tile to each lane");

// ---------------------------------------------------------------------------------------------------------------
// Element loads and stores: inputs of any dtype become fp32 in shared memory, outputs are rounded once at the end.

template <typename T>
struct Elem;

template <>
struct Elem<float> {
  static __device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
  static __device__ __forceinline__ float load1(const float* p) { return *p; }
  static __device__ __forceinline__ void store(float* p, float x) { *p = x; }
};

template <>
struct Elem<__half> {
  static __device__ __forceinline__ float4 load4(const __half* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);  // one 8-byte load for 4 halves
    __half2 lo, hi;
    memcpy(&lo, &raw.x, sizeof(lo));
    memcpy(&hi, &raw.y, sizeof(hi));
    const float2 a = __half22float2(lo), b = __half22float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
  }
  static __device__ __forceinline__ float load1(const __half* p) { return __half2float(*p); }
  static __device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }
};

template <>
struct Elem<__nv_bfloat16> {
  static __device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    __nv_bfloat162 lo, hi;
    memcpy(&lo, &raw.x, sizeof(lo));
    memcpy(&hi, &raw.y, sizeof(hi));
    const float2 a = __bfloat1622float2(lo), b = __bfloat1622float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
  }
  static __device__ __forceinline__ float load1(const __nv_bfloat16* p) { return __bfloat162float(*p); }
  static __device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
};

__device__ __forceinline__ float neg_inf() { return -INFINITY; }

// exp that is exactly 0 for arguments below kMinExpArg (and for -inf), like the CPU kernel's exp_v.
__device__ __forceinline__ float exp_or_zero(float x) { return x < kMinExpArg ? 0.0f : expf(x); }

// Butterfly reductions: every lane ends with the result, so the online-softmax state stays replicated per lane.
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Copies rows_valid contiguous rows of D elements from global src (converted to fp32, times mul) into shared dst
// with row stride ld, and zero-fills rows up to rows_total: a tile running past the end of the sequence then reads
// zeros, which the masks keep out of every result. src == nullptr gives all zeros (the backward's d_out = 0 case).
// The whole CTA takes part; the caller synchronises.
template <typename T, int D>
__device__ __forceinline__ void load_rows(float* dst, int ld, const T* src, int rows_valid, int rows_total,
                                          float mul) {
  constexpr int kVecs = D / 4;  // 4 elements per load: 16 bytes of fp32, 8 bytes of fp16 / bf16
  for (int idx = threadIdx.x; idx < rows_total * kVecs; idx += blockDim.x) {
    const int r = idx / kVecs, e = (idx - r * kVecs) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (src != nullptr && r < rows_valid) {
      x = Elem<T>::load4(src + static_cast<int64_t>(r) * D + e);
      x.x *= mul;
      x.y *= mul;
      x.z *= mul;
      x.w *= mul;
    }
    *reinterpret_cast<float4*>(dst + r * ld + e) = x;
  }
}

// N consecutive fp32 values from shared memory (vector loads where the width allows; p is N-float aligned).
template <int N>
__device__ __forceinline__ void load_cols(const float* p, float (&x)[N]) {
  if constexpr (N == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  } else if constexpr (N == 2) {
    const float2 t = *reinterpret_cast<const float2*>(p);
    x[0] = t.x;
    x[1] = t.y;
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) x[i] = p[i];
  }
}

// acc[r][c] += sum_e a[r][e] * b[lane + 32 c][e]: R rows of a (row stride lda) that every lane reads (broadcasts)
// against 32 * C rows of b, one per lane per c (row stride D + 4, so the 16-byte loads are conflict-free). The
// forward's S = Q K^T and dP = dO V^T are (8 rows) x (64 keys, two per lane); the dK/dV kernel's S^T = K Q^T and
// dP^T = V dO^T are (8 keys) x (32 query rows, one per lane).
template <int D, int R, int C, int kUnroll = 4>
__device__ __forceinline__ void dot_tile(const float* a, int lda, const float* b, int lane, float (&acc)[R][C]) {
  constexpr int ldb = D + 4;
#pragma unroll(kUnroll)
  for (int e = 0; e < D; e += 4) {
    float4 bv[C];
#pragma unroll
    for (int c = 0; c < C; ++c) bv[c] = *reinterpret_cast<const float4*>(b + (lane + 32 * c) * ldb + e);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 av = *reinterpret_cast<const float4*>(a + r * lda + e);
#pragma unroll
      for (int c = 0; c < C; ++c) {
        acc[r][c] = fmaf(av.x, bv[c].x, acc[r][c]);
        acc[r][c] = fmaf(av.y, bv[c].y, acc[r][c]);
        acc[r][c] = fmaf(av.z, bv[c].z, acc[r][c]);
        acc[r][c] = fmaf(av.w, bv[c].w, acc[r][c]);
      }
    }
  }
}

// o[r][:] += sum_{j < N} a[r][j] * b[j][lane * D/32 .. + D/32]: R rows of a (row stride lda, broadcasts) times N
// rows of b (row stride ldb), each lane owning D / 32 consecutive output columns (consecutive lanes read
// consecutive addresses: conflict-free for any ldb). P V and dQ += dS K (N = 64 keys), dV += P^T dO and
// dK += dS^T Q (N = 32 query rows).
template <int D, int R, int N>
__device__ __forceinline__ void acc_tile(const float* a, int lda, const float* b, int ldb, int lane,
                                         float (&o)[R][D / 32]) {
  constexpr int kCols = D / 32;
#pragma unroll 2
  for (int j = 0; j < N; j += 4) {
    float bv[4][kCols];
#pragma unroll
    for (int t = 0; t < 4; ++t) load_cols<kCols>(b + (j + t) * ldb + lane * kCols, bv[t]);
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float4 av = *reinterpret_cast<const float4*>(a + r * lda + j);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        o[r][c] = fmaf(av.x, bv[0][c], o[r][c]);
        o[r][c] = fmaf(av.y, bv[1][c], o[r][c]);
        o[r][c] = fmaf(av.z, bv[2][c], o[r][c]);
        o[r][c] = fmaf(av.w, bv[3][c], o[r][c]);
      }
    }
  }
}

// The entries [begin, end) of one row of a CSR (or CSC) pointer array, clamped to [0, num_tiles] so a corrupt
// layout can never send a kernel outside kv_blocks / q_blocks.
__device__ __forceinline__ void tile_range(const int32_t* ptr, int64_t row, int64_t num_tiles, int64_t& begin,
                                           int64_t& end) {
  begin = min(max(static_cast<int64_t>(ptr[row]), int64_t{0}), num_tiles);
  end = min(max(static_cast<int64_t>(ptr[row + 1]), begin), num_tiles);
}

// Shared-memory bytes of each kernel (rows = block_q rounded up to whole warps of 8 rows); see the file header.
constexpr size_t fwd_smem_bytes(int d, int rows) {
  return sizeof(float) * (static_cast<size_t>(rows) * d + kKeyBlock * (d + 4) + kKeyBlock * d + rows * kKeyBlock);
}
constexpr size_t dq_smem_bytes(int d, int rows) {
  return sizeof(float) * (2 * static_cast<size_t>(rows) * d + 2 * kKeyBlock * (d + 4) + rows * kKeyBlock + 2 * rows);
}
constexpr size_t dkdv_smem_bytes(int d) {
  return sizeof(float) * (2 * static_cast<size_t>(kKeyBlock) * d + 2 * kChunk * (d + 4) + 2 * kKeyBlock * kChunk);
}

// ---------------------------------------------------------------------------------------------------------------
// Kernel arguments (by value: one constant-bank copy per launch).

struct Dims {
  int64_t batch, heads, kv_heads, q_len, kv_len;
  int64_t nqb, nkb;  // query blocks, key blocks
  int block_q;
  float scale;
};

struct Layout {
  const int32_t* kv_ptr;      // CSR over query blocks
  const int32_t* kv_blocks;
  const int32_t* mask_index;
  const int64_t* bits;
  int64_t num_tiles, num_partial;
  const int32_t* q_ptr;       // CSC over key blocks (backward only)
  const int32_t* q_blocks;
  const int32_t* t_mask_index;
};

struct FwdArgs {
  const void *q, *k, *v;
  const float* key_bias;
  void* out;
  float* lse;
  Layout lay;
  Dims dim;
};

struct BwdArgs {
  const void *q, *k, *v, *out, *d_out;
  const float *lse, *d_lse, *key_bias;
  void *d_q, *d_k, *d_v;
  float* delta;  // the workspace: rowsum(d_out * out) - d_lse, (B, H, Sq)
  Layout lay;
  Dims dim;
};

// ---------------------------------------------------------------------------------------------------------------
// Forward.

template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads) sparse_attention_fwd_kernel(const FwdArgs a) {
  constexpr int R = kRowsPerWarp, kCols = D / 32, LD = D + 4;
  extern __shared__ float4 smem_vec[];  // declared as float4 for 16-byte alignment
  float* const smem = reinterpret_cast<float*>(smem_vec);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows_alloc = (blockDim.x / 32) * R;
  float* const qs = smem;                     // rows_alloc x D: the queries, pre-scaled as in the CPU kernel
  float* const ks = qs + rows_alloc * D;      // 64 x LD: the current key tile
  float* const vs = ks + kKeyBlock * LD;      // 64 x D: the current value tile
  float* const ps = vs + kKeyBlock * D;       // rows_alloc x 64: probabilities, an 8-row slab per warp

  const Dims& dm = a.dim;
  const int64_t qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (dm.heads / dm.kv_heads);
  const int64_t i0 = qb * dm.block_q;
  const int rows_valid = static_cast<int>(min(static_cast<int64_t>(dm.block_q), dm.q_len - i0));
  const int64_t head_q = (b * dm.heads + h) * dm.q_len;  // first query row of this (batch, head)
  const int64_t head_kv = (b * dm.kv_heads + hk) * dm.kv_len;
  const T* const kh = static_cast<const T*>(a.k) + head_kv * D;
  const T* const vh = static_cast<const T*>(a.v) + head_kv * D;
  const float* const bias = a.key_bias != nullptr ? a.key_bias + b * dm.kv_len : nullptr;

  load_rows<T, D>(qs, D, static_cast<const T*>(a.q) + (head_q + i0) * D, rows_valid, rows_alloc, dm.scale);

  const int row0 = warp * R;
  const bool warp_live = row0 < rows_valid;  // warp-uniform
  // Online-softmax state: lane r (< 8) holds the running max and sum of the warp's row r, shuffled to the other
  // lanes when needed (replicating them would cost 14 more registers per thread); O rows are split by columns.
  float m_mine = neg_inf(), l_mine = 0.f, o[R][kCols];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[r][c] = 0.f;

  int64_t p0, p1;
  tile_range(a.lay.kv_ptr, qb, a.lay.num_tiles, p0, p1);
  for (int64_t p = p0; p < p1; ++p) {
    const int32_t kb = a.lay.kv_blocks[p], mi = a.lay.mask_index[p];
    // Same values in every thread, so the skip is CTA-uniform and the barriers below stay matched.
    if (kb < 0 || kb >= dm.nkb || mi < -1 || mi >= a.lay.num_partial) continue;
    const int64_t j0 = static_cast<int64_t>(kb) * kKeyBlock;
    const int valid = static_cast<int>(min(static_cast<int64_t>(kKeyBlock), dm.kv_len - j0));
    __syncthreads();  // every warp is done reading the previous tile
    load_rows<T, D>(ks, LD, kh + j0 * D, valid, kKeyBlock, 1.f);
    load_rows<T, D>(vs, D, vh + j0 * D, valid, kKeyBlock, 1.f);
    __syncthreads();
    if (!warp_live) continue;

    float s[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = 0.f;
    dot_tile<D, R, 2>(qs + row0 * D, D, ks, lane, s);

    // This lane's two keys: lane and lane + 32 of the tile.
    bool key_ok[2];
    float key_bias[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = lane + 32 * c;
      key_ok[c] = j < valid;
      key_bias[c] = key_ok[c] && bias != nullptr ? bias[j0 + j] : 0.f;
    }
    const int64_t* const words = mi >= 0 ? a.lay.bits + static_cast<int64_t>(mi) * dm.block_q : nullptr;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = row0 + r;
      // Rows past the end of the sequence allow nothing (and bits has only block_q rows per tile).
      const uint64_t word = row >= rows_valid ? 0ull : words != nullptr ? static_cast<uint64_t>(words[row]) : ~0ull;
      float x[2];
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const bool keep = key_ok[c] && ((word >> (lane + 32 * c)) & 1ull);
        x[c] = keep ? s[r][c] + key_bias[c] : neg_inf();
      }
      const float m_old = __shfl_sync(kFullMask, m_mine, r);
      const float mnew = fmaxf(m_old, warp_max(fmaxf(x[0], x[1])));
      float pr[2] = {0.f, 0.f};
      if (mnew != neg_inf()) {  // warp-uniform (mnew is replicated); else nothing is allowed in this row so far
        const float alpha = m_old == neg_inf() ? 0.f : expf(m_old - mnew);
        pr[0] = exp_or_zero(x[0] - mnew);
        pr[1] = exp_or_zero(x[1] - mnew);
        const float tile_sum = warp_sum(pr[0] + pr[1]);
        if (lane == r) {
          l_mine = l_mine * alpha + tile_sum;
          m_mine = mnew;
        }
#pragma unroll
        for (int c = 0; c < kCols; ++c) o[r][c] *= alpha;
      }
      ps[row * kKeyBlock + lane] = pr[0];
      ps[row * kKeyBlock + lane + 32] = pr[1];
    }
    __syncwarp();  // the warp's P slab is written before its lanes read each other's entries
    acc_tile<D, R, kKeyBlock>(ps + row0 * kKeyBlock, kKeyBlock, vs, D, lane, o);
  }

  T* const out = static_cast<T*>(a.out) + (head_q + i0) * D;
  float* const lse = a.lse + head_q + i0;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r;
    if (row >= rows_valid) break;  // warp-uniform, so the shuffles below see every lane
    const float l = __shfl_sync(kFullMask, l_mine, r), m = __shfl_sync(kFullMask, m_mine, r);
    const float inv = l > 0.f ? 1.f / l : 0.f;  // a row that attends nothing gets exactly 0
#pragma unroll
    for (int c = 0; c < kCols; ++c) Elem<T>::store(out + row * D + lane * kCols + c, o[r][c] * inv);
    if (lane == 0) lse[row] = l > 0.f ? m + logf(l) : neg_inf();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Backward.

// delta[row] = sum_e d_out[row][e] * out[row][e] - d_lse[row]: with it dS = P (dP - delta) covers both the output
// and the lse gradient (d lse / d s = P). One warp per row, grid-stride.
template <typename T>
__global__ void __launch_bounds__(kDeltaThreads) sparse_attention_delta_kernel(const BwdArgs a, int d) {
  const int64_t rows = a.dim.batch * a.dim.heads * a.dim.q_len;
  const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * warps;
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * warps + threadIdx.x / 32; row < rows; row += stride) {
    float acc = 0.f;
    if (a.d_out != nullptr) {
      const T* const go = static_cast<const T*>(a.d_out) + row * d;
      const T* const o = static_cast<const T*>(a.out) + row * d;
      for (int e = lane; e < d; e += 32) acc = fmaf(Elem<T>::load1(go + e), Elem<T>::load1(o + e), acc);
    }
    acc = warp_sum(acc);  // the loop condition depends on the warp only, so every lane is here
    if (lane == 0) a.delta[row] = acc - (a.d_lse != nullptr ? a.d_lse[row] : 0.f);
  }
}

// dQ = scale * sum over the row's tiles of dS K, dS = P (dP - delta), P = exp(scale q.k + bias - lse) on allowed
// pairs. Same grid and warp-per-8-rows split as the forward; each CTA owns its query block's dQ rows.
template <typename T, int D>
__global__ void __launch_bounds__(kMaxThreads) sparse_attention_dq_kernel(const BwdArgs a) {
  constexpr int R = kRowsPerWarp, kCols = D / 32, LD = D + 4;
  extern __shared__ float4 smem_vec[];
  float* const smem = reinterpret_cast<float*>(smem_vec);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rows_alloc = (blockDim.x / 32) * R;
  float* const qs = smem;                     // rows_alloc x D: queries (unscaled)
  float* const dos = qs + rows_alloc * D;     // rows_alloc x D: output gradients
  float* const ks = dos + rows_alloc * D;     // 64 x LD
  float* const vs = ks + kKeyBlock * LD;      // 64 x LD (read per key row for dP, like K for S)
  float* const dss = vs + kKeyBlock * LD;     // rows_alloc x 64: dS, an 8-row slab per warp
  float* const lses = dss + rows_alloc * kKeyBlock;  // rows_alloc: lse per row (-inf: no gradient)
  float* const deltas = lses + rows_alloc;           // rows_alloc: delta per row

  const Dims& dm = a.dim;
  const int64_t qb = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int64_t hk = h / (dm.heads / dm.kv_heads);
  const int64_t i0 = qb * dm.block_q;
  const int rows_valid = static_cast<int>(min(static_cast<int64_t>(dm.block_q), dm.q_len - i0));
  const int64_t head_q = (b * dm.heads + h) * dm.q_len;
  const int64_t head_kv = (b * dm.kv_heads + hk) * dm.kv_len;
  const T* const kh = static_cast<const T*>(a.k) + head_kv * D;
  const T* const vh = static_cast<const T*>(a.v) + head_kv * D;
  const float* const bias = a.key_bias != nullptr ? a.key_bias + b * dm.kv_len : nullptr;

  load_rows<T, D>(qs, D, static_cast<const T*>(a.q) + (head_q + i0) * D, rows_valid, rows_alloc, 1.f);
  load_rows<T, D>(dos, D, a.d_out != nullptr ? static_cast<const T*>(a.d_out) + (head_q + i0) * D : nullptr,
                  rows_valid, rows_alloc, 1.f);

  const int row0 = warp * R;
  const bool warp_live = row0 < rows_valid;
  // Per row lse and delta, kept in shared memory (read as broadcasts) to leave the registers to the tiles. A row
  // past the end, or with lse = -inf (it attended nothing), has P = 0 and so no gradient.
  for (int row = threadIdx.x; row < rows_alloc; row += blockDim.x) {
    const float lse = row < rows_valid ? a.lse[head_q + i0 + row] : neg_inf();
    lses[row] = isfinite(lse) ? lse : neg_inf();
    deltas[row] = isfinite(lse) ? a.delta[head_q + i0 + row] : 0.f;
  }
  float dq[R][kCols];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kCols; ++c) dq[r][c] = 0.f;

  int64_t p0, p1;
  tile_range(a.lay.kv_ptr, qb, a.lay.num_tiles, p0, p1);
  for (int64_t p = p0; p < p1; ++p) {
    const int32_t kb = a.lay.kv_blocks[p], mi = a.lay.mask_index[p];
    if (kb < 0 || kb >= dm.nkb || mi < -1 || mi >= a.lay.num_partial) continue;  // CTA-uniform
    const int64_t j0 = static_cast<int64_t>(kb) * kKeyBlock;
    const int valid = static_cast<int>(min(static_cast<int64_t>(kKeyBlock), dm.kv_len - j0));
    __syncthreads();
    load_rows<T, D>(ks, LD, kh + j0 * D, valid, kKeyBlock, 1.f);
    load_rows<T, D>(vs, LD, vh + j0 * D, valid, kKeyBlock, 1.f);
    __syncthreads();
    if (!warp_live) continue;

    float s[R][2], dp[R][2];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r][0] = s[r][1] = dp[r][0] = dp[r][1] = 0.f;
    // (Unrolled less than the forward's: S, dP and dQ together already fill the 128 registers of 512 threads.)
    dot_tile<D, R, 2, 2>(qs + row0 * D, D, ks, lane, s);
    dot_tile<D, R, 2, 2>(dos + row0 * D, D, vs, lane, dp);

    bool key_ok[2];
    float key_bias[2];
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int j = lane + 32 * c;
      key_ok[c] = j < valid;
      key_bias[c] = key_ok[c] && bias != nullptr ? bias[j0 + j] : 0.f;
    }
    const int64_t* const words = mi >= 0 ? a.lay.bits + static_cast<int64_t>(mi) * dm.block_q : nullptr;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int row = row0 + r;
      const float lse = lses[row], delta = deltas[row];
      const uint64_t word = lse == neg_inf() ? 0ull : words != nullptr ? static_cast<uint64_t>(words[row]) : ~0ull;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const bool keep = key_ok[c] && ((word >> (lane + 32 * c)) & 1ull);
        const float pr = keep ? exp_or_zero(dm.scale * s[r][c] + key_bias[c] - lse) : 0.f;
        dss[row * kKeyBlock + lane + 32 * c] = pr * (dp[r][c] - delta);
      }
    }
    __syncwarp();
    acc_tile<D, R, kKeyBlock>(dss + row0 * kKeyBlock, kKeyBlock, ks, LD, lane, dq);
  }

  T* const dq_out = static_cast<T*>(a.d_q) + (head_q + i0) * D;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int row = row0 + r;
    if (row >= rows_valid) break;
#pragma unroll
    for (int c = 0; c < kCols; ++c) Elem<T>::store(dq_out + row * D + lane * kCols + c, dm.scale * dq[r][c]);
  }
}

// dV = sum P^T dO and dK = scale * sum dS^T Q over the query blocks that use this key block (the transposed
// layout) and over the query heads of this kv head, in that fixed order: each CTA owns 64 rows of dK and dV.
template <typename T, int D>
__global__ void __launch_bounds__(kDkdvThreads, 1) sparse_attention_dkdv_kernel(const BwdArgs a) {
  constexpr int R = kKeysPerWarp, kCols = D / 32, LD = D + 4;
  extern __shared__ float4 smem_vec[];
  float* const smem = reinterpret_cast<float*>(smem_vec);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float* const ks = smem;                     // 64 x D: this key block (rows read as broadcasts)
  float* const vs = ks + kKeyBlock * D;       // 64 x D
  float* const qc = vs + kKeyBlock * D;       // 32 x LD: a chunk of query rows, one per lane
  float* const doc = qc + kChunk * LD;        // 32 x LD: their output gradients
  float* const pt = doc + kChunk * LD;        // 64 x 32: P^T, an 8-key slab per warp
  float* const dst = pt + kKeyBlock * kChunk;  // 64 x 32: dS^T

  const Dims& dm = a.dim;
  const int64_t kb = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int64_t group = dm.heads / dm.kv_heads;
  const int64_t j0 = kb * kKeyBlock;
  const int valid = static_cast<int>(min(static_cast<int64_t>(kKeyBlock), dm.kv_len - j0));
  const int64_t head_kv = (b * dm.kv_heads + hk) * dm.kv_len;
  load_rows<T, D>(ks, D, static_cast<const T*>(a.k) + (head_kv + j0) * D, valid, kKeyBlock, 1.f);
  load_rows<T, D>(vs, D, static_cast<const T*>(a.v) + (head_kv + j0) * D, valid, kKeyBlock, 1.f);
  // (The barrier at the top of the chunk loop orders these stores before any read.)

  const int key0 = warp * R;
  const bool warp_live = key0 < valid;  // warp-uniform: the last key block may have fewer than 64 keys
  bool key_ok[R];
  float key_bias[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    key_ok[r] = key0 + r < valid;
    key_bias[r] = key_ok[r] && a.key_bias != nullptr ? a.key_bias[b * dm.kv_len + j0 + key0 + r] : 0.f;
  }
  float dk[R][kCols], dv[R][kCols];
#pragma unroll
  for (int r = 0; r < R; ++r)
#pragma unroll
    for (int c = 0; c < kCols; ++c) dk[r][c] = dv[r][c] = 0.f;

  int64_t t0, t1;
  tile_range(a.lay.q_ptr, kb, a.lay.num_tiles, t0, t1);
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const int64_t head_q = (b * dm.heads + h) * dm.q_len;
    for (int64_t t = t0; t < t1; ++t) {
      const int32_t qb = a.lay.q_blocks[t], mi = a.lay.t_mask_index[t];
      if (qb < 0 || qb >= dm.nqb || mi < -1 || mi >= a.lay.num_partial) continue;  // CTA-uniform
      const int64_t i0 = static_cast<int64_t>(qb) * dm.block_q;
      const int rows_valid = static_cast<int>(min(static_cast<int64_t>(dm.block_q), dm.q_len - i0));
      const int64_t* const words = mi >= 0 ? a.lay.bits + static_cast<int64_t>(mi) * dm.block_q : nullptr;
      for (int c0 = 0; c0 < rows_valid; c0 += kChunk) {
        const int n = min(kChunk, rows_valid - c0);
        const int64_t first = head_q + i0 + c0;  // first query row of the chunk
        __syncthreads();  // every warp is done with the previous chunk
        load_rows<T, D>(qc, LD, static_cast<const T*>(a.q) + first * D, n, kChunk, 1.f);
        load_rows<T, D>(doc, LD, a.d_out != nullptr ? static_cast<const T*>(a.d_out) + first * D : nullptr, n,
                        kChunk, 1.f);
        __syncthreads();
        if (!warp_live) continue;

        // This lane's query row: c0 + lane of the block (past the end, or attending nothing: no gradient).
        float lse_i = neg_inf(), delta_i = 0.f;
        uint64_t word = 0ull;
        if (lane < n) {
          lse_i = a.lse[first + lane];
          if (isfinite(lse_i)) {
            delta_i = a.delta[first + lane];
            word = words != nullptr ? static_cast<uint64_t>(words[c0 + lane]) : ~0ull;
          }
        }
        float s[R][1], dp[R][1];
#pragma unroll
        for (int r = 0; r < R; ++r) s[r][0] = dp[r][0] = 0.f;
        dot_tile<D, R, 1>(ks + key0 * D, D, qc, lane, s);
        dot_tile<D, R, 1>(vs + key0 * D, D, doc, lane, dp);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const int j = key0 + r;
          const bool keep = key_ok[r] && ((word >> j) & 1ull);
          const float pr = keep ? exp_or_zero(dm.scale * s[r][0] + key_bias[r] - lse_i) : 0.f;
          pt[j * kChunk + lane] = pr;
          dst[j * kChunk + lane] = pr * (dp[r][0] - delta_i);
        }
        __syncwarp();
        acc_tile<D, R, kChunk>(pt + key0 * kChunk, kChunk, doc, LD, lane, dv);
        acc_tile<D, R, kChunk>(dst + key0 * kChunk, kChunk, qc, LD, lane, dk);
      }
    }
  }

  T* const dk_out = static_cast<T*>(a.d_k) + (head_kv + j0) * D;
  T* const dv_out = static_cast<T*>(a.d_v) + (head_kv + j0) * D;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int j = key0 + r;
    if (j >= valid) break;
#pragma unroll
    for (int c = 0; c < kCols; ++c) {
      Elem<T>::store(dk_out + j * D + lane * kCols + c, dm.scale * dk[r][c]);
      Elem<T>::store(dv_out + j * D + lane * kCols + c, dv[r][c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side: argument checks and launches.

int cuda_code(cudaError_t e) {
  return e == cudaSuccess ? HF_SPARSE_ATTN_OK : HF_SPARSE_ATTN_ERR_CUDA + static_cast<int>(e);
}

bool aligned4(const void* p, size_t elem_size) {
  return p == nullptr || reinterpret_cast<uintptr_t>(p) % (4 * elem_size) == 0;
}

bool supported_head_dim(int64_t d) { return d == 32 || d == 64 || d == 96 || d == 128; }

// Sizes, grid limits and int32 indexing of the layout; fills dm.
int check_dims(int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
               int64_t block_q, int64_t num_tiles, int64_t num_partial, float scale, Dims* dm) {
  if (batch <= 0 || heads <= 0 || kv_heads <= 0 || q_len <= 0 || kv_len <= 0 || heads % kv_heads != 0)
    return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  if (num_tiles < 0 || num_partial < 0 || num_tiles > INT32_MAX) return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  if (!supported_head_dim(head_dim)) return HF_SPARSE_ATTN_ERR_HEAD_DIM;
  if (block_q < 1 || block_q > HF_SPARSE_ATTN_MAX_BLOCK_Q) return HF_SPARSE_ATTN_ERR_BLOCK_Q;
  const int64_t nqb = (q_len + block_q - 1) / block_q, nkb = (kv_len + kKeyBlock - 1) / kKeyBlock;
  // Query / key blocks index the grid's x dimension and int32 layout entries; heads and batch its y and z.
  if (nqb > INT32_MAX || nkb > INT32_MAX || heads > 65535 || kv_heads > 65535 || batch > 65535)
    return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  // Element offsets are int64: keep every tensor's element count well inside it.
  const double elems = static_cast<double>(batch) * static_cast<double>(heads) *
                       static_cast<double>(q_len > kv_len ? q_len : kv_len) * static_cast<double>(head_dim);
  if (elems > 4e18) return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  *dm = Dims{batch, heads, kv_heads, q_len, kv_len, nqb, nkb, static_cast<int>(block_q), scale};
  return HF_SPARSE_ATTN_OK;
}

int check_layout_pointers(const Layout& lay) {
  if (lay.kv_ptr == nullptr) return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (lay.num_tiles > 0 && (lay.kv_blocks == nullptr || lay.mask_index == nullptr))
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (lay.num_partial > 0 && lay.bits == nullptr) return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  return HF_SPARSE_ATTN_OK;
}

// Checks the device's per-block limit and, above the default 48 KiB, opts the kernel in to that much dynamic
// shared memory (a cheap call; done per launch so that every device and every instantiation is covered).
template <typename Kernel>
int prepare_shared_memory(Kernel* kernel, size_t bytes) {
  int device = 0, limit = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return cuda_code(e);
  if (bytes > static_cast<size_t>(limit)) return HF_SPARSE_ATTN_ERR_SHARED_MEMORY;
  if (bytes > 48 * 1024) {
    const int n = static_cast<int>(bytes);
    return cuda_code(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, n));
  }
  return HF_SPARSE_ATTN_OK;
}

// CTA size of the forward and dQ kernels: one warp per 8 query rows of the block.
int row_warps(int block_q) { return (block_q + kRowsPerWarp - 1) / kRowsPerWarp; }

template <typename T, int D>
int launch_fwd(const FwdArgs& a, cudaStream_t stream) {
  const int warps = row_warps(a.dim.block_q);
  const size_t smem = fwd_smem_bytes(D, warps * kRowsPerWarp);
  if (int rc = prepare_shared_memory(sparse_attention_fwd_kernel<T, D>, smem)) return rc;
  const dim3 grid(static_cast<unsigned>(a.dim.nqb), static_cast<unsigned>(a.dim.heads),
                  static_cast<unsigned>(a.dim.batch));
  sparse_attention_fwd_kernel<T, D><<<grid, 32 * warps, smem, stream>>>(a);
  return cuda_code(cudaGetLastError());
}

template <typename T, int D>
int launch_bwd(const BwdArgs& a, cudaStream_t stream) {
  const int warps = row_warps(a.dim.block_q);
  const size_t dq_smem = dq_smem_bytes(D, warps * kRowsPerWarp), dkdv_smem = dkdv_smem_bytes(D);
  // Both checks first, so a too-large configuration fails before anything is launched.
  if (int rc = prepare_shared_memory(sparse_attention_dq_kernel<T, D>, dq_smem)) return rc;
  if (int rc = prepare_shared_memory(sparse_attention_dkdv_kernel<T, D>, dkdv_smem)) return rc;

  const int64_t rows = a.dim.batch * a.dim.heads * a.dim.q_len;
  const int64_t rows_per_cta = kDeltaThreads / 32;
  const int64_t delta_ctas = std::min<int64_t>((rows + rows_per_cta - 1) / rows_per_cta, 65535);
  sparse_attention_delta_kernel<T><<<static_cast<unsigned>(delta_ctas), kDeltaThreads, 0, stream>>>(a, D);
  if (int rc = cuda_code(cudaGetLastError())) return rc;

  const dim3 dq_grid(static_cast<unsigned>(a.dim.nqb), static_cast<unsigned>(a.dim.heads),
                     static_cast<unsigned>(a.dim.batch));
  sparse_attention_dq_kernel<T, D><<<dq_grid, 32 * warps, dq_smem, stream>>>(a);
  if (int rc = cuda_code(cudaGetLastError())) return rc;

  const dim3 dkdv_grid(static_cast<unsigned>(a.dim.nkb), static_cast<unsigned>(a.dim.kv_heads),
                       static_cast<unsigned>(a.dim.batch));
  sparse_attention_dkdv_kernel<T, D><<<dkdv_grid, kDkdvThreads, dkdv_smem, stream>>>(a);
  return cuda_code(cudaGetLastError());
}

template <typename T>
int fwd_entry(const void* q, const void* k, const void* v, const int32_t* kv_ptr, const int32_t* kv_blocks,
              const int32_t* mask_index, const int64_t* bits, int64_t num_tiles, int64_t num_partial,
              const float* key_bias, void* out, float* lse, int64_t batch, int64_t heads, int64_t kv_heads,
              int64_t q_len, int64_t kv_len, int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream) {
  FwdArgs a{};
  if (int rc = check_dims(batch, heads, kv_heads, q_len, kv_len, head_dim, block_q, num_tiles, num_partial, scale,
                          &a.dim))
    return rc;
  a.lay = Layout{kv_ptr, kv_blocks, mask_index, bits, num_tiles, num_partial, nullptr, nullptr, nullptr};
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr || lse == nullptr)
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (int rc = check_layout_pointers(a.lay)) return rc;
  if (!aligned4(q, sizeof(T)) || !aligned4(k, sizeof(T)) || !aligned4(v, sizeof(T)))
    return HF_SPARSE_ATTN_ERR_ALIGNMENT;
  a.q = q;
  a.k = k;
  a.v = v;
  a.key_bias = key_bias;
  a.out = out;
  a.lse = lse;
  switch (head_dim) {
    case 32: return launch_fwd<T, 32>(a, stream);
    case 64: return launch_fwd<T, 64>(a, stream);
    case 96: return launch_fwd<T, 96>(a, stream);
    default: return launch_fwd<T, 128>(a, stream);  // check_dims admits only these four
  }
}

template <typename T>
int bwd_entry(const void* q, const void* k, const void* v, const void* out, const void* d_out, const float* lse,
              const float* d_lse, const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,
              const int64_t* bits, int64_t num_tiles, int64_t num_partial, const int32_t* q_ptr,
              const int32_t* q_blocks, const int32_t* t_mask_index, const float* key_bias, void* d_q, void* d_k,
              void* d_v, float* workspace, int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len,
              int64_t kv_len, int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream) {
  BwdArgs a{};
  if (int rc = check_dims(batch, heads, kv_heads, q_len, kv_len, head_dim, block_q, num_tiles, num_partial, scale,
                          &a.dim))
    return rc;
  a.lay = Layout{kv_ptr, kv_blocks, mask_index, bits, num_tiles, num_partial, q_ptr, q_blocks, t_mask_index};
  if (q == nullptr || k == nullptr || v == nullptr || lse == nullptr || d_q == nullptr || d_k == nullptr ||
      d_v == nullptr || workspace == nullptr || (d_out != nullptr && out == nullptr))
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (int rc = check_layout_pointers(a.lay)) return rc;
  if (q_ptr == nullptr || (num_tiles > 0 && (q_blocks == nullptr || t_mask_index == nullptr)))
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (!aligned4(q, sizeof(T)) || !aligned4(k, sizeof(T)) || !aligned4(v, sizeof(T)) || !aligned4(d_out, sizeof(T)))
    return HF_SPARSE_ATTN_ERR_ALIGNMENT;
  a.q = q;
  a.k = k;
  a.v = v;
  a.out = out;
  a.d_out = d_out;
  a.lse = lse;
  a.d_lse = d_lse;
  a.key_bias = key_bias;
  a.d_q = d_q;
  a.d_k = d_k;
  a.d_v = d_v;
  a.delta = workspace;
  switch (head_dim) {
    case 32: return launch_bwd<T, 32>(a, stream);
    case 64: return launch_bwd<T, 64>(a, stream);
    case 96: return launch_bwd<T, 96>(a, stream);
    default: return launch_bwd<T, 128>(a, stream);
  }
}

// The CPU op's layout conditions (num_partial < 0: the mask indices' upper bound is not checked).
int check_layout_host(const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index, int64_t num_tiles,
                      int64_t num_partial, int64_t q_len, int64_t kv_len, int64_t block_q) {
  if (kv_ptr == nullptr || (num_tiles > 0 && (kv_blocks == nullptr || mask_index == nullptr)))
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  if (q_len <= 0 || kv_len <= 0 || num_tiles < 0 || num_tiles > INT32_MAX) return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  if (block_q < 1 || block_q > HF_SPARSE_ATTN_MAX_BLOCK_Q) return HF_SPARSE_ATTN_ERR_BLOCK_Q;
  const int64_t nqb = (q_len + block_q - 1) / block_q, nkb = (kv_len + kKeyBlock - 1) / kKeyBlock;
  if (nqb > INT32_MAX || nkb > INT32_MAX) return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  if (kv_ptr[0] != 0 || kv_ptr[nqb] != num_tiles) return HF_SPARSE_ATTN_ERR_LAYOUT;
  for (int64_t i = 0; i < nqb; ++i)
    if (kv_ptr[i] > kv_ptr[i + 1]) return HF_SPARSE_ATTN_ERR_LAYOUT;
  for (int64_t p = 0; p < num_tiles; ++p) {
    if (kv_blocks[p] < 0 || kv_blocks[p] >= nkb || mask_index[p] < -1) return HF_SPARSE_ATTN_ERR_LAYOUT;
    if (num_partial >= 0 && mask_index[p] >= num_partial) return HF_SPARSE_ATTN_ERR_LAYOUT;
  }
  return HF_SPARSE_ATTN_OK;
}

}  // namespace

extern "C" {

const char* hf_sparse_attention_error_string(int code) {
  switch (code) {
    case HF_SPARSE_ATTN_OK: return "ok";
    case HF_SPARSE_ATTN_ERR_NULL_POINTER: return "a required pointer is null";
    case HF_SPARSE_ATTN_ERR_BAD_SIZE:
      return "bad sizes (non-positive, heads not a multiple of kv_heads, negative tile counts, or too large)";
    case HF_SPARSE_ATTN_ERR_HEAD_DIM: return "head_dim must be 32, 64, 96 or 128";
    case HF_SPARSE_ATTN_ERR_BLOCK_Q: return "block_q must be in [1, 128]";
    case HF_SPARSE_ATTN_ERR_ALIGNMENT: return "q, k, v and d_out must be aligned to 4 elements";
    case HF_SPARSE_ATTN_ERR_SHARED_MEMORY:
      return "the kernel needs more shared memory per block than this device has (use a smaller block_q)";
    case HF_SPARSE_ATTN_ERR_LAYOUT: return "inconsistent block layout";
    default:
      if (code > HF_SPARSE_ATTN_ERR_CUDA)
        return cudaGetErrorString(static_cast<cudaError_t>(code - HF_SPARSE_ATTN_ERR_CUDA));
      return "unknown error code";
  }
}

int hf_sparse_attention_check_layout(const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,
                                     int64_t num_tiles, int64_t num_partial, int64_t q_len, int64_t kv_len,
                                     int64_t block_q) {
  if (num_partial < 0) return HF_SPARSE_ATTN_ERR_BAD_SIZE;
  return check_layout_host(kv_ptr, kv_blocks, mask_index, num_tiles, num_partial, q_len, kv_len, block_q);
}

int hf_sparse_attention_transpose_layout(const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,
                                         int64_t num_tiles, int64_t q_len, int64_t kv_len, int64_t block_q,
                                         int32_t* q_ptr, int32_t* q_blocks, int32_t* t_mask_index) {
  if (int rc = check_layout_host(kv_ptr, kv_blocks, mask_index, num_tiles, -1, q_len, kv_len, block_q)) return rc;
  if (q_ptr == nullptr || (num_tiles > 0 && (q_blocks == nullptr || t_mask_index == nullptr)))
    return HF_SPARSE_ATTN_ERR_NULL_POINTER;
  const int64_t nqb = (q_len + block_q - 1) / block_q, nkb = (kv_len + kKeyBlock - 1) / kKeyBlock;
  // Counting sort by key block; walking the CSR in query-block order keeps each key block's entries ascending.
  for (int64_t kb = 0; kb <= nkb; ++kb) q_ptr[kb] = 0;
  for (int64_t p = 0; p < num_tiles; ++p) ++q_ptr[kv_blocks[p] + 1];
  for (int64_t kb = 0; kb < nkb; ++kb) q_ptr[kb + 1] += q_ptr[kb];
  std::vector<int32_t> next(q_ptr, q_ptr + nkb);
  for (int64_t qb = 0; qb < nqb; ++qb)
    for (int32_t p = kv_ptr[qb]; p < kv_ptr[qb + 1]; ++p) {
      const int32_t slot = next[kv_blocks[p]]++;
      q_blocks[slot] = static_cast<int32_t>(qb);
      t_mask_index[slot] = mask_index[p];
    }
  return HF_SPARSE_ATTN_OK;
}

// The per-dtype launchers: thin wrappers over the templates above (void* data pointers keep the header C-only).
#define HF_SPARSE_ATTN_DEFINE_LAUNCHERS(SUFFIX, T)                                                                   \
  int hf_sparse_attention_fwd_##SUFFIX(                                                                              \
      const void* q, const void* k, const void* v, const int32_t* kv_ptr, const int32_t* kv_blocks,                 \
      const int32_t* mask_index, const int64_t* bits, int64_t num_tiles, int64_t num_partial,                       \
      const float* key_bias, void* out, float* lse, int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len,   \
      int64_t kv_len, int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream) {                        \
    return fwd_entry<T>(q, k, v, kv_ptr, kv_blocks, mask_index, bits, num_tiles, num_partial, key_bias, out, lse,   \
                        batch, heads, kv_heads, q_len, kv_len, head_dim, block_q, scale, stream);                   \
  }                                                                                                                  \
  int hf_sparse_attention_bwd_##SUFFIX(                                                                              \
      const void* q, const void* k, const void* v, const void* out, const void* d_out, const float* lse,            \
      const float* d_lse, const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,                \
      const int64_t* bits, int64_t num_tiles, int64_t num_partial, const int32_t* q_ptr, const int32_t* q_blocks,    \
      const int32_t* t_mask_index, const float* key_bias, void* d_q, void* d_k, void* d_v, float* workspace,         \
      int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim,               \
      int64_t block_q, float scale, cudaStream_t stream) {                                                           \
    return bwd_entry<T>(q, k, v, out, d_out, lse, d_lse, kv_ptr, kv_blocks, mask_index, bits, num_tiles,            \
                        num_partial, q_ptr, q_blocks, t_mask_index, key_bias, d_q, d_k, d_v, workspace, batch,      \
                        heads, kv_heads, q_len, kv_len, head_dim, block_q, scale, stream);                          \
  }

HF_SPARSE_ATTN_DEFINE_LAUNCHERS(f32, float)
HF_SPARSE_ATTN_DEFINE_LAUNCHERS(f16, __half)
HF_SPARSE_ATTN_DEFINE_LAUNCHERS(bf16, __nv_bfloat16)

#undef HF_SPARSE_ATTN_DEFINE_LAUNCHERS

}  // extern "C"
