// CPU SpMM for CSR weights: Yt[r, :] = sum_k W[r, k] * Xt[k, :], vectorised over the dense dimension N
// (compiled with -O3 -mavx2 -mfma; the inner loop is a contiguous axpy the compiler turns into FMA),
// parallel over rows with OpenMP. Every input is checked at the boundary; nothing is read out of bounds.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>

namespace {

template <typename Index>
void check_csr(const int32_t* crow, const Index* col, int64_t rows, int64_t cols, int64_t nnz) {
  TORCH_CHECK_VALUE(crow[0] == 0 && crow[rows] == nnz, "hf_sparse::spmm_csr: crow must start at 0 and end at nnz=",
                    nnz, ", got ", crow[0], " and ", crow[rows]);
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK_VALUE(crow[r] <= crow[r + 1], "hf_sparse::spmm_csr: crow is not monotone at row ", r);
  }
  int64_t bad = -1;
  for (int64_t i = 0; i < nnz; ++i) {
    const int64_t c = static_cast<int64_t>(col[i]);
    if (c < 0 || c >= cols) { bad = i; break; }
  }
  TORCH_CHECK_VALUE(bad < 0, "hf_sparse::spmm_csr: col[", bad, "] is out of range [0, ", cols, ")");
}

template <typename Index>
void spmm_rows(const int32_t* crow, const Index* col, const float* vals, const float* xt, float* yt, int64_t rows,
               int64_t n) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* __restrict y = yt + r * n;
      for (int64_t j = 0; j < n; ++j) y[j] = 0.f;
      for (int32_t p = crow[r]; p < crow[r + 1]; ++p) {
        const float v = vals[p];
        const float* __restrict x = xt + static_cast<int64_t>(col[p]) * n;
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) y[j] += v * x[j];
      }
    }
  });
}

at::Tensor spmm_csr_cpu(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                        int64_t cols, const at::Tensor& xt) {
  TORCH_CHECK_VALUE(crow.scalar_type() == at::kInt && crow.dim() == 1 && crow.numel() == rows + 1,
                    "hf_sparse::spmm_csr: crow must be int32 of length rows+1=", rows + 1);
  TORCH_CHECK_VALUE(col.scalar_type() == at::kShort || col.scalar_type() == at::kInt,
                    "hf_sparse::spmm_csr: col must be int16 or int32, got ", col.scalar_type());
  TORCH_CHECK_VALUE(values.scalar_type() == at::kFloat && xt.scalar_type() == at::kFloat,
                    "hf_sparse::spmm_csr: values and xt must be float32 on this backend");
  TORCH_CHECK_VALUE(col.dim() == 1 && values.dim() == 1 && col.numel() == values.numel(),
                    "hf_sparse::spmm_csr: col and values must be 1-D of the same length");
  TORCH_CHECK_VALUE(xt.dim() == 2 && xt.size(0) == cols, "hf_sparse::spmm_csr: xt must be (cols=", cols,
                    ", N), got ", xt.sizes());
  auto crow_c = crow.contiguous();
  auto col_c = col.contiguous();
  auto val_c = values.contiguous();
  auto xt_c = xt.contiguous();
  const int64_t n = xt_c.size(1);
  const int64_t nnz = val_c.numel();
  auto yt = at::empty({rows, n}, xt_c.options());
  if (col_c.scalar_type() == at::kShort) {
    check_csr(crow_c.data_ptr<int32_t>(), col_c.data_ptr<int16_t>(), rows, cols, nnz);
    spmm_rows(crow_c.data_ptr<int32_t>(), col_c.data_ptr<int16_t>(), val_c.data_ptr<float>(),
              xt_c.data_ptr<float>(), yt.data_ptr<float>(), rows, n);
  } else {
    check_csr(crow_c.data_ptr<int32_t>(), col_c.data_ptr<int32_t>(), rows, cols, nnz);
    spmm_rows(crow_c.data_ptr<int32_t>(), col_c.data_ptr<int32_t>(), val_c.data_ptr<float>(),
              xt_c.data_ptr<float>(), yt.data_ptr<float>(), rows, n);
  }
  return yt;
}

}  // namespace

TORCH_LIBRARY_IMPL(hf_sparse, CPU, m) { m.impl("spmm_csr", &spmm_csr_cpu); }
