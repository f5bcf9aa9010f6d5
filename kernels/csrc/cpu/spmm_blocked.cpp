// CPU kernels for the structured formats, with the dense operand transposed (Xt is (cols, N)):
//   spmm_bsr  Yt = W @ Xt for W in R x C blocks (CSR over block rows); values (blocks, R, C)
//   spmm_nm   Yt = W @ Xt for W in N:M form; values and int8 in-group positions, both (rows, cols / M * N)
//   spmm_qbsr, spmm_qnm: the same with int8 values and one float32 scale per row (W[r, :] = codes * scales[r]):
//             codes are widened as they are used and the row's scale multiplies each output once.
// spmm_bsr and spmm_nm also take bfloat16 values with a bfloat16 Xt: Xt is widened to float32 once, values are
// widened eight at a time as they stream in, sums are float32 and each result is rounded to bf16 once.
// Both compute RB rows at once over a chunk of V vectors of N, so the Xt rows a block (or an M-group) touches are
// loaded once into registers or L1 and reused by every row of the group: the structure buys data reuse that
// unstructured CSR cannot have. Indices are checked right before use; a bad one raises, nothing is read through it.
//
// AMX: spmm_bsr with bf16 values and Xt in 16 x 32k blocks (R = 16, C a multiple of 32), where the CPU has AMX-BF16,
// the kernel grants tile data and the self-check passed (amx.h), runs on the tile kernel of amx.cpp: Xt repacked
// once, TDPBF16PS sums in float32 (another order than the vector path: results agree to about one bf16 step), one
// rounding per result. hf_sparse.ops.kernel_status()["amx"] says whether it is in use and counts the runs.
#include "../namespace.h"

#include <type_traits>

#include "amx.h"
#include "int8_dot.h"
#include "simd.h"

namespace {

using hf_sparse_cpu::BadIndex;
using hf_sparse_cpu::bf16;
using hf_sparse_cpu::dispatch_index;
using hf_sparse_cpu::new_output;
using hf_sparse_cpu::for_each_chunk;
using hf_sparse_cpu::load_v;
using hf_sparse_cpu::Out;
using hf_sparse_cpu::rows_to_output;
using hf_sparse_cpu::store_out;
using hf_sparse_cpu::store_v;
using hf_sparse_cpu::Vec;

constexpr int64_t kWidenMax = 512;  // floats of widened int8/bf16 values one pass of bsr_rows keeps on the stack

// Values that are widened to float before use (eight with one vector convert).
template <typename VT, typename T>
constexpr bool kWidened = (std::is_same_v<VT, int8_t> || std::is_same_v<VT, bf16>) && std::is_same_v<T, float>;

// RB rows (i0 .. i0+RB) of one block row: for every stored block, for each of its C columns, the Xt row chunk is
// loaded once and used by the RB rows. T: the compute type (and Xt's); Y: the output's (T, or bf16).
template <typename T, typename VT, typename I, int V, int RB, bool TAIL, typename Y>
inline void bsr_rows(const I* col, const VT* val, int64_t b, int64_t e, int64_t R, int64_t C, int64_t i0,
                     const T* xt, int64_t ldx, int64_t j0, int tail, const Out<Y>& y, int64_t row0, uint64_t bcols,
                     const float* scales, BadIndex& bad) {
  using Vc = Vec<T>;
  int64_t first_bad = -1;  // a local, not the shared flag: no call or atomic inside the hot loop
  typename Vc::R acc[RB][V];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = Vc::zero();
  for (int64_t p = b; p < e; ++p) {
    const uint64_t cb = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
    if (HF_UNLIKELY(cb >= bcols)) {
      first_bad = p;
      continue;
    }
    const VT* blk = val + p * R * C + i0 * C;
    const T* xb = xt + static_cast<int64_t>(cb) * C * ldx + j0;
    if constexpr (kWidened<VT, T>) {
      // int8 codes or bf16: the RB x C values this pass reads are contiguous; widen them to floats once (8 a convert)
      // so the inner loop broadcasts from L1 as the float kernel does, instead of converting one scalar per FMA row.
      if (RB * C <= kWidenMax && (RB * C) % 8 == 0) {
        alignas(32) float wf[kWidenMax];
        for (int64_t k = 0; k < RB * C; k += 8) hf_sparse_cpu::widen8(blk + k, wf + k);
        for (int64_t c = 0; c < C; ++c) {
          typename Vc::R xv[V];
          for (int v = 0; v < V; ++v) xv[v] = load_v<T, TAIL>(xb + c * ldx, v, V - 1, tail);
          for (int r = 0; r < RB; ++r) {
            const auto w = Vc::set1(wf[r * C + c]);
            for (int v = 0; v < V; ++v) acc[r][v] = Vc::fma(w, xv[v], acc[r][v]);
          }
        }
        continue;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      typename Vc::R xv[V];
      for (int v = 0; v < V; ++v) xv[v] = load_v<T, TAIL>(xb + c * ldx, v, V - 1, tail);
      for (int r = 0; r < RB; ++r) {
        const auto w = Vc::set1(static_cast<T>(blk[r * C + c]));
        for (int v = 0; v < V; ++v) acc[r][v] = Vc::fma(w, xv[v], acc[r][v]);
      }
    }
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
  if (scales != nullptr) {
    for (int r = 0; r < RB; ++r) {
      const auto sv = Vc::set1(static_cast<T>(scales[row0 + i0 + r]));
      for (int v = 0; v < V; ++v) acc[r][v] = Vc::fma(acc[r][v], sv, Vc::zero());
    }
  }
  for (int r = 0; r < RB; ++r)
    store_out<Y, V, TAIL>(y, row0 + i0 + r, j0, tail, acc[r]);
}

// Rows per pass for a chunk of V vectors: RB * V accumulators plus V loaded vectors must fit 16 registers.
template <int V>
constexpr int rows_per_pass() {
  return V >= 8 ? 1 : (V >= 4 ? 2 : 4);
}

// spmm_bsr for bf16 on the AMX tile kernel (amx.h; the caller checked the shapes and that it is ready). Block
// columns are all checked first: the tile kernel trusts them.
void bsr_amx_bf16(const int32_t* cr, const at::Tensor& col_c, const at::Tensor& val_c, int64_t rows, int64_t cols,
                  const at::Tensor& xt_c, at::Tensor& yt, bool transpose_out, const char* op) {
  const int64_t C = val_c.size(2), bcols = cols / C, brows = rows / hf_sparse_amx::kRows, n = xt_c.size(1);
  const auto* xt = reinterpret_cast<const uint16_t*>(xt_c.data_ptr<bf16>());
  const auto* val = reinterpret_cast<const uint16_t*>(val_c.data_ptr<bf16>());
  auto* y = reinterpret_cast<uint16_t*>(yt.data_ptr<bf16>());
  dispatch_index(col_c, [&](auto* ci) {
    const int64_t first_bad = hf_sparse_int8::first_outside(ci, col_c.numel(), bcols);
    TORCH_CHECK_VALUE(first_bad < 0, "hf_sparse::", op, ": col[", first_bad, "] is out of range [0, ", bcols,
                      ") block columns");
    const int64_t tiles = hf_sparse_amx::bsr16_bf16_token_tiles(n);
    const at::Tensor packed_t = hf_sparse_cpu::allocate(op, "packed copy of xt", [&] {
      return at::empty({hf_sparse_amx::bsr16_bf16_packed_size(cols, n)}, xt_c.options().dtype(at::kShort));
    });
    auto* packed = reinterpret_cast<uint16_t*>(packed_t.data_ptr<int16_t>());
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      hf_sparse_amx::bsr16_bf16_pack(xt, cols, n, t0, t1, packed);
    });
    at::parallel_for(0, brows, 1, [&](int64_t bb, int64_t be) {
      hf_sparse_amx::bsr16_bf16_rows(cr, ci, val, C, packed, cols, n, y, transpose_out ? 1 : n,
                                     transpose_out ? rows : 1, bb, be);
    });
  });
}

// The BSR product for float values (scales undefined) or int8 values with per-row float32 scales.
at::Tensor bsr_impl(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, const at::Tensor* scales,
                    int64_t rows, int64_t cols, const at::Tensor& xt, bool transpose_out, const char* op) {
  hf_sparse_cpu::check_size(rows, op, "rows");
  hf_sparse_cpu::check_size(cols, op, "cols");
  hf_sparse_cpu::check_cpu(op, {{"crow", &crow}, {"col", &col}, {"values", &values}});
  if (scales != nullptr) hf_sparse_cpu::check_cpu(op, {{"scales", scales}});
  TORCH_CHECK_VALUE(values.dim() == 3, "hf_sparse::", op, ": values must be (blocks, R, C), got ", values.sizes());
  const int64_t R = values.size(1), C = values.size(2);
  TORCH_CHECK_VALUE(R > 0 && C > 0 && rows % R == 0 && cols % C == 0, "hf_sparse::", op, ": rows=", rows,
                    " and cols=", cols, " must be multiples of the block (R, C) = (", R, ", ", C,
                    ") of values ", values.sizes());
  const int64_t brows = rows / R, bcols = cols / C;
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && crow.dim() == 1 && crow.numel() == brows + 1, "hf_sparse::", op,
                    ": crow must be 1-D int32 of length rows/R+1=", brows + 1, ", got ", crow.scalar_type(), " ", crow.sizes());
  TORCH_CHECK_VALUE((col.scalar_type() == at::kShort || col.scalar_type() == at::kInt) && col.dim() == 1 &&
                        col.numel() == values.size(0),
                    "hf_sparse::", op, ": col must be 1-D int16/int32 with one entry per block (", values.size(0),
                    "), got ", col.scalar_type(), " ", col.sizes());
  hf_sparse_cpu::check_dense_rhs(xt, cols, op, "xt", /*bf16=*/scales == nullptr);
  if (scales != nullptr) {
    TORCH_CHECK_VALUE(values.scalar_type() == at::kChar, "hf_sparse::", op, ": values must be int8, got ",
                      values.scalar_type());
    TORCH_CHECK_VALUE(xt.scalar_type() == at::kFloat, "hf_sparse::", op, ": xt must be float32, got ",
                      xt.scalar_type());
    TORCH_CHECK_VALUE(scales->scalar_type() == at::kFloat && scales->dim() == 1 && scales->numel() == rows,
                      "hf_sparse::", op, ": scales must be float32 with one entry per row (", rows, "), got ",
                      scales->scalar_type(), " ", scales->sizes());
  } else {
    TORCH_CHECK_VALUE(values.scalar_type() == xt.scalar_type(), "hf_sparse::", op, ": values (", values.scalar_type(),
                      ") and xt (", xt.scalar_type(), ") dtypes differ");
  }
  auto crow_c = crow.contiguous();
  hf_sparse_cpu::check_pointers(crow_c.data_ptr<int32_t>(), brows, col.numel(), op, "crow");
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  // `quant` picks the int8 path, not the scales pointer: an empty scales tensor (rows = 0) has a null data pointer.
  const bool quant = scales != nullptr;
  auto sc_c = quant ? scales->contiguous() : at::Tensor();
  const float* sc = quant ? sc_c.data_ptr<float>() : nullptr;
  auto xt_c = xt.contiguous();
  const int64_t n = xt_c.size(1);
  auto yt = new_output(xt_c, rows, transpose_out, op);
  if (n == 0) hf_sparse_cpu::check_index_range(col_c, bcols, op, "col");  // no block loop reads them
  const int32_t* cr = crow_c.data_ptr<int32_t>();
  if (!quant && val_c.scalar_type() == at::kBFloat16 && n > 0 && rows > 0 && hf_sparse_amx::bf16_shape(R, C) &&
      hf_sparse_amx::bf16_ready()) {
    bsr_amx_bf16(cr, col_c, val_c, rows, cols, xt_c, yt, transpose_out, op);
    return yt;
  }
  BadIndex bad;
  // x: the (widened) Xt in the compute type T; y: the output, T or bf16; val: float, double, bf16 or int8 values.
  auto run = [&](const auto* x, auto* y, const auto* val) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    using Y = std::remove_pointer_t<decltype(y)>;
    using VT = std::remove_const_t<std::remove_pointer_t<decltype(val)>>;
    dispatch_index(col_c, [&](auto* ci) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
      at::parallel_for(0, brows, 1, [&](int64_t bb, int64_t be) {
        std::vector<Y> buf;
        for (int64_t br = bb; br < be; ++br) {
          rows_to_output(br * R, br * R + R, n, y, rows, transpose_out, R, buf,
                         [&](int64_t, int64_t, const Out<Y>& out) {
            // Chunks of at most 2 vectors, 4 rows per pass: each Xt vector loaded serves 4 rows (measured 10-25%
            // faster at N=128 than 8 vectors x 1 row or 4 vectors x 2 rows, which are bound by loads).
            for_each_chunk<T, 2>(n, [&](auto kind, int64_t j0, int tail) {
              using K = decltype(kind);
              constexpr int RB = rows_per_pass<K::v>();
              int64_t i = 0;
              for (; i + RB <= R; i += RB)
                bsr_rows<T, VT, I, K::v, RB, K::tail, Y>(ci, val, cr[br], cr[br + 1], R, C, i, x, n, j0, tail, out,
                                                         br * R, static_cast<uint64_t>(bcols), sc, bad);
              for (; i < R; ++i)
                bsr_rows<T, VT, I, K::v, 1, K::tail, Y>(ci, val, cr[br], cr[br + 1], R, C, i, x, n, j0, tail, out,
                                                        br * R, static_cast<uint64_t>(bcols), sc, bad);
            });
          });
        }
      });
    });
  };
  hf_sparse_cpu::run_typed(xt_c, yt, val_c, quant, op, run);
  const int64_t at = bad.get();
  TORCH_CHECK_VALUE(at < 0, "hf_sparse::", op, ": col[", at, "] is out of range [0, ", bcols, ") block columns");
  return yt;
}

at::Tensor spmm_bsr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                        int64_t cols, const at::Tensor& xt, bool transpose_out) {
  return bsr_impl(crow, col, values, nullptr, rows, cols, xt, transpose_out, "spmm_bsr");
}

at::Tensor spmm_qbsr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& xt,
                         bool transpose_out) {
  return bsr_impl(crow, col, values, &scales, rows, cols, xt, transpose_out, "spmm_qbsr");
}

// One row of an N:M weight: slot q (group q / N) holds values[q] at column (q / N) * M + indices[q]. Like a CSR
// row with implicit pointers: U independent chains over the slots hide the FMA latency when N is narrow. (Computing
// several rows at once so they share the group's Xt rows from registers was measured slower: it costs more
// instructions per slot than it saves in loads, and this kernel is bound by instructions per slot.)
template <typename T, typename VT, int V, bool TAIL, typename Y>
inline void nm_row(const VT* val, const int8_t* idx, int64_t q0, int64_t q1, int64_t nn, int64_t mm, const T* xt,
                   int64_t ldx, int64_t j0, int tail, const Out<Y>& y, int64_t row, const float* scales,
                   BadIndex& bad) {
  using Vc = Vec<T>;
  constexpr int U = V >= 8 ? 1 : 8 / V;
  int64_t first_bad = -1;  // a local, not the shared flag: no call or atomic inside the hot loop
  typename Vc::R acc[U][V];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[u][v] = Vc::zero();
  int64_t base = q0 / nn * mm, s = 0;  // column of the current group's first position; slot within the group
  int64_t q = q0;
  if constexpr (kWidened<VT, T>) {
    // int8 codes or bf16: widen 8 slots with one vector convert, then broadcast from L1 as the float kernel does.
    static_assert(8 % U == 0, "U divides the 8 widened slots");
    alignas(32) float wf[8];
    for (; q + 8 <= q1; q += 8) {
      hf_sparse_cpu::widen8(val + q, wf);
      for (int q8 = 0; q8 < 8; q8 += U) {
        for (int u = 0; u < U; ++u) {
          const uint64_t k = static_cast<uint64_t>(static_cast<int64_t>(idx[q + q8 + u]));
          const int64_t c = base + static_cast<int64_t>(k);
          if (++s == nn) {
            s = 0;
            base += mm;
          }
          if (HF_UNLIKELY(k >= static_cast<uint64_t>(mm))) {
            first_bad = q + q8 + u;
            continue;
          }
          const auto w = Vc::set1(wf[q8 + u]);
          const T* x = xt + c * ldx + j0;
          for (int v = 0; v < V; ++v) acc[u][v] = Vc::fma(w, load_v<T, TAIL>(x, v, V - 1, tail), acc[u][v]);
        }
      }
    }
  }
  for (; q + U <= q1; q += U) {
    for (int u = 0; u < U; ++u) {
      const uint64_t k = static_cast<uint64_t>(static_cast<int64_t>(idx[q + u]));
      const int64_t c = base + static_cast<int64_t>(k);
      if (++s == nn) {
        s = 0;
        base += mm;
      }
      if (HF_UNLIKELY(k >= static_cast<uint64_t>(mm))) {
        first_bad = q + u;
        continue;
      }
      const auto w = Vc::set1(static_cast<T>(val[q + u]));
      const T* x = xt + c * ldx + j0;
      for (int v = 0; v < V; ++v) acc[u][v] = Vc::fma(w, load_v<T, TAIL>(x, v, V - 1, tail), acc[u][v]);
    }
  }
  for (; q < q1; ++q) {
    const uint64_t k = static_cast<uint64_t>(static_cast<int64_t>(idx[q]));
    const int64_t c = base + static_cast<int64_t>(k);
    if (++s == nn) {
      s = 0;
      base += mm;
    }
    if (HF_UNLIKELY(k >= static_cast<uint64_t>(mm))) {
      first_bad = q;
      continue;
    }
    const auto w = Vc::set1(static_cast<T>(val[q]));
    const T* x = xt + c * ldx + j0;
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::fma(w, load_v<T, TAIL>(x, v, V - 1, tail), acc[0][v]);
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(row * q1 + first_bad);
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::add(acc[0][v], acc[u][v]);
  if (scales != nullptr) {
    const auto sv = Vc::set1(static_cast<T>(scales[row]));
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::fma(acc[0][v], sv, Vc::zero());
  }
  store_out<Y, V, TAIL>(y, row, j0, tail, acc[0]);
}

// The N:M product for float values (scales undefined) or int8 values with per-row float32 scales.
at::Tensor nm_impl(const at::Tensor& values, const at::Tensor& indices, const at::Tensor* scales, int64_t nn,
                   int64_t mm, int64_t cols, const at::Tensor& xt, bool transpose_out, const char* op) {
  hf_sparse_cpu::check_cpu(op, {{"values", &values}, {"indices", &indices}});
  if (scales != nullptr) hf_sparse_cpu::check_cpu(op, {{"scales", scales}});
  TORCH_CHECK_VALUE(nn > 0 && nn <= mm && mm <= 127, "hf_sparse::", op, ": need 0 < n <= m <= 127, got n=", nn,
                    ", m=", mm);
  hf_sparse_cpu::check_size(cols, op, "cols");
  TORCH_CHECK_VALUE(cols % mm == 0, "hf_sparse::", op, ": cols=", cols, " is not divisible by m=", mm);
  TORCH_CHECK_VALUE(values.dim() == 2 && indices.dim() == 2 && values.sizes() == indices.sizes() &&
                        values.size(1) == cols / mm * nn,
                    "hf_sparse::", op, ": values and indices must both be (rows, cols/m*n=", cols / mm * nn,
                    "), got ", values.sizes(), " and ", indices.sizes());
  TORCH_CHECK_VALUE(indices.scalar_type() == at::kChar, "hf_sparse::", op, ": indices must be int8, got ",
                    indices.scalar_type());
  hf_sparse_cpu::check_dense_rhs(xt, cols, op, "xt", /*bf16=*/scales == nullptr);
  const int64_t rows = values.size(0);
  if (scales != nullptr) {
    TORCH_CHECK_VALUE(values.scalar_type() == at::kChar, "hf_sparse::", op, ": values must be int8, got ",
                      values.scalar_type());
    TORCH_CHECK_VALUE(xt.scalar_type() == at::kFloat, "hf_sparse::", op, ": xt must be float32, got ",
                      xt.scalar_type());
    TORCH_CHECK_VALUE(scales->scalar_type() == at::kFloat && scales->dim() == 1 && scales->numel() == rows,
                      "hf_sparse::", op, ": scales must be float32 with one entry per row (", rows, "), got ",
                      scales->scalar_type(), " ", scales->sizes());
  } else {
    TORCH_CHECK_VALUE(values.scalar_type() == xt.scalar_type(), "hf_sparse::", op, ": values (", values.scalar_type(),
                      ") and xt (", xt.scalar_type(), ") dtypes differ");
  }
  auto val_c = values.contiguous();
  auto idx_c = indices.contiguous();
  const bool quant = scales != nullptr;  // not `sc`: an empty scales tensor has a null data pointer
  auto sc_c = quant ? scales->contiguous() : at::Tensor();
  const float* sc = quant ? sc_c.data_ptr<float>() : nullptr;
  auto xt_c = xt.contiguous();
  const int64_t width = val_c.size(1), n = xt_c.size(1);
  auto yt = new_output(xt_c, rows, transpose_out, op);
  if (n == 0) hf_sparse_cpu::check_index_range(idx_c, mm, op, "indices");  // no row loop reads them
  BadIndex bad;
  const int8_t* idx = idx_c.data_ptr<int8_t>();
  // x: the (widened) Xt in the compute type T; y: the output, T or bf16; val: float, double, bf16 or int8 values.
  auto run = [&](const auto* x, auto* y, const auto* val) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(x)>>;
    using Y = std::remove_pointer_t<decltype(y)>;
    using VT = std::remove_const_t<std::remove_pointer_t<decltype(val)>>;
    // One pass per row and chunk of N. (Tiling K into panels whose Xt fits L1 was measured slower here: the
    // kernel is bound by instructions per slot, not by where Xt comes from.)
    at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
      std::vector<Y> buf;
      rows_to_output(lo, hi, n, y, rows, transpose_out, 16, buf, [&](int64_t tb, int64_t te, const Out<Y>& out) {
        for (int64_t r = tb; r < te; ++r) {
          for_each_chunk<T, 8>(n, [&](auto kind, int64_t j0, int tail) {
            using K = decltype(kind);
            nm_row<T, VT, K::v, K::tail, Y>(val + r * width, idx + r * width, 0, width, nn, mm, x, n, j0, tail, out,
                                            r, sc, bad);
          });
        }
      });
    });
  };
  hf_sparse_cpu::run_typed(xt_c, yt, val_c, quant, op, run);
  const int64_t at = bad.get();
  TORCH_CHECK_VALUE(at < 0, "hf_sparse::", op, ": indices[", at / width, ", ", at % width, "]=",
                    static_cast<int>(idx_c.data_ptr<int8_t>()[at]), " is out of range [0, ", mm, ")");
  return yt;
}

at::Tensor spmm_nm_cpu(const at::Tensor& values, const at::Tensor& indices, int64_t nn, int64_t mm, int64_t cols,
                       const at::Tensor& xt, bool transpose_out) {
  return nm_impl(values, indices, nullptr, nn, mm, cols, xt, transpose_out, "spmm_nm");
}

at::Tensor spmm_qnm_cpu(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& scales, int64_t nn,
                        int64_t mm, int64_t cols, const at::Tensor& xt, bool transpose_out) {
  return nm_impl(values, indices, &scales, nn, mm, cols, xt, transpose_out, "spmm_qnm");
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) {
  m.impl("spmm_bsr", &spmm_bsr_cpu);
  m.impl("spmm_nm", &spmm_nm_cpu);
  m.impl("spmm_qbsr", &spmm_qbsr_cpu);
  m.impl("spmm_qnm", &spmm_qnm_cpu);
}
