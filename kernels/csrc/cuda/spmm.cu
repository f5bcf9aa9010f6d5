// Sparse weight x dense matrix products on CUDA (see spmm.h for the tensors, the launchers and the return codes). The
// semantics are those of the CPU ops spmm_csr / spmm_qcsr / linear_csr / linear_qcsr (cpu/spmm_csr.cpp) and
// spmm_bsr / spmm_qbsr (cpu/spmm_blocked.cpp). Plain SIMT code with float32 accumulation: this file is only
// compile-checked on machines without a GPU, so it is kept simple enough to be checked by reading.
//
// Notation: V = 16 / sizeof(T) elements of the dense dtype T per 16-byte vector (4 for float, 8 for half / bfloat16);
// a "group" is a set of L consecutive lanes of a warp that together cover L * V consecutive columns of N.
//
// Kernels, their thread mapping and what they read:
//   spmm_csr_kernel<T, VT, I>   out = W @ Xt (VT: value type, T or int8; I: column index type, int16 or int32)
//     grid   (ceil(rows / 8), min(tiles, 65535)), 256 threads = 8 warps; no shared memory, no CTA barrier.
//     warp   one output row: r = row_order[8 * blockIdx.x + warp] (or that slot itself), one N tile
//            [tile * L * V, (tile + 1) * L * V) at a time (tiles beyond gridDim.y by a grid-stride loop).
//     lanes  32 / L groups of L lanes; lane = g * L + l. Lane l of every group owns the V columns
//            n = tile * L * V + l * V .. + V of the row's output, in V float32 accumulators.
//     loop   the warp reads the row's entries 32 at a time, one per lane, coalesced (col: 64 or 128 bytes, values:
//            32 to 128 bytes, streamed with __ldcs); then group g takes entries g, g + G, g + 2G, ... (G = 32 / L),
//            two per step, getting (column, value) by __shfl_sync, and loads its V columns of row `col` of Xt with
//            one 16-byte __ldg per lane: an L-lane group reads L * 16 contiguous bytes of one Xt row.
//     end    the G groups' partial sums are added by __shfl_xor_sync over the group bits (a fixed order, so the
//            result is deterministic), times scales[r] (q), and group 0 writes them: out[r, n .. n + V) as one
//            16-byte store, or with transpose_out the V elements out[n + v, r] (stride rows; see below).
//   transpose_kernel<U>          linear_*: Xt (cols, N) = X (N, cols) into the workspace, as raw 16- or 32-bit words.
//     grid   (ceil(cols / 32), min(ceil(N / 32), 65535)), 256 threads; a 32 x 33 shared tile (padded: no bank
//            conflicts on the transposed read); reads and writes coalesced 32 elements at a time.
//   spmm_bsr_kernel<T, VT, I, R, NT>   out = W @ Xt for R x C blocks (R template: 16 or 32; C runtime: 16 or 32)
//     grid   (rows / R block rows, min(ceil(N / NT), 65535)), 256 threads = 8 warps; NT = 16 (N <= 32) or 64.
//     warps  split the block row's blocks: warp w takes blocks crow[br] + w, + w + 8, ... (split-K inside the CTA,
//            so up to 8 blocks of one block row are in flight at once).
//     lanes  NT / 4 "column lanes" x 32 / (NT / 4) "row lanes": lane = lr * (NT / 4) + nl owns the 4 columns
//            n = tile * NT + 4 * nl .. + 4 of the rows i = lr + k * (32 / (NT / 4)), k < RPT = R * NT / 128 (16x16
//            and NT 16: 2 rows; 32x32 and NT 64: 16 rows), RPT x 4 float32 accumulators.
//     loop   per block: the warp copies the R x C values (float32) into its own shared slab of R x 33 floats
//            (coalesced 4-element loads; row stride 33 makes both the copy and the column reads conflict-free), then
//            for each of the C columns c loads 4 elements of Xt row (C * blockcol + c) (one 16-byte float / 8-byte
//            half load; the row lanes read the same addresses, so the warp reads NT contiguous elements) and does
//            RPT x 4 FMAs with the block's column c broadcast from shared memory. Each loaded X element serves R / LR
//            rows from registers: the block structure buys reuse that unstructured CSR cannot have.
//     end    the 8 warps' partial R x NT tiles are added in warp order into one shared tile (deterministic), which
//            the whole CTA then writes with consecutive threads on consecutive addresses in either output layout
//            (out[i, n] row by row, or out[n, i] column by column with transpose_out), times scales (q).
//     smem   8 * R * 33 floats (33.8 KiB for R = 32, 16.9 KiB for R = 16), static; the R x (NT + 1) sum tile
//            aliases it after a barrier.
//
// Why these mappings (the memory-bound regime: 90%-sparse weights 3072x768 and 4096x4096, N = 16 to 64 tokens):
//   * Bytes. 4096x4096 at 10% density has nnz = 1.68M: 6.7 MB of half values + int16 columns (4 B per entry), 13.4 MB
//     for float + int32, 5.0 MB for int8 + int16; X and Y are 4096 x N (128 KB each at N = 16 in half). 3072x768 has
//     nnz = 236K: 0.94 MB in half + int16. The dense baseline streams the whole weight (33.5 MB in half for
//     4096x4096), so the sparse kernel's ceiling is that ratio (~5x) at the same fraction of HBM bandwidth.
//   * One warp per row, entries spread over groups of lanes, tokens across the lanes of a group (in the spirit of
//     Sputnik's 1-D output tiles with vector loads, plus CSR-vector's split of a row's entries when N is narrow):
//     the weight streams are read exactly once per N tile, coalesced; every lane has an independent 16-byte
//     gather in flight per step, two steps unrolled, so a warp keeps 2 * G gathers in flight (G = 32 / L: 16 to
//     32 in the cases below); and a row's dot products stay in registers, with no atomics and no shared memory. A
//     thread per row (CSR-scalar) would read the weight uncoalesced; a CTA per row would idle most lanes on the
//     77-entry rows of a 90%-sparse 768-column weight.
//   * The gathered operand is Xt (cols, N), not X (N, cols): an entry needs its column c for all N tokens, which in
//     Xt is one contiguous run of N * sizeof(T) bytes and in X would be N separate 32-byte sectors (8x to 16x the
//     traffic). So linear_* first transposes X into the workspace (2 * N * cols * sizeof(T) bytes, 0.26 MB at
//     N = 16 in half for cols = 4096: a few percent of the weight's bytes) and runs the same kernel with
//     transpose_out, which writes Y (N, rows) directly. Its stores are strided (one element per row), but the output
//     is a few percent of the bytes and L2 merges the partial sectors of neighbouring rows before they reach HBM.
//   * The gathers are the real cost: nnz * N * sizeof(T) bytes (54 MB at N = 16 in half, 430 MB at N = 64 in float
//     for 4096x4096), which only the L1 can serve fast enough. So the N tile is sized so that the Xt slab one tile
//     gathers from (cols x tile columns) fits a 128 KiB L1 budget (csr_lanes; the kernel asks for the maximum L1
//     carve-out, it uses no shared memory), and blockIdx.y is the tile so that CTAs resident together share one
//     slab. The price is one more pass over the weight per tile, from L2 (it fits there: < 14 MB); the entry
//     streams are read with __ldcs (evict-first) so they do not push the slab out of L1.
//   * Load balance: with thousands of rows per launch and rows of similar length (magnitude pruning), warps are
//     balanced on average; for skewed rows the optional row_order (longest first, Sputnik's row swizzle) starts the
//     long rows early and puts rows of similar length in the same CTA.
//   * Expected fraction of HBM peak (estimates from the byte counts above, NOT measured; to be measured on a GPU
//     against cuBLAS / torch.mm on the dense weight): 4096x4096, N = 16, half: ~50-70% (the weight stream dominates,
//     the 128 KiB slab is L1-resident); 4096x4096, N = 64, float: ~25-35% (bound by the L1 gather of 64 floats per
//     entry rather than by HBM; BSR or tensor-core tiles are the fix); 3072x768: < 20% at any N (the whole problem
//     is ~1 MB, under a microsecond of HBM time, so launch and memory latency dominate: batch layers or use graphs).
//   * BSR: one weight value per FMA row, no per-entry index, and each X element loaded once per block serves R rows
//     from registers, so the gather traffic is R times smaller than CSR's at the same density; the values stream
//     (2 KiB per 32x32 half block) is fully coalesced. 4096x4096 with 32x32 blocks at 10% has 1638 blocks, ~13 per
//     block row: the 8 warps of a CTA split them so the memory latency overlaps. Expected: latency-bound at N = 16
//     (~30-50% of HBM peak), CUDA-core FMA-bound at N = 64 in half (107M FMAs, ~25%); mma.sync tiles are the next
//     step once a GPU test exists.
#include "spmm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kCsrWarps = 8;                   // rows per CTA of the CSR kernel
constexpr int kBsrWarps = 8;                   // warps splitting a block row's blocks in the BSR kernel
constexpr int kMaxBlockC = 32;                 // widest supported block (the staged slab's row stride is 33)
constexpr int kMaxGridY = 65535;               // N tiles beyond this are covered by grid-stride loops
constexpr int64_t kL1SlabBytes = 128 * 1024;   // Xt slab a CSR tile may gather from (fits sm_80's and sm_90's L1)

// ---------------------------------------------------------------------------------------------------------------
// Element conversions and loads. Dense operands are read through the read-only path (__ldg) because every warp
// gathers from them; the weight streams are read once per tile with __ldcs (evict-first).

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(int8_t x) { return static_cast<float>(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <bool kStream, typename U>
__device__ __forceinline__ U ld(const U* p) {
  if constexpr (kStream)
    return __ldcs(p);
  else
    return __ldg(p);
}

// Two 16-bit floats in one 32-bit word (low half first, as in memory).
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  static __device__ __forceinline__ float2 unpack(uint32_t w) {
    __half2 h;
    memcpy(&h, &w, sizeof(h));
    return __half22float2(h);
  }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    uint32_t w;
    memcpy(&w, &h, sizeof(w));
    return w;
  }
};
template <>
struct Pair<__nv_bfloat16> {
  static __device__ __forceinline__ float2 unpack(uint32_t w) {
    __nv_bfloat162 h;
    memcpy(&h, &w, sizeof(h));
    return __bfloat1622float2(h);
  }
  static __device__ __forceinline__ uint32_t pack(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    uint32_t w;
    memcpy(&w, &h, sizeof(w));
    return w;
  }
};

// 16 bytes of T as V floats (p 16-byte aligned): the CSR kernel's gather and store unit.
template <typename T>
struct Vec16 {  // half and bfloat16
  static constexpr int V = 8;
  static __device__ __forceinline__ void load(const T* p, float (&x)[V]) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = Pair<T>::unpack(w[k]);
      x[2 * k] = f.x;
      x[2 * k + 1] = f.y;
    }
  }
  static __device__ __forceinline__ void store(T* p, const float (&x)[V]) {
    uint4 raw;
    raw.x = Pair<T>::pack(x[0], x[1]);
    raw.y = Pair<T>::pack(x[2], x[3]);
    raw.z = Pair<T>::pack(x[4], x[5]);
    raw.w = Pair<T>::pack(x[6], x[7]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
};
template <>
struct Vec16<float> {
  static constexpr int V = 4;
  static __device__ __forceinline__ void load(const float* p, float (&x)[V]) {
    const float4 t = __ldg(reinterpret_cast<const float4*>(p));
    x[0] = t.x;
    x[1] = t.y;
    x[2] = t.z;
    x[3] = t.w;
  }
  static __device__ __forceinline__ void store(float* p, const float (&x)[V]) {
    *reinterpret_cast<float4*>(p) = make_float4(x[0], x[1], x[2], x[3]);
  }
};

// V elements of a dense row from p: one vector load when all V are in range and vectors are allowed, else scalar
// loads of the first `valid` elements (the rest 0). Nothing at or beyond p + valid is read.
template <typename T>
__device__ __forceinline__ void load_x(const T* p, int valid, int vec, float (&x)[Vec16<T>::V]) {
  constexpr int V = Vec16<T>::V;
  if (vec && valid == V) {
    Vec16<T>::load(p, x);
    return;
  }
#pragma unroll
  for (int v = 0; v < V; ++v) x[v] = v < valid ? to_float(__ldg(p + v)) : 0.f;
}

// 4 consecutive elements (p aligned to 4 elements): 16 bytes of float, 8 of half / bfloat16, 4 of int8.
template <bool S>
__device__ __forceinline__ void load4(const float* p, float (&x)[4]) {
  const float4 t = ld<S>(reinterpret_cast<const float4*>(p));
  x[0] = t.x;
  x[1] = t.y;
  x[2] = t.z;
  x[3] = t.w;
}
template <bool S, typename T>
__device__ __forceinline__ void load4(const T* p, float (&x)[4]) {  // half, bfloat16
  const uint2 raw = ld<S>(reinterpret_cast<const uint2*>(p));
  const float2 a = Pair<T>::unpack(raw.x), b = Pair<T>::unpack(raw.y);
  x[0] = a.x;
  x[1] = a.y;
  x[2] = b.x;
  x[3] = b.y;
}
template <bool S>
__device__ __forceinline__ void load4(const int8_t* p, float (&x)[4]) {
  const char4 t = ld<S>(reinterpret_cast<const char4*>(p));
  x[0] = static_cast<float>(t.x);
  x[1] = static_cast<float>(t.y);
  x[2] = static_cast<float>(t.z);
  x[3] = static_cast<float>(t.w);
}

// The entries [begin, end) of row r of a CSR pointer array, clamped to [0, total]: a malformed crow can never send
// a kernel outside col / values.
__device__ __forceinline__ void entry_range(const int32_t* crow, int64_t r, int64_t total, int64_t& begin,
                                            int64_t& end) {
  begin = min(max(static_cast<int64_t>(crow[r]), int64_t{0}), total);
  end = min(max(static_cast<int64_t>(crow[r + 1]), begin), total);
}

// ---------------------------------------------------------------------------------------------------------------
// CSR.

struct CsrArgs {
  const int32_t* crow;
  const void* col;
  const void* values;
  const float* scales;       // q: one per row; else nullptr
  const int32_t* row_order;  // nullptr: slot i is row i
  const void* xt;            // (cols, n)
  void* out;                 // (rows, n), or (n, rows) with transpose_out
  int64_t rows, cols, nnz, n;
  int64_t tiles;  // N tiles of lanes * V columns
  int lanes;      // L: lanes per group, a power of two in [1, 32]
  int transpose_out;
  int vec_x;    // Xt rows may be read as 16-byte vectors (n % V == 0, xt 16-byte aligned)
  int vec_out;  // out rows may be written as 16-byte vectors (n % V == 0, out 16-byte aligned; not transposed)
};

template <typename T, typename VT, typename I>
__global__ void __launch_bounds__(32 * kCsrWarps) spmm_csr_kernel(const CsrArgs a) {
  constexpr int V = Vec16<T>::V;
  const int lane = threadIdx.x % 32;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kCsrWarps + threadIdx.x / 32;
  if (slot >= a.rows) return;  // warp-uniform, and this kernel has no CTA barrier
  const int64_t r = a.row_order != nullptr ? static_cast<int64_t>(a.row_order[slot]) : slot;
  if (r < 0 || r >= a.rows) return;  // a malformed permutation: skip the slot rather than write out of bounds

  const int L = a.lanes, G = 32 / L;
  const int g = lane / L, l = lane % L;
  int64_t p0, p1;
  entry_range(a.crow, r, a.nnz, p0, p1);
  const I* const col = static_cast<const I*>(a.col);
  const VT* const val = static_cast<const VT*>(a.values);
  const T* const xt = static_cast<const T*>(a.xt);
  const uint32_t ucols = static_cast<uint32_t>(a.cols);  // cols <= INT32_MAX (checked by the launcher)
  const float scale = a.scales != nullptr ? a.scales[r] : 1.f;

  for (int64_t tile = blockIdx.y; tile < a.tiles; tile += gridDim.y) {
    const int64_t n = tile * (L * V) + l * V;  // this lane's first column
    const int valid = static_cast<int>(max(int64_t{0}, min(static_cast<int64_t>(V), a.n - n)));
    float acc[V];
#pragma unroll
    for (int v = 0; v < V; ++v) acc[v] = 0.f;

    for (int64_t base = p0; base < p1; base += 32) {
      const int cnt = static_cast<int>(min(int64_t{32}, p1 - base));  // warp-uniform
      int my_c = -1;
      float my_w = 0.f;
      if (lane < cnt) {
        my_c = static_cast<int>(__ldcs(col + base + lane));
        my_w = to_float(__ldcs(val + base + lane));
      }
      // Two entries per group per step; the trip count depends on cnt and G only, so every lane runs every shuffle.
      for (int s = 0; s < cnt; s += 2 * G) {
        const int e0 = s + g, e1 = s + G + g;  // may reach 63: the explicit e < cnt test keeps wrapped lanes out
        const int c0 = __shfl_sync(kFullMask, my_c, e0 & 31), c1 = __shfl_sync(kFullMask, my_c, e1 & 31);
        float w0 = __shfl_sync(kFullMask, my_w, e0 & 31), w1 = __shfl_sync(kFullMask, my_w, e1 & 31);
        const bool ok0 = e0 < cnt && static_cast<uint32_t>(c0) < ucols;  // negative columns wrap to huge
        const bool ok1 = e1 < cnt && static_cast<uint32_t>(c1) < ucols;
        float x0[V], x1[V];  // both gathers are issued before either is used
        load_x<T>(xt + static_cast<int64_t>(ok0 ? c0 : 0) * a.n + n, ok0 ? valid : 0, a.vec_x, x0);
        load_x<T>(xt + static_cast<int64_t>(ok1 ? c1 : 0) * a.n + n, ok1 ? valid : 0, a.vec_x, x1);
        if (!ok0) w0 = 0.f;  // a skipped entry adds exactly 0 (x is 0 too)
        if (!ok1) w1 = 0.f;
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] = fmaf(w1, x1[v], fmaf(w0, x0[v], acc[v]));
      }
    }

    // Sum over the groups: lanes with the same l differ only in the bits >= L.
    for (int o = 16; o >= L; o >>= 1) {
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] += __shfl_xor_sync(kFullMask, acc[v], o);
    }
    if (g == 0 && valid > 0) {  // group 0 writes; the next tile's shuffles still see every lane
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] *= scale;
      T* const out = static_cast<T*>(a.out);
      if (!a.transpose_out) {
        T* const y = out + r * a.n + n;
        if (a.vec_out && valid == V) {
          Vec16<T>::store(y, acc);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v)
            if (v < valid) y[v] = from_float<T>(acc[v]);
        }
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v)
          if (v < valid) out[(n + v) * a.rows + r] = from_float<T>(acc[v]);
      }
    }
  }
}

// xt[c * n + t] = x[t * cols + c], bit for bit (U: a 16- or 32-bit word).
template <typename U>
__global__ void __launch_bounds__(256) transpose_kernel(const U* x, U* xt, int64_t n, int64_t cols) {
  __shared__ U tile[32][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32;
  for (int64_t t0 = static_cast<int64_t>(blockIdx.y) * 32; t0 < n; t0 += static_cast<int64_t>(gridDim.y) * 32) {
    for (int i = ty; i < 32; i += 8)
      if (t0 + i < n && c0 + tx < cols) tile[i][tx] = x[(t0 + i) * cols + c0 + tx];
    __syncthreads();
    for (int i = ty; i < 32; i += 8)
      if (c0 + i < cols && t0 + tx < n) xt[(c0 + i) * n + t0 + tx] = tile[tx][i];
    __syncthreads();  // the tile is reused by the next iteration
  }
}

// ---------------------------------------------------------------------------------------------------------------
// BSR.

struct BsrArgs {
  const int32_t* crow;
  const void* col;
  const void* values;  // (blocks, R, C)
  const float* scales;
  const void* xt;
  void* out;
  int64_t rows, n, blocks, bcols;  // bcols = cols / C
  int64_t tiles;                   // N tiles of NT columns
  int block_c;                     // C: 16 or 32
  int transpose_out;
  int vec_x;  // Xt rows may be read 4 elements at a time (n % 4 == 0, xt aligned to 4 elements)
  int vec_w;  // values may be read 4 elements at a time (values aligned to 4 elements)
};

template <typename T, typename VT, typename I, int R, int NT>
__global__ void __launch_bounds__(32 * kBsrWarps) spmm_bsr_kernel(const BsrArgs a) {
  constexpr int NL = NT / 4;       // column lanes, 4 columns each
  constexpr int LR = 32 / NL;      // row lanes
  constexpr int RPT = R / LR;      // rows per thread
  constexpr int LDW = kMaxBlockC + 1;
  static_assert(NL * LR == 32 && RPT * LR == R && RPT >= 1, "the lanes tile R x NT exactly");
  static_assert(R * (NT + 1) <= kBsrWarps * R * LDW, "the sum tile fits in the staging slabs it aliases");
  __shared__ float smem[kBsrWarps * R * LDW];

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int lr = lane / NL, nl = lane % NL;
  float* const ws = smem + warp * R * LDW;  // this warp's R x C block, float32, row stride LDW
  const int C = a.block_c;
  const int64_t br = blockIdx.x;
  int64_t p0, p1;
  entry_range(a.crow, br, a.blocks, p0, p1);
  const I* const col = static_cast<const I*>(a.col);
  const VT* const val = static_cast<const VT*>(a.values);
  const T* const xt = static_cast<const T*>(a.xt);
  T* const out = static_cast<T*>(a.out);

  for (int64_t tile = blockIdx.y; tile < a.tiles; tile += gridDim.y) {
    const int64_t n = tile * NT + nl * 4;
    const int valid = static_cast<int>(max(int64_t{0}, min(int64_t{4}, a.n - n)));
    float acc[RPT][4];
#pragma unroll
    for (int k = 0; k < RPT; ++k)
#pragma unroll
      for (int v = 0; v < 4; ++v) acc[k][v] = 0.f;

    for (int64_t p = p0 + warp; p < p1; p += kBsrWarps) {
      const int64_t cb = static_cast<int64_t>(__ldcs(col + p));  // one address for the whole warp: a broadcast
      if (cb < 0 || cb >= a.bcols) continue;                      // warp-uniform
      const VT* const blk = val + p * R * C;
      __syncwarp();  // every lane is done reading the previous block from ws
      for (int e = lane * 4; e < R * C; e += 128) {  // C % 4 == 0: the 4 elements lie in one block row
        float w[4];
        if (a.vec_w) {
          load4<true>(blk + e, w);
        } else {
#pragma unroll
          for (int k = 0; k < 4; ++k) w[k] = to_float(__ldcs(blk + e + k));
        }
        const int i = e / C, j = e - i * C;
#pragma unroll
        for (int k = 0; k < 4; ++k) ws[i * LDW + j + k] = w[k];
      }
      __syncwarp();
      const T* const xb = xt + cb * C * a.n + n;
#pragma unroll 4
      for (int c = 0; c < C; ++c) {
        const T* const xp = xb + c * a.n;
        float x[4];
        if (a.vec_x && valid == 4) {
          load4<false>(xp, x);
        } else {
#pragma unroll
          for (int v = 0; v < 4; ++v) x[v] = v < valid ? to_float(__ldg(xp + v)) : 0.f;
        }
#pragma unroll
        for (int k = 0; k < RPT; ++k) {
          const float w = ws[(lr + k * LR) * LDW + c];  // same address per row lane, distinct banks across them
#pragma unroll
          for (int v = 0; v < 4; ++v) acc[k][v] = fmaf(w, x[v], acc[k][v]);
        }
      }
    }

    // Sum the warps' tiles in warp order into red (R x NT, row stride NT + 1), aliasing the staging slabs.
    float* const red = smem;
    __syncthreads();  // every warp is done with its slab
    for (int w = 0; w < kBsrWarps; ++w) {
      if (warp == w) {
#pragma unroll
        for (int k = 0; k < RPT; ++k)
#pragma unroll
          for (int v = 0; v < 4; ++v) {
            float* const d = red + (lr + k * LR) * (NT + 1) + nl * 4 + v;
            *d = w == 0 ? acc[k][v] : *d + acc[k][v];
          }
      }
      __syncthreads();
    }
    const int64_t row0 = br * R, col0 = tile * NT;
    for (int t = threadIdx.x; t < R * NT; t += blockDim.x) {
      // Consecutive threads on consecutive output addresses in either layout.
      const int i = a.transpose_out ? t % R : t / NT, j = a.transpose_out ? t / R : t % NT;
      if (col0 + j >= a.n) continue;
      const float s = a.scales != nullptr ? a.scales[row0 + i] : 1.f;
      const T y = from_float<T>(red[i * (NT + 1) + j] * s);
      if (a.transpose_out)
        out[(col0 + j) * a.rows + row0 + i] = y;
      else
        out[(row0 + i) * a.n + col0 + j] = y;
    }
    __syncthreads();  // red is overwritten (as staging slabs) by the next tile
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Host side: argument checks and launches.

int cuda_code(cudaError_t e) {
  return e == cudaSuccess ? HF_SPARSE_SPMM_OK : HF_SPARSE_SPMM_ERR_CUDA + static_cast<int>(e);
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Lanes per group: enough to cover N in one tile (at most 32), then halved while the Xt slab a tile gathers from
// (cols x lanes * V elements) exceeds the L1 budget. Examples: cols 768, N 16, float: 4 lanes, one tile; cols 4096,
// N 16, half: 2 lanes, one tile; cols 4096, N 64, float: 2 lanes, 8 tiles. This is the knob to tune on a GPU.
int csr_lanes(int64_t n, int64_t cols, int64_t elem_bytes) {
  const int64_t v = 16 / elem_bytes;
  int lanes = 1;
  while (lanes < 32 && lanes * v < n) lanes *= 2;
  while (lanes > 1 && cols * lanes * v * elem_bytes > kL1SlabBytes) lanes /= 2;
  return lanes;
}

// The checks every CSR launcher shares (dense operand `xt` is x for linear_*: both are (cols x N) elements).
template <typename T, typename VT>
int check_csr(const int32_t* crow, const void* col, int index_bits, const void* values, const float* scales,
              int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
              const void* out, bool quantized) {
  if (crow == nullptr || xt == nullptr || out == nullptr || (nnz > 0 && (col == nullptr || values == nullptr)) ||
      (quantized && scales == nullptr))
    return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (rows <= 0 || cols <= 0 || n <= 0 || nnz < 0 || rows > INT32_MAX || cols > INT32_MAX || nnz > INT32_MAX)
    return HF_SPARSE_SPMM_ERR_BAD_SIZE;
  if (index_bits != 16 && index_bits != 32) return HF_SPARSE_SPMM_ERR_INDEX_TYPE;
  if (!aligned(crow, 4) || !aligned(col, index_bits / 8) || !aligned(values, sizeof(VT)) || !aligned(scales, 4) ||
      !aligned(row_order, 4) || !aligned(xt, sizeof(T)) || !aligned(out, sizeof(T)))
    return HF_SPARSE_SPMM_ERR_ALIGNMENT;
  return HF_SPARSE_SPMM_OK;
}

template <typename T, typename VT, typename I>
int launch_csr_kernel(const CsrArgs& a, cudaStream_t stream) {
  const auto kernel = spmm_csr_kernel<T, VT, I>;
  // No shared memory: ask for all of it as L1, where the Xt slab lives.
  if (int rc = cuda_code(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                              cudaSharedmemCarveoutMaxL1)))
    return rc;
  const dim3 grid(static_cast<unsigned>((a.rows + kCsrWarps - 1) / kCsrWarps),
                  static_cast<unsigned>(std::min<int64_t>(a.tiles, kMaxGridY)));
  kernel<<<grid, 32 * kCsrWarps, 0, stream>>>(a);
  return cuda_code(cudaGetLastError());
}

// Fills the kernel arguments for checked inputs and launches the kernel of the index type.
template <typename T, typename VT>
int launch_csr(const int32_t* crow, const void* col, int index_bits, const void* values, const float* scales,
               int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
               int transpose_out, void* out, cudaStream_t stream) {
  constexpr int64_t V = Vec16<T>::V;
  CsrArgs a{};
  a.crow = crow;
  a.col = col;
  a.values = values;
  a.scales = scales;
  a.row_order = row_order;
  a.xt = xt;
  a.out = out;
  a.rows = rows;
  a.cols = cols;
  a.nnz = nnz;
  a.n = n;
  a.lanes = csr_lanes(n, cols, sizeof(T));
  a.tiles = (n + a.lanes * V - 1) / (a.lanes * V);
  a.transpose_out = transpose_out != 0;
  a.vec_x = n % V == 0 && aligned(xt, 16);
  a.vec_out = n % V == 0 && aligned(out, 16);
  if (index_bits == 16) return launch_csr_kernel<T, VT, int16_t>(a, stream);
  return launch_csr_kernel<T, VT, int32_t>(a, stream);
}

template <typename T, typename VT>
int csr_entry(const int32_t* crow, const void* col, int index_bits, const void* values, const float* scales,
              int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
              int transpose_out, void* out, cudaStream_t stream, bool quantized) {
  if (int rc = check_csr<T, VT>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, xt, n, out,
                                quantized))
    return rc;
  return launch_csr<T, VT>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, xt, n, transpose_out,
                           out, stream);
}

// Y (N, rows) = X (N, cols) @ W^T: X -> workspace (cols, N), then the CSR kernel with transpose_out.
template <typename T, typename VT>
int linear_entry(const int32_t* crow, const void* col, int index_bits, const void* values, const float* scales,
                 int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols, const void* x, int64_t n, void* y,
                 void* workspace, cudaStream_t stream, bool quantized) {
  if (int rc = check_csr<T, VT>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, x, n, y,
                                quantized))
    return rc;
  if (n == 1)  // X (1, cols) is already Xt (cols, 1), and Y (1, rows) is (rows, 1)
    return launch_csr<T, VT>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, x, n, 1, y, stream);
  if (workspace == nullptr) return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (!aligned(workspace, sizeof(T))) return HF_SPARSE_SPMM_ERR_ALIGNMENT;
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32),
                  static_cast<unsigned>(std::min<int64_t>((n + 31) / 32, kMaxGridY)));
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;
  transpose_kernel<U><<<grid, 256, 0, stream>>>(static_cast<const U*>(x), static_cast<U*>(workspace), n, cols);
  if (int rc = cuda_code(cudaGetLastError())) return rc;
  return launch_csr<T, VT>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, workspace, n, 1, y,
                           stream);
}

template <typename T, typename VT, typename I, int R, int NT>
int launch_bsr_kernel(const BsrArgs& a, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(a.rows / R), static_cast<unsigned>(std::min<int64_t>(a.tiles, kMaxGridY)));
  spmm_bsr_kernel<T, VT, I, R, NT><<<grid, 32 * kBsrWarps, 0, stream>>>(a);
  return cuda_code(cudaGetLastError());
}

template <typename T, typename VT, typename I>
int launch_bsr_index(const BsrArgs& a, int block_r, int nt, cudaStream_t stream) {
  if (block_r == 16) {
    return nt == 16 ? launch_bsr_kernel<T, VT, I, 16, 16>(a, stream) : launch_bsr_kernel<T, VT, I, 16, 64>(a, stream);
  }
  return nt == 16 ? launch_bsr_kernel<T, VT, I, 32, 16>(a, stream) : launch_bsr_kernel<T, VT, I, 32, 64>(a, stream);
}

bool supported_block(int64_t b) { return b == 16 || b == 32; }

template <typename T, typename VT>
int bsr_entry(const int32_t* crow, const void* col, int index_bits, const void* values, const float* scales,
              int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, int64_t block_c, const void* xt,
              int64_t n, int transpose_out, void* out, cudaStream_t stream, bool quantized) {
  if (crow == nullptr || xt == nullptr || out == nullptr || (blocks > 0 && (col == nullptr || values == nullptr)) ||
      (quantized && scales == nullptr))
    return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (rows <= 0 || cols <= 0 || n <= 0 || blocks < 0 || rows > INT32_MAX || cols > INT32_MAX || blocks > INT32_MAX)
    return HF_SPARSE_SPMM_ERR_BAD_SIZE;
  if (index_bits != 16 && index_bits != 32) return HF_SPARSE_SPMM_ERR_INDEX_TYPE;
  if (!supported_block(block_r) || !supported_block(block_c)) return HF_SPARSE_SPMM_ERR_BLOCK_SIZE;
  if (rows % block_r != 0 || cols % block_c != 0) return HF_SPARSE_SPMM_ERR_NOT_DIVISIBLE;
  if (!aligned(crow, 4) || !aligned(col, index_bits / 8) || !aligned(values, sizeof(VT)) || !aligned(scales, 4) ||
      !aligned(xt, sizeof(T)) || !aligned(out, sizeof(T)))
    return HF_SPARSE_SPMM_ERR_ALIGNMENT;
  const int nt = n <= 32 ? 16 : 64;  // 16: every lane busy at N = 16; 64: more reuse of each staged block
  BsrArgs a{};
  a.crow = crow;
  a.col = col;
  a.values = values;
  a.scales = scales;
  a.xt = xt;
  a.out = out;
  a.rows = rows;
  a.n = n;
  a.blocks = blocks;
  a.bcols = cols / block_c;
  a.tiles = (n + nt - 1) / nt;
  a.block_c = static_cast<int>(block_c);
  a.transpose_out = transpose_out != 0;
  a.vec_x = n % 4 == 0 && aligned(xt, 4 * sizeof(T));
  a.vec_w = aligned(values, 4 * sizeof(VT));
  if (index_bits == 16) return launch_bsr_index<T, VT, int16_t>(a, static_cast<int>(block_r), nt, stream);
  return launch_bsr_index<T, VT, int32_t>(a, static_cast<int>(block_r), nt, stream);
}

template <typename I>
int check_csr_host(const int32_t* crow, const I* col, int64_t rows, int64_t cols, int64_t nnz) {
  if (crow[0] != 0 || crow[rows] != nnz) return HF_SPARSE_SPMM_ERR_STRUCTURE;
  for (int64_t r = 0; r < rows; ++r)
    if (crow[r] > crow[r + 1]) return HF_SPARSE_SPMM_ERR_STRUCTURE;
  for (int64_t p = 0; p < nnz; ++p)
    if (col[p] < 0 || static_cast<int64_t>(col[p]) >= cols) return HF_SPARSE_SPMM_ERR_STRUCTURE;
  return HF_SPARSE_SPMM_OK;
}

// ---------------------------------------------------------------------------------------------------------------
// SDDMM: out[p] = dot(Yt[row(p), :], Xt[col(p), :]) at W's stored positions (the value gradient of spmm_csr /
// linear_csr). One warp per row (grid-stride over rows), 8 rows per CTA; for each entry of the row the 32 lanes split
// the N products (lane j takes n = j, j + 32, ...; Yt's row is re-read through L1 for every entry, its one row
// stays cached), then add them with a fixed __shfl_xor_sync tree (deterministic) and lane 0 writes the value in T.
// Entries whose column is out of range give 0; row ranges are clamped to [0, nnz], as in the SpMM kernels. This is
// the training path, run once per backward step: simple rather than tuned (N = tokens of a batch, often >= 512,
// keeps every lane busy).
template <typename T, typename I>
__global__ void __launch_bounds__(32 * kCsrWarps)
    sddmm_csr_kernel(const int32_t* __restrict__ crow, const I* __restrict__ col, int64_t nnz, int64_t rows,
                     int64_t cols, const T* __restrict__ yt, const T* __restrict__ xt, int64_t n, T* __restrict__ out) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kCsrWarps + warp; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kCsrWarps) {
    int64_t lo = crow[r], hi = crow[r + 1];
    lo = lo < 0 ? 0 : (lo > nnz ? nnz : lo);
    hi = hi < lo ? lo : (hi > nnz ? nnz : hi);
    const T* yrow = yt + r * n;
    for (int64_t p = lo; p < hi; ++p) {
      const int64_t c = static_cast<int64_t>(col[p]);
      float acc = 0.0f;
      if (c >= 0 && c < cols) {
        const T* xrow = xt + c * n;
        for (int64_t j = lane; j < n; j += 32) acc = fmaf(to_float(__ldg(yrow + j)), to_float(__ldg(xrow + j)), acc);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(kFullMask, acc, off);
      if (lane == 0) out[p] = from_float<T>(acc);
    }
  }
}

template <typename T>
int sddmm_entry(const int32_t* crow, const void* col, int index_bits, int64_t nnz, int64_t rows, int64_t cols,
                const void* yt, const void* xt, int64_t n, void* out, cudaStream_t stream) {
  if (crow == nullptr || yt == nullptr || xt == nullptr || (nnz > 0 && (col == nullptr || out == nullptr)))
    return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (rows <= 0 || cols <= 0 || n <= 0 || nnz < 0 || rows > INT32_MAX || cols > INT32_MAX || nnz > INT32_MAX)
    return HF_SPARSE_SPMM_ERR_BAD_SIZE;
  if (index_bits != 16 && index_bits != 32) return HF_SPARSE_SPMM_ERR_INDEX_TYPE;
  if (!aligned(crow, 4) || !aligned(col, index_bits / 8) || !aligned(yt, sizeof(T)) || !aligned(xt, sizeof(T)) ||
      !aligned(out, sizeof(T)))
    return HF_SPARSE_SPMM_ERR_ALIGNMENT;
  if (nnz == 0) return HF_SPARSE_SPMM_OK;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((rows + kCsrWarps - 1) / kCsrWarps, INT32_MAX));
  const T* y = static_cast<const T*>(yt);
  const T* x = static_cast<const T*>(xt);
  T* o = static_cast<T*>(out);
  if (index_bits == 16)
    sddmm_csr_kernel<T, int16_t><<<grid, 32 * kCsrWarps, 0, stream>>>(crow, static_cast<const int16_t*>(col), nnz,
                                                                      rows, cols, y, x, n, o);
  else
    sddmm_csr_kernel<T, int32_t><<<grid, 32 * kCsrWarps, 0, stream>>>(crow, static_cast<const int32_t*>(col), nnz,
                                                                      rows, cols, y, x, n, o);
  return cuda_code(cudaGetLastError());
}

}  // namespace

extern "C" {

const char* hf_sparse_spmm_error_string(int code) {
  switch (code) {
    case HF_SPARSE_SPMM_OK: return "ok";
    case HF_SPARSE_SPMM_ERR_NULL_POINTER: return "a required pointer is null";
    case HF_SPARSE_SPMM_ERR_BAD_SIZE: return "bad sizes (rows, cols or N not positive, negative nnz, or beyond int32)";
    case HF_SPARSE_SPMM_ERR_INDEX_TYPE: return "index_bits must be 16 or 32";
    case HF_SPARSE_SPMM_ERR_BLOCK_SIZE: return "BSR block sizes must be 16 or 32";
    case HF_SPARSE_SPMM_ERR_NOT_DIVISIBLE: return "rows and cols must be multiples of the BSR block size";
    case HF_SPARSE_SPMM_ERR_ALIGNMENT: return "a pointer is not aligned to its element size";
    case HF_SPARSE_SPMM_ERR_STRUCTURE:
      return "invalid CSR structure (crow not 0 .. nnz and monotone, or a col out of range)";
    default:
      if (code > HF_SPARSE_SPMM_ERR_CUDA)
        return cudaGetErrorString(static_cast<cudaError_t>(code - HF_SPARSE_SPMM_ERR_CUDA));
      return "unknown error code";
  }
}

int hf_sparse_spmm_check_csr(const int32_t* crow, const void* col, int index_bits, int64_t rows, int64_t cols,
                             int64_t nnz) {
  if (crow == nullptr || (nnz > 0 && col == nullptr)) return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (rows <= 0 || cols <= 0 || nnz < 0) return HF_SPARSE_SPMM_ERR_BAD_SIZE;
  if (index_bits == 16) return check_csr_host(crow, static_cast<const int16_t*>(col), rows, cols, nnz);
  if (index_bits == 32) return check_csr_host(crow, static_cast<const int32_t*>(col), rows, cols, nnz);
  return HF_SPARSE_SPMM_ERR_INDEX_TYPE;
}

int hf_sparse_spmm_row_order(const int32_t* crow, int64_t rows, int32_t* order) {
  if (crow == nullptr || order == nullptr) return HF_SPARSE_SPMM_ERR_NULL_POINTER;
  if (rows <= 0 || rows > INT32_MAX) return HF_SPARSE_SPMM_ERR_BAD_SIZE;
  std::vector<int32_t> idx(static_cast<size_t>(rows));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [crow](int32_t a, int32_t b) {
    return static_cast<int64_t>(crow[a + 1]) - crow[a] > static_cast<int64_t>(crow[b + 1]) - crow[b];
  });
  std::copy(idx.begin(), idx.end(), order);
  return HF_SPARSE_SPMM_OK;
}

// The per-dtype launchers: thin wrappers over the templates above (void* data pointers keep the header C-only).
#define HF_SPARSE_SPMM_DEFINE_LAUNCHERS(SUFFIX, T)                                                                   \
  int hf_sparse_spmm_csr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const void* values,          \
                                  int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, \
                                  int64_t n, int transpose_out, void* out, cudaStream_t stream) {                    \
    return csr_entry<T, T>(crow, col, index_bits, values, nullptr, nnz, row_order, rows, cols, xt, n,               \
                           transpose_out, out, stream, false);                                                       \
  }                                                                                                                  \
  int hf_sparse_spmm_qcsr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const int8_t* values,       \
                                   const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows,         \
                                   int64_t cols, const void* xt, int64_t n, int transpose_out, void* out,            \
                                   cudaStream_t stream) {                                                            \
    return csr_entry<T, int8_t>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, xt, n,           \
                                transpose_out, out, stream, true);                                                   \
  }                                                                                                                  \
  int hf_sparse_linear_csr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const void* values,        \
                                    int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,              \
                                    const void* x, int64_t n, void* y, void* workspace, cudaStream_t stream) {       \
    return linear_entry<T, T>(crow, col, index_bits, values, nullptr, nnz, row_order, rows, cols, x, n, y,          \
                              workspace, stream, false);                                                             \
  }                                                                                                                  \
  int hf_sparse_linear_qcsr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const int8_t* values,     \
                                     const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows,       \
                                     int64_t cols, const void* x, int64_t n, void* y, void* workspace,               \
                                     cudaStream_t stream) {                                                          \
    return linear_entry<T, int8_t>(crow, col, index_bits, values, scales, nnz, row_order, rows, cols, x, n, y,      \
                                   workspace, stream, true);                                                         \
  }                                                                                                                  \
  int hf_sparse_spmm_bsr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const void* values,          \
                                  int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, int64_t block_c,      \
                                  const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream) {    \
    return bsr_entry<T, T>(crow, col, index_bits, values, nullptr, blocks, rows, cols, block_r, block_c, xt, n,     \
                           transpose_out, out, stream, false);                                                       \
  }                                                                                                                  \
  int hf_sparse_spmm_qbsr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, const int8_t* values,       \
                                   const float* scales, int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, \
                                   int64_t block_c, const void* xt, int64_t n, int transpose_out, void* out,         \
                                   cudaStream_t stream) {                                                            \
    return bsr_entry<T, int8_t>(crow, col, index_bits, values, scales, blocks, rows, cols, block_r, block_c, xt, n, \
                                transpose_out, out, stream, true);                                                   \
  }

#define HF_SPARSE_SDDMM_DEFINE_LAUNCHER(SUFFIX, T)                                                                   \
  int hf_sparse_sddmm_csr_##SUFFIX(const int32_t* crow, const void* col, int index_bits, int64_t nnz, int64_t rows,  \
                                   int64_t cols, const void* yt, const void* xt, int64_t n, void* out,               \
                                   cudaStream_t stream) {                                                            \
    return sddmm_entry<T>(crow, col, index_bits, nnz, rows, cols, yt, xt, n, out, stream);                           \
  }

HF_SPARSE_SDDMM_DEFINE_LAUNCHER(f32, float)
HF_SPARSE_SDDMM_DEFINE_LAUNCHER(f16, __half)
HF_SPARSE_SDDMM_DEFINE_LAUNCHER(bf16, __nv_bfloat16)

#undef HF_SPARSE_SDDMM_DEFINE_LAUNCHER

HF_SPARSE_SPMM_DEFINE_LAUNCHERS(f32, float)
HF_SPARSE_SPMM_DEFINE_LAUNCHERS(f16, __half)
HF_SPARSE_SPMM_DEFINE_LAUNCHERS(bf16, __nv_bfloat16)

#undef HF_SPARSE_SPMM_DEFINE_LAUNCHERS

}  // extern "C"
