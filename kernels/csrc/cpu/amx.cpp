// AMX tile kernels (see amx.h for what they compute and the gates in front of them).
//
// Built into every CPU build: an avx512 build with a compiler that has AMX gets the kernels, compiled for AMX
// through a function target attribute only (the rest of the library keeps its flags, and nothing here runs unless
// the gates pass); any other build gets stubs whose status says why. -DHF_SPARSE_AMX_EMULATE (tests only) compiles
// the same kernels over a software model of the tile registers, so their packing, tails and epilogues are tested on
// CPUs without AMX; the hardware gates are then skipped and the self-checks still run.
#include "amx.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "int8_dot.h"

#if defined(HF_SPARSE_AMX_EMULATE)  // the software model replaces the hardware (tests only)
#undef HF_SPARSE_AMX
#define HF_SPARSE_AMX_KERNELS 1
#elif defined(HF_SPARSE_AMX)
#define HF_SPARSE_AMX_KERNELS 1
#include <cerrno>
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace hf_sparse_amx {
namespace {

std::atomic<int64_t> g_int8_calls{0};
std::atomic<int64_t> g_bf16_calls{0};

// Round to nearest even, NaN to 0x7FC0: simd.h's float_to_bf16, the rounding of the non-AMX bf16 kernels.
inline uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// bf16 tokens are packed as int8_dot packs codes: padded to a multiple of 16, and beyond 64 to a multiple of 64, in
// tiles of tw = min(64, padded) tokens, so four C tiles share each A tile.
int64_t bf16_token_pad(int64_t n) { return n <= 64 ? (n + 15) / 16 * 16 : (n + 63) / 64 * 64; }
int64_t bf16_token_tile(int64_t n) { return std::min<int64_t>(64, bf16_token_pad(n)); }

#if defined(HF_SPARSE_AMX_KERNELS)

// The tile configuration (palette 1): every tile used is 16 rows x 64 bytes. tmm0-3: C accumulators of up to four
// 16-token tiles; tmm4: A (the weights' block); tmm5-7: B (the tokens').
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};
static_assert(sizeof(TileConfig) == 64, "the tile configuration is 64 bytes");

#if defined(HF_SPARSE_AMX_EMULATE)
// A software model of the eight tile registers and the instructions used (per thread, as the registers are), after
// Intel's pseudocode: TDPBSUD sums s8 x u8 products into int32 (wrapping); TDPBF16PS adds the two exact float32
// products of each bf16 pair into the float32 accumulator, one after the other.
struct EmuTiles {
  alignas(64) uint8_t t[8][16 * 64];
  bool configured = false;
};
thread_local EmuTiles emu;
// HF_SPARSE_AMX_EMULATE_FAULT=1 makes every dot-product instruction add 1 to one result (tests that the self-check
// catches a wrong kernel).
bool emu_fault() {
  static const bool fault = [] {
    const char* v = std::getenv("HF_SPARSE_AMX_EMULATE_FAULT");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return fault;
}
void emu_config(const TileConfig*) { emu.configured = true; }
void emu_release() { emu.configured = false; }
void emu_zero(int i) { std::memset(emu.t[i], 0, sizeof emu.t[i]); }
void emu_load(int i, const void* base, int64_t stride) {
  for (int r = 0; r < 16; ++r) std::memcpy(emu.t[i] + r * 64, static_cast<const uint8_t*>(base) + r * stride, 64);
}
void emu_store(int i, void* base, int64_t stride) {
  for (int r = 0; r < 16; ++r) std::memcpy(static_cast<uint8_t*>(base) + r * stride, emu.t[i] + r * 64, 64);
}
void emu_dpbsud(int c, int a, int b) {
  int32_t acc[16][16];
  std::memcpy(acc, emu.t[c], sizeof acc);
  const int8_t* A = reinterpret_cast<const int8_t*>(emu.t[a]);
  const uint8_t* B = emu.t[b];
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      uint32_t s = static_cast<uint32_t>(acc[m][n]);
      for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 4; ++j) s += static_cast<uint32_t>(A[m * 64 + 4 * k + j] * B[k * 64 + 4 * n + j]);
      acc[m][n] = static_cast<int32_t>(s);
    }
  if (emu_fault()) acc[3][5] += 1;
  std::memcpy(emu.t[c], acc, sizeof acc);
}
void emu_dpbf16ps(int c, int a, int b) {
  float acc[16][16];
  std::memcpy(acc, emu.t[c], sizeof acc);
  uint16_t A[16][32], B[16][32];
  std::memcpy(A, emu.t[a], sizeof A);
  std::memcpy(B, emu.t[b], sizeof B);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      float s = acc[m][n];
      for (int k = 0; k < 16; ++k) {
        s += from_bf16(A[m][2 * k]) * from_bf16(B[k][2 * n]);
        s += from_bf16(A[m][2 * k + 1]) * from_bf16(B[k][2 * n + 1]);
      }
      acc[m][n] = s;
    }
  if (emu_fault()) acc[3][5] += 1.f;
  std::memcpy(emu.t[c], acc, sizeof acc);
}
#define HF_AMX_TARGET
#define HF_TILE_CONFIG(cfg) emu_config(cfg)
#define HF_TILE_RELEASE() emu_release()
#define HF_TILE_ZERO(t) emu_zero(t)
#define HF_TILE_LOAD(t, base, stride) emu_load(t, base, stride)
#define HF_TILE_STORE(t, base, stride) emu_store(t, base, stride)
#define HF_TILE_DPBSUD(c, a, b) emu_dpbsud(c, a, b)
#define HF_TILE_DPBF16PS(c, a, b) emu_dpbf16ps(c, a, b)
#else
// Our own asm rather than the <amx*intrin.h> macros: their tileloadd and ldtilecfg do not tell the compiler which
// memory they read (only a pointer in a register, or the config's first 8 bytes), so stores just before them (the
// packed tokens, the config) could be reordered past them or dropped. Every statement here clobbers memory.
#define HF_AMX_TARGET __attribute__((target("amx-tile,amx-int8,amx-bf16")))
#define HF_TILE_CONFIG(cfg) __asm__ volatile("ldtilecfg %0" ::"m"(*(cfg)) : "memory")
#define HF_TILE_RELEASE() __asm__ volatile("tilerelease" ::: "memory")
#define HF_TILE_ZERO(t) __asm__ volatile("tilezero %%tmm" #t ::: "memory")
#define HF_TILE_LOAD(t, base, stride)                                                           \
  __asm__ volatile("{tileloadd\t(%0,%1,1), %%tmm" #t "|tileloadd\t%%tmm" #t ", [%0+%1*1]}" ::"r"( \
                       static_cast<const void*>(base)),                                          \
                   "r"(static_cast<long>(stride))                                                \
                   : "memory")
#define HF_TILE_STORE(t, base, stride)                                                            \
  __asm__ volatile("{tilestored\t%%tmm" #t ", (%0,%1,1)|tilestored\t[%0+%1*1], %%tmm" #t "}" ::"r"( \
                       static_cast<void*>(base)),                                                  \
                   "r"(static_cast<long>(stride))                                                  \
                   : "memory")
#define HF_TILE_DPBSUD(c, a, b) \
  __asm__ volatile("{tdpbsud\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbsud\t%%tmm" #c ", %%tmm" #a ", %%tmm" #b "}" ::)
#define HF_TILE_DPBF16PS(c, a, b)                                                                    \
  __asm__ volatile("{tdpbf16ps\t%%tmm" #b ", %%tmm" #a ", %%tmm" #c "|tdpbf16ps\t%%tmm" #c ", %%tmm" #a \
                   ", %%tmm" #b "}" ::)
#endif

// NT (1..4) 16-token tiles of one block row: C tiles 0..NT-1 = sum over the block row's blocks of A (16 x 64 bytes
// of weights at a, row stride C bytes / elements) times B (the tokens' 16 x 64 bytes at b0 + j * 64, row stride
// bstride); stored to acc[j] (16 rows x 16 tokens of 4 bytes). `int8`: TDPBSUD, else TDPBF16PS.
template <int NT, bool INT8, typename V, typename I, typename X>
HF_AMX_TARGET void block_row_tiles(const V* values, const I* col, int64_t b, int64_t e, int64_t C, int64_t k_tile,
                                   const X* xt, int64_t kstep, int64_t bstride, void* acc) {
  static_assert(NT >= 1 && NT <= 4, "four C tiles at most");
  HF_TILE_ZERO(0);
  if constexpr (NT > 1) HF_TILE_ZERO(1);
  if constexpr (NT > 2) HF_TILE_ZERO(2);
  if constexpr (NT > 3) HF_TILE_ZERO(3);
  const int64_t a_stride = C * static_cast<int64_t>(sizeof(V));
  for (int64_t p = b; p < e; ++p) {
    const V* blk = values + p * kRows * C;
    const int64_t c0 = static_cast<int64_t>(col[p]) * C;
    for (int64_t s = 0; s < C; s += k_tile) {
      // The tokens' rows for columns c0 + s ..: one B row covers kstep columns (4 int8 or 2 bf16).
      const uint8_t* bb = reinterpret_cast<const uint8_t*>(xt) + (c0 + s) / kstep * bstride;
      HF_TILE_LOAD(4, blk + s, a_stride);
      HF_TILE_LOAD(5, bb, bstride);
      if constexpr (INT8) {
        HF_TILE_DPBSUD(0, 4, 5);
      } else {
        HF_TILE_DPBF16PS(0, 4, 5);
      }
      if constexpr (NT > 1) {
        HF_TILE_LOAD(6, bb + 64, bstride);
        if constexpr (INT8) {
          HF_TILE_DPBSUD(1, 4, 6);
        } else {
          HF_TILE_DPBF16PS(1, 4, 6);
        }
      }
      if constexpr (NT > 2) {
        HF_TILE_LOAD(7, bb + 128, bstride);
        if constexpr (INT8) {
          HF_TILE_DPBSUD(2, 4, 7);
        } else {
          HF_TILE_DPBF16PS(2, 4, 7);
        }
      }
      if constexpr (NT > 3) {
        HF_TILE_LOAD(5, bb + 192, bstride);
        if constexpr (INT8) {
          HF_TILE_DPBSUD(3, 4, 5);
        } else {
          HF_TILE_DPBF16PS(3, 4, 5);
        }
      }
    }
  }
  uint8_t* out = static_cast<uint8_t*>(acc);
  HF_TILE_STORE(0, out, 64);
  if constexpr (NT > 1) HF_TILE_STORE(1, out + 1024, 64);
  if constexpr (NT > 2) HF_TILE_STORE(2, out + 2048, 64);
  if constexpr (NT > 3) HF_TILE_STORE(3, out + 3072, 64);
}

template <bool INT8, typename V, typename I, typename X>
HF_AMX_TARGET void block_row_nt(int nt, const V* values, const I* col, int64_t b, int64_t e, int64_t C,
                                int64_t k_tile, const X* xt, int64_t kstep, int64_t bstride, void* acc) {
  switch (nt) {
    case 1: block_row_tiles<1, INT8>(values, col, b, e, C, k_tile, xt, kstep, bstride, acc); break;
    case 2: block_row_tiles<2, INT8>(values, col, b, e, C, k_tile, xt, kstep, bstride, acc); break;
    case 3: block_row_tiles<3, INT8>(values, col, b, e, C, k_tile, xt, kstep, bstride, acc); break;
    default: block_row_tiles<4, INT8>(values, col, b, e, C, k_tile, xt, kstep, bstride, acc); break;
  }
}

template <typename I>
HF_AMX_TARGET void qbsr16_impl(const int32_t* crow, const I* col, const int8_t* values, int64_t C,
                               const float* wscale, const float* bias, const uint8_t* xq, int64_t cols, int64_t npad,
                               int64_t n, const float* xscale, const int32_t* xzero, float* y, int64_t ldy,
                               int64_t br0, int64_t br1) {
  const TileConfig cfg;
  HF_TILE_CONFIG(&cfg);
  const int64_t tw = hf_sparse_int8::token_tile(npad), G = cols / 4;
  alignas(64) int32_t acc[4][16][16];
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t b = crow[br], e = crow[br + 1];
    int32_t rowsum[16];  // removes the tokens' zero points, as in int8_dot.cpp
    for (int i = 0; i < 16; ++i) {
      int32_t s = 0;
      for (int64_t p = b; p < e; ++p) {
        const int8_t* w = values + (p * kRows + i) * C;
        for (int64_t c = 0; c < C; ++c) s += w[c];
      }
      rowsum[i] = s;
    }
    // Token tiles of int8_dot's layout (tw tokens, a multiple of 16; group g of tile tt at (tt * G + g) * tw * 4),
    // 16 tokens per C tile: B rows are 4 codes x 16 tokens, tw * 4 bytes apart.
    for (int64_t tt = 0; tt * tw < n; ++tt) {
      const int64_t t_base = tt * tw, valid = std::min(tw, n - t_base);
      const int nt = static_cast<int>((valid + 15) / 16);
      block_row_nt<true>(nt, values, col, b, e, C, kInt8K, xq + tt * G * tw * 4, 4, tw * 4, acc);
      for (int j = 0; j < nt; ++j) {
        for (int i = 0; i < 16; ++i) {
          const int64_t r = br * kRows + i;
          const float ws = wscale[r], bb = bias ? bias[r] : 0.f;
          for (int k = 0; k < 16; ++k) {
            const int64_t t = t_base + j * 16 + k;
            if (t >= n) break;
            // int8_dot's finish(): the same operations, so the same bits.
            const float a = static_cast<float>(acc[j][i][k] - xzero[t] * rowsum[i]);
            y[t * ldy + r] = std::fma(xscale[t] * ws, a, bb);
          }
        }
      }
    }
  }
  HF_TILE_RELEASE();
}

template <typename I>
HF_AMX_TARGET void bsr16_bf16_impl(const int32_t* crow, const I* col, const uint16_t* values, int64_t C,
                                   const uint16_t* packed, int64_t cols, int64_t n, uint16_t* y, int64_t ys_r,
                                   int64_t ys_t, int64_t br0, int64_t br1) {
  const TileConfig cfg;
  HF_TILE_CONFIG(&cfg);
  const int64_t tw = bf16_token_tile(n);
  alignas(64) float acc[4][16][16];
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t b = crow[br], e = crow[br + 1];
    // Token tiles of tw tokens (bsr16_bf16_pack), 16 per C tile: B rows are 2 values x 16 tokens, tw * 4 bytes apart.
    for (int64_t tt = 0; tt * tw < n; ++tt) {
      const int64_t t_base = tt * tw, valid = std::min(tw, n - t_base);
      const int nt = static_cast<int>((valid + 15) / 16);
      block_row_nt<false>(nt, values, col, b, e, C, kBf16K, packed + tt * cols * tw, 2, tw * 4, acc);
      for (int j = 0; j < nt; ++j) {
        for (int i = 0; i < 16; ++i) {
          const int64_t r = br * kRows + i;
          for (int k = 0; k < 16; ++k) {
            const int64_t t = t_base + j * 16 + k;
            if (t >= n) break;
            y[r * ys_r + t * ys_t] = to_bf16(acc[j][i][k]);
          }
        }
      }
    }
  }
  HF_TILE_RELEASE();
}

#endif  // HF_SPARSE_AMX_KERNELS

// ---- the gates ----------------------------------------------------------------------------------------------------

struct Gate {
  bool ok;
  std::string why;  // "ok" or "amx: ..."
};

#if defined(HF_SPARSE_AMX)
// The flags of the first processor in /proc/cpuinfo (empty if unreadable).
std::string cpuinfo_flags() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (f == nullptr) return "";
  std::string line, flags;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, f) != nullptr) {
    line += buf;
    if (line.empty() || line.back() != '\n') continue;  // a line longer than the buffer: keep reading it
    if (line.rfind("flags", 0) == 0) {
      flags = " " + line.substr(line.find(':') + 1);
      for (char& c : flags)
        if (c == '\n' || c == '\t') c = ' ';
      break;
    }
    line.clear();
  }
  std::fclose(f);
  return flags + " ";
}

// CPU, OS and permission; `feature` is amx_int8 or amx_bf16 (CPUID.7.0:EDX bit 25 or 22; amx_tile is bit 24).
std::string hardware_gate(const char* feature) {
  static const std::string flags = cpuinfo_flags();
  for (const char* need : {"amx_tile", feature}) {
    if (flags.find(std::string(" ") + need + " ") == std::string::npos) {
      return flags.size() <= 2 ? std::string("amx: cannot read the CPU flags in /proc/cpuinfo")
                               : std::string("amx: CPU lacks ") + need;
    }
  }
  unsigned a = 0, b = 0, c = 0, d = 0;
  const unsigned bit = std::strcmp(feature, "amx_int8") == 0 ? 25u : 22u;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u) || !((d >> bit) & 1u)) {
    return std::string("amx: CPUID does not report amx_tile and ") + feature;
  }
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return "amx: the OS has not enabled XSAVE (OSXSAVE)";
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if (((lo >> 17) & 3u) != 3u) return "amx: the OS does not enable tile state (XCR0 bits 17, 18)";
  // Linux (5.16+) hands out tile data per process on request; without it the first tile instruction faults.
  static const long perm = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0 ? 0L : static_cast<long>(errno);
  }();
  if (perm != 0) {
    return std::string("amx: tile permission refused (arch_prctl(ARCH_REQ_XCOMP_PERM): ") + std::strerror(perm) + ")";
  }
  return "ok";
}
#endif

// A seeded generator for the self-checks (the same problem on every machine).
struct Lcg {
  uint64_t s;
  uint32_t next() {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(s >> 33);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * static_cast<float>(next() & 0xffffff) / 16777216.f; }
};

// A small block-sparse pattern over 3 block rows (one empty) and 3 block columns.
[[maybe_unused]] void self_check_pattern(std::vector<int32_t>& crow, std::vector<int32_t>& col) {
  crow = {0, 2, 2, 4};
  col = {0, 2, 2, 1};
}

#if defined(HF_SPARSE_AMX_KERNELS)
// The int8 kernel against int8_dot's (the path the op takes without AMX): outputs must be the same bits.
std::string int8_self_check() {
  std::vector<int32_t> crow, col;
  self_check_pattern(crow, col);
  const int64_t C = 128, rows = 48, cols = 3 * C;
  Lcg g{12345};
  std::vector<int8_t> values(static_cast<size_t>(col.size() * kRows * C));
  for (auto& v : values) v = static_cast<int8_t>(g.next() & 0xff);
  std::vector<float> ws(rows), bias(rows);
  for (auto& v : ws) v = g.uniform(0.001f, 0.02f);
  for (auto& v : bias) v = g.uniform(-1.f, 1.f);
  for (int64_t n : {5, 37, 70}) {
    std::vector<float> x(static_cast<size_t>(n * cols));
    for (auto& v : x) v = g.uniform(-3.f, 2.f);
    const int64_t npad = hf_sparse_int8::token_pad(n);
    std::vector<uint8_t> xq(static_cast<size_t>(cols * npad), 0);
    std::vector<float> xs(npad, 0.f);
    std::vector<int32_t> xz(npad, 0);
    hf_sparse_int8::quantize_tokens(x.data(), cols, cols, 0, n, npad, xq.data(), xs.data(), xz.data());
    std::vector<float> want(static_cast<size_t>(n * rows), -1.f), got(want.size(), -2.f), tmp(16 * 64);
    hf_sparse_int8::qbsr_rows<int32_t>(crow.data(), col.data(), values.data(), kRows, C, ws.data(), bias.data(),
                                       xq.data(), cols, npad, n, xs.data(), xz.data(), want.data(), rows, 0, 3,
                                       tmp.data());
    qbsr16_impl<int32_t>(crow.data(), col.data(), values.data(), C, ws.data(), bias.data(), xq.data(), cols, npad, n,
                         xs.data(), xz.data(), got.data(), rows, 0, 3);
    if (std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) != 0) {
      size_t at = 0;
      while (std::memcmp(&want[at], &got[at], sizeof(float)) == 0) ++at;
      char buf[160];
      std::snprintf(buf, sizeof buf, "amx: self-check failed (int8, %lld tokens: output %zu is %.9g, expected %.9g)",
                    static_cast<long long>(n), at, got[at], want[at]);
      return buf;
    }
  }
  return "ok";
}

// The bf16 kernel against the non-AMX bf16 arithmetic (spmm_blocked.cpp's bsr_rows: one float32 FMA per value, in
// block then column order, one rounding): AMX sums in another order, so within 2^-8 of the token's largest result.
std::string bf16_self_check() {
  std::vector<int32_t> crow, col;
  self_check_pattern(crow, col);
  const int64_t C = 64, rows = 48, cols = 3 * C;
  Lcg g{67890};
  std::vector<uint16_t> values(static_cast<size_t>(col.size() * kRows * C));
  for (auto& v : values) v = to_bf16(g.uniform(-1.f, 1.f));
  for (int64_t n : {5, 37, 70}) {
    std::vector<uint16_t> xt(static_cast<size_t>(cols * n));
    for (auto& v : xt) v = to_bf16(g.uniform(-2.f, 2.f));
    std::vector<float> want(static_cast<size_t>(rows * n), 0.f);
    for (int64_t br = 0; br < 3; ++br)
      for (int64_t i = 0; i < kRows; ++i)
        for (int64_t t = 0; t < n; ++t) {
          float acc = 0.f;
          for (int64_t p = crow[br]; p < crow[br + 1]; ++p)
            for (int64_t c = 0; c < C; ++c)
              acc = std::fma(from_bf16(values[(p * kRows + i) * C + c]), from_bf16(xt[(col[p] * C + c) * n + t]), acc);
          want[(br * kRows + i) * n + t] = acc;
        }
    std::vector<uint16_t> packed(static_cast<size_t>(bsr16_bf16_packed_size(cols, n)));
    bsr16_bf16_pack(xt.data(), cols, n, 0, bsr16_bf16_token_tiles(n), packed.data());
    std::vector<uint16_t> got(static_cast<size_t>(rows * n), 0xffff);
    bsr16_bf16_impl<int32_t>(crow.data(), col.data(), values.data(), C, packed.data(), cols, n, got.data(), n, 1, 0,
                             3);
    for (int64_t t = 0; t < n; ++t) {
      float top = 0.f;
      for (int64_t r = 0; r < rows; ++r) top = std::max(top, std::fabs(want[r * n + t]));
      for (int64_t r = 0; r < rows; ++r) {
        const float w = from_bf16(to_bf16(want[r * n + t])), o = from_bf16(got[r * n + t]);
        if (!(std::fabs(o - w) <= top * 0.00390625f)) {
          char buf[160];
          std::snprintf(buf, sizeof buf, "amx: self-check failed (bf16, %lld tokens: (%lld, %lld) is %.6g, expected %.6g)",
                        static_cast<long long>(n), static_cast<long long>(r), static_cast<long long>(t), o, w);
          return buf;
        }
      }
    }
  }
  return "ok";
}
#endif

[[maybe_unused]] bool disabled_by_env() {
  const char* v = std::getenv("HF_SPARSE_DISABLE_AMX");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

[[maybe_unused]] const char* not_compiled_reason() {
#if defined(HF_SPARSE_NO_AMX)
  return "amx: not compiled (built with HF_SPARSE_NO_AMX)";
#elif !defined(__x86_64__) || !defined(__linux__)
  return "amx: not compiled (AMX kernels need x86-64 Linux)";
#elif !defined(__AVX512F__) || !defined(__AVX512BW__)
  return "amx: not compiled (only the avx512 build has the AMX kernels)";
#else
  return "amx: not compiled (the compiler lacks AMX support)";
#endif
}

Gate make_gate(bool int8) {
#if !defined(HF_SPARSE_AMX_KERNELS)
  (void)int8;
  return {false, not_compiled_reason()};
#else
  if (disabled_by_env()) return {false, "amx: disabled by HF_SPARSE_DISABLE_AMX=1"};
#if defined(HF_SPARSE_AMX)
  std::string hw = hardware_gate(int8 ? "amx_int8" : "amx_bf16");
  if (hw != "ok") return {false, hw};
#endif
  // The self-check is the first AMX code to run: only now that the CPU and the OS allow it.
  std::string why = int8 ? int8_self_check() : bf16_self_check();
  if (why != "ok") return {false, why};  // the Python loader warns (hf_sparse.ops._loader.load)
  return {true, "ok"};
#endif
}

const Gate& int8_gate() {
  static const Gate g = make_gate(true);  // thread-safe, once per process
  return g;
}

const Gate& bf16_gate() {
  static const Gate g = make_gate(false);
  return g;
}

}  // namespace

bool int8_ready() { return int8_gate().ok; }
bool bf16_ready() { return bf16_gate().ok; }
const char* int8_status() { return int8_gate().why.c_str(); }
const char* bf16_status() { return bf16_gate().why.c_str(); }
int64_t int8_calls() { return g_int8_calls.load(); }
int64_t bf16_calls() { return g_bf16_calls.load(); }

const char* summary() {
  static const std::string line = [] {
    const Gate &a = int8_gate(), &b = bf16_gate();
#if defined(HF_SPARSE_AMX_EMULATE)
    const std::string how = " (software emulation: a test build)";
#else
    const std::string how;
#endif
    const std::string i8 = "int8 tiles for linear_qbsr_dyn with 16 x 64k blocks";
    const std::string b16 = "bf16 tiles for spmm_bsr with 16 x 32k bf16 blocks";
    if (a.ok && b.ok) return "amx: in use" + how + ": " + i8 + ", " + b16;
    if (!a.ok && !b.ok) return a.why == b.why ? a.why : a.why + "; " + b.why;
    if (a.ok) return "amx: in use" + how + ": " + i8 + "; bf16 off (" + b.why + ")";
    return "amx: in use" + how + ": " + b16 + "; int8 off (" + a.why + ")";
  }();
  return line.c_str();
}

int64_t bsr16_bf16_packed_size(int64_t cols, int64_t n) { return cols * bf16_token_pad(n); }

void bsr16_bf16_pack(const uint16_t* xt, int64_t cols, int64_t n, int64_t tt0, int64_t tt1, uint16_t* packed) {
  // packed[tt][k / 2][t % tw][k % 2] = xt[k][tt * tw + t % tw], tokens at or past n zero.
  const int64_t tw = bf16_token_tile(n);
  for (int64_t tt = tt0; tt < tt1; ++tt) {
    uint16_t* dst = packed + tt * cols * tw;
    const int64_t t0 = tt * tw, tn = std::max<int64_t>(0, std::min(tw, n - t0));
    for (int64_t k = 0; k + 1 < cols; k += 2) {
      const uint16_t* r0 = xt + k * n + t0;
      const uint16_t* r1 = r0 + n;
      uint16_t* d = dst + k * tw;
      int64_t t = 0;
      for (; t < tn; ++t) {
        d[2 * t] = r0[t];
        d[2 * t + 1] = r1[t];
      }
      for (; t < tw; ++t) d[2 * t] = d[2 * t + 1] = 0;
    }
  }
}

int64_t bsr16_bf16_token_tiles(int64_t n) { return bf16_token_pad(n) / bf16_token_tile(n); }

template <typename I>
void qbsr16_rows(const int32_t* crow, const I* col, const int8_t* values, int64_t C, const float* wscale,
                 const float* bias, const uint8_t* xq, int64_t cols, int64_t npad, int64_t n, const float* xscale,
                 const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1) {
#if defined(HF_SPARSE_AMX_KERNELS)
  if (!int8_ready() || !int8_shape(kRows, C)) std::abort();  // a caller bug: never run tiles ungated
  g_int8_calls.fetch_add(1, std::memory_order_relaxed);
  qbsr16_impl<I>(crow, col, values, C, wscale, bias, xq, cols, npad, n, xscale, xzero, y, ldy, br0, br1);
#else
  (void)crow, (void)col, (void)values, (void)C, (void)wscale, (void)bias, (void)xq, (void)cols, (void)npad, (void)n;
  (void)xscale, (void)xzero, (void)y, (void)ldy, (void)br0, (void)br1;
  std::abort();  // int8_ready() is false in this build: callers never get here
#endif
}

template <typename I>
void bsr16_bf16_rows(const int32_t* crow, const I* col, const uint16_t* values, int64_t C, const uint16_t* packed,
                     int64_t cols, int64_t n, uint16_t* y, int64_t ys_r, int64_t ys_t, int64_t br0, int64_t br1) {
#if defined(HF_SPARSE_AMX_KERNELS)
  if (!bf16_ready() || !bf16_shape(kRows, C)) std::abort();
  g_bf16_calls.fetch_add(1, std::memory_order_relaxed);
  bsr16_bf16_impl<I>(crow, col, values, C, packed, cols, n, y, ys_r, ys_t, br0, br1);
#else
  (void)crow, (void)col, (void)values, (void)C, (void)packed, (void)cols, (void)n, (void)y, (void)ys_r, (void)ys_t;
  (void)br0, (void)br1;
  std::abort();
#endif
}

template void qbsr16_rows<int16_t>(const int32_t*, const int16_t*, const int8_t*, int64_t, const float*, const float*,
                                   const uint8_t*, int64_t, int64_t, int64_t, const float*, const int32_t*, float*,
                                   int64_t, int64_t, int64_t);
template void qbsr16_rows<int32_t>(const int32_t*, const int32_t*, const int8_t*, int64_t, const float*, const float*,
                                   const uint8_t*, int64_t, int64_t, int64_t, const float*, const int32_t*, float*,
                                   int64_t, int64_t, int64_t);
template void bsr16_bf16_rows<int16_t>(const int32_t*, const int16_t*, const uint16_t*, int64_t, const uint16_t*,
                                       int64_t, int64_t, uint16_t*, int64_t, int64_t, int64_t, int64_t);
template void bsr16_bf16_rows<int32_t>(const int32_t*, const int32_t*, const uint16_t*, int64_t, const uint16_t*,
                                       int64_t, int64_t, uint16_t*, int64_t, int64_t, int64_t, int64_t);

}  // namespace hf_sparse_amx

// ---- C entry points (single-threaded; every argument checked before any element is read) -------------------------

namespace {

// crow (block_rows + 1 entries) from 0 to nnz, never decreasing; false otherwise.
bool pointers_ok(const int32_t* crow, int64_t block_rows) {
  if (crow == nullptr || block_rows < 0 || crow[0] != 0) return false;
  for (int64_t r = 0; r < block_rows; ++r)
    if (crow[r] > crow[r + 1]) return false;
  return true;
}

}  // namespace

extern "C" {
int hf_sparse_amx_compiled() {
#if defined(HF_SPARSE_AMX_KERNELS)
  return 1;
#else
  return 0;
#endif
}

const char* hf_sparse_amx_int8_status() { return hf_sparse_amx::int8_status(); }
const char* hf_sparse_amx_bf16_status() { return hf_sparse_amx::bf16_status(); }
const char* hf_sparse_amx_summary() { return hf_sparse_amx::summary(); }

int64_t hf_sparse_amx_linear_qbsr(const int32_t* crow, const int32_t* col, const int8_t* values, int64_t R,
                                  int64_t C, int64_t block_rows, int64_t bcols, const float* wscale,
                                  const float* bias, const float* x, int64_t n, float* y) {
  using namespace hf_sparse_amx;
  if (!int8_shape(R, C) || block_rows < 0 || bcols < 0 || n < 0 || bcols * C > hf_sparse_int8::kMaxInt8Cols)
    return HF_SPARSE_AMX_BAD_SHAPE;
  if (!pointers_ok(crow, block_rows)) return HF_SPARSE_AMX_BAD_POINTERS;
  const int64_t bad = hf_sparse_int8::first_outside<int32_t>(col, crow[block_rows], bcols);
  if (bad >= 0) return bad;
  if (!int8_ready()) return HF_SPARSE_AMX_UNAVAILABLE;
  if (n == 0 || block_rows == 0) return -1;
  const int64_t rows = block_rows * R, cols = bcols * C, npad = hf_sparse_int8::token_pad(n);
  std::vector<uint8_t> xq(static_cast<size_t>(cols * npad), 0);
  std::vector<float> s(static_cast<size_t>(npad), 0.f);
  std::vector<int32_t> z(static_cast<size_t>(npad), 0);
  hf_sparse_int8::quantize_tokens(x, cols, cols, 0, n, npad, xq.data(), s.data(), z.data());
  qbsr16_rows<int32_t>(crow, col, values, C, wscale, bias, xq.data(), cols, npad, n, s.data(), z.data(), y, rows, 0,
                       block_rows);
  return -1;
}

int64_t hf_sparse_amx_spmm_bsr_bf16(const int32_t* crow, const int32_t* col, const uint16_t* values, int64_t R,
                                    int64_t C, int64_t block_rows, int64_t bcols, const uint16_t* xt, int64_t n,
                                    uint16_t* y, int transpose_out) {
  using namespace hf_sparse_amx;
  if (!bf16_shape(R, C) || block_rows < 0 || bcols < 0 || n < 0) return HF_SPARSE_AMX_BAD_SHAPE;
  if (!pointers_ok(crow, block_rows)) return HF_SPARSE_AMX_BAD_POINTERS;
  const int64_t bad = hf_sparse_int8::first_outside<int32_t>(col, crow[block_rows], bcols);
  if (bad >= 0) return bad;
  if (!bf16_ready()) return HF_SPARSE_AMX_UNAVAILABLE;
  if (n == 0 || block_rows == 0) return -1;
  const int64_t rows = block_rows * R, cols = bcols * C;
  std::vector<uint16_t> packed(static_cast<size_t>(bsr16_bf16_packed_size(cols, n)));
  bsr16_bf16_pack(xt, cols, n, 0, bsr16_bf16_token_tiles(n), packed.data());
  bsr16_bf16_rows<int32_t>(crow, col, values, C, packed.data(), cols, n, y, transpose_out ? 1 : n,
                           transpose_out ? rows : 1, 0, block_rows);
  return -1;
}
}
