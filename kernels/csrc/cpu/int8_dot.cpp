// int8 weights x dynamically quantised int8 activations (see int8_dot.h). One source for every instruction-set
// path: the vector types below are chosen by the compiler flags the build uses for this CPU (ops/_loader.py):
//   avx512-vnni  16 int32 lanes, one vpdpbusd per 4 codes x 16 tokens
//   avx512       16 lanes, vpdpbusd emulated with two vpmaddwd (exact: no saturating 16-bit step)
//   avx-vnni     8 lanes, the 256-bit vpdpbusd
//   avx2         8 lanes, emulated as for avx512
//   portable     1 lane, plain C++
#include "int8_dot.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace hf_sparse_int8 {
namespace {

inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// u8 x s8 dot products of 4 bytes per int32 lane, summed into acc (what vpdpbusd computes, without saturation).
#if defined(__AVX512F__) && defined(__AVX512BW__)
#define HF_INT8_PATH_512 1
struct IV {
  using R = __m512i;
  static constexpr int W = 16;
  static R zero() { return _mm512_setzero_si512(); }
  static R load(const void* p) { return _mm512_loadu_si512(p); }
  static R set1(int32_t v) { return _mm512_set1_epi32(v); }
  static void store(int32_t* p, R v) { _mm512_storeu_si512(p, v); }
  static R gather(const int32_t* base, R idx) { return _mm512_i32gather_epi32(idx, base, 4); }
  static R index(const int16_t* p) {
    return _mm512_cvtepi16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static R index(const int32_t* p) { return _mm512_loadu_si512(p); }
  // Some lane outside [0, bound) (negative int32 indices are huge unsigned); 1 <= bound <= 2^31.
  static bool any_outside(R idx, int64_t bound) {
    return _mm512_cmpge_epu32_mask(idx, _mm512_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(bound)))) != 0;
  }
  static int32_t sum(R v) { return _mm512_reduce_add_epi32(v); }
  static R add(R a, R b) { return _mm512_add_epi32(a, b); }
  static R mul(R a, R b) { return _mm512_mullo_epi32(a, b); }
  // out[l] = xs[l] * ws * (acc[l] - xz[l] * rs) + b for the W tokens of a vector.
  static void finish(R acc, int32_t rs, const float* xs, const int32_t* xz, float ws, float b, float* out) {
    const R a = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_loadu_si512(xz), _mm512_set1_epi32(rs)));
    const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(xs), _mm512_set1_ps(ws));
    _mm512_storeu_ps(out, _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(a), _mm512_set1_ps(b)));
  }
  static R dot4(R acc, R u, R w) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(acc, u, w);
#else
    const R ue = _mm512_and_si512(u, _mm512_set1_epi16(0x00FF)), uo = _mm512_srli_epi16(u, 8);
    const R we = _mm512_srai_epi16(_mm512_slli_epi16(w, 8), 8), wo = _mm512_srai_epi16(w, 8);
    return _mm512_add_epi32(acc, _mm512_add_epi32(_mm512_madd_epi16(ue, we), _mm512_madd_epi16(uo, wo)));
#endif
  }
};
#elif defined(__AVX2__)
#define HF_INT8_PATH_256 1
struct IV {
  using R = __m256i;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_si256(); }
  static R load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
  static R set1(int32_t v) { return _mm256_set1_epi32(v); }
  static void store(int32_t* p, R v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static R gather(const int32_t* base, R idx) { return _mm256_i32gather_epi32(base, idx, 4); }
  static R index(const int16_t* p) {
    return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static R index(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static bool any_outside(R idx, int64_t bound) {  // idx <= bound - 1 as unsigned in every lane, else outside
    const R top = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(bound - 1)));
    return _mm256_movemask_epi8(_mm256_cmpeq_epi32(_mm256_min_epu32(idx, top), idx)) != -1;
  }
  static R add(R a, R b) { return _mm256_add_epi32(a, b); }
  static R mul(R a, R b) { return _mm256_mullo_epi32(a, b); }
  static void finish(R acc, int32_t rs, const float* xs, const int32_t* xz, float ws, float b, float* out) {
    const R xzv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xz));
    const R a = _mm256_sub_epi32(acc, _mm256_mullo_epi32(xzv, _mm256_set1_epi32(rs)));
    const __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(xs), _mm256_set1_ps(ws));
    _mm256_storeu_ps(out, _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(a), _mm256_set1_ps(b)));
  }
  static int32_t sum(R v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
  }
  static R dot4(R acc, R u, R w) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, w);
#else
    const R ue = _mm256_and_si256(u, _mm256_set1_epi16(0x00FF)), uo = _mm256_srli_epi16(u, 8);
    const R we = _mm256_srai_epi16(_mm256_slli_epi16(w, 8), 8), wo = _mm256_srai_epi16(w, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, we), _mm256_madd_epi16(uo, wo)));
#endif
  }
};
#else
struct IV {
  using R = int32_t;
  static constexpr int W = 1;
  static R zero() { return 0; }
  static R load(const void* p) { return load_i32(p); }
  static R set1(int32_t v) { return v; }
  static void store(int32_t* p, R v) { *p = v; }
  static R gather(const int32_t* base, R idx) { return base[idx]; }
  static R index(const int16_t* p) { return *p; }
  static R index(const int32_t* p) { return *p; }
  static bool any_outside(R idx, int64_t bound) { return static_cast<uint64_t>(static_cast<int64_t>(idx)) >= static_cast<uint64_t>(bound); }
  static int32_t sum(R v) { return v; }
  static R add(R a, R b) { return a + b; }
  static R mul(R a, R b) { return a * b; }
  static void finish(R acc, int32_t rs, const float* xs, const int32_t* xz, float ws, float b, float* out) {
    *out = *xs * ws * static_cast<float>(acc - *xz * rs) + b;
  }
  static R dot4(R acc, R u, R w) {
    uint8_t ub[4];
    int8_t wb[4];
    std::memcpy(ub, &u, 4);
    std::memcpy(wb, &w, 4);
    return acc + ub[0] * wb[0] + ub[1] * wb[1] + ub[2] * wb[2] + ub[3] * wb[3];
  }
};
#endif

// Per-token grid (see int8_dot.h): returns false for a token with a non-finite value.
inline bool token_grid(const float* x, int64_t cols, float& scale, float& zero) {
  float lo = 0.f, hi = 0.f;
  int64_t k = 0;
#if defined(HF_INT8_PATH_512)
  __m512 vlo = _mm512_setzero_ps(), vhi = _mm512_setzero_ps(), vnan = _mm512_setzero_ps();
  for (; k + 16 <= cols; k += 16) {
    const __m512 v = _mm512_loadu_ps(x + k);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
    vnan = _mm512_add_ps(vnan, _mm512_mul_ps(v, _mm512_setzero_ps()));  // NaN iff some value is inf or NaN
  }
  lo = _mm512_reduce_min_ps(vlo);
  hi = _mm512_reduce_max_ps(vhi);
  float nan_probe = _mm512_reduce_add_ps(vnan);
#elif defined(HF_INT8_PATH_256)
  __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps(), vnan = _mm256_setzero_ps();
  for (; k + 8 <= cols; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    vlo = _mm256_min_ps(vlo, v);
    vhi = _mm256_max_ps(vhi, v);
    vnan = _mm256_add_ps(vnan, _mm256_mul_ps(v, _mm256_setzero_ps()));
  }
  alignas(32) float a[8], b[8], c[8];
  _mm256_store_ps(a, vlo);
  _mm256_store_ps(b, vhi);
  _mm256_store_ps(c, vnan);
  float nan_probe = 0.f;
  for (int i = 0; i < 8; ++i) {
    lo = std::min(lo, a[i]);
    hi = std::max(hi, b[i]);
    nan_probe += c[i];
  }
#else
  float nan_probe = 0.f;
#endif
  for (; k < cols; ++k) {
    const float v = x[k];
    lo = std::min(lo, v);
    hi = std::max(hi, v);
    nan_probe += v * 0.f;
  }
  if (!(nan_probe == 0.f) || !std::isfinite(lo) || !std::isfinite(hi)) return false;
  scale = std::max((hi - lo) / 255.f, 1e-12f);
  zero = std::min(127.f, std::max(-128.f, -128.f - std::nearbyint(lo / scale)));
  return true;
}

// The stored codes (q + 128) of x[k0 .. k0 + 16) (or the 8 or 1 the path handles) into out, in order.
inline void codes(const float* x, int64_t cols, float scale, float zero, uint8_t* out) {
  int64_t k = 0;
#if defined(HF_INT8_PATH_512)
  const __m512 s = _mm512_set1_ps(scale), z = _mm512_set1_ps(zero + 128.f);
  const __m512 lo = _mm512_set1_ps(0.f), hi = _mm512_set1_ps(255.f);
  for (; k + 16 <= cols; k += 16) {
    __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(x + k), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(q, z), lo), hi);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + k), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(q)));
  }
#elif defined(HF_INT8_PATH_256)
  const __m256 s = _mm256_set1_ps(scale), z = _mm256_set1_ps(zero + 128.f);
  const __m256 lo = _mm256_set1_ps(0.f), hi = _mm256_set1_ps(255.f);
  for (; k + 8 <= cols; k += 8) {
    __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), s), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(q, z), lo), hi);
    alignas(32) int32_t v[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(v), _mm256_cvtps_epi32(q));
    for (int i = 0; i < 8; ++i) out[k + i] = static_cast<uint8_t>(v[i]);
  }
#endif
  for (; k < cols; ++k) {
    // round(x / s) + zero, clamped to [-128, 127], plus 128: adding 128 before the clamp is the same (exact in float)
    const float q = std::nearbyint(x[k] / scale) + zero + 128.f;
    out[k] = static_cast<uint8_t>(std::min(255.f, std::max(0.f, q)));
  }
}

// Sum of the codes of row i of blocks [b, e) (what removes the activations' zero point).
inline int32_t row_code_sum(const int8_t* values, int64_t b, int64_t e, int64_t R, int64_t C, int64_t i) {
  if (R == 1) {  // the row's codes are contiguous: 4 * W of them per dot product with ones
    const int8_t* w = values + b * C;
    const int64_t bytes = (e - b) * C;
    const auto ones = IV::set1(0x01010101);
    auto acc = IV::zero();
    int64_t k = 0;
    for (; k + 4 * IV::W <= bytes; k += 4 * IV::W) acc = IV::dot4(acc, ones, IV::load(w + k));
#if defined(HF_INT8_PATH_512)
    if (k < bytes) {  // the last partial vector, masked
      const __mmask64 m = _cvtu64_mask64((~uint64_t{0}) >> (64 - (bytes - k)));
      acc = IV::dot4(acc, ones, _mm512_maskz_loadu_epi8(m, w + k));
      k = bytes;
    }
#endif
    int32_t s = IV::sum(acc);
    for (; k < bytes; ++k) s += w[k];
    return s;
  }
  int32_t s = 0;
  for (int64_t p = b; p < e; ++p)
    for (int64_t c = 0; c < C; ++c) s += values[(p * R + i) * C + c];
  return s;
}

// NV vectors of tokens (NV * W) for RB consecutive rows (i0 .. i0 + RB of block row br) over the block row's blocks:
// each vector of codes loaded serves the RB rows (the reuse a dense or R x 4 layout offers), in U independent
// chains where RB * NV alone would leave the dot products waiting on each other's latency. Block columns were
// checked by first_outside() before any kernel runs. out[r * ldo + t]: row r's NV * W outputs.
template <int RB, int NV, int U, bool G1, typename I>
inline void rows_tile(const int32_t* crow, const I* col, const int8_t* values, int64_t R, int64_t C, int64_t br,
                      int64_t i0, const uint8_t* xtile, int64_t tw, int64_t t0, const float* xs, const int32_t* xz,
                      const float* ws, const int32_t* rs, const float* bias, float* out, int64_t ldo) {
  typename IV::R acc[U][RB][NV];
  for (int u = 0; u < U; ++u)
    for (int r = 0; r < RB; ++r)
      for (int v = 0; v < NV; ++v) acc[u][r][v] = IV::zero();
  const int64_t G = G1 ? 1 : C / 4;
  const int64_t gstride = tw * 4;             // bytes between two column groups of the token tile
  const int64_t bstride = G * gstride;        // bytes between two block columns
  const int64_t b = crow[br], e = crow[br + 1];
  // (Plain loops over constant trip counts, no lambda: the accumulators must stay in registers.)
  int64_t p = b;
  for (; p + U <= e; p += U) {
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const int8_t* w = values + ((p + u) * R + i0) * C;
      const uint8_t* xg = xtile + static_cast<int64_t>(col[p + u]) * bstride;
      for (int64_t g = 0; g < G; ++g) {
        typename IV::R xv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) xv[v] = IV::load(xg + g * gstride + v * IV::W * 4);
#pragma GCC unroll 4
        for (int r = 0; r < RB; ++r) {
          const auto wv = IV::set1(load_i32(w + r * C + 4 * g));
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) acc[u][r][v] = IV::dot4(acc[u][r][v], xv[v], wv);
        }
      }
    }
  }
  for (; p < e; ++p) {
    const int8_t* w = values + (p * R + i0) * C;
    const uint8_t* xg = xtile + static_cast<int64_t>(col[p]) * bstride;
    for (int64_t g = 0; g < G; ++g) {
      typename IV::R xv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[v] = IV::load(xg + g * gstride + v * IV::W * 4);
#pragma GCC unroll 4
      for (int r = 0; r < RB; ++r) {
        const auto wv = IV::set1(load_i32(w + r * C + 4 * g));
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[0][r][v] = IV::dot4(acc[0][r][v], xv[v], wv);
      }
    }
  }
  for (int r = 0; r < RB; ++r) {
    for (int v = 0; v < NV; ++v) {
      for (int u = 1; u < U; ++u) acc[0][r][v] = IV::add(acc[0][r][v], acc[u][r][v]);
      const int64_t t = t0 + v * IV::W;
      IV::finish(acc[0][r][v], rs[r], xs + t, xz + t, ws[r], bias ? bias[r] : 0.f, out + r * ldo + v * IV::W);
    }
  }
}

// Rows i0 .. i0 + rb (rb = 4, 2 or 1) of block row br for nv vectors of tokens.
template <bool G1, typename I>
inline void rows_tile_nv(int rb, int nv, const int32_t* crow, const I* col, const int8_t* values, int64_t R,
                         int64_t C, int64_t br, int64_t i0, const uint8_t* xq, int64_t tw, int64_t t0,
                         const float* xs, const int32_t* xz, const float* ws, const int32_t* rs, const float* b,
                         float* out, int64_t ldo) {
#define HF_INT8_TILE(RB, NV, U) \
  rows_tile<RB, NV, U, G1>(crow, col, values, R, C, br, i0, xq, tw, t0, xs, xz, ws, rs, b, out, ldo)
  if (rb == 4) {
    switch (nv) {
      case 1: HF_INT8_TILE(4, 1, 2); break;
      case 2: HF_INT8_TILE(4, 2, 1); break;
      case 3: HF_INT8_TILE(4, 3, 1); break;
      default: HF_INT8_TILE(4, 4, 1); break;
    }
  } else if (rb == 2) {
    switch (nv) {
      case 1: HF_INT8_TILE(2, 1, 2); break;
      case 2: HF_INT8_TILE(2, 2, 1); break;
      case 3: HF_INT8_TILE(2, 3, 1); break;
      default: HF_INT8_TILE(2, 4, 1); break;
    }
  } else {
    switch (nv) {
      case 1: HF_INT8_TILE(1, 1, 4); break;
      case 2: HF_INT8_TILE(1, 2, 2); break;
      case 3: HF_INT8_TILE(1, 3, 1); break;
      default: HF_INT8_TILE(1, 4, 1); break;
    }
  }
#undef HF_INT8_TILE
}

#if defined(HF_INT8_PATH_512)
// dst[j * ld + i] = src[i * ls + j] for a 16 x 16 block of floats.
inline void transpose16(const float* src, int64_t ls, float* dst, int64_t ld) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ls);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    const __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    const __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int h = 0; h < 16; h += 8) {
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
  for (int j = 0; j < 16; ++j) _mm512_storeu_ps(dst + j * ld, r[j]);
}
#endif

constexpr int kMaxNV = 4;
constexpr int kRowGroup = 16;

}  // namespace

int64_t token_lanes() { return IV::W; }

const char* isa_name() {
#if defined(HF_INT8_PATH_512) && defined(__AVX512VNNI__)
  return "avx512-vnni";
#elif defined(HF_INT8_PATH_512)
  return "avx512";
#elif defined(HF_INT8_PATH_256) && defined(__AVXVNNI__)
  return "avx-vnni";
#elif defined(HF_INT8_PATH_256)
  return "avx2";
#else
  return "portable";
#endif
}

bool rowlanes_apply(int64_t R, int64_t C, int64_t n) { return C == 4 && R % IV::W == 0 && n >= 1; }

int64_t token_pad(int64_t n) {
  constexpr int64_t TILE = kMaxNV * IV::W;
  return n <= TILE ? (n + IV::W - 1) / IV::W * IV::W : (n + TILE - 1) / TILE * TILE;
}

int64_t token_tile(int64_t npad) { return std::min<int64_t>(kMaxNV * IV::W, npad); }

void quantize_tokens(const float* x, int64_t ldx, int64_t cols, int64_t t0, int64_t t1, int64_t npad, uint8_t* xq,
                     float* scale, int32_t* zero) {
  const int64_t G = cols / 4, tw = token_tile(npad);
  auto at = [&](int64_t g, int64_t t) { return xq + (((t / tw) * G + g) * tw + t % tw) * 4; };
  uint8_t buf[256];
  for (int64_t t = t0; t < t1; ++t) {
    const float* row = x + t * ldx;
    float s, z;
    if (!token_grid(row, cols, s, z)) {
      scale[t] = std::numeric_limits<float>::quiet_NaN();
      zero[t] = 128;
      for (int64_t g = 0; g < G; ++g) std::memset(at(g, t), 0, 4);
      continue;
    }
    scale[t] = s;
    zero[t] = static_cast<int32_t>(z) + 128;
    for (int64_t k0 = 0; k0 < cols; k0 += 256) {  // cols is a multiple of 4, so chunks are whole groups
      const int64_t k1 = std::min(cols, k0 + 256);
      codes(row + k0, k1 - k0, s, z, buf);
      for (int64_t k = k0; k < k1; k += 4) std::memcpy(at(k / 4, t), buf + (k - k0), 4);
    }
  }
}

void quantize_token_plain(const float* x, int64_t cols, uint8_t* xq, float* scale, int32_t* zero) {
  float s, z;
  if (!token_grid(x, cols, s, z)) {
    *scale = std::numeric_limits<float>::quiet_NaN();
    *zero = 128;
    std::memset(xq, 0, static_cast<size_t>(cols));
    return;
  }
  *scale = s;
  *zero = static_cast<int32_t>(z) + 128;
  codes(x, cols, s, z, xq);
}

template <typename I>
int64_t first_outside(const I* col, int64_t count, int64_t bound) {
  int64_t p = 0;
  if (bound >= 1 && bound <= (int64_t{1} << 31)) {
    for (; p + IV::W <= count; p += IV::W) {
      if (__builtin_expect(IV::any_outside(IV::index(col + p), bound), 0)) break;
    }
  }
  for (; p < count; ++p) {
    if (static_cast<uint64_t>(static_cast<int64_t>(col[p])) >= static_cast<uint64_t>(bound)) return p;
  }
  return -1;
}

template <typename I>
void qbsr_rows(const int32_t* crow, const I* col, const int8_t* values, int64_t R, int64_t C, const float* wscale,
               const float* bias, const uint8_t* xq, int64_t cols, int64_t npad, int64_t n, const float* xscale,
               const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1, float* tmp) {
  constexpr int64_t TILE = kMaxNV * IV::W;
  const int64_t tw = token_tile(npad);
  const int64_t r_begin = br0 * R, r_end = br1 * R;
  std::vector<int32_t> rowsum(static_cast<size_t>(r_end - r_begin));
  for (int64_t r = r_begin; r < r_end; ++r)
    rowsum[r - r_begin] = row_code_sum(values, crow[r / R], crow[r / R + 1], R, C, r % R);
  for (int64_t t0 = 0; t0 < n; t0 += TILE) {
    const int64_t tn = std::min<int64_t>(TILE, n - t0);
    const int nv = static_cast<int>((tn + IV::W - 1) / IV::W);
    const uint8_t* xt = xq + (t0 / tw) * (cols / 4) * tw * 4;  // this tile's codes, contiguous
    for (int64_t g0 = r_begin; g0 < r_end; g0 += kRowGroup) {
      const int64_t g1 = std::min<int64_t>(r_end, g0 + kRowGroup);
      for (int64_t r = g0; r < g1;) {
        const int64_t br = r / R, i = r % R;
        const int64_t left = std::min(R - i, g1 - r);  // rows of this block row still in the group
        const int rb = left >= 4 ? 4 : left >= 2 ? 2 : 1;
        const float* bp = bias ? bias + r : nullptr;
        const int32_t* rs = rowsum.data() + (r - r_begin);
        float* o = tmp + (r - g0) * TILE;
        if (C == 4) {
          rows_tile_nv<true>(rb, nv, crow, col, values, R, C, br, i, xt, tw, t0, xscale, xzero, wscale + r, rs, bp, o,
                             TILE);
        } else {
          rows_tile_nv<false>(rb, nv, crow, col, values, R, C, br, i, xt, tw, t0, xscale, xzero, wscale + r, rs, bp,
                              o, TILE);
        }
        r += rb;
      }
      // Write the (tokens x rows) tile: one contiguous run of g1 - g0 outputs per token.
      int64_t t = 0;
#if defined(HF_INT8_PATH_512)
      if (g1 - g0 == 16) {
        for (; t + 16 <= tn; t += 16) transpose16(tmp + t, TILE, y + (t0 + t) * ldy + g0, ldy);
      }
#endif
      for (; t < tn; ++t) {
        float* dst = y + (t0 + t) * ldy + g0;
        for (int64_t r = 0; r < g1 - g0; ++r) dst[r] = tmp[r * TILE + t];
      }
    }
  }
}

template <typename I>
void qbsr1x4_vector(const int32_t* crow, const I* col, const int8_t* values, const float* wscale, const float* bias,
                    const uint8_t* xq, float xscale, int32_t xzero, float* y, int64_t r0, int64_t r1) {
  const int32_t* x32 = reinterpret_cast<const int32_t*>(xq);
  const auto ones = IV::set1(0x01010101);
  for (int64_t r = r0; r < r1; ++r) {
    typename IV::R acc0 = IV::zero(), acc1 = IV::zero(), rs = IV::zero();
    int64_t p = crow[r];
    const int64_t e = crow[r + 1];
    for (; p + 2 * IV::W <= e; p += 2 * IV::W) {
      const auto w0 = IV::load(values + p * 4), w1 = IV::load(values + (p + IV::W) * 4);
      acc0 = IV::dot4(acc0, IV::gather(x32, IV::index(col + p)), w0);
      acc1 = IV::dot4(acc1, IV::gather(x32, IV::index(col + p + IV::W)), w1);
      rs = IV::dot4(IV::dot4(rs, ones, w0), ones, w1);
    }
#if defined(HF_INT8_PATH_512)
    for (; p < e; p += IV::W) {  // the last (partial) vectors, masked: no lane reads past the row
      const __mmask16 m = static_cast<__mmask16>((1u << std::min<int64_t>(16, e - p)) - 1u);
      __m512i idx;
      if constexpr (sizeof(I) == 2) {
        idx = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, col + p));
      } else {
        idx = _mm512_maskz_loadu_epi32(m, col + p);
      }
      const __m512i w = _mm512_maskz_loadu_epi32(m, values + p * 4);
      acc0 = IV::dot4(acc0, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, idx, x32, 4), w);
      rs = IV::dot4(rs, ones, w);
    }
#endif
    int32_t tail = 0, tail_rs = 0;
    for (; p < e; ++p) {
      const int8_t* w = values + p * 4;
      const uint8_t* u = xq + static_cast<int64_t>(col[p]) * 4;
      tail_rs += w[0] + w[1] + w[2] + w[3];
      tail += u[0] * w[0] + u[1] * w[1] + u[2] * w[2] + u[3] * w[3];
    }
    // sum(acc) - xzero * sum(rs) as one reduction: the correction is linear in the lanes
    const auto lanes = IV::add(IV::add(acc0, acc1), IV::mul(rs, IV::set1(-xzero)));
    const int32_t net = IV::sum(lanes) + tail - xzero * tail_rs;
    y[r] = xscale * wscale[r] * static_cast<float>(net) + (bias ? bias[r] : 0.f);
  }
}

template <int T, typename I>
void qbsr_rowlanes_t(const int32_t* crow, const I* col, const int8_t* values, int64_t R, const float* wscale,
                   const float* bias, const uint8_t* xq, int64_t cols, int64_t n, const float* xscale,
                   const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1) {
  const auto ones = IV::set1(0x01010101);
  const int32_t* x32 = reinterpret_cast<const int32_t*>(xq);
  const int64_t G = cols / 4;
  for (int64_t br = br0; br < br1; ++br) {
    const int64_t b = crow[br], e = crow[br + 1];
    for (int64_t h = 0; h < R; h += IV::W) {  // W rows of the block at a time, one per lane
      for (int64_t t0 = 0; t0 < n; t0 += T) {
        const int64_t tn = std::min<int64_t>(T, n - t0);
        typename IV::R acc[T], rs = IV::zero();
        for (int t = 0; t < T; ++t) acc[t] = IV::zero();
        for (int64_t p = b; p < e; ++p) {
          const auto wv = IV::load(values + (p * R + h) * 4);
          const int64_t c = static_cast<int64_t>(col[p]);
          rs = IV::dot4(rs, ones, wv);
#pragma GCC unroll 16
          for (int t = 0; t < T; ++t) {
            if (t < tn) acc[t] = IV::dot4(acc[t], IV::set1(x32[(t0 + t) * G + c]), wv);
          }
        }
        alignas(64) int32_t a[IV::W], r[IV::W];
        IV::store(r, rs);
        for (int64_t t = 0; t < tn; ++t) {
          IV::store(a, acc[t]);
          const float xs = xscale[t0 + t];
          const int32_t xz = xzero[t0 + t];
          float* dst = y + (t0 + t) * ldy + br * R + h;
          for (int l = 0; l < IV::W; ++l) {
            const int64_t row = br * R + h + l;
            dst[l] = xs * wscale[row] * static_cast<float>(a[l] - xz * r[l]) + (bias ? bias[row] : 0.f);
          }
        }
      }
    }
  }
}

template <typename I>
void qbsr_rowlanes(const int32_t* crow, const I* col, const int8_t* values, int64_t R, const float* wscale,
                   const float* bias, const uint8_t* xq, int64_t cols, int64_t n, const float* xscale,
                   const int32_t* xzero, float* y, int64_t ldy, int64_t br0, int64_t br1) {
  // Up to 8 tokens per pass over the weights, or 16 where that leaves registers for the codes (16 lanes or fewer).
  if (n > 8 && IV::W >= 8) {
    qbsr_rowlanes_t<16>(crow, col, values, R, wscale, bias, xq, cols, n, xscale, xzero, y, ldy, br0, br1);
  } else {
    qbsr_rowlanes_t<8>(crow, col, values, R, wscale, bias, xq, cols, n, xscale, xzero, y, ldy, br0, br1);
  }
}

#define HF_INT8_INSTANTIATE(I)                                                                                      \
  template int64_t first_outside<I>(const I*, int64_t, int64_t);                                                   \
  template void qbsr_rows<I>(const int32_t*, const I*, const int8_t*, int64_t, int64_t, const float*, const float*, \
                             const uint8_t*, int64_t, int64_t, int64_t, const float*, const int32_t*, float*,       \
                             int64_t, int64_t, int64_t, float*);                                                             \
  template void qbsr_rowlanes<I>(const int32_t*, const I*, const int8_t*, int64_t, const float*, const float*,     \
                                 const uint8_t*, int64_t, int64_t, const float*, const int32_t*, float*, int64_t,  \
                                 int64_t, int64_t);                                                                \
  template void qbsr1x4_vector<I>(const int32_t*, const I*, const int8_t*, const float*, const float*,             \
                                  const uint8_t*, float, int32_t, float*, int64_t, int64_t);
HF_INT8_INSTANTIATE(int16_t)
HF_INT8_INSTANTIATE(int32_t)
#undef HF_INT8_INSTANTIATE

}  // namespace hf_sparse_int8

// ---- C entry points for the per-path tests (single-threaded, no argument checks beyond what the test passes) ----

extern "C" {
const char* hf_sparse_int8_isa() { return hf_sparse_int8::isa_name(); }

int64_t hf_sparse_int8_token_lanes() { return hf_sparse_int8::token_lanes(); }

void hf_sparse_int8_quantize(const float* x, int64_t ldx, int64_t cols, int64_t n, int64_t npad, uint8_t* xq,
                             float* scale, int32_t* zero) {
  hf_sparse_int8::quantize_tokens(x, ldx, cols, 0, n, npad, xq, scale, zero);
}

int64_t hf_sparse_int8_linear_qbsr(const int32_t* crow, const int32_t* col, const int8_t* values, int64_t R,
                                   int64_t C, int64_t block_rows, int64_t bcols, const float* wscale,
                                   const float* bias, const float* x, int64_t n, float* y) {
  using namespace hf_sparse_int8;
  const int64_t rows = block_rows * R, cols = bcols * C;
  const int64_t bad = first_outside<int32_t>(col, crow[block_rows], bcols);
  if (bad >= 0) return bad;
  if (rowlanes_apply(R, C, n)) {
    std::vector<uint8_t> xq(static_cast<size_t>(std::max<int64_t>(1, cols * n)));
    std::vector<float> s(static_cast<size_t>(n));
    std::vector<int32_t> z(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) quantize_token_plain(x + t * cols, cols, xq.data() + t * cols, &s[t], &z[t]);
    qbsr_rowlanes<int32_t>(crow, col, values, R, wscale, bias, xq.data(), cols, n, s.data(), z.data(), y, rows, 0,
                           block_rows);
  } else if (n == 1 && R == 1 && C == 4) {
    std::vector<uint8_t> xq(static_cast<size_t>(cols));
    float s;
    int32_t z;
    quantize_token_plain(x, cols, xq.data(), &s, &z);
    qbsr1x4_vector<int32_t>(crow, col, values, wscale, bias, xq.data(), s, z, y, 0, rows);
  } else {
    const int64_t npad = token_pad(n);
    std::vector<uint8_t> xq(static_cast<size_t>(cols * npad), 0);
    std::vector<float> s(static_cast<size_t>(npad));
    std::vector<int32_t> z(static_cast<size_t>(npad));
    std::vector<float> tmp(16 * 64);
    quantize_tokens(x, cols, cols, 0, n, npad, xq.data(), s.data(), z.data());
    qbsr_rows<int32_t>(crow, col, values, R, C, wscale, bias, xq.data(), cols, npad, n, s.data(), z.data(), y, rows, 0,
                       block_rows, tmp.data());
  }
  return -1;
}
}
