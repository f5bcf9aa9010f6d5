// Lookups and bag reductions in a row-wise quantised embedding table (the `qrow` format, FBGEMM's row-wise layout):
// row r of `values` (uint8, rows x (cols * bits / 8 + 4)) holds `bits`-bit unsigned codes c (4- and 2-bit codes
// packed low bits first), then its float16 scale and float16 bias (little-endian), and W[r, j] = c * scale + bias.
//
// A lookup reads one row (codes, scale and bias together) and writes float32: the table is never dequantised as a
// whole. Random lookups in a table larger than the caches wait on DRAM, not on arithmetic, so the loops prefetch the
// rows of the lookups `kAhead` positions ahead; the dequantisation itself is one FMA per eight columns (AVX2), and
// the scale and bias are converted together by one F16C instruction where the build has it.
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

// The unsigned code of column j of a row (the scalar path: tails and builds without AVX2).
template <int BITS>
inline float code_at(const uint8_t* row, int64_t j) {
  if constexpr (BITS == 8) {
    return static_cast<float>(row[j]);
  } else {
    constexpr int per = 8 / BITS;
    return static_cast<float>((row[j / per] >> (BITS * (j % per))) & ((1 << BITS) - 1));
  }
}

#ifdef HF_SPARSE_AVX2
// Codes of columns j .. j+7 (j a multiple of 8) as eight floats. For 4 and 2 bits the eight codes are one 32- or
// 16-bit little-endian word, code i in bits [i * BITS, (i + 1) * BITS): broadcast it, shift each lane by its own
// amount and mask.
template <int BITS>
inline __m256 codes8(const uint8_t* row, int64_t j);

template <>
inline __m256 codes8<8>(const uint8_t* row, int64_t j) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + j));
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

template <>
inline __m256 codes8<4>(const uint8_t* row, int64_t j) {
  int32_t w;
  std::memcpy(&w, row + j / 2, sizeof(w));
  const __m256i shifted = _mm256_srlv_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
  return _mm256_cvtepi32_ps(_mm256_and_si256(shifted, _mm256_set1_epi32(15)));
}

template <>
inline __m256 codes8<2>(const uint8_t* row, int64_t j) {
  uint16_t w;
  std::memcpy(&w, row + j / 4, sizeof(w));
  const __m256i shifted =
      _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(w)), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
  return _mm256_cvtepi32_ps(_mm256_and_si256(shifted, _mm256_set1_epi32(3)));
}
#endif

// ACC=false: out[j] = c_j * a + b (the first row of a bag, or a plain lookup). ACC=true: out[j] += c_j * a (later
// rows of a bag; their biases are summed apart and added once). With a = scale (a float16 value) and c < 256, c * a
// is exact in float32, so a plain lookup rounds once, exactly like the reference `c * scale + bias`.
template <int BITS, bool ACC>
inline void row_axpb(const uint8_t* row, float a, float b, float* out, int64_t cols) {
  int64_t j = 0;
#ifdef HF_SPARSE_AVX2
  const __m256 va = _mm256_set1_ps(a);
  const __m256 vb = _mm256_set1_ps(b);
  for (; j + 8 <= cols; j += 8) {
    const __m256 base = ACC ? _mm256_loadu_ps(out + j) : vb;
    _mm256_storeu_ps(out + j, _mm256_fmadd_ps(codes8<BITS>(row, j), va, base));
  }
#endif
  for (; j < cols; ++j) out[j] = code_at<BITS>(row, j) * a + (ACC ? out[j] : b);
}

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

// Starts loading row r: codes, scale and bias, each of its cache lines once. r is checked first: no pointer is formed
// outside the table.
inline void prefetch_row(const Table& t, int64_t r) {
  if (static_cast<uint64_t>(r) >= static_cast<uint64_t>(t.rows)) return;
  const uint8_t* row = t.row(r);
  int64_t k = 0;
  for (; k < t.row_bytes; k += 64) prefetch_line(row + k);
  const uint8_t* last = row + t.row_bytes - 1;  // a row that straddles a line boundary ends on one more line
  if ((reinterpret_cast<uintptr_t>(last) >> 6) != (reinterpret_cast<uintptr_t>(row + k - 64) >> 6)) {
    prefetch_line(last);
  }
}

// out (n, cols) = the rows idx[p0:p1) dequantised.
template <int BITS, typename I>
void lookup_range(const Table& t, const I* idx, int64_t p0, int64_t p1, float* out, BadIndex& bad) {
  for (int64_t p = p0; p < p1; ++p) {
    if (p + kAhead < p1) prefetch_row(t, static_cast<int64_t>(idx[p + kAhead]));
    const int64_t r = static_cast<int64_t>(idx[p]);
    float* o = out + p * t.cols;
    if (HF_UNLIKELY(static_cast<uint64_t>(r) >= static_cast<uint64_t>(t.rows))) {
      bad.note(p);
      std::memset(o, 0, sizeof(float) * t.cols);
      continue;
    }
    const uint8_t* row = t.row(r);
    const ScaleBias sb = scale_bias(row + t.code_bytes);
    row_axpb<BITS, false>(row, sb.scale, sb.bias, o, t.cols);
  }
}

// Bag b is idx[start(b) : stop(b)); out[b] = sum (or mean) over it of w_p * row(idx[p]).
template <int BITS, typename I, typename O>
void bags_range(const Table& t, const I* idx, const O* off, int64_t n_off, int64_t n, int64_t b0, int64_t b1,
                bool mean, const float* psw, float* out, BadIndex& bad) {
  auto start = [&](int64_t b) { return static_cast<int64_t>(off[b]); };
  auto stop = [&](int64_t b) { return b + 1 < n_off ? static_cast<int64_t>(off[b + 1]) : n; };
  const int64_t p1 = b1 > b0 ? stop(b1 - 1) : 0;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = start(b), e = stop(b);
    float* o = out + b * t.cols;
    bool first = true;
    float bias_rest = 0.f;  // weighted biases of every row but the first
    for (int64_t p = s; p < e; ++p) {
      if (p + kAhead < p1) prefetch_row(t, static_cast<int64_t>(idx[p + kAhead]));
      const int64_t r = static_cast<int64_t>(idx[p]);
      if (HF_UNLIKELY(static_cast<uint64_t>(r) >= static_cast<uint64_t>(t.rows))) {
        bad.note(p);
        continue;
      }
      const float w = psw ? psw[p] : 1.f;
      const uint8_t* row = t.row(r);
      const ScaleBias sb = scale_bias(row + t.code_bytes);
      const float a = w * sb.scale;
      const float bias = w * sb.bias;
      if (first) {
        row_axpb<BITS, false>(row, a, bias, o, t.cols);
        first = false;
      } else {
        row_axpb<BITS, true>(row, a, 0.f, o, t.cols);
        bias_rest += bias;
      }
    }
    if (first) {  // an empty bag (or one whose every index was bad: the call raises afterwards)
      std::memset(o, 0, sizeof(float) * t.cols);
      continue;
    }
    const float scale = mean ? 1.f / static_cast<float>(e - s) : 1.f;
    if (e - s > 1) {
      for (int64_t j = 0; j < t.cols; ++j) o[j] = (o[j] + bias_rest) * scale;
    }
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
        lookup_range<decltype(b)::value>(t, ip, p0, p1, op, bad);
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
            lookup_range<decltype(b)::value>(t, ip, b0, b1, outp, bad);
          } else {
            bags_range<decltype(b)::value>(t, ip, offp, n_off, n, b0, b1, mode == 1, pw, outp, bad);
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
