// Integer kernels for int8 weights times dynamically quantised int8 activations (the arithmetic of torch's and
// onnxruntime's dynamic int8 Linear), for weights stored in R x C blocks with C a multiple of 4. Torch-free: raw
// pointers and plain C types only, so this translation unit compiles quickly for every instruction-set path
// (tests build it alone for each path and call it through ctypes) and the ATen wrapper (linear_int8.cpp) stays thin.
//
// Activations: each token (row of x) gets its own asymmetric 8-bit grid, exactly as the Python reference
// (InputQuant.quantize_input, "dynamic") computes it:
//   lo = min(0, min x), hi = max(0, max x), scale = max((hi - lo) / 255, 1e-12),
//   zero = clamp(-128 - round(lo / scale), -128, 127), q = clamp(round(x / scale) + zero, -128, 127)
// (round half to even). Codes are stored as u = q + 128 in [0, 255], which is what the u8 x s8 dot-product
// instructions (VNNI vpdpbusd) take; the zero point is removed afterwards with the row sum of the weight codes:
//   y[t, r] = scale_x[t] * scale_w[r] * (sum_k u[t, k] w[r, k] - (zero[t] + 128) * sum_k w[r, k]) + bias[r]
// Every integer sum is exact in int32 for cols <= kMaxInt8Cols.
#pragma once

#include <cstdint>

namespace hf_sparse_int8 {

// 255 * 128 * cols < 2^31.
constexpr int64_t kMaxInt8Cols = 65536;

// Tokens are processed in groups of kTokenLanes (padded with zero codes): the lanes of one vector register of int32.
int64_t token_lanes();

// The instruction-set path this translation unit was compiled for: "avx512-vnni", "avx512", "avx-vnni", "avx2" or
// "portable".
const char* isa_name();

// Tokens padded for the kernels: to a multiple of token_lanes(), and beyond one tile (4 vectors of tokens) to a
// multiple of the tile. token_tile(npad): the tile width, min(4 * token_lanes(), npad).
int64_t token_pad(int64_t n);
int64_t token_tile(int64_t npad);

// Quantises tokens [t0, t1) of x (n, cols), row-major with row stride ldx, into xq (cols * npad bytes) in tiles of
// tw = token_tile(npad) tokens, each tile contiguous (so a tile's codes share no cache sets with the next tile's):
// the 4 codes of column group g for token t at xq[(((t / tw) * cols / 4 + g) * tw + t % tw) * 4]. Writes scale[t]
// and zero[t] (the stored
// code's zero, zero + 128). A token with a non-finite value gets scale NaN (its outputs become NaN).
void quantize_tokens(const float* x, int64_t ldx, int64_t cols, int64_t t0, int64_t t1, int64_t npad, uint8_t* xq,
                     float* scale, int32_t* zero);

// The same for one token, packed plainly (cols,) so 4 consecutive codes form one int32 (the matrix-vector path).
void quantize_token_plain(const float* x, int64_t cols, uint8_t* xq, float* scale, int32_t* zero);

// The first p with col[p] outside [0, bound), or -1. The kernels below trust the block columns: callers run this
// over all of them first (one vector pass) and raise on a bad one before any kernel reads through it.
template <typename I>
int64_t first_outside(const I* col, int64_t count, int64_t bound);

// y[t * ldy + r] for tokens t < n and rows r of block rows [br0, br1), from xq (quantize_tokens' layout for cols
// and npad = token_pad(n)). bias may be null. tmp holds at least 16 * 64 floats.
template <typename I>
void qbsr_rows(const int32_t* crow, const I* col, const int8_t* values, int64_t R, int64_t C, const float* wscale,
               const float* bias, const uint8_t* xq, int64_t cols, int64_t npad, int64_t n, const float* xscale,
               const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1, float* tmp);

// R x 4 blocks with R a multiple of token_lanes() (rowlanes_apply; 16 x 4 on AVX-512): a block holds R rows' 4
// codes contiguously, so its codes fill vectors with one row per lane and each token's 4 codes are broadcast, 8 or
// 16 tokens per pass over the weights (no transposed output, no padded tokens). xq: the tokens in
// quantize_token_plain's layout, one after the other (n * cols bytes).
bool rowlanes_apply(int64_t R, int64_t C, int64_t n);
template <typename I>
void qbsr_rowlanes(const int32_t* crow, const I* col, const int8_t* values, int64_t R, const float* wscale,
                   const float* bias, const uint8_t* xq, int64_t cols, int64_t n, const float* xscale,
                   const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1);

// One token (n == 1) with 1 x 4 blocks: y[r] for rows [r0, r1) from xq in quantize_token_plain's layout.
template <typename I>
void qbsr1x4_vector(const int32_t* crow, const I* col, const int8_t* values, const float* wscale, const float* bias,
                    const uint8_t* xq, float xscale, int32_t xzero, float* y, int64_t r0, int64_t r1);

}  // namespace hf_sparse_int8

// C entry points over the same functions for int32 block columns, for tests that load this translation unit alone
// (built once per instruction-set path) through ctypes. Same arguments as above.
extern "C" {
const char* hf_sparse_int8_isa();
int64_t hf_sparse_int8_token_lanes();
void hf_sparse_int8_quantize(const float* x, int64_t ldx, int64_t cols, int64_t n, int64_t npad, uint8_t* xq,
                             float* scale, int32_t* zero);
int64_t hf_sparse_int8_linear_qbsr(const int32_t* crow, const int32_t* col, const int8_t* values, int64_t R,
                                   int64_t C, int64_t block_rows, int64_t bcols, const float* wscale,
                                   const float* bias, const float* x, int64_t n, float* y);  // -1, or a bad col
}
