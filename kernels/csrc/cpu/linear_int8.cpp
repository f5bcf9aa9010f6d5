// linear_qbsr_dyn: Y = quantize(X) @ W^T (+ bias) in the Linear layout, for W in R x C blocks of int8 codes with one
// float32 scale per row and X quantised per token to 8 bits at run time (int8_dot.h has the arithmetic). Checks
// every argument before any element is read, then runs the integer kernels of int8_dot.cpp over block rows in
// parallel. Also the `cpu_isa` op: the instruction-set path this library was compiled for.
//
// AMX: with 16 x 64k blocks (R = 16, C a multiple of 64), where the CPU has AMX-INT8, the kernel grants tile data and
// the self-check passed (amx.h), block rows run on the tile kernel of amx.cpp instead: the same quantised tokens, the
// same int32 sums and epilogue, so the same output bits. The `amx_status` op says whether AMX is in use (and if not,
// why; hf_sparse.ops.kernel_status()["amx"] reports it) and how many calls took the tile kernels.
#include "../namespace.h"

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "amx.h"
#include "int8_dot.h"
#include "simd.h"

namespace {

// Tokens quantised to 8 bits in contiguous tiles padded to token_pad(n) (zeros past n): the input of the tiled and
// AMX kernels.
struct PaddedTokens {
  int64_t npad;
  std::vector<uint8_t> xq;
  std::vector<float> xs;
  std::vector<int32_t> xz;
  PaddedTokens(const float* xp, int64_t cols, int64_t n)
      : npad(hf_sparse_int8::token_pad(n)),
        xq(static_cast<size_t>(cols * npad), 0),
        xs(static_cast<size_t>(npad), 0.f),
        xz(static_cast<size_t>(npad), 0) {
    at::parallel_for(0, n, 16, [&](int64_t t0, int64_t t1) {
      hf_sparse_int8::quantize_tokens(xp, cols, cols, t0, t1, npad, xq.data(), xs.data(), xz.data());
    });
  }
};

at::Tensor linear_qbsr_dyn_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                               const at::Tensor& scales, const std::optional<at::Tensor>& bias, int64_t rows,
                               int64_t cols, const at::Tensor& x) {
  const char* op = "linear_qbsr_dyn";
  hf_sparse_cpu::check_size(rows, op, "rows");
  hf_sparse_cpu::check_size(cols, op, "cols");
  const at::Tensor no_bias;
  const at::Tensor& b = bias.has_value() ? *bias : no_bias;
  hf_sparse_cpu::check_cpu(op, {{"crow", &crow}, {"col", &col}, {"values", &values}, {"scales", &scales},
                                {"bias", &b}, {"x", &x}});
  TORCH_CHECK_VALUE(values.scalar_type() == at::kChar && values.dim() == 3, "hf_sparse::", op,
                    ": values must be int8 (blocks, R, C), got ", values.scalar_type(), " ", values.sizes());
  const int64_t R = values.size(1), C = values.size(2);
  TORCH_CHECK_VALUE(R > 0 && C > 0 && C % 4 == 0 && rows % R == 0 && cols % C == 0, "hf_sparse::", op,
                    ": needs blocks whose width C is a multiple of 4 and shapes that are multiples of the block; got "
                    "rows=", rows, ", cols=", cols, ", block (R, C) = (", R, ", ", C, ")");
  TORCH_CHECK_VALUE(cols <= hf_sparse_int8::kMaxInt8Cols, "hf_sparse::", op, ": cols=", cols, " exceeds ",
                    hf_sparse_int8::kMaxInt8Cols, " (the int32 sums of 8-bit products could overflow)");
  const int64_t brows = rows / R, bcols = cols / C;
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && crow.dim() == 1 && crow.numel() == brows + 1, "hf_sparse::", op,
                    ": crow must be 1-D int32 of length rows/R+1=", brows + 1, ", got ", crow.scalar_type(), " ",
                    crow.sizes());
  TORCH_CHECK_VALUE((col.scalar_type() == at::kShort || col.scalar_type() == at::kInt) && col.dim() == 1 &&
                        col.numel() == values.size(0),
                    "hf_sparse::", op, ": col must be 1-D int16/int32 with one entry per block (", values.size(0),
                    "), got ", col.scalar_type(), " ", col.sizes());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.numel() == rows, "hf_sparse::",
                    op, ": scales must be float32 with one entry per row (", rows, "), got ", scales.scalar_type(),
                    " ", scales.sizes());
  TORCH_CHECK_VALUE(!b.defined() || (b.scalar_type() == at::kFloat && b.dim() == 1 && b.numel() == rows),
                    "hf_sparse::", op, ": bias must be float32 (rows=", rows, ",), got ",
                    b.defined() ? std::string(c10::toString(b.scalar_type())) : std::string("none"), " ",
                    b.defined() ? b.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat && x.dim() == 2 && x.size(1) == cols, "hf_sparse::", op,
                    ": x must be float32 (N, cols=", cols, "), got ", x.scalar_type(), " ", x.sizes());
  auto crow_c = crow.contiguous();
  hf_sparse_cpu::check_pointers(crow_c.data_ptr<int32_t>(), brows, col.numel(), op, "crow");
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  auto sc_c = scales.contiguous();
  auto b_c = b.defined() ? b.contiguous() : at::Tensor();
  auto x_c = x.contiguous();
  const int64_t n = x_c.size(0);
  auto y = hf_sparse_cpu::allocate(op, "(N, rows) output", [&] { return at::empty({n, rows}, x_c.options()); });
  if (n == 0 || rows == 0) {
    hf_sparse_cpu::check_index_range(col_c, bcols, op, "col");  // no kernel loop reads them
    return y;
  }
  const int32_t* cr = crow_c.data_ptr<int32_t>();
  const int8_t* val = val_c.data_ptr<int8_t>();
  const float* sc = sc_c.data_ptr<float>();
  const float* bp = b.defined() ? b_c.data_ptr<float>() : nullptr;
  const float* xp = x_c.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  hf_sparse_cpu::dispatch_index(col_c, [&](auto* ci) {
    const int64_t bad = hf_sparse_int8::first_outside(ci, col_c.numel(), bcols);
    TORCH_CHECK_VALUE(bad < 0, "hf_sparse::", op, ": col[", bad, "]=", bad < 0 ? 0 : static_cast<int64_t>(ci[bad]),
                      " is out of range [0, ", bcols, ") block columns");
    if (hf_sparse_amx::int8_shape(R, C) && hf_sparse_amx::int8_ready()) {  // AMX tiles (amx.h)
      const PaddedTokens t(xp, cols, n);
      at::parallel_for(0, brows, 1, [&](int64_t bb, int64_t be) {
        hf_sparse_amx::qbsr16_rows(cr, ci, val, C, sc, bp, t.xq.data(), cols, t.npad, n, t.xs.data(), t.xz.data(), yp,
                                   rows, bb, be);
      });
      return;
    }
    if (hf_sparse_int8::rowlanes_apply(R, C, n)) {  // R x 4 blocks, one row per lane
      std::vector<uint8_t> xq(static_cast<size_t>(cols * n));
      std::vector<float> xs(static_cast<size_t>(n));
      std::vector<int32_t> xz(static_cast<size_t>(n));
      at::parallel_for(0, n, 16, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          hf_sparse_int8::quantize_token_plain(xp + t * cols, cols, xq.data() + t * cols, &xs[t], &xz[t]);
        }
      });
      at::parallel_for(0, brows, 4, [&](int64_t bb, int64_t be) {
        hf_sparse_int8::qbsr_rowlanes(cr, ci, val, R, sc, bp, xq.data(), cols, n, xs.data(), xz.data(), yp, rows, bb,
                                      be);
      });
      return;
    }
    if (n == 1 && R == 1 && C == 4) {  // a matrix-vector product: gather 4 codes per block, many blocks per vector
      std::vector<uint8_t> xq(static_cast<size_t>(cols));
      float s;
      int32_t z;
      hf_sparse_int8::quantize_token_plain(xp, cols, xq.data(), &s, &z);
      at::parallel_for(0, rows, 256, [&](int64_t r0, int64_t r1) {
        hf_sparse_int8::qbsr1x4_vector(cr, ci, val, sc, bp, xq.data(), s, z, yp, r0, r1);
      });
      return;
    }
    const PaddedTokens t(xp, cols, n);
    const int64_t npad = t.npad;
    const std::vector<uint8_t>& xq = t.xq;
    const std::vector<float>& xs = t.xs;
    const std::vector<int32_t>& xz = t.xz;
    // Block rows split so each thread gets whole groups of output rows.
    at::parallel_for(0, brows, std::max<int64_t>(1, 16 / R), [&](int64_t bb, int64_t be) {
      std::vector<float> tmp(16 * 64);
      hf_sparse_int8::qbsr_rows(cr, ci, val, R, C, sc, bp, xq.data(), cols, npad, n, xs.data(), xz.data(), yp, rows, bb,
                                be, tmp.data());
    });
  });
  return y;
}

std::string cpu_isa() { return hf_sparse_int8::isa_name(); }

// "<summary>; calls: int8 <k>, bf16 <m>" (amx.h): the first call runs the gates, self-checks included.
std::string amx_status() {
  return std::string(hf_sparse_amx::summary()) + "; calls: int8 " + std::to_string(hf_sparse_amx::int8_calls()) +
         ", bf16 " + std::to_string(hf_sparse_amx::bf16_calls());
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) { m.impl("linear_qbsr_dyn", &linear_qbsr_dyn_cpu); }
// Defined here, not in schema.cpp: the answer belongs to this CPU build (the CUDA binding has no such op).
HF_SPARSE_LIBRARY_FRAGMENT(m) {
  m.def("cpu_isa() -> str", &cpu_isa);
  m.def("amx_status() -> str", &amx_status);
}
