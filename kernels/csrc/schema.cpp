// The one definition of every hf_sparse:: op schema. Implementations register per device in cpu/*.cpp (and, where
// CUDA is built, in the CUDA binding). Dense operands are transposed, (K, N) row-major, so kernels run their inner
// loops over the contiguous dense dimension N.
#include "namespace.h"

HF_SPARSE_LIBRARY(m) {
  // Yt = W @ Xt for W stored as CSR (rows x cols): crow int32 (rows+1), col int16/int32 (nnz), values (nnz).
  // Xt is (cols, N). Returns (rows, N), or with transpose_out=True its transpose (N, rows) as a contiguous tensor
  // (what a Linear layer returns), written by the kernel directly. Same for spmm_bsr and spmm_nm. values and Xt share
  // one dtype: float32, float64, or bfloat16 (then sums are float32 and each result is rounded to bfloat16 once; the
  // same for linear_csr, spmm_bsr and spmm_nm).
  m.def(
      "spmm_csr(Tensor crow, Tensor col, Tensor values, int rows, int cols, Tensor xt, bool transpose_out=False) "
      "-> Tensor");
  // dXt = W^T @ dYt for the same CSR W; dYt is (rows, N). Returns (cols, N). The input gradient of spmm_csr.
  m.def("spmm_csr_t(Tensor crow, Tensor col, Tensor values, int rows, int cols, Tensor yt) -> Tensor");
  // out[p] = dot(Yt[row(p)], Xt[col(p)]) at W's stored positions only. Returns (nnz,). The value gradient.
  m.def("sddmm_csr(Tensor crow, Tensor col, int rows, int cols, Tensor yt, Tensor xt) -> Tensor");
  // Yt = W @ Xt for W in CSR with int8 values and one float32 scale per row (W[r, c] = values[p] * scales[r]).
  // Xt is float32 (cols, N). Same output convention as spmm_csr.
  m.def(
      "spmm_qcsr(Tensor crow, Tensor col, Tensor values, Tensor scales, int rows, int cols, Tensor xt, "
      "bool transpose_out=False) -> Tensor");
  // Y = X @ W^T in the Linear layout: X (N, cols) and Y (N, rows) row-major float32, W in CSR with float32 values
  // (linear_csr; or X, Y and values all bfloat16) or int8 values and per-row float32 scales (linear_qcsr). No
  // transposed copy of X is needed.
  m.def("linear_csr(Tensor crow, Tensor col, Tensor values, int rows, int cols, Tensor x) -> Tensor");
  m.def("linear_qcsr(Tensor crow, Tensor col, Tensor values, Tensor scales, int rows, int cols, Tensor x) -> Tensor");
  // The float32 (rows, cols) weight of a qdense layer: (code - zero_point) * scale per group. values: int8 (rows,
  // cols) for 8 bits, uint8 (rows, cols * bits / 8) packed low bits first for 4 and 2; scales float32 (rows or 1,
  // groups); zero_points int8 like scales, or empty for symmetric codes.
  m.def("dequantize(Tensor values, Tensor scales, Tensor zero_points, int bits, int rows, int cols) -> Tensor");
  // Yt = W @ Xt for W in R x C blocks: crow int32 (rows/R+1), col int16/int32 block columns, values (blocks, R, C).
  m.def(
      "spmm_bsr(Tensor crow, Tensor col, Tensor values, int rows, int cols, Tensor xt, bool transpose_out=False) "
      "-> Tensor");
  // Yt = W @ Xt for W in n:m form: values (rows, cols/m*n), indices int8 (rows, cols/m*n) positions in the group.
  m.def("spmm_nm(Tensor values, Tensor indices, int n, int m, int cols, Tensor xt, bool transpose_out=False) -> Tensor");
  // The same two with int8 values and one float32 scale per row (W[r, :] = codes[r, :] * scales[r]); Xt float32.
  m.def(
      "spmm_qbsr(Tensor crow, Tensor col, Tensor values, Tensor scales, int rows, int cols, Tensor xt, "
      "bool transpose_out=False) -> Tensor");
  m.def(
      "spmm_qnm(Tensor values, Tensor indices, Tensor scales, int n, int m, int cols, Tensor xt, "
      "bool transpose_out=False) -> Tensor");
  // Y = quantize(X) @ W^T (+ bias), the Linear layout, for W in R x C blocks (C a multiple of 4) of int8 codes with
  // one float32 scale per row, and X float32 (N, cols) quantised per token to asymmetric 8 bits at run time (as
  // torch's dynamic int8 Linear does); integer dot products (VNNI where the CPU has it). Returns float32 (N, rows).
  m.def(
      "linear_qbsr_dyn(Tensor crow, Tensor col, Tensor values, Tensor scales, Tensor? bias, int rows, int cols, "
      "Tensor x) -> Tensor");
  // Block-sparse attention: q (B, H, Sq, D), k and v (B, Hkv, Skv, D) float32, H a multiple of Hkv. Layout: CSR over
  // query blocks of block_q rows: kv_ptr int32 (nqb + 1), kv_blocks int32 key blocks of 64 keys, mask_index int32
  // (-1: the whole tile is allowed; else a row of bits), bits int64 (partial tiles, block_q) one 64-bit key mask per
  // query. key_bias float32 (B, Skv) added to the scores (0 or -inf for padding), or empty. Returns the output
  // (B, H, Sq, D) and the log-sum-exp of each score row (B, H, Sq) (-inf, with a zero output, where no key is
  // allowed).
  m.def(
      "sparse_attention(Tensor q, Tensor k, Tensor v, Tensor kv_ptr, Tensor kv_blocks, Tensor mask_index, "
      "Tensor bits, Tensor key_bias, float scale, int block_q) -> (Tensor, Tensor)");
  // Its gradients (dq, dk, dv) from grad_out, the forward's out and lse, over the same layout.
  m.def(
      "sparse_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
      "Tensor kv_ptr, Tensor kv_blocks, Tensor mask_index, Tensor bits, Tensor key_bias, float scale, int block_q) "
      "-> (Tensor, Tensor, Tensor)");
  // Row-wise quantised embedding table (qrow): values uint8 (rows, cols * bits / 8 + 4), one row per table row
  // holding its unsigned bits-bit codes (8, 4 or 2; 4 and 2 packed low bits first, cols * bits / 8 bytes), then its
  // float16 scale, then its float16 bias (2 bytes each, little-endian): W[r, j] = c * scale[r] + bias[r]. Rows need
  // not be adjacent: a view whose bytes within a row are contiguous is read in place, stride(0) bytes apart. indices
  // int32 or int64 (n,) in [0, rows) (else IndexError). Inference only (no autograd formula).
  // qrow_lookup returns the rows W[indices] as float32 (n, cols).
  m.def("qrow_lookup(Tensor values, int bits, int cols, Tensor indices) -> Tensor");
  // torch.nn.functional.embedding_bag on a qrow table: offsets int32 or int64 (bags,) hold each bag's start
  // (offsets[0] = 0, non-decreasing; the last bag ends at n), or with include_last_offset (bags + 1,) whose last entry
  // must be n. mode 0 sums each bag, 1 averages it (an empty bag gives zeros). per_sample_weights float32 (n,) scale
  // each row before the sum (mode 0 only). Returns float32 (bags, cols).
  m.def(
      "qrow_embedding_bag(Tensor values, int bits, int cols, Tensor indices, Tensor offsets, int mode, "
      "Tensor? per_sample_weights=None, bool include_last_offset=False) -> Tensor");
}
