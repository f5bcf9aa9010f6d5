// Dequantisation of a qdense weight into float32, in one pass: codes (int8, or 4- / 2-bit packed into uint8, low
// bits first) minus the zero point, times the scale of their group. A dense quantised layer runs as this plus the
// float GEMM: the integer weight is what is stored and moved, the arithmetic stays in float (AVX2 has no fast int8
// dot product without VNNI).
#include "../namespace.h"

#include <array>

#include "simd.h"

namespace {

// The signed value of each 4-bit and 2-bit field of a byte.
struct Tables {
  std::array<std::array<float, 2>, 256> nib;
  std::array<std::array<float, 4>, 256> crumb;
  Tables() {
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 2; ++i) {
        const int v = (b >> (4 * i)) & 15;
        nib[b][i] = static_cast<float>(v >= 8 ? v - 16 : v);
      }
      for (int i = 0; i < 4; ++i) {
        const int v = (b >> (2 * i)) & 3;
        crumb[b][i] = static_cast<float>(v >= 2 ? v - 4 : v);
      }
    }
  }
};
const Tables& tables() {
  static const Tables t;
  return t;
}

// The signed value of code j of a packed 4- or 2-bit row.
inline float field(const Tables& t, int64_t bits, const uint8_t* codes, int64_t j) {
  return bits == 4 ? t.nib[codes[j / 2]][j % 2] : t.crumb[codes[j / 4]][j % 4];
}

at::Tensor dequantize_cpu(const at::Tensor& values, const at::Tensor& scales, const at::Tensor& zero_points,
                          int64_t bits, int64_t rows, int64_t cols) {
  const char* op_name = "dequantize";
  hf_sparse_cpu::check_cpu(op_name, {{"values", &values}, {"scales", &scales}, {"zero_points", &zero_points}});
  TORCH_CHECK_VALUE(bits == 8 || bits == 4 || bits == 2, "hf_sparse::dequantize: bits must be 8, 4 or 2, got ", bits);
  // The bound keeps cols * bits far from int64 overflow; no real weight comes near it.
  hf_sparse_cpu::check_size(rows, op_name, "rows");
  hf_sparse_cpu::check_size(cols, op_name, "cols");
  TORCH_CHECK_VALUE(cols % (8 / bits) == 0, "hf_sparse::dequantize: cols=", cols, " is not a multiple of ", 8 / bits,
                    ": ", bits, "-bit codes pack ", 8 / bits, " per byte and a row must fill whole bytes");
  const auto want = bits == 8 ? at::kChar : at::kByte;
  TORCH_CHECK_VALUE(values.scalar_type() == want && values.dim() == 2 && values.size(0) == rows &&
                        values.size(1) == cols * bits / 8,
                    "hf_sparse::dequantize: values must be ", want, " (", rows, ", ", cols * bits / 8, "), got ",
                    values.scalar_type(), " ", values.sizes());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 2 &&
                        (scales.size(0) == rows || scales.size(0) == 1) && scales.size(1) >= 1 &&
                        cols % scales.size(1) == 0,
                    "hf_sparse::dequantize: scales must be float32 (rows or 1, groups) with groups dividing ", cols,
                    ", got ", scales.scalar_type(), " ", scales.sizes());
  const bool has_zero = zero_points.numel() > 0;
  TORCH_CHECK_VALUE(!has_zero || (zero_points.scalar_type() == at::kChar && zero_points.sizes() == scales.sizes()),
                    "hf_sparse::dequantize: zero_points must be int8 shaped like scales, got ",
                    zero_points.scalar_type(), " ", zero_points.sizes());
  auto v = values.contiguous();
  auto s = scales.contiguous();
  auto z = has_zero ? zero_points.contiguous() : zero_points;
  auto out = hf_sparse_cpu::allocate(op_name, "(rows, cols) output", [&] { return at::empty({rows, cols}, scales.options()); });
  // An empty weight: nothing to write. (Returning here also keeps the loops below from walking rows x groups of an
  // empty output: with cols = 0, neither `rows` nor the group count is bounded by any element stored.)
  if (out.numel() == 0) return out;
  const int64_t groups = s.size(1), width = groups ? cols / groups : cols;
  const bool per_row = s.size(0) == rows;
  const uint8_t* vp = reinterpret_cast<const uint8_t*>(v.data_ptr());
  const float* sp = s.data_ptr<float>();
  const int8_t* zp = has_zero ? z.data_ptr<int8_t>() : nullptr;
  float* op = out.data_ptr<float>();
  const Tables& t = tables();
  const int64_t row_bytes = cols * bits / 8;
  at::parallel_for(0, rows, 16, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const uint8_t* codes = vp + r * row_bytes;
      const int64_t srow = per_row ? r : 0;
      float* dst = op + r * cols;
      for (int64_t g = 0; g < groups; ++g) {
        const float scale = sp[srow * groups + g];
        const float zero = zp ? static_cast<float>(zp[srow * groups + g]) : 0.f;
        const int64_t j0 = g * width, j1 = j0 + width;
        if (bits == 8) {
          const int8_t* c = reinterpret_cast<const int8_t*>(codes);
          int64_t j = j0;
#ifdef HF_SPARSE_AVX2
          const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(zero);
          for (; j + 8 <= j1; j += 8) {
            const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + j));
            const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
            _mm256_storeu_ps(dst + j, _mm256_mul_ps(_mm256_sub_ps(f, vz), vs));
          }
#endif
          for (; j < j1; ++j) dst[j] = (static_cast<float>(c[j]) - zero) * scale;
        } else {
          // Packed codes run along the whole row, low bits first; a group may start and end inside a byte (any
          // width that divides the row is valid), so the field of value j is chosen by j itself, never by the
          // position inside the group, and no write leaves [j0, j1).
          const int64_t per_byte = 8 / bits;
          int64_t j = j0;
          for (; j < j1 && j % per_byte; ++j) dst[j] = (field(t, bits, codes, j) - zero) * scale;
          if (bits == 4) {
            for (; j + 2 <= j1; j += 2) {
              const auto& pair = t.nib[codes[j / 2]];
              dst[j] = (pair[0] - zero) * scale;
              dst[j + 1] = (pair[1] - zero) * scale;
            }
          } else {
            for (; j + 4 <= j1; j += 4) {
              const auto& quad = t.crumb[codes[j / 4]];
              for (int i = 0; i < 4; ++i) dst[j + i] = (quad[i] - zero) * scale;
            }
          }
          for (; j < j1; ++j) dst[j] = (field(t, bits, codes, j) - zero) * scale;
        }
      }
    }
  });
  return out;
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) { m.impl("dequantize", &dequantize_cpu); }
