// The one definition of every hf_sparse:: op schema. Implementations register per device in cpu/*.cpp (and, where
// CUDA is built, in the CUDA binding).
#include <torch/library.h>

TORCH_LIBRARY(hf_sparse, m) {
  // Yt = W @ Xt for W stored as CSR (rows x cols): crow int32 (rows+1), col int16/int32 (nnz), values (nnz).
  // Xt is (cols, N) row-major, so the inner loop runs over the dense dimension N. Returns (rows, N).
  m.def("spmm_csr(Tensor crow, Tensor col, Tensor values, int rows, int cols, Tensor xt) -> Tensor");
}
