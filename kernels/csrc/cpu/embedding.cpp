// Lookups and bag reductions in a row-wise quantised embedding table (the `qrow` format, FBGEMM's row-wise layout):
// row r of `values` (uint8, rows x (cols * bits / 8 + 4)) holds `bits`-bit unsigned codes c (4- and 2-bit codes
// packed low bits first), then its float16 scale and float16 bias (little-endian), and W[r, j] = c * scale + bias.
//
// A lookup reads one row (codes, scale and bias together) and writes float32: the table is never dequantised as a
// whole. Random lookups in a table larger than the caches wait on DRAM, not on arithmetic, so the loops prefetch the
// rows of the lookups `kAhead` positions ahead; the dequantisation itself is one FMA per 16 columns (AVX-512; 8 with
// AVX2) into accumulators that stay in registers across a bag's rows, and the scale and bias are converted together by
// one F16C instruction where the build has it.
//
// What bounds a cold lookup is the number of random cache lines and pages it touches, not its bytes. The scale and
// bias sit in the row for that reason: one random line per lookup (two adjacent ones, on one page, when a row
// straddles a line boundary: half the 36-byte int4 rows of 64 columns), where separate scale and bias arrays cost
// three lines on three pages, against four adjacent lines on one page for a float32 row of 64 (which DRAM serves
// almost as fast as one). Measured in a standalone loop before this layout (4,096 lookups, 1M x 64, one Zen 2 core,
// cold): separate arrays 240 us, a float32 row copy 211-240 us, inline 177-216 us; with 2 MB pages, 155 us against
// 160 us float32.
//
// Rows are not padded. Padding them to a power of two (so that none straddles a line) was measured slower, besides
// costing memory (4,096 lookups as bags of one, 1M x 64, one core, 40 rounds interleaved, medians): int4 36-byte rows
// 392 us cold / 101 us hot against 64-byte rows 421 / 110 us; int2 20 against 32 bytes 312 / 99 against 345 / 100
// us; int8 68 against 128 bytes 485 / 67 against 456 / 74 us (per-round ratio 0.94 in favour of 68 bytes, cold and
// hot). A 64-byte int4 row would also be only 4x smaller than float32, not 7.1x.
//
// The ops are inference-only (no autograd formula): the Python wrappers send anything that needs a gradient to the
// pure-PyTorch reference.
#include "../namespace.h"

#include <c10/util/Half.h>

#include <cstring>
#include <optional>

#include "simd.h"

#ifdef __F16C__
#include <immintrin.h>  // _mm_cvtph_ps (simd.h includes it only for AVX2 + FMA builds)
#endif

namespace {

using hf_sparse_cpu::BadIndex;

// Lookups ahead whose rows are prefetched. Measured with the earlier layout (three lines per lookup on three pages;
// 4,096 random lookups in a 1M x 64 int4 table, cold): no prefetch 420 us, 4 to 32 ahead all 200-245 us (within the
// noise of a shared machine), 8 the best hot. Again with rows inline (one or two adjacent lines per lookup, the
// benchmark's 128 MB flush between calls, load average 3-4 on 2 cores): 4, 8 and 16 ahead 330-400 us, within the
// noise, 32 ahead 415-445 us; the float32 baseline 330-500 us in the same runs. A cold lookup still costs 70-100 ns
// whatever the distance, as a float32 one of four lines does: what it waits on is its random page (every lookup is
// on a 4 KB page of its own, in a VM), not its lines; 2 MB pages (THP_MEM_ALLOC_ENABLE=1) took 10-20% off both.
constexpr int64_t kAhead = 8;

// Bytes after the codes of each row: the float16 scale, then the float16 bias.
constexpr int64_t kTail = 4;

struct Table {
  const uint8_t* values;
  int64_t rows;
  int64_t cols;
  int64_t code_bytes;  // cols * bits / 8: the scale starts here
  int64_t row_bytes;   // code_bytes + kTail: the bytes a lookup reads
  int64_t stride;      // bytes from one row to the next (row_bytes for a contiguous table; more for a view)
  const uint8_t* row(int64_t r) const { return values + r * stride; }
};

// A row's scale and bias (float16, little-endian, at `tail`) as floats.
struct ScaleBias {
  float scale, bias;
};

// F16C pays: without it each float16 goes through c10's bit-twiddling conversion, and hot lookups (rows in cache)
// measured 0.44-0.80x float32 F.embedding_bag against 0.74-0.95x with it (4,096 lookups, 1M x 64, bits 8/4/2, bags
// of 1 and 8, two runs each).
inline ScaleBias scale_bias(const uint8_t* tail) {
#ifdef __F16C__
  // Both halves in one conversion: the 4 bytes are lanes 0 (scale) and 1 (bias) of a float16 vector. (x86 is
  // little-endian, as the layout is.)
  int32_t w;
  std::memcpy(&w, tail, sizeof(w));
  const __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128(w));
  return {_mm_cvtss_f32(f), _mm_cvtss_f32(_mm_movehdup_ps(f))};
#else
  // Bytes assembled low first, so the portable build reads the layout right on any host byte order.
  const uint16_t s = static_cast<uint16_t>(tail[0] | (tail[1] << 8));
  const uint16_t b = static_cast<uint16_t>(tail[2] | (tail[3] << 8));
  return {static_cast<float>(c10::Half(s, c10::Half::from_bits())),
          static_cast<float>(c10::Half(b, c10::Half::from_bits()))};
#endif
}

// The unsigned code of column j of a row (the one-lane path: builds without AVX2).
template <int BITS>
inline float code_at(const uint8_t* row, int64_t j) {
  if constexpr (BITS == 8) {
    return static_cast<float>(row[j]);
  } else {
    constexpr int per = 8 / BITS;
    return static_cast<float>((row[j / per] >> (BITS * (j % per))) & ((1 << BITS) - 1));
  }
}

// The vector layer of the kernels: `W` float lanes, the codes of columns j .. j+W-1 of a row as floats, and a mask
// `M` of the columns that exist (all of them but in the last vector of a row whose width is not a multiple of W).
// Codes are read through the mask too: the last columns of the last row end 4 bytes before the table does, so a
// full-width load there could read past it.
#if defined(__AVX512F__) && defined(__AVX512BW__)
// 16 lanes. The codes of 16 columns are 16, 8 or 4 bytes: one masked load (no fault past the mask), widened to 16
// int32 lanes and converted. 4 bits: each byte doubled (unpacklo), widened, lane i shifted right by 4 * (i % 2);
// 2 bits: the 4 bytes broadcast as one int32, lane i shifted right by 2 * i.
struct Lanes {
  static constexpr int W = 16;
  using F = __m512;
  struct M {
    __mmask16 cols, bytes;
  };
  template <int BITS>
  static M mask(int lanes) {  // lanes in [1, 16], a multiple of the codes per byte
    const int nb = lanes * BITS / 8;
    return {static_cast<__mmask16>((1u << lanes) - 1), static_cast<__mmask16>((1u << nb) - 1)};
  }
  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float v) { return _mm512_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static void store(float* p, F v, M m) { _mm512_mask_storeu_ps(p, m.cols, v); }
  template <int BITS>
  static F codes(const uint8_t* row, int64_t j, M m) {
    __m512i c;
    if constexpr (BITS == 8) {
      c = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m.bytes, row + j));
    } else if constexpr (BITS == 4) {
      const __m128i x = _mm_maskz_loadu_epi8(m.bytes, row + j / 2);
      const __m512i d = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(x, x));
      const __m512i sh = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
      c = _mm512_and_si512(_mm512_srlv_epi32(d, sh), _mm512_set1_epi32(15));
    } else {
      const __m512i d = _mm512_broadcastd_epi32(_mm_maskz_loadu_epi8(m.bytes, row + j / 4));
      const __m512i sh = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
      c = _mm512_and_si512(_mm512_srlv_epi32(d, sh), _mm512_set1_epi32(3));
    }
    return _mm512_cvtepi32_ps(c);
  }
};
#elif defined(HF_SPARSE_AVX2)
// 8 lanes. The codes of 8 columns are one 8-, 4- or 2-byte word (4 and 2 bits: broadcast, each lane shifted by its
// own amount, masked); a partial last vector copies its bytes into a zeroed word first (AVX2 has no masked byte load).
struct Lanes {
  static constexpr int W = 8;
  using F = __m256;
  struct M {
    int lanes;
  };
  template <int BITS>
  static M mask(int lanes) {
    return {lanes};
  }
  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float v) { return _mm256_set1_ps(v); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static void store(float* p, F v, M m) {
    if (m.lanes == W) {
      _mm256_storeu_ps(p, v);
    } else {
      _mm256_maskstore_ps(p, hf_sparse_cpu::lane_mask32(m.lanes), v);
    }
  }
  template <int BITS>
  static F codes(const uint8_t* row, int64_t j, M m) {
    uint64_t w = 0;
    std::memcpy(&w, row + j * BITS / 8, static_cast<size_t>(m.lanes * BITS / 8));
    __m256i c;
    if constexpr (BITS == 8) {
      c = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<int64_t>(w)));
    } else if constexpr (BITS == 4) {
      const __m256i sh = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
      c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(w)), sh), _mm256_set1_epi32(15));
    } else {
      const __m256i sh = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
      c = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(w)), sh), _mm256_set1_epi32(3));
    }
    return _mm256_cvtepi32_ps(c);
  }
};
#else
// One lane: plain C++.
struct Lanes {
  static constexpr int W = 1;
  using F = float;
  struct M {};
  template <int BITS>
  static M mask(int) {
    return {};
  }
  static F zero() { return 0.f; }
  static F set1(float v) { return v; }
  static F fma(F a, F b, F c) { return a * b + c; }
  static F add(F a, F b) { return a + b; }
  static F mul(F a, F b) { return a * b; }
  static void store(float* p, F v, M) { *p = v; }
  template <int BITS>
  static F codes(const uint8_t* row, int64_t j, M) {
    return code_at<BITS>(row, j);
  }
};
#endif

// One prefetch hint. Not __builtin_prefetch: in a helper that does nothing else, GCC 12's mod-ref analysis finds the
// helper `pure` (the builtin reads no memory it tracks) and deletes every call to it. Measured: the first build of
// this file held no prefetch instruction at all and ran 1.8x slower cold. An asm volatile cannot be deleted.
inline void prefetch_line(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

// Starts loading row r: each cache line of its codes, scale and bias. An id outside the table prefetches row 0
// instead (a select, not a branch): no pointer is formed outside the table, and the loop stays straight-line. The
// first and the last byte cover a row of up to 65 bytes whatever its alignment (the common widths); wider rows add
// the lines in between.
inline void prefetch_row(const Table& t, int64_t r) {
  r = static_cast<uint64_t>(r) < static_cast<uint64_t>(t.rows) ? r : 0;
  const uint8_t* row = t.row(r);
  prefetch_line(row);
  for (int64_t k = 64; k < t.row_bytes - 1; k += 64) prefetch_line(row + k);
  prefetch_line(row + t.row_bytes - 1);
}

#if defined(__GNUC__)
#define HF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define HF_ALWAYS_INLINE inline
#endif

// Columns [j0, j0 + NV * W) of one output row: the sum over p in [s, e) of w_p * row(idx[p]), times `post` (1, or
// 1 / bag size for a mean). The NV accumulators stay in registers across the bag's rows; each row adds
// c * (w * scale) with one FMA per vector, and the weighted biases are summed apart and added once at the end. With
// a = scale (a float16 value) and c < 256, c * a is exact in float32, so a bag of one rounds once, exactly like the
// reference `c * scale + bias`. `last` masks the columns of the last vector. Rows of lookups up to `pf_end` are
// prefetched kAhead positions ahead when `prefetch` (the first column chunk of a wide row; later chunks find the
// rows in cache).
template <int BITS, int NV, bool WEIGHTED, typename I>
HF_ALWAYS_INLINE void bag_chunk(const Table& t, const I* idx, int64_t s, int64_t e, int64_t pf_end, const float* psw, float post,
                      int64_t j0, typename Lanes::M full, typename Lanes::M last, bool prefetch, float* out,
                      BadIndex& bad) {
  using L = Lanes;
  typename L::F acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = L::zero();
  float bias = 0.f;
  for (int64_t p = s; p < e; ++p) {
    if (prefetch && p + kAhead < pf_end) prefetch_row(t, static_cast<int64_t>(idx[p + kAhead]));
    const int64_t r = static_cast<int64_t>(idx[p]);
    if (HF_UNLIKELY(static_cast<uint64_t>(r) >= static_cast<uint64_t>(t.rows))) {
      bad.note(p);
      continue;
    }
    const uint8_t* row = t.row(r);
    const ScaleBias sb = scale_bias(row + t.code_bytes);
    const float w = WEIGHTED ? psw[p] : 1.f;
    const typename L::F a = L::set1(w * sb.scale);
    bias += w * sb.bias;
    for (int v = 0; v < NV; ++v) {
      acc[v] = L::fma(L::template codes<BITS>(row, j0 + v * L::W, v == NV - 1 ? last : full), a, acc[v]);
    }
  }
  const typename L::F b = L::set1(bias), m = L::set1(post);
  for (int v = 0; v < NV; ++v) L::store(out + j0 + v * L::W, L::mul(L::add(acc[v], b), m), v == NV - 1 ? last : full);
}

// The widest chunk of columns a bag accumulates in registers at once (8 zmm: 128 columns with AVX-512).
constexpr int kMaxVecs = 8;

// Calls f(std::integral_constant<int, NV>) for NV = nv in [1, kMaxVecs].
template <typename F>
void dispatch_vecs(int64_t nv, F&& f) {
  switch (nv) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// out[b] for bags b in [b0, b1): bag b is idx[start(b) : stop(b)) (start/stop map a bag to its range of lookups).
// A row of up to kMaxVecs vectors is one chunk, with its vector count a template argument chosen once per call;
// wider rows go chunk by chunk, every bag's rows once per chunk.
template <int BITS, typename I, typename Start, typename Stop>
void bags_range(const Table& t, const I* idx, int64_t b0, int64_t b1, Start start, Stop stop, bool mean,
                const float* psw, float* out, BadIndex& bad) {
  using L = Lanes;
  if (b1 <= b0) return;
  const int64_t pf_end = stop(b1 - 1);
  const int64_t nvec = (t.cols + L::W - 1) / L::W;
  const typename L::M full = L::template mask<BITS>(L::W);
  const int rem = static_cast<int>(t.cols - (nvec - 1) * L::W);
  const typename L::M last = L::template mask<BITS>(rem);
  auto post = [&](int64_t n) { return mean && n > 1 ? 1.f / static_cast<float>(n) : 1.f; };
  if (nvec <= kMaxVecs) {
    dispatch_vecs(nvec, [&](auto nv) {
      constexpr int NV = decltype(nv)::value;
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t s = start(b), e = stop(b);
        float* o = out + b * t.cols;
        if (psw) {
          bag_chunk<BITS, NV, true>(t, idx, s, e, pf_end, psw, 1.f, 0, full, last, true, o, bad);
        } else {
          bag_chunk<BITS, NV, false>(t, idx, s, e, pf_end, psw, post(e - s), 0, full, last, true, o, bad);
        }
      }
    });
    return;
  }
  auto wide = [&](auto weighted) {
    constexpr bool WEIGHTED = decltype(weighted)::value;
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = start(b), e = stop(b);
      float* o = out + b * t.cols;
      int64_t j0 = 0;
      for (; (nvec - j0 / L::W) > kMaxVecs; j0 += kMaxVecs * L::W) {
        bag_chunk<BITS, kMaxVecs, WEIGHTED>(t, idx, s, e, pf_end, psw, post(e - s), j0, full, full, j0 == 0, o, bad);
      }
      dispatch_vecs(nvec - j0 / L::W, [&](auto nv) {
        bag_chunk<BITS, decltype(nv)::value, WEIGHTED>(t, idx, s, e, pf_end, psw, post(e - s), j0, full, last, false,
                                                       o, bad);
      });
    }
  };
  if (psw) {
    wide(std::true_type{});
  } else {
    wide(std::false_type{});
  }
}

template <typename F>
void dispatch_bits(int64_t bits, F&& f) {
  if (bits == 8) {
    f(std::integral_constant<int, 8>{});
  } else if (bits == 4) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 2>{});
  }
}

// Calls f(const int32_t*) or f(const int64_t*).
template <typename F>
void dispatch_int(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kInt) {
    f(t.data_ptr<int32_t>());
  } else {
    f(t.data_ptr<int64_t>());
  }
}

// The table's tensor, kept alive for the raw pointer. Rows need contiguous bytes, not contiguous rows: a view whose
// rows are further apart (a column slice of a wider tensor, a padded table) is read in place, without a copy of the
// whole table per call.
struct Checked {
  at::Tensor values;
  Table table;
};

Checked check_table(const at::Tensor& values, int64_t bits, int64_t cols, const char* op) {
  hf_sparse_cpu::check_cpu(op, {{"values", &values}});
  TORCH_CHECK_VALUE(bits == 8 || bits == 4 || bits == 2, "hf_sparse::", op, ": bits must be 8, 4 or 2, got ", bits);
  hf_sparse_cpu::check_size(cols, op, "cols");  // cols * bits / 8 must not overflow
  TORCH_CHECK_VALUE(cols > 0 && cols % (8 / bits) == 0, "hf_sparse::", op, ": cols must be a positive multiple of ",
                    8 / bits, " for ", bits, "-bit codes, got ", cols);
  const int64_t code_bytes = cols * bits / 8;
  TORCH_CHECK_VALUE(values.scalar_type() == at::kByte && values.dim() == 2 && values.size(1) == code_bytes + kTail,
                    "hf_sparse::", op, ": values must be uint8 (rows, ", code_bytes + kTail, "): ", code_bytes,
                    " bytes of ", bits, "-bit codes for ", cols, " columns, then a float16 scale and a float16 bias "
                    "per row; got ", values.scalar_type(), " ", values.sizes());
  Checked c{values.stride(1) == 1 ? values : values.contiguous(), {}};
  c.table = Table{c.values.data_ptr<uint8_t>(), values.size(0), cols, code_bytes, code_bytes + kTail,
                  c.values.stride(0)};
  return c;
}

void check_int_vector(const at::Tensor& t, const char* op, const char* name) {
  hf_sparse_cpu::check_cpu(op, {{name, &t}});
  TORCH_CHECK_VALUE(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, "hf_sparse::", op, ": ", name,
                    " must be int32 or int64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, "hf_sparse::", op, ": ", name, " must be 1-D, got shape ", t.sizes());
}

void raise_if_bad(const BadIndex& bad, const at::Tensor& idx, int64_t rows, const char* op) {
  const int64_t at = bad.get();
  if (at < 0) return;
  const int64_t r = idx.scalar_type() == at::kInt ? idx.data_ptr<int32_t>()[at] : idx.data_ptr<int64_t>()[at];
  TORCH_CHECK_INDEX(false, "hf_sparse::", op, ": indices[", at, "] = ", r, " is out of range [0, ", rows,
                    ") for a table of ", rows, " rows");
}

at::Tensor qrow_lookup_cpu(const at::Tensor& values, int64_t bits, int64_t cols, const at::Tensor& indices) {
  const Checked checked = check_table(values, bits, cols, "qrow_lookup");
  const Table& t = checked.table;
  check_int_vector(indices, "qrow_lookup", "indices");
  auto idx = indices.contiguous();
  const int64_t n = idx.size(0);
  auto out = hf_sparse_cpu::allocate("qrow_lookup", "(n, cols) output",
                                     [&] { return at::empty({n, cols}, values.options().dtype(at::kFloat)); });
  float* op = out.data_ptr<float>();
  BadIndex bad;
  dispatch_bits(bits, [&](auto b) {
    dispatch_int(idx, [&](const auto* ip) {
      at::parallel_for(0, n, 256, [&](int64_t p0, int64_t p1) {
        auto start = [](int64_t q) { return q; };
        auto stop = [](int64_t q) { return q + 1; };
        bags_range<decltype(b)::value>(t, ip, p0, p1, start, stop, false, nullptr, op, bad);
      });
    });
  });
  raise_if_bad(bad, idx, t.rows, "qrow_lookup");
  return out;
}

// Offsets give each bag's start; bag b ends where bag b + 1 starts, the last bag at the end of the indices (or, with
// include_last_offset, at the last offset, which must then be the number of indices). Checked up front: O(bags).
// Returns true when every bag holds exactly one index (offsets 0, 1, 2, ...: a plain lookup).
template <typename O>
bool check_offsets(const O* off, int64_t n_off, int64_t n, bool include_last_offset) {
  if (n_off == 0) return false;
  TORCH_CHECK_VALUE(off[0] == 0, "hf_sparse::qrow_embedding_bag: offsets[0] must be 0 (the first bag starts at the "
                    "first index), got ", static_cast<int64_t>(off[0]));
  bool ones = true;
  for (int64_t b = 1; b < n_off; ++b) {
    TORCH_CHECK_VALUE(off[b] >= off[b - 1], "hf_sparse::qrow_embedding_bag: offsets must be non-decreasing, got "
                      "offsets[", b - 1, "] = ", static_cast<int64_t>(off[b - 1]), " > offsets[", b, "] = ",
                      static_cast<int64_t>(off[b]));
    ones = ones && off[b] - off[b - 1] == 1;
  }
  TORCH_CHECK_VALUE(static_cast<int64_t>(off[n_off - 1]) <= n, "hf_sparse::qrow_embedding_bag: offsets[", n_off - 1,
                    "] = ", static_cast<int64_t>(off[n_off - 1]), " is past the end of the ", n, " indices");
  TORCH_CHECK_VALUE(!include_last_offset || static_cast<int64_t>(off[n_off - 1]) == n,
                    "hf_sparse::qrow_embedding_bag: with include_last_offset the last offset must equal the number "
                    "of indices (", n, "), got ", static_cast<int64_t>(off[n_off - 1]));
  const int64_t bags = include_last_offset ? n_off - 1 : n_off;
  return ones && bags == n;
}

at::Tensor qrow_embedding_bag_cpu(const at::Tensor& values, int64_t bits, int64_t cols, const at::Tensor& indices,
                                  const at::Tensor& offsets, int64_t mode,
                                  const std::optional<at::Tensor>& per_sample_weights, bool include_last_offset) {
  const char* op = "qrow_embedding_bag";
  const Checked checked = check_table(values, bits, cols, op);
  const Table& t = checked.table;
  check_int_vector(indices, op, "indices");
  check_int_vector(offsets, op, "offsets");
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "hf_sparse::", op, ": mode must be 0 (sum) or 1 (mean), got ", mode);
  TORCH_CHECK_VALUE(!include_last_offset || offsets.size(0) >= 1, "hf_sparse::", op,
                    ": include_last_offset needs at least one offset (the end of the last bag)");
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  const int64_t n = idx.size(0), n_off = off.size(0);
  const int64_t bags = include_last_offset ? n_off - 1 : n_off;
  const bool weighted = per_sample_weights.has_value() && per_sample_weights->defined();
  at::Tensor psw;
  if (weighted) {
    TORCH_CHECK_VALUE(mode == 0, "hf_sparse::", op, ": per_sample_weights are only supported with mode sum (0)");
    hf_sparse_cpu::check_cpu(op, {{"per_sample_weights", &*per_sample_weights}});
    psw = per_sample_weights->contiguous();
    TORCH_CHECK_VALUE(psw.scalar_type() == at::kFloat && psw.dim() == 1 && psw.size(0) == n, "hf_sparse::", op,
                      ": per_sample_weights must be float32 (", n, ",), one per index, got ", psw.scalar_type(), " ",
                      psw.sizes());
  }
  auto out = hf_sparse_cpu::allocate(op, "(bags, cols) output",
                                     [&] { return at::empty({bags, cols}, values.options().dtype(at::kFloat)); });
  float* outp = out.data_ptr<float>();
  const float* pw = weighted ? psw.data_ptr<float>() : nullptr;
  BadIndex bad;
  dispatch_int(off, [&](const auto* offp) {
    // Bags of one without weights are plain lookups (the sum and the mean of one row are the row): the lookup loop
    // skips the per-bag bookkeeping, measured 10-15% faster.
    const bool plain = check_offsets(offp, n_off, n, include_last_offset) && !weighted;
    // Enough bags per task that a task holds a few hundred lookups (an OpenMP fork costs a few microseconds).
    const int64_t grain = std::max<int64_t>(1, 256 * bags / std::max<int64_t>(n, 1));
    dispatch_bits(bits, [&](auto b) {
      dispatch_int(idx, [&](const auto* ip) {
        at::parallel_for(0, bags, grain, [&](int64_t b0, int64_t b1) {
          if (plain) {
            auto start = [](int64_t q) { return q; };
            auto stop = [](int64_t q) { return q + 1; };
            bags_range<decltype(b)::value>(t, ip, b0, b1, start, stop, false, nullptr, outp, bad);
          } else {
            auto start = [&](int64_t q) { return static_cast<int64_t>(offp[q]); };
            auto stop = [&](int64_t q) { return q + 1 < n_off ? static_cast<int64_t>(offp[q + 1]) : n; };
            bags_range<decltype(b)::value>(t, ip, b0, b1, start, stop, mode == 1, pw, outp, bad);
          }
        });
      });
    });
  });
  raise_if_bad(bad, idx, t.rows, op);
  return out;
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) {
  m.impl("qrow_lookup", &qrow_lookup_cpu);
  m.impl("qrow_embedding_bag", &qrow_embedding_bag_cpu);
}
