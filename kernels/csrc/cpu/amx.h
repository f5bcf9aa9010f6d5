// Intel AMX tile kernels for the block formats, chosen at run time. Torch-free like int8_dot.h: raw pointers and
// plain C types, so tests build this translation unit (with int8_dot.cpp) alone and call it through ctypes.
//
//   int8  linear_qbsr_dyn with 16 x 64k blocks: a block's 16 rows x 64 int8 codes are the A tile, the tokens' uint8
//         codes (int8_dot's quantize_tokens layout, which is AMX's VNNI layout for B: 16 groups of 4 columns x 16
//         tokens x 4 bytes) the B tile, TDPBSUD (s8 x u8) sums into a 16 rows x 16 tokens int32 C tile, then the
//         epilogue of int8_dot.cpp, the same operations in the same order: outputs are bit-identical.
//   bf16  spmm_bsr with bf16 values and 16 x 32k blocks: A = 16 rows x 32 bf16, B = 16 pairs of columns x 16 tokens
//         x 2 bf16 (Xt repacked once), TDPBF16PS into 16 x 16 float32, one round-to-nearest-even per result.
//
// Nothing here executes an AMX instruction unless every gate has passed, once per process:
//   1. the code was compiled with AMX (HF_SPARSE_AMX: an x86-64 Linux avx512 build by a compiler that has AMX; any
//      other build compiles stubs that say why),
//   2. HF_SPARSE_DISABLE_AMX is not 1,
//   3. the CPU lists amx_tile and amx_int8 (amx_bf16) in /proc/cpuinfo and CPUID agrees, and XCR0 enables tile state,
//   4. the kernel grants this process tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) returns 0),
//   5. a seeded self-check: a small problem through the AMX kernel and through the non-AMX arithmetic agrees (int8:
//      bit-identical outputs; bf16: within 2^-8 of the largest result, about one bf16 step).
// A failed gate turns that kernel off for the process; *_status() says which gate failed.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__linux__) && defined(__AVX512F__) && defined(__AVX512BW__) && \
    !defined(HF_SPARSE_NO_AMX) && defined(__has_include)
#if __has_include(<amxtileintrin.h>) && ((defined(__clang__) && __clang_major__ >= 12) || \
                                         (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define HF_SPARSE_AMX 1
#endif
#endif

namespace hf_sparse_amx {

// Block shapes the kernels take: R == 16 and C a positive multiple of kInt8K (int8) or kBf16K (bf16).
constexpr int64_t kRows = 16;
constexpr int64_t kInt8K = 64;
constexpr int64_t kBf16K = 32;

inline bool int8_shape(int64_t R, int64_t C) { return R == kRows && C > 0 && C % kInt8K == 0; }
inline bool bf16_shape(int64_t R, int64_t C) { return R == kRows && C > 0 && C % kBf16K == 0; }

// True when the int8 (bf16) tile kernel may run in this process: every gate above passed (checked on the first
// call, thread-safe). The *_status() strings: "ok", or "amx: <why not>".
bool int8_ready();
bool bf16_ready();
const char* int8_status();
const char* bf16_status();
// One line for kernel_status(): whether AMX is used, for which ops, and if not, why. Runs the gates.
const char* summary();
// How many calls each kernel has served in this process (what tells a caller the tile path ran).
int64_t int8_calls();
int64_t bf16_calls();

// y[t * ldy + r] for tokens t < n and the rows of block rows [br0, br1) (R = 16, C a multiple of 64), from xq in
// int8_dot's quantize_tokens layout (npad = token_pad(n)), with its scales and zero points: what
// hf_sparse_int8::qbsr_rows computes. Only after int8_ready() returned true; block columns checked by the caller.
template <typename I>
void qbsr16_rows(const int32_t* crow, const I* col, const int8_t* values, int64_t C, const float* wscale,
                 const float* bias, const uint8_t* xq, int64_t cols, int64_t npad, int64_t n, const float* xscale,
                 const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1);

// Xt (cols, n) bf16 bits repacked for the B tiles as int8_dot packs codes: tokens padded to a multiple of 16 (beyond
// 64, of 64), in bsr16_bf16_token_tiles(n) tiles of tw = min(64, padded) tokens, each tile cols / 2 rows of tw tokens
// x 2 values (a column pair), padded tokens zero. bsr16_bf16_packed_size(cols, n) uint16 values; cols even.
// bsr16_bf16_pack writes tiles [tt0, tt1).
int64_t bsr16_bf16_packed_size(int64_t cols, int64_t n);
int64_t bsr16_bf16_token_tiles(int64_t n);
void bsr16_bf16_pack(const uint16_t* xt, int64_t cols, int64_t n, int64_t tt0, int64_t tt1, uint16_t* packed);

// Y = W @ Xt for bf16 values in 16 x C blocks (C a multiple of 32), rows of block rows [br0, br1): result (r, t)
// rounded to bf16 at y[r * ys_r + t * ys_t] (ys_r = n, ys_t = 1 for (rows, N); ys_r = 1, ys_t = rows for (N, rows)).
// Only after bf16_ready() returned true; block columns checked by the caller.
template <typename I>
void bsr16_bf16_rows(const int32_t* crow, const I* col, const uint16_t* values, int64_t C, const uint16_t* packed,
                     int64_t cols, int64_t n, uint16_t* y, int64_t ys_r, int64_t ys_t, int64_t br0, int64_t br1);

}  // namespace hf_sparse_amx

// C entry points for tests that load this translation unit (with int8_dot.cpp) through ctypes. Block columns are
// int32. Each checks its arguments before any read and returns -1 on success, the position of the first bad block
// column (>= 0), or one of the codes below; the kernels run single-threaded.
#define HF_SPARSE_AMX_BAD_SHAPE (-2)
#define HF_SPARSE_AMX_UNAVAILABLE (-3)
#define HF_SPARSE_AMX_BAD_POINTERS (-4)
extern "C" {
int hf_sparse_amx_compiled();
const char* hf_sparse_amx_int8_status();
const char* hf_sparse_amx_bf16_status();
const char* hf_sparse_amx_summary();
int64_t hf_sparse_amx_linear_qbsr(const int32_t* crow, const int32_t* col, const int8_t* values, int64_t R,
                                  int64_t C, int64_t block_rows, int64_t bcols, const float* wscale,
                                  const float* bias, const float* x, int64_t n, float* y);
// y: (rows, n) bf16 bits, or (n, rows) when transpose_out.
int64_t hf_sparse_amx_spmm_bsr_bf16(const int32_t* crow, const int32_t* col, const uint16_t* values, int64_t R,
                                    int64_t C, int64_t block_rows, int64_t bcols, const uint16_t* xt, int64_t n,
                                    uint16_t* y, int transpose_out);
}
