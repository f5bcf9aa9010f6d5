// Sparse weight x dense matrix products (SpMM) on CUDA: the extern "C" launchers of spmm.cu.
//
// Torch-free on purpose (CONVENTIONS.md rule 5): a later .cpp binding (or any C/C++ caller) includes this header with
// only the CUDA runtime headers on its include path, and registers these as the CUDA impls of the hf_sparse:: ops of
// the same names (kernels/csrc/schema.cpp). The semantics are those of the CPU ops:
//   hf_sparse_spmm_csr_*     spmm_csr      Yt = W @ Xt                      (kernels/csrc/cpu/spmm_csr.cpp)
//   hf_sparse_spmm_qcsr_*    spmm_qcsr     the same, int8 values, one float32 scale per row
//   hf_sparse_linear_csr_*   linear_csr    Y = X @ W^T in the Linear layout
//   hf_sparse_linear_qcsr_*  linear_qcsr   the same, int8 values, one float32 scale per row
//   hf_sparse_spmm_bsr_*     spmm_bsr      Yt = W @ Xt for W in R x C blocks (kernels/csrc/cpu/spmm_blocked.cpp)
//   hf_sparse_spmm_qbsr_*    spmm_qbsr     the same, int8 values, one float32 scale per row
//   hf_sparse_sddmm_csr_*    sddmm_csr     out[p] = dot(Yt[row(p)], Xt[col(p)]) at W's stored positions (the value
//                                          gradient; spmm_csr_t, the input gradient, is spmm_csr on W's transpose,
//                                          which the binding builds on the device)
//
// The suffix is the dtype of the dense operands (f32: float, f16: __half, bf16: __nv_bfloat16), passed as void* to
// keep this header C-only; it is also the dtype of the values of the non-quantized launchers. (The CPU ops take
// float32 / float64 and, for the q ops, float32 dense operands; here every launcher takes float32, float16 and
// bfloat16 dense operands, and no float64.) Accumulation is in float32 for every dtype; each output is rounded once.
//
// Weight W (rows x cols), device pointers, all contiguous:
//   CSR  crow    int32 (rows + 1)           entries of row r are crow[r] .. crow[r + 1]
//        col     int16 or int32 (nnz)       column of each entry; index_bits = 16 or 32 says which
//        values  (nnz)                      the launcher's dtype, or int8 for the q launchers
//   BSR  R x C blocks (block_r x block_c, each 16 or 32), rows % R == 0, cols % C == 0, CSR over rows / R block rows:
//        crow    int32 (rows / R + 1)       blocks of block row br are crow[br] .. crow[br + 1]
//        col     int16 or int32 (blocks)    block column of each block (in [0, cols / C))
//        values  (blocks, R, C)             row-major blocks; the launcher's dtype, or int8 for the q launchers
//   scales  float32 (rows)                  q launchers only: W[r, c] = values[p] * scales[r]
//   row_order int32 (rows), or NULL         CSR only, optional: the order in which rows are handed to warps, a
//                                           permutation of [0, rows). NULL is 0, 1, 2, ... Build it once per weight
//                                           with hf_sparse_spmm_row_order (longest rows first; see spmm.cu).
// Dense operands, row-major and contiguous, of the launcher's dtype:
//   spmm_*    xt (cols, N)  ->  out (rows, N), or with transpose_out != 0 out (N, rows) (what a Linear layer
//             returns, written by the kernel directly: no transpose pass)
//   linear_*  x (N, cols)   ->  y (N, rows);  workspace: cols * N elements of the dtype (device scratch that must not
//             overlap x or y; x is transposed into it first); may be NULL when N == 1 (X is then already Xt)
// Every pointer must be aligned to its element size (what any allocator gives); 16-byte alignment and N a multiple
// of 16 / sizeof(dtype) let the kernels use 16-byte vector loads and stores, anything else takes a scalar path.
//
// The sparse structure is read on the device as given. Index range checking is the caller's job, on the host side,
// as for the CPU ops: the binding / Python wrapper checks crow (starts at 0, monotone, ends at nnz / blocks), col
// (in [0, cols), BSR in [0, cols / C)) and row_order (a permutation) before calling; hf_sparse_spmm_check_csr does
// it on host copies. The kernels never read out of bounds for any structure: they clamp each row's pointer range to
// [0, nnz], skip entries whose column is out of range and row_order entries outside [0, rows) -- so a malformed
// structure gives wrong numbers (and, for a row_order that is not a permutation, output rows left unwritten), never
// an illegal access. For a well-formed structure every output element is written (no need to zero `out`): rows
// without entries get 0.
//
// Every launcher is asynchronous on `stream` and returns 0 on success or one of the codes below. Sizes must be >= 1
// (empty tensors are the caller's early return); nnz / blocks may be 0 (then col and values may be NULL).
#ifndef HF_SPARSE_CUDA_SPMM_H_
#define HF_SPARSE_CUDA_SPMM_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Return codes. CUDA runtime failures (a launch error, a failing cudaFuncSetAttribute) come back as
// HF_SPARSE_SPMM_ERR_CUDA + the cudaError_t value; hf_sparse_spmm_error_string covers every code.
enum {
  HF_SPARSE_SPMM_OK = 0,
  HF_SPARSE_SPMM_ERR_NULL_POINTER = 1,   // a required pointer is NULL (crow, xt / x, out / y always; col and values
                                         // when nnz > 0; scales for the q launchers; workspace for linear_* at N > 1)
  HF_SPARSE_SPMM_ERR_BAD_SIZE = 2,       // rows, cols or N <= 0, nnz / blocks < 0, or a size beyond int32 (rows,
                                         // cols, nnz: crow is int32)
  HF_SPARSE_SPMM_ERR_INDEX_TYPE = 3,     // index_bits is not 16 or 32
  HF_SPARSE_SPMM_ERR_BLOCK_SIZE = 4,     // BSR: block_r or block_c not in {16, 32}
  HF_SPARSE_SPMM_ERR_NOT_DIVISIBLE = 5,  // BSR: rows not a multiple of block_r or cols not a multiple of block_c
  HF_SPARSE_SPMM_ERR_ALIGNMENT = 6,      // a pointer not aligned to its element size
  HF_SPARSE_SPMM_ERR_STRUCTURE = 7,      // hf_sparse_spmm_check_csr: crow / col are not a valid CSR structure
  HF_SPARSE_SPMM_ERR_CUDA = 1000         // + cudaError_t
};

// A static English description of a return code.
const char* hf_sparse_spmm_error_string(int code);

// Host-side check of a CSR structure (host pointers), the conditions of the CPU ops: crow[0] == 0, crow monotone,
// crow[rows] == nnz, every col in [0, cols). For BSR pass rows / R, cols / C and the number of blocks. Returns 0,
// HF_SPARSE_SPMM_ERR_STRUCTURE, or _NULL_POINTER / _BAD_SIZE / _INDEX_TYPE for bad arguments.
int hf_sparse_spmm_check_csr(const int32_t* crow, const void* col, int index_bits, int64_t rows, int64_t cols,
                             int64_t nnz);

// Host-side row order for the CSR launchers (host pointers): order[i] = the row with the i-th most entries, ties in
// ascending row order. Returns 0 or _NULL_POINTER / _BAD_SIZE.
int hf_sparse_spmm_row_order(const int32_t* crow, int64_t rows, int32_t* order);

// spmm_csr: out = W @ xt, W in CSR with values of the dtype.
int hf_sparse_spmm_csr_f32(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                           const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
                           int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_csr_f16(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                           const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
                           int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_csr_bf16(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                            const int32_t* row_order, int64_t rows, int64_t cols, const void* xt, int64_t n,
                            int transpose_out, void* out, cudaStream_t stream);

// spmm_qcsr: out = (W_int8 * scales[:, None]) @ xt.
int hf_sparse_spmm_qcsr_f32(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                            const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,
                            const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_qcsr_f16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                            const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,
                            const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_qcsr_bf16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                             const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,
                             const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);

// linear_csr: y (N, rows) = x (N, cols) @ W^T. Two kernels on `stream`: x -> workspace (cols, N), then spmm_csr with
// transpose_out.
int hf_sparse_linear_csr_f32(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                             const int32_t* row_order, int64_t rows, int64_t cols, const void* x, int64_t n, void* y,
                             void* workspace, cudaStream_t stream);
int hf_sparse_linear_csr_f16(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                             const int32_t* row_order, int64_t rows, int64_t cols, const void* x, int64_t n, void* y,
                             void* workspace, cudaStream_t stream);
int hf_sparse_linear_csr_bf16(const int32_t* crow, const void* col, int index_bits, const void* values, int64_t nnz,
                              const int32_t* row_order, int64_t rows, int64_t cols, const void* x, int64_t n, void* y,
                              void* workspace, cudaStream_t stream);

// linear_qcsr: y = x @ (W_int8 * scales[:, None])^T.
int hf_sparse_linear_qcsr_f32(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                              const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,
                              const void* x, int64_t n, void* y, void* workspace, cudaStream_t stream);
int hf_sparse_linear_qcsr_f16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                              const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows, int64_t cols,
                              const void* x, int64_t n, void* y, void* workspace, cudaStream_t stream);
int hf_sparse_linear_qcsr_bf16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                               const float* scales, int64_t nnz, const int32_t* row_order, int64_t rows,
                               int64_t cols, const void* x, int64_t n, void* y, void* workspace, cudaStream_t stream);

// spmm_bsr: out = W @ xt, W in block_r x block_c blocks with values of the dtype.
int hf_sparse_spmm_bsr_f32(const int32_t* crow, const void* col, int index_bits, const void* values,
                           int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, int64_t block_c,
                           const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_bsr_f16(const int32_t* crow, const void* col, int index_bits, const void* values,
                           int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, int64_t block_c,
                           const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);
int hf_sparse_spmm_bsr_bf16(const int32_t* crow, const void* col, int index_bits, const void* values,
                            int64_t blocks, int64_t rows, int64_t cols, int64_t block_r, int64_t block_c,
                            const void* xt, int64_t n, int transpose_out, void* out, cudaStream_t stream);

// spmm_qbsr: out = (W_int8 * scales[:, None]) @ xt, W in blocks.
int hf_sparse_spmm_qbsr_f32(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                            const float* scales, int64_t blocks, int64_t rows, int64_t cols, int64_t block_r,
                            int64_t block_c, const void* xt, int64_t n, int transpose_out, void* out,
                            cudaStream_t stream);
int hf_sparse_spmm_qbsr_f16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                            const float* scales, int64_t blocks, int64_t rows, int64_t cols, int64_t block_r,
                            int64_t block_c, const void* xt, int64_t n, int transpose_out, void* out,
                            cudaStream_t stream);
int hf_sparse_spmm_qbsr_bf16(const int32_t* crow, const void* col, int index_bits, const int8_t* values,
                             const float* scales, int64_t blocks, int64_t rows, int64_t cols, int64_t block_r,
                             int64_t block_c, const void* xt, int64_t n, int transpose_out, void* out,
                             cudaStream_t stream);

// sddmm_csr: out (nnz,) = the dot products of yt (rows, N) and xt (cols, N) rows at W's CSR positions, in the dtype
// (float32 accumulation). out may be NULL when nnz == 0. Out-of-range columns give 0.
int hf_sparse_sddmm_csr_f32(const int32_t* crow, const void* col, int index_bits, int64_t nnz, int64_t rows,
                            int64_t cols, const void* yt, const void* xt, int64_t n, void* out, cudaStream_t stream);
int hf_sparse_sddmm_csr_f16(const int32_t* crow, const void* col, int index_bits, int64_t nnz, int64_t rows,
                            int64_t cols, const void* yt, const void* xt, int64_t n, void* out, cudaStream_t stream);
int hf_sparse_sddmm_csr_bf16(const int32_t* crow, const void* col, int index_bits, int64_t nnz, int64_t rows,
                             int64_t cols, const void* yt, const void* xt, int64_t n, void* out, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // HF_SPARSE_CUDA_SPMM_H_
