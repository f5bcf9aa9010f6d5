// CPU kernels for CSR weights W (rows x cols), with the dense operand transposed so the inner loops run over the
// contiguous dense dimension N:
//   spmm_csr    Yt  = W   @ Xt    (rows, N)   forward
//   spmm_csr_t  dXt = W^T @ dYt   (cols, N)   input gradient, scattered row by row (no transpose is built)
//   sddmm_csr   dV[p] = <dYt[row(p)], Xt[col(p)]> (nnz,)   value gradient, only at stored positions
// spmm_csr and linear_csr also take bfloat16 values with a bfloat16 dense operand: the operand is widened to float32
// once, values are widened as they stream in, sums are float32 and each result is rounded to bf16 once.
// Accumulators stay in registers across a row's nonzeros (V vectors of N, U independent chains); each column
// index is checked right before it is used, so a malformed index raises instead of reading out of bounds.
#include "../namespace.h"

#include <algorithm>
#include <memory>

#include "simd.h"

namespace {

using hf_sparse_cpu::BadIndex;
using hf_sparse_cpu::bf16;
using hf_sparse_cpu::dispatch_index;
using hf_sparse_cpu::new_output;
using hf_sparse_cpu::Chunk;
using hf_sparse_cpu::for_each_chunk;
using hf_sparse_cpu::load_v;
using hf_sparse_cpu::Out;
using hf_sparse_cpu::rows_to_output;
using hf_sparse_cpu::store_out;
using hf_sparse_cpu::store_v;
using hf_sparse_cpu::Vec;

template <typename T, typename I, int V, bool TAIL>
inline void csr_row(const I* col, const T* val, int64_t b, int64_t e, const T* xt, int64_t ldx, int64_t j0,
                    int tail, const Out<T>& y, int64_t r, uint64_t cols, BadIndex& bad) {
  using Vc = Vec<T>;
  constexpr int U = V >= 8 ? 1 : 8 / V;  // independent chains: hide the FMA latency when N is narrow
  int64_t first_bad = -1;  // a local, not the shared flag: no call or atomic inside the hot loop
  typename Vc::R acc[U][V];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[u][v] = Vc::zero();
  int64_t p = b;
  for (; p + U <= e; p += U) {
    // The row's values and indices stream from memory while Xt rows are gathered from cache: prefetch the
    // streams a few lines ahead so the gathers do not wait behind them (measured: the hardware prefetcher alone
    // leaves the cold case memory-latency bound).
    __builtin_prefetch(val + p + 512);
    __builtin_prefetch(col + p + 1024);
    for (int u = 0; u < U; ++u) {
      const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p + u]));
      if (HF_UNLIKELY(c >= cols)) {
        first_bad = p + u;
        continue;
      }
      const auto w = Vc::set1(val[p + u]);
      const T* x = xt + static_cast<int64_t>(c) * ldx + j0;
      for (int v = 0; v < V; ++v) acc[u][v] = Vc::fma(w, load_v<T, TAIL>(x, v, V - 1, tail), acc[u][v]);
    }
  }
  for (; p < e; ++p) {
    const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
    if (HF_UNLIKELY(c >= cols)) {
      first_bad = p;
      continue;
    }
    const auto w = Vc::set1(val[p]);
    const T* x = xt + static_cast<int64_t>(c) * ldx + j0;
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::fma(w, load_v<T, TAIL>(x, v, V - 1, tail), acc[0][v]);
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::add(acc[0][v], acc[u][v]);
  store_out<T, V, TAIL>(y, r, j0, tail, acc[0]);
}

// N == 1 (a matrix-vector product): a gathered dot product per row with four independent scalar chains.
template <typename T, typename I>
inline T csr_dot(const I* col, const T* val, int64_t b, int64_t e, const T* x, uint64_t cols, BadIndex& bad) {
  int64_t first_bad = -1;
  T s[4] = {T(0), T(0), T(0), T(0)};
  int64_t p = b;
  for (; p + 4 <= e; p += 4) {
    for (int u = 0; u < 4; ++u) {
      const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p + u]));
      if (HF_UNLIKELY(c >= cols)) {
        first_bad = p + u;
        continue;
      }
      s[u] += val[p + u] * x[c];
    }
  }
  for (; p < e; ++p) {
    const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
    if (HF_UNLIKELY(c >= cols)) {
      first_bad = p;
      continue;
    }
    s[0] += val[p] * x[c];
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// Rows are split by nonzeros, not by count, so threads get balanced work on skewed patterns.
template <typename F>
void parallel_rows_by_nnz(const int32_t* crow, int64_t rows, F&& f) {
  const int64_t nnz = crow[rows];
  const int64_t threads = at::get_num_threads();
  if (threads <= 1 || rows < 2) {
    f(0, rows);
    return;
  }
  const int64_t parts = std::min<int64_t>(rows, threads * 4);
  at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t part = pb; part < pe; ++part) {
      // part k starts at the first row whose nonzeros begin at or after k/parts of all nonzeros
      auto row_at = [&](int64_t k) -> int64_t {
        if (k == 0) return 0;
        if (k == parts) return rows;
        const int32_t* it = std::lower_bound(crow, crow + rows + 1, static_cast<int32_t>(nnz * k / parts));
        return std::min<int64_t>(it - crow, rows);
      };
      const int64_t rb = row_at(part), re = row_at(part + 1);
      if (re > rb) f(rb, re);
    }
  });
}

// The CSR structure: shape, pointer array (length, start, end, monotone: O(rows)). Column indices are checked where
// they are used. `values` is checked here for device only; each op checks its dtype and length.
void check_csr_args(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                    int64_t cols, const char* op) {
  hf_sparse_cpu::check_size(rows, op, "rows");
  hf_sparse_cpu::check_size(cols, op, "cols");
  hf_sparse_cpu::check_cpu(op, {{"crow", &crow}, {"col", &col}, {"values", &values}});
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && crow.dim() == 1 && crow.numel() == rows + 1, "hf_sparse::",
                    op, ": crow must be 1-D int32 of length rows+1=", rows + 1, ", got ", crow.scalar_type(), " ",
                    crow.sizes());
  TORCH_CHECK_VALUE(col.scalar_type() == at::kShort || col.scalar_type() == at::kInt, "hf_sparse::", op,
                    ": col must be int16 or int32, got ", col.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1, "hf_sparse::", op, ": col must be 1-D, got ", col.sizes());
  hf_sparse_cpu::check_pointers(crow.contiguous().data_ptr<int32_t>(), rows, col.numel(), op, "crow");
}

void raise_if_bad(const BadIndex& bad, const at::Tensor& col, int64_t cols, const char* op) {
  const int64_t at = bad.get();
  if (at >= 0) {
    const int64_t c = col.scalar_type() == at::kShort ? col.data_ptr<int16_t>()[at] : col.data_ptr<int32_t>()[at];
    TORCH_CHECK_VALUE(false, "hf_sparse::", op, ": col[", at, "]=", c, " is out of range [0, ", cols, ")");
  }
}

void spmm_csr_bf16(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                   int64_t cols, const at::Tensor& xt, bool transpose_out, at::Tensor& yt, BadIndex& bad);

at::Tensor spmm_csr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                        int64_t cols, const at::Tensor& xt, bool transpose_out) {
  check_csr_args(crow, col, values, rows, cols, "spmm_csr");
  hf_sparse_cpu::check_dense_rhs(xt, cols, "spmm_csr", "xt", /*bf16=*/true);
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == col.numel(), "hf_sparse::spmm_csr: values must be 1-D "
                    "with one entry per column index (", col.numel(), "), got ", values.sizes());
  TORCH_CHECK_VALUE(values.scalar_type() == xt.scalar_type(), "hf_sparse::spmm_csr: values (",
                    values.scalar_type(), ") and xt (", xt.scalar_type(), ") must have the same dtype");
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  auto xt_c = xt.contiguous();
  const int64_t n = xt_c.size(1);
  auto yt = new_output(xt_c, rows, transpose_out, "spmm_csr");
  if (n == 0) hf_sparse_cpu::check_index_range(col_c, cols, "spmm_csr", "col");  // no row loop reads them
  BadIndex bad;
  if (xt_c.scalar_type() == at::kBFloat16) {
    spmm_csr_bf16(crow_c, col_c, val_c, rows, cols, xt_c, transpose_out, yt, bad);
    raise_if_bad(bad, col_c, cols, "spmm_csr");
    return yt;
  }
  AT_DISPATCH_FLOATING_TYPES(xt_c.scalar_type(), "spmm_csr", [&] {
    const int32_t* cr = crow_c.data_ptr<int32_t>();
    const scalar_t* val = val_c.data_ptr<scalar_t>();
    const scalar_t* x = xt_c.data_ptr<scalar_t>();
    scalar_t* y = yt.data_ptr<scalar_t>();
    dispatch_index(col_c, [&](auto* ci) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
      parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
        if (n == 1) {
          for (int64_t r = rb; r < re; ++r)
            y[r] = csr_dot(ci, val, cr[r], cr[r + 1], x, static_cast<uint64_t>(cols), bad);
          return;
        }
        std::vector<scalar_t> buf;
        rows_to_output(rb, re, n, y, rows, transpose_out, 16, buf, [&](int64_t tb, int64_t te, const Out<scalar_t>& out) {
          for (int64_t r = tb; r < te; ++r) {
            for_each_chunk<scalar_t, 8>(n, [&](auto kind, int64_t j0, int tail) {
              using K = decltype(kind);
              csr_row<scalar_t, I, K::v, K::tail>(ci, val, cr[r], cr[r + 1], x, n, j0, tail, out, r,
                                                   static_cast<uint64_t>(cols), bad);
            });
          }
        });
      });
    });
  });
  raise_if_bad(bad, col_c, cols, "spmm_csr");
  return yt;
}

// dXt[col(p)] += V[p] * dYt[row(p)], per chunk of N: the chunk of dYt's row stays in registers while its nonzeros
// scatter. Threads own disjoint chunks of N, so no two threads write the same element.
template <typename T, typename I, int V, bool TAIL>
inline void csr_t_chunk(const int32_t* crow, const I* col, const T* val, int64_t rows, const T* yt, T* xt,
                        int64_t ldx, int64_t j0, int tail, uint64_t cols, BadIndex& bad) {
  using Vc = Vec<T>;
  int64_t first_bad = -1;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = crow[r], e = crow[r + 1];
    if (b == e) continue;
    typename Vc::R dy[V];
    for (int v = 0; v < V; ++v) dy[v] = load_v<T, TAIL>(yt + r * ldx + j0, v, V - 1, tail);
    for (int64_t p = b; p < e; ++p) {
      const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
      if (HF_UNLIKELY(c >= cols)) {
        first_bad = p;
        continue;
      }
      const auto w = Vc::set1(val[p]);
      T* out = xt + static_cast<int64_t>(c) * ldx + j0;
      for (int v = 0; v < V; ++v)
        store_v<T, TAIL>(out, Vc::fma(w, dy[v], load_v<T, TAIL>(out, v, V - 1, tail)), v, V - 1, tail);
    }
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
}

at::Tensor spmm_csr_t_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                          int64_t cols, const at::Tensor& yt) {
  check_csr_args(crow, col, values, rows, cols, "spmm_csr_t");
  hf_sparse_cpu::check_dense_rhs(yt, rows, "spmm_csr_t", "yt");
  TORCH_CHECK_VALUE(values.dim() == 1 && values.numel() == col.numel() && values.scalar_type() == yt.scalar_type(),
                    "hf_sparse::spmm_csr_t: values must be 1-D, one per column index (", col.numel(),
                    "), with yt's dtype (", yt.scalar_type(), "), got ", values.scalar_type(), " ", values.sizes());
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  auto yt_c = yt.contiguous();
  const int64_t n = yt_c.size(1);
  if (n == 0) hf_sparse_cpu::check_index_range(col_c, cols, "spmm_csr_t", "col");  // no strip reads them
  auto xt = hf_sparse_cpu::allocate("spmm_csr_t", "(cols, N) output", [&] { return at::zeros({cols, n}, yt_c.options()); });
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES(yt_c.scalar_type(), "spmm_csr_t", [&] {
    using Vc = Vec<scalar_t>;
    const int32_t* cr = crow_c.data_ptr<int32_t>();
    const scalar_t* val = val_c.data_ptr<scalar_t>();
    const scalar_t* y = yt_c.data_ptr<scalar_t>();
    scalar_t* x = xt.data_ptr<scalar_t>();
    dispatch_index(col_c, [&](auto* ci) {
      using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
      // Each thread owns a strip of N. Strips are as wide as the threads allow (up to 8 vectors): every strip
      // re-reads the whole CSR structure, so narrow strips on one thread cost passes over memory.
      const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
      const int64_t per_thread = (n + threads - 1) / threads;
      const int64_t step = std::min<int64_t>(8 * Vc::W, std::max<int64_t>(Vc::W, (per_thread + Vc::W - 1) / Vc::W * Vc::W));
      const int64_t chunks = (n + step - 1) / step;
      at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
        const int64_t lo = cb * step, hi = std::min<int64_t>(n, ce * step);
        for_each_chunk<scalar_t, 8>(hi - lo, [&](auto kind, int64_t j0, int tail) {
          using K = decltype(kind);
          csr_t_chunk<scalar_t, I, K::v, K::tail>(cr, ci, val, rows, y, x, n, lo + j0, tail,
                                                   static_cast<uint64_t>(cols), bad);
        });
      });
    });
  });
  raise_if_bad(bad, col_c, cols, "spmm_csr_t");
  return xt;
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  using Vc = Vec<T>;
  constexpr int64_t W = Vc::W;
  auto s0 = Vc::zero(), s1 = Vc::zero(), s2 = Vc::zero(), s3 = Vc::zero();
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    s0 = Vc::fma(Vc::load(a + j), Vc::load(b + j), s0);
    s1 = Vc::fma(Vc::load(a + j + W), Vc::load(b + j + W), s1);
    s2 = Vc::fma(Vc::load(a + j + 2 * W), Vc::load(b + j + 2 * W), s2);
    s3 = Vc::fma(Vc::load(a + j + 3 * W), Vc::load(b + j + 3 * W), s3);
  }
  for (; j + W <= n; j += W) s0 = Vc::fma(Vc::load(a + j), Vc::load(b + j), s0);
  if (j < n) {
    const int t = static_cast<int>(n - j);
    s1 = Vc::fma(Vc::load_part(a + j, t), Vc::load_part(b + j, t), s1);
  }
  return Vc::sum(Vc::add(Vc::add(s0, s1), Vc::add(s2, s3)));
}

// out[u] = <a, b[u]> for four rows b[u]: each vector of `a` is loaded once for the four products.
template <typename T>
inline void dot4(const T* a, const T* const* b, int64_t n, T* out) {
  using Vc = Vec<T>;
  constexpr int64_t W = Vc::W;
  auto s0 = Vc::zero(), s1 = Vc::zero(), s2 = Vc::zero(), s3 = Vc::zero();
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const auto av = Vc::load(a + j);
    s0 = Vc::fma(av, Vc::load(b[0] + j), s0);
    s1 = Vc::fma(av, Vc::load(b[1] + j), s1);
    s2 = Vc::fma(av, Vc::load(b[2] + j), s2);
    s3 = Vc::fma(av, Vc::load(b[3] + j), s3);
  }
  if (j < n) {
    const int t = static_cast<int>(n - j);
    const auto av = Vc::load_part(a + j, t);
    s0 = Vc::fma(av, Vc::load_part(b[0] + j, t), s0);
    s1 = Vc::fma(av, Vc::load_part(b[1] + j, t), s1);
    s2 = Vc::fma(av, Vc::load_part(b[2] + j, t), s2);
    s3 = Vc::fma(av, Vc::load_part(b[3] + j, t), s3);
  }
  out[0] = Vc::sum(s0);
  out[1] = Vc::sum(s1);
  out[2] = Vc::sum(s2);
  out[3] = Vc::sum(s3);
}

at::Tensor sddmm_csr_cpu(const at::Tensor& crow, const at::Tensor& col, int64_t rows, int64_t cols,
                         const at::Tensor& yt, const at::Tensor& xt) {
  check_csr_args(crow, col, at::Tensor(), rows, cols, "sddmm_csr");
  hf_sparse_cpu::check_dense_rhs(yt, rows, "sddmm_csr", "yt");
  hf_sparse_cpu::check_dense_rhs(xt, cols, "sddmm_csr", "xt");
  TORCH_CHECK_VALUE(yt.size(1) == xt.size(1) && yt.scalar_type() == xt.scalar_type(),
                    "hf_sparse::sddmm_csr: yt and xt must have the same N and dtype, got ", yt.sizes(), " ",
                    yt.scalar_type(), " and ", xt.sizes(), " ", xt.scalar_type());
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto yt_c = yt.contiguous();
  auto xt_c = xt.contiguous();
  const int64_t n = yt_c.size(1);
  auto out = hf_sparse_cpu::allocate("sddmm_csr", "(nnz,) output", [&] { return at::empty({col_c.numel()}, yt_c.options()); });
  BadIndex bad;
  AT_DISPATCH_FLOATING_TYPES(yt_c.scalar_type(), "sddmm_csr", [&] {
    const int32_t* cr = crow_c.data_ptr<int32_t>();
    const scalar_t* y = yt_c.data_ptr<scalar_t>();
    const scalar_t* x = xt_c.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    dispatch_index(col_c, [&](auto* ci) {
      parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
        for (int64_t r = rb; r < re; ++r) {
          int64_t p = cr[r];
          const int64_t e = cr[r + 1];
          const scalar_t* yr = y + r * n;
          for (; p + 4 <= e; p += 4) {  // four dot products share each load of the row of Yt
            const scalar_t* xs[4];
            bool ok = true;
            for (int u = 0; u < 4; ++u) {
              const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(ci[p + u]));
              ok = ok && c < static_cast<uint64_t>(cols);
              xs[u] = x + static_cast<int64_t>(c) * n;
            }
            if (HF_UNLIKELY(!ok)) break;  // the one-at-a-time loop below finds and reports the bad index
            dot4(yr, xs, n, o + p);
          }
          for (; p < e; ++p) {
            const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(ci[p]));
            if (HF_UNLIKELY(c >= static_cast<uint64_t>(cols))) {
              bad.note(p);
              o[p] = scalar_t(0);
              continue;
            }
            o[p] = dot(yr, x + static_cast<int64_t>(c) * n, n);
          }
        }
      });
    });
  });
  raise_if_bad(bad, col_c, cols, "sddmm_csr");
  return out;
}

// ---- Linear layout: Y = X @ W^T with X (N, cols) and Y (N, rows) row-major, W in CSR (float, bf16 or int8 values) 
// The kernels above want the dense operand transposed (cols, N). Transposing X as a separate torch op costs a pass
// over X in memory (measured: a fifth of a 90%-sparse MiniLM forward), and for wide N the transposed X outgrows L2,
// so every gathered row comes from L3. Here X is packed block by block: B tokens at a time are transposed into a
// (cols, B) buffer that stays in L2 (B = 32: 196 KB for cols = 1536) while all rows of W run over it, writing the
// (rows, B) results into Y's (N, rows) layout tile by tile. int8 and bf16 values are widened eight at a time and the
// row's scale (int8) multiplies the accumulators once. A bf16 X is widened as it is packed (the packed block is
// float32), so the inner loop is the float32 one; a bf16 Y is rounded where each result is stored.
template <typename VT>
struct Values;
template <>
struct Values<float> {
  static inline void widen(const float* in, float* out) {
    for (int k = 0; k < 8; ++k) out[k] = in[k];
  }
  static inline float one(const float* in) { return *in; }
};
template <>
struct Values<int8_t> {
  static inline void widen(const int8_t* in, float* out) { hf_sparse_cpu::widen8(in, out); }
  static inline float one(const int8_t* in) { return static_cast<float>(*in); }
};
template <>
struct Values<bf16> {
  static inline void widen(const bf16* in, float* out) { hf_sparse_cpu::widen8(in, out); }
  static inline float one(const bf16* in) { return hf_sparse_cpu::bf16_to_float(*in); }
};

template <typename VT, int V, bool TAIL, typename I, typename Y = float>
inline void packed_row(const I* col, const VT* val, int64_t b, int64_t e, float scale, bool scaled,
                       const float* xt, int64_t ldx, int64_t j0, int tail, const Out<Y>& y, int64_t r,
                       uint64_t cols, BadIndex& bad) {
  using Vc = Vec<float>;
  constexpr int U = V >= 8 ? 1 : 8 / V;  // enough independent accumulators to cover the FMA latency
  int64_t first_bad = -1;
  typename Vc::R acc[U][V];
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[u][v] = Vc::zero();
  alignas(32) float w[8];
  int64_t p = b;
  for (; p + 8 <= e; p += 8) {
    __builtin_prefetch(val + p + 256);
    __builtin_prefetch(col + p + 256);
    Values<VT>::widen(val + p, w);
    // Fully unrolled, so the accumulators stay in registers (a loop over k would index them in memory).
#pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p + k]));
      if (HF_UNLIKELY(c >= cols)) {
        first_bad = p + k;
        continue;
      }
      const auto wk = Vc::set1(w[k]);
      const float* x = xt + static_cast<int64_t>(c) * ldx + j0;
      auto& a = acc[k % U];
#pragma GCC unroll 8
      for (int v = 0; v < V; ++v) a[v] = Vc::fma(wk, load_v<float, TAIL>(x, v, V - 1, tail), a[v]);
    }
  }
  for (; p < e; ++p) {
    const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
    if (HF_UNLIKELY(c >= cols)) {
      first_bad = p;
      continue;
    }
    const auto wk = Vc::set1(Values<VT>::one(val + p));
    const float* x = xt + static_cast<int64_t>(c) * ldx + j0;
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::fma(wk, load_v<float, TAIL>(x, v, V - 1, tail), acc[0][v]);
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
  for (int u = 1; u < U; ++u)
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::add(acc[0][v], acc[u][v]);
  if (scaled) {
    const auto s = Vc::set1(scale);
    for (int v = 0; v < V; ++v) acc[0][v] = Vc::fma(acc[0][v], s, Vc::zero());
  }
  store_out<Y, V, TAIL>(y, r, j0, tail, acc[0]);
}

// One row times a vector (N == 1): four independent chains so the adds do not wait on each other.
template <typename VT, typename I>
inline float dot_row(const I* col, const VT* val, int64_t b, int64_t e, const float* x, uint64_t cols, BadIndex& bad) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  int64_t first_bad = -1;
  int64_t p = b;
  for (; p + 4 <= e; p += 4) {
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p + u]));
      if (HF_UNLIKELY(c >= cols)) {
        first_bad = p + u;
        continue;
      }
      acc[u] += Values<VT>::one(val + p + u) * x[c];
    }
  }
  for (; p < e; ++p) {
    const uint64_t c = static_cast<uint64_t>(static_cast<int64_t>(col[p]));
    if (HF_UNLIKELY(c >= cols)) {
      first_bad = p;
      continue;
    }
    acc[0] += Values<VT>::one(val + p) * x[c];
  }
  if (HF_UNLIKELY(first_bad >= 0)) bad.note(first_bad);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// The packed block starts on a cache line: with 16 tokens a packed row is exactly one 64-byte line, and a block
// that starts mid-line makes every gathered row touch two.
inline float* aligned64(float* p) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(p) + 63) & ~static_cast<uintptr_t>(63));
}

inline float as_float(float v) { return v; }
inline float as_float(bf16 v) { return hf_sparse_cpu::bf16_to_float(v); }

// xt[k * nb + b] = x[(n0 + b) * cols + k] for b < nb: 8 x 8 tiles, so both sides are read and written in lines.
template <typename XS>
inline void pack_block(const XS* x, int64_t cols, int64_t n0, int64_t nb, float* xt) {
  for (int64_t k0 = 0; k0 < cols; k0 += 8) {
    const int64_t k1 = std::min<int64_t>(cols, k0 + 8);
    for (int64_t b = 0; b < nb; ++b) {
      const XS* src = x + (n0 + b) * cols;
      for (int64_t k = k0; k < k1; ++k) xt[k * nb + b] = as_float(src[k]);
    }
  }
}

// VT: the stored values (float, bf16 or int8); XS: X's and Y's dtype (float, or bf16 with bf16 values).
template <typename VT, typename XS = float>
at::Tensor linear_csr_impl(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                           const float* scales, int64_t rows, int64_t cols, const at::Tensor& x, const char* op) {
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  auto x_c = x.contiguous();
  const int64_t n = x_c.size(0);
  at::Tensor y = hf_sparse_cpu::allocate(op, "(N, rows) output", [&] { return at::empty({n, rows}, x_c.options()); });
  // Nothing to compute (and no packing buffer, whose size would follow `cols`, which an empty x does not bound); the
  // column indices are still checked.
  if (n == 0 || rows == 0) {
    hf_sparse_cpu::check_index_range(col_c, cols, op, "col");
    return y;
  }
  BadIndex bad;
  const int32_t* cr = crow_c.data_ptr<int32_t>();
  const VT* val = val_c.data_ptr<VT>();
  const XS* xp = x_c.data_ptr<XS>();
  XS* yp = y.data_ptr<XS>();
  constexpr int64_t B = 32;  // tokens per packed block
  const bool scaled = scales != nullptr;
  dispatch_index(col_c, [&](auto* ci) {
    using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
    const uint64_t ucols = static_cast<uint64_t>(cols);
    if (n == 1) {  // a matrix-vector product: X's one row is already the column the dot products need
      at::Tensor xw;  // a bf16 row, widened once
      if constexpr (std::is_same_v<XS, bf16>) xw = hf_sparse_cpu::widened(x_c, op, "float32 copy of x");
      const float* xf = xw.defined() ? xw.data_ptr<float>() : reinterpret_cast<const float*>(xp);
      parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
        for (int64_t r = rb; r < re; ++r) {
          const float sum = dot_row<VT, I>(ci, val, cr[r], cr[r + 1], xf, ucols, bad);
          yp[r] = hf_sparse_cpu::to_storage<XS>(scaled ? sum * scales[r] : sum);
        }
      });
      return;
    }
    const int64_t blocks = (n + B - 1) / B;
    auto run_rows = [&](const float* xt, int64_t n0, int64_t nb, int64_t rb, int64_t re, std::vector<XS>& buf) {
      rows_to_output(rb, re, nb, yp + n0 * rows, rows, true, 16, buf,
                     [&](int64_t tb, int64_t te, const Out<XS>& out) {
                       for (int64_t r = tb; r < te; ++r) {
                         for_each_chunk<float, 4>(nb, [&](auto kind, int64_t j0, int tail) {
                           using K = decltype(kind);
                           packed_row<VT, K::v, K::tail, I, XS>(ci, val, cr[r], cr[r + 1], scaled ? scales[r] : 1.f,
                                                                scaled, xt, nb, j0, tail, out, r, ucols, bad);
                         });
                       }
                     });
    };
    const int64_t threads = at::get_num_threads();
    if (blocks >= threads) {  // each thread packs its own token blocks and runs every row over them
      at::parallel_for(0, blocks, 1, [&](int64_t bb, int64_t be) {
        std::unique_ptr<float[]> storage(new float[cols * B + 16]);  // uninitialised: pack_block fills it
        std::vector<XS> buf;
        float* xt = aligned64(storage.get());
        for (int64_t blk = bb; blk < be; ++blk) {
          const int64_t n0 = blk * B, nb = std::min<int64_t>(B, n - n0);
          pack_block(xp, cols, n0, nb, xt);
          run_rows(xt, n0, nb, 0, rows, buf);
        }
      });
    } else {  // fewer blocks than threads: pack once, split the rows
      std::unique_ptr<float[]> storage(new float[cols * B + 16]);
      float* xt = aligned64(storage.get());
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * B, nb = std::min<int64_t>(B, n - n0);
        pack_block(xp, cols, n0, nb, xt);
        parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
          std::vector<XS> buf;
          run_rows(xt, n0, nb, rb, re, buf);
        });
      }
    }
  });
  raise_if_bad(bad, col_c, cols, op);
  return y;
}

// spmm_csr for bf16 values and xt (checked by the caller, contiguous): xt widened once, rows as in linear_csr.
void spmm_csr_bf16(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                   int64_t cols, const at::Tensor& xt, bool transpose_out, at::Tensor& yt, BadIndex& bad) {
  const int64_t n = xt.size(1);
  if (n == 0 || rows == 0) return;
  const at::Tensor xf = hf_sparse_cpu::widened(xt, "spmm_csr", "float32 copy of xt");
  const int32_t* cr = crow.data_ptr<int32_t>();
  const bf16* val = values.data_ptr<bf16>();
  const float* x = xf.data_ptr<float>();
  bf16* y = yt.data_ptr<bf16>();
  const uint64_t ucols = static_cast<uint64_t>(cols);
  dispatch_index(col, [&](auto* ci) {
    using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
    parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
      if (n == 1) {
        for (int64_t r = rb; r < re; ++r)
          y[r] = hf_sparse_cpu::float_to_bf16(dot_row<bf16, I>(ci, val, cr[r], cr[r + 1], x, ucols, bad));
        return;
      }
      std::vector<bf16> buf;
      rows_to_output(rb, re, n, y, rows, transpose_out, 16, buf, [&](int64_t tb, int64_t te, const Out<bf16>& out) {
        for (int64_t r = tb; r < te; ++r) {
          for_each_chunk<float, 8>(n, [&](auto kind, int64_t j0, int tail) {
            using K = decltype(kind);
            packed_row<bf16, K::v, K::tail, I, bf16>(ci, val, cr[r], cr[r + 1], 1.f, false, x, n, j0, tail, out, r,
                                                     ucols, bad);
          });
        }
      });
    });
  });
}

// W @ Xt with int8 values and per-row scales, Xt (cols, N): the transposed-operand form of linear_qcsr.
at::Tensor spmm_qcsr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                         const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& xt,
                         bool transpose_out) {
  check_csr_args(crow, col, values, rows, cols, "spmm_qcsr");
  hf_sparse_cpu::check_dense_rhs(xt, cols, "spmm_qcsr", "xt");
  TORCH_CHECK_VALUE(xt.scalar_type() == at::kFloat, "hf_sparse::spmm_qcsr: xt must be float32, got ",
                    xt.scalar_type());
  TORCH_CHECK_VALUE(values.scalar_type() == at::kChar && values.dim() == 1 && values.numel() == col.numel(),
                    "hf_sparse::spmm_qcsr: values must be int8, 1-D, one per column index (", col.numel(),
                    "), got ", values.scalar_type(), " ", values.sizes());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.numel() == rows,
                    "hf_sparse::spmm_qcsr: scales must be float32 with one entry per row (", rows, "), got ",
                    scales.scalar_type(), " ", scales.sizes());
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  hf_sparse_cpu::check_cpu("spmm_qcsr", {{"scales", &scales}});
  auto sc_c = scales.contiguous();
  auto xt_c = xt.contiguous();
  const int64_t n = xt_c.size(1);
  auto yt = new_output(xt_c, rows, transpose_out, "spmm_qcsr");
  if (n == 0) hf_sparse_cpu::check_index_range(col_c, cols, "spmm_qcsr", "col");  // no row loop reads them
  BadIndex bad;
  const int32_t* cr = crow_c.data_ptr<int32_t>();
  const int8_t* val = val_c.data_ptr<int8_t>();
  const float* sc = sc_c.data_ptr<float>();
  const float* x = xt_c.data_ptr<float>();
  float* y = yt.data_ptr<float>();
  dispatch_index(col_c, [&](auto* ci) {
    using I = std::remove_const_t<std::remove_pointer_t<decltype(ci)>>;
    parallel_rows_by_nnz(cr, rows, [&](int64_t rb, int64_t re) {
      if (n == 1) {
        for (int64_t r = rb; r < re; ++r)
          y[r] = sc[r] * dot_row<int8_t, I>(ci, val, cr[r], cr[r + 1], x, static_cast<uint64_t>(cols), bad);
        return;
      }
      std::vector<float> buf;
      rows_to_output(rb, re, n, y, rows, transpose_out, 16, buf, [&](int64_t tb, int64_t te, const Out<float>& out) {
        for (int64_t r = tb; r < te; ++r) {
          for_each_chunk<float, 8>(n, [&](auto kind, int64_t j0, int tail) {
            using K = decltype(kind);
            packed_row<int8_t, K::v, K::tail, I>(ci, val, cr[r], cr[r + 1], sc[r], true, x, n, j0, tail, out, r,
                                                 static_cast<uint64_t>(cols), bad);
          });
        }
      });
    });
  });
  raise_if_bad(bad, col_c, cols, "spmm_qcsr");
  return yt;
}

void check_linear_x(const at::Tensor& x, int64_t cols, const char* op, bool bf16 = false) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "hf_sparse::", op, ": x must be a CPU tensor, got one on ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == cols &&
                        (x.scalar_type() == at::kFloat || (bf16 && x.scalar_type() == at::kBFloat16)),
                    "hf_sparse::", op, ": x must be ", bf16 ? "float32 or bfloat16" : "float32", " (N, ", cols,
                    "), got ", x.scalar_type(), " ", x.sizes());
}

at::Tensor linear_csr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                          int64_t cols, const at::Tensor& x) {
  check_csr_args(crow, col, values, rows, cols, "linear_csr");
  check_linear_x(x, cols, "linear_csr", /*bf16=*/true);
  TORCH_CHECK_VALUE(values.scalar_type() == x.scalar_type() && values.dim() == 1 && values.numel() == col.numel(),
                    "hf_sparse::linear_csr: values must have x's dtype (", x.scalar_type(),
                    "), 1-D, one per column index (", col.numel(), "), got ", values.scalar_type(), " ",
                    values.sizes());
  if (x.scalar_type() == at::kBFloat16)
    return linear_csr_impl<bf16, bf16>(crow, col, values, nullptr, rows, cols, x, "linear_csr");
  return linear_csr_impl<float>(crow, col, values, nullptr, rows, cols, x, "linear_csr");
}

at::Tensor linear_qcsr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                           const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& x) {
  check_csr_args(crow, col, values, rows, cols, "linear_qcsr");
  check_linear_x(x, cols, "linear_qcsr");
  TORCH_CHECK_VALUE(values.scalar_type() == at::kChar && values.dim() == 1 && values.numel() == col.numel(),
                    "hf_sparse::linear_qcsr: values must be int8, 1-D, one per column index (", col.numel(),
                    "), got ", values.scalar_type(), " ", values.sizes());
  TORCH_CHECK_VALUE(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.numel() == rows,
                    "hf_sparse::linear_qcsr: scales must be float32 with one entry per row (", rows, "), got ",
                    scales.scalar_type(), " ", scales.sizes());
  hf_sparse_cpu::check_cpu("linear_qcsr", {{"scales", &scales}});
  auto sc = scales.contiguous();
  return linear_csr_impl<int8_t>(crow, col, values, sc.data_ptr<float>(), rows, cols, x, "linear_qcsr");
}

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CPU, m) {
  m.impl("spmm_csr", &spmm_csr_cpu);
  m.impl("spmm_csr_t", &spmm_csr_t_cpu);
  m.impl("sddmm_csr", &sddmm_csr_cpu);
  m.impl("spmm_qcsr", &spmm_qcsr_cpu);
  m.impl("linear_csr", &linear_csr_cpu);
  m.impl("linear_qcsr", &linear_qcsr_cpu);
}
