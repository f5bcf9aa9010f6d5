// Small vector layer shared by the CPU kernels: one code path per kernel, instantiated for float (8 lanes with
// AVX2/FMA) and double (4 lanes with AVX2, or 1 lane without it). Kernels keep their accumulators in registers:
// `V` vectors across the dense dimension N, and `U` or `RB` independent chains so FMA latency is hidden.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "checks.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define HF_SPARSE_AVX2 1
#endif

// Bad indices are the rare case: keep their handling out of the hot loop's straight-line code.
#if defined(__GNUC__)
#define HF_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define HF_COLD __attribute__((noinline, cold))
#else
#define HF_UNLIKELY(x) (x)
#define HF_COLD
#endif

namespace hf_sparse_cpu {

template <typename T>
struct Vec {  // portable fallback: one lane
  using R = T;
  static constexpr int W = 1;
  static R zero() { return T(0); }
  static R set1(T v) { return v; }
  static R load(const T* p) { return *p; }
  static R load_part(const T* p, int) { return *p; }
  static void store(T* p, R v) { *p = v; }
  static void store_part(T* p, R v, int) { *p = v; }
  static R fma(R a, R b, R c) { return a * b + c; }
  static R add(R a, R b) { return a + b; }
  static T sum(R a) { return a; }
};

#ifdef HF_SPARSE_AVX2
inline __m256i lane_mask32(int lanes) {  // first `lanes` of 8 int32 lanes set
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), idx);
}
inline __m256i lane_mask64(int lanes) {  // first `lanes` of 4 int64 lanes set
  const __m256i idx = _mm256_setr_epi64x(0, 1, 2, 3);
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(lanes), idx);
}

template <>
struct Vec<float> {
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R load_part(const float* p, int lanes) { return _mm256_maskload_ps(p, lane_mask32(lanes)); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static void store_part(float* p, R v, int lanes) { _mm256_maskstore_ps(p, lane_mask32(lanes), v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static float sum(R a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

template <>
struct Vec<double> {
  using R = __m256d;
  static constexpr int W = 4;
  static R zero() { return _mm256_setzero_pd(); }
  static R set1(double v) { return _mm256_set1_pd(v); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static R load_part(const double* p, int lanes) { return _mm256_maskload_pd(p, lane_mask64(lanes)); }
  static void store(double* p, R v) { _mm256_storeu_pd(p, v); }
  static void store_part(double* p, R v, int lanes) { _mm256_maskstore_pd(p, lane_mask64(lanes), v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static R add(R a, R b) { return _mm256_add_pd(a, b); }
  static double sum(R a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};
#endif

// ---- bfloat16 storage ----------------------------------------------------------------------------------------------
// bf16 is the upper half of a float32: widening is exact (a 16-bit shift), so bf16 kernels compute in float32 and
// round each result once, to nearest with ties to even, as torch's .to(torch.bfloat16) does (a NaN becomes 0x7FC0).
// The rounding is integer arithmetic on every path, not VCVTNEPS2BF16, which flushes denormals to zero: results are
// then the same bits whichever instruction-set path the build takes (up to the order of the float32 sums).
using bf16 = c10::BFloat16;

inline float bf16_to_float(bf16 b) {
  const uint32_t u = static_cast<uint32_t>(b.x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint16_t bits = nan ? uint16_t{0x7fc0} : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  return bf16(bits, bf16::from_bits());
}

// The type a kernel computes in for data stored as S: float for bf16, S itself otherwise.
template <typename S>
struct acc_of {
  using type = S;
};
template <>
struct acc_of<bf16> {
  using type = float;
};
template <typename S>
using acc_t = typename acc_of<S>::type;

// Eight bf16 values widened to float into out[0..8).
inline void widen8(const bf16* in, float* out) {
#ifdef HF_SPARSE_AVX2
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in));
  _mm256_store_ps(out, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
#else
  for (int k = 0; k < 8; ++k) out[k] = bf16_to_float(in[k]);
#endif
}

// Stores the first `lanes` (at most W) float lanes of x at p as bf16, rounded.
inline void store_bf16(bf16* p, Vec<float>::R x, int lanes) {
#ifdef HF_SPARSE_AVX2
  const __m256i u = _mm256_castps_si256(x);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
  // Every lane is in [0, 0xffff], so the unsigned-saturating pack is exact.
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  if (lanes == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  } else {
    alignas(16) bf16 tmp[8];
    _mm_store_si128(reinterpret_cast<__m128i*>(tmp), packed);
    std::memcpy(p, tmp, sizeof(bf16) * static_cast<size_t>(lanes));
  }
#else
  (void)lanes;
  *p = float_to_bf16(x);
#endif
}

// A contiguous run of bf16 widened to float (a dense operand converted once, before the kernel gathers from it).
inline void widen_run(const bf16* in, float* out, int64_t n) {
  int64_t i = 0;
  alignas(32) float tmp[8];
  for (; i + 8 <= n; i += 8) {
    widen8(in + i, tmp);
    std::memcpy(out + i, tmp, sizeof tmp);
  }
  for (; i < n; ++i) out[i] = bf16_to_float(in[i]);
}

// Loads vector v of a chunk whose last vector may be partial (TAIL): lanes beyond `tail` are neither read nor written.
template <typename T, bool TAIL>
inline typename Vec<T>::R load_v(const T* p, int v, int last, int tail) {
  if (TAIL && v == last) return Vec<T>::load_part(p + v * Vec<T>::W, tail);
  return Vec<T>::load(p + v * Vec<T>::W);
}
template <typename T, bool TAIL>
inline void store_v(T* p, typename Vec<T>::R x, int v, int last, int tail) {
  if (TAIL && v == last) {
    Vec<T>::store_part(p + v * Vec<T>::W, x, tail);
  } else {
    Vec<T>::store(p + v * Vec<T>::W, x);
  }
}

// Where a kernel writes output row r: data + (r - row0) * ld, row-major. Kernels always write rows; a transposed
// result (N, rows) — the layout a Linear layer returns — is produced by `rows_to_output` tile by tile.
template <typename T>
struct Out {
  T* data;
  int64_t ld;
  int64_t row0;
};

// Y is the stored type; accumulators are in acc_t<Y> (float for bf16, which rounds here, once).
template <typename Y, int V, bool TAIL>
inline void store_out(const Out<Y>& y, int64_t r, int64_t j0, int tail, const typename Vec<acc_t<Y>>::R* acc) {
  Y* row = y.data + (r - y.row0) * y.ld + j0;
  if constexpr (std::is_same_v<Y, bf16>) {
    constexpr int W = Vec<float>::W;
    for (int v = 0; v < V; ++v) store_bf16(row + v * W, acc[v], TAIL && v == V - 1 ? tail : W);
  } else {
    for (int v = 0; v < V; ++v) store_v<Y, TAIL>(row, acc[v], v, V - 1, tail);
  }
}

// One scalar result stored as Y.
template <typename Y>
inline Y to_storage(acc_t<Y> v) {
  if constexpr (std::is_same_v<Y, bf16>) {
    return float_to_bf16(v);
  } else {
    return v;
  }
}

// Runs kernel(r_begin, r_end, Out) over rows [rb, re) of a (rows, N) result. Row-major: straight into y. Transposed
// (y is (N, rows)): tiles of `tile` rows go to `buf` first and are then written out column by column, one
// contiguous run of `tile` values per column, so each cache line of y is written whole (writing scalars with a
// stride of `rows` floats instead thrashes L1: the lines all fall into the same few sets).
template <typename T, typename K>
inline void rows_to_output(int64_t rb, int64_t re, int64_t n, T* y, int64_t rows, bool transposed, int64_t tile,
                           std::vector<T>& buf, K&& kernel) {
  if (!transposed || n == 1) {
    kernel(rb, re, Out<T>{y, n, 0});
    return;
  }
  buf.resize(static_cast<size_t>(tile * n));
  for (int64_t t0 = rb; t0 < re; t0 += tile) {
    const int64_t t1 = std::min(re, t0 + tile);
    kernel(t0, t1, Out<T>{buf.data(), n, t0});
    for (int64_t j = 0; j < n; ++j) {
      T* dst = y + j * rows + t0;
      const T* src = buf.data() + j;
      for (int64_t i = 0; i < t1 - t0; ++i) dst[i] = src[i * n];
    }
  }
}

// First bad position seen by any thread (-1: none). Kernels skip a bad entry instead of reading through it, then
// raise once the parallel region has finished.
struct BadIndex {
  std::atomic<int64_t> at{-1};
  HF_COLD void note(int64_t i) {
    int64_t expected = -1;
    at.compare_exchange_strong(expected, i, std::memory_order_relaxed);
  }
  int64_t get() const { return at.load(std::memory_order_relaxed); }
};

template <int V, bool TAIL>
struct Chunk {
  static constexpr int v = V;
  static constexpr bool tail = TAIL;
};

// Walks [0, n) in chunks of at most MAXV vectors (then 4, 2, 1 vectors and a final partial vector), calling
// f(Chunk<V, TAIL>{}, j0, tail_lanes) so each chunk runs a kernel instantiated for its width.
template <typename T, int MAXV, typename F>
inline void for_each_chunk(int64_t n, F&& f) {
  constexpr int64_t W = Vec<T>::W;
  int64_t j = 0;
  if constexpr (MAXV >= 8) {
    for (; j + 8 * W <= n; j += 8 * W) f(Chunk<8, false>{}, j, 0);
  }
  if constexpr (MAXV >= 4) {
    for (; j + 4 * W <= n; j += 4 * W) f(Chunk<4, false>{}, j, 0);
  }
  for (; j + 2 * W <= n; j += 2 * W) f(Chunk<2, false>{}, j, 0);
  if (j + W <= n) {
    f(Chunk<1, false>{}, j, 0);
    j += W;
  }
  if (j < n) f(Chunk<1, true>{}, j, static_cast<int>(n - j));
}

// Eight int8 codes widened to float into out[0..8) (one vector convert on AVX2).
inline void widen8(const int8_t* in, float* out) {
#ifdef HF_SPARSE_AVX2
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(in));
  _mm256_store_ps(out, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)));
#else
  for (int k = 0; k < 8; ++k) out[k] = static_cast<float>(in[k]);
#endif
}

// Calls f(const int16_t*) or f(const int32_t*) for a column-index tensor (the kernels accept both widths).
template <typename F>
inline void dispatch_index(const at::Tensor& col, F&& f) {
  if (col.scalar_type() == at::kShort) {
    f(col.data_ptr<int16_t>());
  } else {
    f(col.data_ptr<int32_t>());
  }
}

// The result of an SpMM: (rows, N), or its transpose (N, rows) when the caller wants what a Linear returns.
inline at::Tensor new_output(const at::Tensor& xt, int64_t rows, bool transpose_out, const char* op) {
  const int64_t n = xt.size(1);
  return allocate(op, transpose_out ? "(N, rows) output" : "(rows, N) output", [&] {
    return transpose_out ? at::empty({n, rows}, xt.options()) : at::empty({rows, n}, xt.options());
  });
}

// `bf16`: the op also takes bfloat16 (the forward products of float formats).
inline void check_dense_rhs(const at::Tensor& xt, int64_t rows, const char* op, const char* name, bool bf16 = false) {
  TORCH_CHECK_VALUE(xt.device().is_cpu(), "hf_sparse::", op, ": ", name, " must be a CPU tensor, got one on ",
                    xt.device());
  TORCH_CHECK_VALUE(xt.dim() == 2 && xt.size(0) == rows, "hf_sparse::", op, ": ", name, " must be (", rows,
                    ", N), got ", xt.sizes());
  const auto t = xt.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kDouble || (bf16 && t == at::kBFloat16), "hf_sparse::", op, ": ",
                    name, bf16 ? " must be float32, float64 or bfloat16, got " : " must be float32 or float64, got ",
                    t);
}

// A bfloat16 dense operand widened to a float32 copy (exact), converted once so the kernels' inner loops gather
// float32 rows: each row of it is read by many nonzeros, so widening at every use would repeat the work.
inline at::Tensor widened(const at::Tensor& t, const char* op, const char* name) {
  return allocate(op, name, [&] { return t.to(at::kFloat).contiguous(); });
}

// Calls run(x, y, values) with typed pointers for the call's dtypes: bfloat16 (xt widened to a float32 copy once,
// values and output bf16; nothing to do when the result is empty), or float32 / float64 with values of that type,
// or int8 codes when `quant`.
template <typename F>
inline void run_typed(const at::Tensor& xt, at::Tensor& yt, const at::Tensor& values, bool quant, const char* op,
                      F&& run) {
  if (xt.scalar_type() == at::kBFloat16) {
    if (yt.numel() > 0) {  // rows and N both non-zero (cols may be 0: the kernels then write zeros)
      const at::Tensor xf = widened(xt, op, "float32 copy of xt");
      run(xf.data_ptr<float>(), yt.data_ptr<bf16>(), values.data_ptr<bf16>());
    }
    return;
  }
  AT_DISPATCH_FLOATING_TYPES(xt.scalar_type(), "run_typed", [&] {
    const scalar_t* x = xt.data_ptr<scalar_t>();
    scalar_t* y = yt.data_ptr<scalar_t>();
    if (quant)
      run(x, y, values.data_ptr<int8_t>());
    else
      run(x, y, values.data_ptr<scalar_t>());
  });
}

// ptr (n + 1 entries, the caller checked the length) starts at 0, ends at nnz and never decreases: then every
// [ptr[r], ptr[r + 1]) lies inside [0, nnz).
inline void check_pointers(const int32_t* ptr, int64_t n, int64_t nnz, const char* op, const char* name) {
  TORCH_CHECK_VALUE(n >= 0, "hf_sparse::", op, ": ", name, " needs a non-negative count, got ", n);
  TORCH_CHECK_VALUE(ptr[0] == 0 && ptr[n] == nnz, "hf_sparse::", op, ": ", name, " must start at 0 and end at ",
                    nnz, ", got ", ptr[0], " and ", ptr[n]);
  for (int64_t r = 0; r < n; ++r) {
    TORCH_CHECK_VALUE(ptr[r] <= ptr[r + 1], "hf_sparse::", op, ": ", name, " is not monotone at ", r);
  }
}

}  // namespace hf_sparse_cpu
