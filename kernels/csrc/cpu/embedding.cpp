// Lookups and bag reductions in a row-wise quantised embedding table (the `qrow` format, FBGEMM's row-wise layout
// with the scale and bias in their own arrays): row r holds `bits`-bit unsigned codes c (uint8, 4- and 2-bit codes
// packed low bits first) and W[r, j] = c * scales[r] + biases[r] with float16 scales and biases.
//
// A lookup reads one row of codes and two float16 numbers and writes float32: the table is never dequantised as a
// whole. Random lookups in a table larger than the caches wait on DRAM, not on arithmetic, so the loops prefetch the
// rows (codes, scale and bias) of the lookups `kAhead` positions ahead; the dequantisation itself is one FMA per
// eight columns (AVX2).
//
// What bounds a cold lookup is the number of random cache lines (and pages) it touches, not its bytes: here three
// (codes, scale, bias, each in its own array), against four adjacent lines on one page for a float32 row of 64 (which
// DRAM serves almost as fast as one). Measured in a standalone loop (4,096 lookups, 1M x 64, one Zen 2 core, cold):
// this layout 240 us, a float32 row copy 211-240 us, codes with scale and bias inline in the row (FBGEMM's layout,
// one line) 177-216 us; with 2 MB pages, 155 us against 160 us float32.
//
// The ops are inference-only (no autograd formula): the Python wrappers send anything that needs a gradient to the
// pure-PyTorch reference.
#include <torch/library.h>

#include <c10/util/Half.h>

#include <cstring>
#include <optional>

#include "simd.h"

namespace {

using hf_sparse_cpu::BadIndex;

// Lookups ahead whose rows are prefetched. Each lookup misses on up to three lines (codes, scale, bias) on three
// pages; 8 lookups ahead keeps about as many misses in flight as one Zen 2 core can track. Measured (4,096 random
// lookups in a 1M x 64 int4 table, cold): no prefetch 420 us, 4 to 32 ahead all 200-245 us (within the noise of a
// shared machine), 8 the best hot.
constexpr int64_t kAhead = 8;

struct Table {
  const uint8_t* values;
  const c10::Half* scales;
  const c10::Half* biases;
  int64_t rows;
  int64_t cols;
  int64_t row_bytes;
};

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

// Starts loading row r's codes (each of its cache lines once) and its scale and bias. r is checked first: no pointer
// is formed outside the table.
inline void prefetch_row(const Table& t, int64_t r) {
  if (static_cast<uint64_t>(r) >= static_cast<uint64_t>(t.rows)) return;
  const uint8_t* row = t.values + r * t.row_bytes;
  int64_t k = 0;
  for (; k < t.row_bytes; k += 64) prefetch_line(row + k);
  const uint8_t* last = row + t.row_bytes - 1;  // a row that straddles a line boundary ends on one more line
  if ((reinterpret_cast<uintptr_t>(last) >> 6) != (reinterpret_cast<uintptr_t>(row + k - 64) >> 6)) {
    prefetch_line(last);
  }
  prefetch_line(t.scales + r);
  prefetch_line(t.biases + r);
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
    row_axpb<BITS, false>(t.values + r * t.row_bytes, static_cast<float>(t.scales[r]), static_cast<float>(t.biases[r]),
                          o, t.cols);
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
      const float a = w * static_cast<float>(t.scales[r]);
      const float bias = w * static_cast<float>(t.biases[r]);
      const uint8_t* row = t.values + r * t.row_bytes;
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

// The table's tensors, made contiguous (a no-op for a validated qrow format) and kept alive for the raw pointers.
struct Checked {
  at::Tensor values, scales, biases;
  Table table;
};

Checked check_table(const at::Tensor& values, const at::Tensor& scales, const at::Tensor& biases, int64_t bits,
                    int64_t cols, const char* op) {
  TORCH_CHECK_VALUE(bits == 8 || bits == 4 || bits == 2, "hf_sparse::", op, ": bits must be 8, 4 or 2, got ", bits);
  TORCH_CHECK_VALUE(cols > 0 && cols % (8 / bits) == 0, "hf_sparse::", op, ": cols must be a positive multiple of ",
                    8 / bits, " for ", bits, "-bit codes, got ", cols);
  TORCH_CHECK_VALUE(values.scalar_type() == at::kByte && values.dim() == 2 && values.size(1) == cols * bits / 8,
                    "hf_sparse::", op, ": values must be uint8 (rows, ", cols * bits / 8, ") for ", cols, " ", bits,
                    "-bit codes per row, got ", values.scalar_type(), " ", values.sizes());
  const int64_t rows = values.size(0);
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kHalf && scales.dim() == 1 && scales.size(0) == rows, "hf_sparse::",
                    op, ": scales must be float16 (", rows, ",), got ", scales.scalar_type(), " ", scales.sizes());
  TORCH_CHECK_VALUE(biases.scalar_type() == at::kHalf && biases.dim() == 1 && biases.size(0) == rows, "hf_sparse::",
                    op, ": biases must be float16 (", rows, ",), got ", biases.scalar_type(), " ", biases.sizes());
  Checked c{values.contiguous(), scales.contiguous(), biases.contiguous(), {}};
  c.table = Table{c.values.data_ptr<uint8_t>(), c.scales.data_ptr<c10::Half>(), c.biases.data_ptr<c10::Half>(), rows,
                  cols, cols * bits / 8};
  return c;
}

void check_int_vector(const at::Tensor& t, const char* op, const char* name) {
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

at::Tensor qrow_lookup_cpu(const at::Tensor& values, const at::Tensor& scales, const at::Tensor& biases, int64_t bits,
                           int64_t cols, const at::Tensor& indices) {
  const Checked checked = check_table(values, scales, biases, bits, cols, "qrow_lookup");
  const Table& t = checked.table;
  check_int_vector(indices, "qrow_lookup", "indices");
  auto idx = indices.contiguous();
  const int64_t n = idx.size(0);
  auto out = at::empty({n, cols}, values.options().dtype(at::kFloat));
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

at::Tensor qrow_embedding_bag_cpu(const at::Tensor& values, const at::Tensor& scales, const at::Tensor& biases,
                                  int64_t bits, int64_t cols, const at::Tensor& indices, const at::Tensor& offsets,
                                  int64_t mode, const std::optional<at::Tensor>& per_sample_weights,
                                  bool include_last_offset) {
  const char* op = "qrow_embedding_bag";
  const Checked checked = check_table(values, scales, biases, bits, cols, op);
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
    psw = per_sample_weights->contiguous();
    TORCH_CHECK_VALUE(psw.scalar_type() == at::kFloat && psw.dim() == 1 && psw.size(0) == n, "hf_sparse::", op,
                      ": per_sample_weights must be float32 (", n, ",), one per index, got ", psw.scalar_type(), " ",
                      psw.sizes());
  }
  auto out = at::empty({bags, cols}, values.options().dtype(at::kFloat));
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

TORCH_LIBRARY_IMPL(hf_sparse, CPU, m) {
  m.impl("qrow_lookup", &qrow_lookup_cpu);
  m.impl("qrow_embedding_bag", &qrow_embedding_bag_cpu);
}
