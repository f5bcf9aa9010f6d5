// CUDA implementations of the hf_sparse:: ops whose kernels live in spmm.cu and sparse_attention.cu: the one place
// that turns tensors into the raw pointers, sizes and stream of their torch-free extern "C" launchers
// (CONVENTIONS.md rule 5). The schemas are defined once, in kernels/csrc/schema.cpp, by the CPU extension, which
// must be loaded first (hf_sparse/ops/_loader.py does); this file only registers impls under the CUDA key.
//
// Each impl checks devices, dtypes and shapes with TORCH_CHECK_VALUE / TORCH_CHECK_TYPE (ValueError / TypeError in
// Python), makes the dense operands contiguous, allocates outputs and scratch with the tensor allocator (the caching
// allocator, on the current stream), launches on c10::cuda::getCurrentCUDAStream() and turns a launcher's non-zero
// code into an error with the header's error string.
//
// Index validation. The CPU ops check every index before using it; here:
//   * SpMM (CSR / BSR): on the device, with a few reductions folded into ONE flag and one host sync (copying col to
//     the host, nnz entries, would cost far more than the product). crow must start at 0, be monotone and end at
//     nnz; col must be in range. Setting HF_SPARSE_CUDA_CHECK_INDICES=0 skips it (no sync; for a structure that is
//     known to be valid, e.g. one packed by hf_sparse.formats and checked there). Skipping is still memory-safe:
//     the kernels clamp row ranges to [0, nnz] and skip out-of-range columns (spmm.h), so a corrupt index gives
//     wrong numbers, never an illegal memory access.
//   * Attention: the layout is small (O(query blocks + tiles)) and the backward needs its CSC transpose built on
//     the host anyway, so it is copied to the host and checked there with hf_sparse_attention_check_layout, the
//     CPU op's conditions.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include "../namespace.h"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>

#include "sparse_attention.h"
#include "spmm.h"

namespace {

// --- shared checks --------------------------------------------------------------------------------------------

void check_cuda(const at::Tensor& t, const at::Tensor& ref, const char* op, const char* name) {
  TORCH_CHECK_VALUE(t.is_cuda(), "hf_sparse::", op, " (CUDA): ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK_VALUE(t.device() == ref.device(), "hf_sparse::", op, " (CUDA): ", name, " is on ", t.device(),
                    " but the other operands are on ", ref.device());
}

bool is_float_type(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_float(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK_TYPE(is_float_type(t.scalar_type()), "hf_sparse::", op, " (CUDA): ", name,
                   " must be float32, float16 or bfloat16, got ", t.scalar_type());
}

bool check_indices_enabled() {
  // Read per call (cheap) so a process can switch it, e.g. a benchmark measuring both.
  const char* v = std::getenv("HF_SPARSE_CUDA_CHECK_INDICES");
  return v == nullptr || std::strcmp(v, "0") != 0;
}

// crow int32 (n + 1) and col int16/int32 (nnz): the structural checks of the CPU ops, on the device, one sync.
void check_structure_on_device(const at::Tensor& crow, const at::Tensor& col, int64_t n, int64_t ncols,
                               const char* op, const char* what) {
  if (!check_indices_enabled()) return;
  const int64_t nnz = col.numel();
  at::Tensor ok = (crow.select(0, 0) == 0).logical_and(crow.select(0, n) == nnz);
  if (n > 0) ok = ok.logical_and((crow.narrow(0, 1, n) >= crow.narrow(0, 0, n)).all());
  if (nnz > 0) {
    auto mm = at::aminmax(col);
    ok = ok.logical_and(std::get<0>(mm) >= 0).logical_and(std::get<1>(mm) < ncols);
  }
  TORCH_CHECK_VALUE(ok.item<bool>(), "hf_sparse::", op, " (CUDA): the sparse structure is malformed: crow must start "
                    "at 0, be non-decreasing and end at ", nnz, ", and every col must be in [0, ", ncols, ") ", what,
                    ". Validate or rebuild the weight (hf_sparse.formats); HF_SPARSE_CUDA_CHECK_INDICES=0 skips this "
                    "check");
}

// crow / col of a CSR (n = rows) or BSR (n = block rows) weight; returns index_bits.
int check_csr_args(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& ref, int64_t n, const char* op) {
  check_cuda(crow, ref, op, "crow");
  check_cuda(col, ref, op, "col");
  TORCH_CHECK_TYPE(crow.scalar_type() == at::kInt, "hf_sparse::", op, " (CUDA): crow must be int32, got ",
                   crow.scalar_type());
  TORCH_CHECK_VALUE(crow.dim() == 1 && crow.numel() == n + 1, "hf_sparse::", op, " (CUDA): crow must be 1-D with ",
                    n + 1, " entries, got ", crow.sizes());
  TORCH_CHECK_TYPE(col.scalar_type() == at::kShort || col.scalar_type() == at::kInt, "hf_sparse::", op,
                   " (CUDA): col must be int16 or int32, got ", col.scalar_type());
  TORCH_CHECK_VALUE(col.dim() == 1, "hf_sparse::", op, " (CUDA): col must be 1-D, got ", col.sizes());
  TORCH_CHECK_VALUE(col.numel() <= INT32_MAX, "hf_sparse::", op, " (CUDA): more than 2^31 - 1 entries");
  return col.scalar_type() == at::kShort ? 16 : 32;
}

void check_dense(const at::Tensor& t, int64_t dim0, const char* op, const char* name, const char* shape) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == dim0, "hf_sparse::", op, " (CUDA): ", name, " must be ", shape,
                    " with ", dim0, " rows, got ", t.sizes());
  check_float(t, op, name);
}

void check_scales(const at::Tensor& scales, const at::Tensor& ref, int64_t rows, const char* op) {
  check_cuda(scales, ref, op, "scales");
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, "hf_sparse::", op, " (CUDA): scales must be float32, got ",
                   scales.scalar_type());
  TORCH_CHECK_VALUE(scales.dim() == 1 && scales.numel() == rows, "hf_sparse::", op, " (CUDA): scales must be (",
                    rows, ",), got ", scales.sizes());
}

void check_int8_values(const at::Tensor& values, const at::Tensor& ref, const char* op) {
  check_cuda(values, ref, op, "values");
  TORCH_CHECK_TYPE(values.scalar_type() == at::kChar, "hf_sparse::", op, " (CUDA): values must be int8, got ",
                   values.scalar_type());
}

void check_same_dtype(const at::Tensor& values, const at::Tensor& dense, const char* op, const char* name) {
  TORCH_CHECK_TYPE(values.scalar_type() == dense.scalar_type(), "hf_sparse::", op, " (CUDA): values (",
                   values.scalar_type(), ") and ", name, " (", dense.scalar_type(), ") must have the same dtype");
}

void check_code(int code, const char* op) {
  TORCH_CHECK(code == HF_SPARSE_SPMM_OK, "hf_sparse::", op, " (CUDA) failed: ", hf_sparse_spmm_error_string(code),
              " (code ", code, ")");
}

void check_attn_code(int code, const char* op) {
  TORCH_CHECK(code == HF_SPARSE_ATTN_OK, "hf_sparse::", op, " (CUDA) failed: ", hf_sparse_attention_error_string(code),
              " (code ", code, ")");
}

const void* ptr_or_null(const at::Tensor& t) { return t.numel() ? t.data_ptr() : nullptr; }

// One switch over the dense dtype picks the launcher of that suffix.
#define HF_SPARSE_DISPATCH(dtype, fn, ...)                     \
  ((dtype) == at::kFloat  ? fn##_f32(__VA_ARGS__)              \
   : (dtype) == at::kHalf ? fn##_f16(__VA_ARGS__)              \
                          : fn##_bf16(__VA_ARGS__))

// --- SpMM -----------------------------------------------------------------------------------------------------

at::Tensor csr_impl(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                    const c10::optional<at::Tensor>& scales_in, int64_t rows, int64_t cols, const at::Tensor& xt_in,
                    bool transpose_out, const char* op) {
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "hf_sparse::", op, " (CUDA): negative shape (", rows, ", ", cols, ")");
  TORCH_CHECK_VALUE(xt_in.is_cuda(), "hf_sparse::", op, " (CUDA): xt must be a CUDA tensor, got ", xt_in.device());
  c10::cuda::CUDAGuard guard(xt_in.device());
  const int bits = check_csr_args(crow_in, col_in, xt_in, rows, op);
  check_dense(xt_in, cols, op, "xt", "(cols, N)");
  const bool quant = scales_in.has_value();
  if (quant) {
    check_int8_values(values_in, xt_in, op);
    check_scales(*scales_in, xt_in, rows, op);
  } else {
    check_cuda(values_in, xt_in, op, "values");
    check_same_dtype(values_in, xt_in, op, "xt");
  }
  TORCH_CHECK_VALUE(values_in.dim() == 1 && values_in.numel() == col_in.numel(), "hf_sparse::", op,
                    " (CUDA): values must be 1-D with one entry per col (", col_in.numel(), "), got ",
                    values_in.sizes());
  const int64_t n = xt_in.size(1);
  at::Tensor out = at::empty(transpose_out ? at::IntArrayRef{n, rows} : at::IntArrayRef{rows, n}, xt_in.options());
  if (out.numel() == 0) return out;
  if (cols == 0) return out.zero_();
  auto crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  auto xt = xt_in.contiguous();
  check_structure_on_device(crow, col, rows, cols, op, "(cols of the weight)");
  const int64_t nnz = col.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  int code;
  if (quant) {
    auto scales = scales_in->contiguous();
    code = HF_SPARSE_DISPATCH(xt.scalar_type(), hf_sparse_spmm_qcsr, crow.data_ptr<int32_t>(), ptr_or_null(col), bits,
                              static_cast<const int8_t*>(ptr_or_null(values)), scales.data_ptr<float>(), nnz,
                              nullptr, rows, cols, xt.data_ptr(), n, transpose_out ? 1 : 0, out.data_ptr(), stream);
  } else {
    code = HF_SPARSE_DISPATCH(xt.scalar_type(), hf_sparse_spmm_csr, crow.data_ptr<int32_t>(), ptr_or_null(col), bits,
                              ptr_or_null(values), nnz, nullptr, rows, cols, xt.data_ptr(), n, transpose_out ? 1 : 0,
                              out.data_ptr(), stream);
  }
  check_code(code, op);
  return out;
}

at::Tensor spmm_csr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                         int64_t cols, const at::Tensor& xt, bool transpose_out) {
  return csr_impl(crow, col, values, c10::nullopt, rows, cols, xt, transpose_out, "spmm_csr");
}

at::Tensor spmm_qcsr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& xt,
                          bool transpose_out) {
  return csr_impl(crow, col, values, scales, rows, cols, xt, transpose_out, "spmm_qcsr");
}

at::Tensor linear_impl(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                       const c10::optional<at::Tensor>& scales_in, int64_t rows, int64_t cols, const at::Tensor& x_in,
                       const char* op) {
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "hf_sparse::", op, " (CUDA): negative shape (", rows, ", ", cols, ")");
  TORCH_CHECK_VALUE(x_in.is_cuda(), "hf_sparse::", op, " (CUDA): x must be a CUDA tensor, got ", x_in.device());
  c10::cuda::CUDAGuard guard(x_in.device());
  const int bits = check_csr_args(crow_in, col_in, x_in, rows, op);
  TORCH_CHECK_VALUE(x_in.dim() == 2 && x_in.size(1) == cols, "hf_sparse::", op, " (CUDA): x must be (N, ", cols,
                    "), got ", x_in.sizes());
  check_float(x_in, op, "x");
  const bool quant = scales_in.has_value();
  if (quant) {
    check_int8_values(values_in, x_in, op);
    check_scales(*scales_in, x_in, rows, op);
  } else {
    check_cuda(values_in, x_in, op, "values");
    check_same_dtype(values_in, x_in, op, "x");
  }
  TORCH_CHECK_VALUE(values_in.dim() == 1 && values_in.numel() == col_in.numel(), "hf_sparse::", op,
                    " (CUDA): values must be 1-D with one entry per col (", col_in.numel(), "), got ",
                    values_in.sizes());
  const int64_t n = x_in.size(0);
  at::Tensor y = at::empty({n, rows}, x_in.options());
  if (y.numel() == 0) return y;
  if (cols == 0) return y.zero_();
  auto crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  auto x = x_in.contiguous();
  check_structure_on_device(crow, col, rows, cols, op, "(cols of the weight)");
  // Scratch for the transposed x (cols, N): from the caching allocator, so it costs no cudaMalloc per call.
  at::Tensor workspace = n > 1 ? at::empty({cols, n}, x.options()) : at::Tensor();
  void* ws = n > 1 ? workspace.data_ptr() : nullptr;
  const int64_t nnz = col.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  int code;
  if (quant) {
    auto scales = scales_in->contiguous();
    code = HF_SPARSE_DISPATCH(x.scalar_type(), hf_sparse_linear_qcsr, crow.data_ptr<int32_t>(), ptr_or_null(col),
                              bits, static_cast<const int8_t*>(ptr_or_null(values)), scales.data_ptr<float>(), nnz,
                              nullptr, rows, cols, x.data_ptr(), n, y.data_ptr(), ws, stream);
  } else {
    code = HF_SPARSE_DISPATCH(x.scalar_type(), hf_sparse_linear_csr, crow.data_ptr<int32_t>(), ptr_or_null(col),
                              bits, ptr_or_null(values), nnz, nullptr, rows, cols, x.data_ptr(), n, y.data_ptr(), ws,
                              stream);
  }
  check_code(code, op);
  return y;
}

at::Tensor linear_csr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                           int64_t cols, const at::Tensor& x) {
  return linear_impl(crow, col, values, c10::nullopt, rows, cols, x, "linear_csr");
}

at::Tensor linear_qcsr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                            const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& x) {
  return linear_impl(crow, col, values, scales, rows, cols, x, "linear_qcsr");
}

at::Tensor bsr_impl(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                    const c10::optional<at::Tensor>& scales_in, int64_t rows, int64_t cols, const at::Tensor& xt_in,
                    bool transpose_out, const char* op) {
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "hf_sparse::", op, " (CUDA): negative shape (", rows, ", ", cols, ")");
  TORCH_CHECK_VALUE(xt_in.is_cuda(), "hf_sparse::", op, " (CUDA): xt must be a CUDA tensor, got ", xt_in.device());
  c10::cuda::CUDAGuard guard(xt_in.device());
  TORCH_CHECK_VALUE(values_in.dim() == 3, "hf_sparse::", op, " (CUDA): values must be (blocks, R, C), got ",
                    values_in.sizes());
  const int64_t R = values_in.size(1), C = values_in.size(2);
  TORCH_CHECK_VALUE((R == 16 || R == 32) && (C == 16 || C == 32), "hf_sparse::", op,
                    " (CUDA): block sizes must be 16 or 32, got ", R, "x", C, " (the reference path takes others)");
  TORCH_CHECK_VALUE(rows % R == 0 && cols % C == 0, "hf_sparse::", op, " (CUDA): shape (", rows, ", ", cols,
                    ") is not divisible by the block ", R, "x", C);
  const int64_t brows = rows / R, bcols = cols / C;
  const int bits = check_csr_args(crow_in, col_in, xt_in, brows, op);
  TORCH_CHECK_VALUE(values_in.size(0) == col_in.numel(), "hf_sparse::", op, " (CUDA): values has ", values_in.size(0),
                    " blocks but col has ", col_in.numel());
  check_dense(xt_in, cols, op, "xt", "(cols, N)");
  const bool quant = scales_in.has_value();
  if (quant) {
    check_int8_values(values_in, xt_in, op);
    check_scales(*scales_in, xt_in, rows, op);
  } else {
    check_cuda(values_in, xt_in, op, "values");
    check_same_dtype(values_in, xt_in, op, "xt");
  }
  const int64_t n = xt_in.size(1);
  at::Tensor out = at::empty(transpose_out ? at::IntArrayRef{n, rows} : at::IntArrayRef{rows, n}, xt_in.options());
  if (out.numel() == 0) return out;
  if (cols == 0) return out.zero_();
  auto crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  auto xt = xt_in.contiguous();
  check_structure_on_device(crow, col, brows, bcols, op, "(block columns)");
  const int64_t blocks = col.numel();
  auto stream = c10::cuda::getCurrentCUDAStream();
  int code;
  if (quant) {
    auto scales = scales_in->contiguous();
    code = HF_SPARSE_DISPATCH(xt.scalar_type(), hf_sparse_spmm_qbsr, crow.data_ptr<int32_t>(), ptr_or_null(col), bits,
                              static_cast<const int8_t*>(ptr_or_null(values)), scales.data_ptr<float>(), blocks, rows,
                              cols, R, C, xt.data_ptr(), n, transpose_out ? 1 : 0, out.data_ptr(), stream);
  } else {
    code = HF_SPARSE_DISPATCH(xt.scalar_type(), hf_sparse_spmm_bsr, crow.data_ptr<int32_t>(), ptr_or_null(col), bits,
                              ptr_or_null(values), blocks, rows, cols, R, C, xt.data_ptr(), n, transpose_out ? 1 : 0,
                              out.data_ptr(), stream);
  }
  check_code(code, op);
  return out;
}

at::Tensor spmm_bsr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values, int64_t rows,
                         int64_t cols, const at::Tensor& xt, bool transpose_out) {
  return bsr_impl(crow, col, values, c10::nullopt, rows, cols, xt, transpose_out, "spmm_bsr");
}

at::Tensor spmm_qbsr_cuda(const at::Tensor& crow, const at::Tensor& col, const at::Tensor& values,
                          const at::Tensor& scales, int64_t rows, int64_t cols, const at::Tensor& xt,
                          bool transpose_out) {
  return bsr_impl(crow, col, values, scales, rows, cols, xt, transpose_out, "spmm_qbsr");
}

// --- attention ------------------------------------------------------------------------------------------------

struct AttnShape {
  int64_t B, H, Hkv, Sq, Skv, D;
};

AttnShape check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t block_q, const char* op) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "hf_sparse::", op,
                    " (CUDA): q, k, v must be 4-D (B, H, S, D), got ", q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  check_cuda(k, q, op, "k");
  check_cuda(v, q, op, "v");
  check_float(q, op, "q");
  TORCH_CHECK_TYPE(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "hf_sparse::", op,
                   " (CUDA): q, k, v must have the same dtype, got ", q.scalar_type(), ", ", k.scalar_type(), ", ",
                   v.scalar_type());
  AttnShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  TORCH_CHECK_VALUE(k.size(0) == s.B && v.sizes() == k.sizes() && k.size(3) == s.D && s.Hkv > 0 && s.H % s.Hkv == 0,
                    "hf_sparse::", op, " (CUDA): k and v must be (", s.B, ", Hkv, Skv, ", s.D,
                    ") with H a multiple of Hkv, got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK_VALUE(s.D == 32 || s.D == 64 || s.D == 96 || s.D == 128, "hf_sparse::", op,
                    " (CUDA): head_dim must be 32, 64, 96 or 128, got ", s.D);
  TORCH_CHECK_VALUE(block_q >= 1 && block_q <= HF_SPARSE_ATTN_MAX_BLOCK_Q, "hf_sparse::", op,
                    " (CUDA): block_q must be in [1, ", HF_SPARSE_ATTN_MAX_BLOCK_Q, "], got ", block_q);
  return s;
}

// The layout's arrays, checked on the host (the CPU op's conditions) and on the device for the kernels.
struct Layout {
  at::Tensor kv_ptr, kv_blocks, mask_index, bits;  // device, contiguous
  at::Tensor h_kv_ptr, h_kv_blocks, h_mask_index;  // host copies
  int64_t num_tiles, num_partial;
};

Layout check_layout(const at::Tensor& q, const at::Tensor& kv_ptr, const at::Tensor& kv_blocks,
                    const at::Tensor& mask_index, const at::Tensor& bits, const AttnShape& s, int64_t block_q,
                    const char* op) {
  for (auto* t : {&kv_ptr, &kv_blocks, &mask_index}) {
    TORCH_CHECK_TYPE(t->scalar_type() == at::kInt, "hf_sparse::", op, " (CUDA): kv_ptr, kv_blocks and mask_index "
                     "must be int32, got ", t->scalar_type());
    TORCH_CHECK_VALUE(t->dim() == 1, "hf_sparse::", op, " (CUDA): kv_ptr, kv_blocks and mask_index must be 1-D");
  }
  TORCH_CHECK_TYPE(bits.scalar_type() == at::kLong, "hf_sparse::", op, " (CUDA): bits must be int64, got ",
                   bits.scalar_type());
  const int64_t nqb = (s.Sq + block_q - 1) / block_q;
  TORCH_CHECK_VALUE(kv_ptr.numel() == nqb + 1, "hf_sparse::", op, " (CUDA): kv_ptr must have ", nqb + 1,
                    " entries for Sq=", s.Sq, ", block_q=", block_q, ", got ", kv_ptr.numel());
  TORCH_CHECK_VALUE(mask_index.numel() == kv_blocks.numel(), "hf_sparse::", op,
                    " (CUDA): kv_blocks and mask_index must have the same length");
  TORCH_CHECK_VALUE(bits.dim() == 2 && bits.size(1) == block_q, "hf_sparse::", op, " (CUDA): bits must be (partial, ",
                    block_q, "), got ", bits.sizes());
  Layout l;
  l.num_tiles = kv_blocks.numel();
  l.num_partial = bits.size(0);
  // One small copy each (the layout is O(tiles)); .cpu() of a CUDA tensor synchronises with the current stream.
  l.h_kv_ptr = kv_ptr.to(at::kCPU).contiguous();
  l.h_kv_blocks = kv_blocks.to(at::kCPU).contiguous();
  l.h_mask_index = mask_index.to(at::kCPU).contiguous();
  const int code = hf_sparse_attention_check_layout(
      l.h_kv_ptr.data_ptr<int32_t>(), l.num_tiles ? l.h_kv_blocks.data_ptr<int32_t>() : nullptr,
      l.num_tiles ? l.h_mask_index.data_ptr<int32_t>() : nullptr, l.num_tiles, l.num_partial, s.Sq, s.Skv, block_q);
  TORCH_CHECK_VALUE(code == HF_SPARSE_ATTN_OK, "hf_sparse::", op, " (CUDA): invalid block layout: ",
                    hf_sparse_attention_error_string(code), " (kv_ptr must start at 0, be non-decreasing and end at ",
                    l.num_tiles, "; kv_blocks in [0, ", (s.Skv + HF_SPARSE_ATTN_KEY_BLOCK - 1) / HF_SPARSE_ATTN_KEY_BLOCK,
                    "); mask_index in [-1, ", l.num_partial, "))");
  auto dev = q.options().dtype(at::kInt);
  l.kv_ptr = kv_ptr.to(dev).contiguous();
  l.kv_blocks = kv_blocks.to(dev).contiguous();
  l.mask_index = mask_index.to(dev).contiguous();
  l.bits = bits.to(q.options().dtype(at::kLong)).contiguous();
  return l;
}

// key_bias float32 (B, Skv) on q's device, or undefined for none (an empty tensor in the schema).
at::Tensor check_key_bias(const at::Tensor& key_bias, const at::Tensor& q, const AttnShape& s, const char* op) {
  if (key_bias.numel() == 0) return at::Tensor();
  TORCH_CHECK_TYPE(key_bias.scalar_type() == at::kFloat, "hf_sparse::", op, " (CUDA): key_bias must be float32, got ",
                   key_bias.scalar_type());
  TORCH_CHECK_VALUE(key_bias.dim() == 2 && key_bias.size(0) == s.B && key_bias.size(1) == s.Skv, "hf_sparse::", op,
                    " (CUDA): key_bias must be (", s.B, ", ", s.Skv, ") or empty, got ", key_bias.sizes());
  return key_bias.to(q.device()).contiguous();
}

const float* float_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

std::tuple<at::Tensor, at::Tensor> sparse_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                         const at::Tensor& v_in, const at::Tensor& kv_ptr,
                                                         const at::Tensor& kv_blocks, const at::Tensor& mask_index,
                                                         const at::Tensor& bits, const at::Tensor& key_bias,
                                                         double scale, int64_t block_q) {
  const char* op = "sparse_attention";
  TORCH_CHECK_VALUE(q_in.is_cuda(), "hf_sparse::", op, " (CUDA): q must be a CUDA tensor, got ", q_in.device());
  c10::cuda::CUDAGuard guard(q_in.device());
  const AttnShape s = check_qkv(q_in, k_in, v_in, block_q, op);
  at::Tensor out = at::empty({s.B, s.H, s.Sq, s.D}, q_in.options());
  at::Tensor lse = at::empty({s.B, s.H, s.Sq}, q_in.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  if (s.Skv == 0) return {out.zero_(), lse.fill_(-std::numeric_limits<float>::infinity())};
  const Layout l = check_layout(q_in, kv_ptr, kv_blocks, mask_index, bits, s, block_q, op);
  const at::Tensor bias = check_key_bias(key_bias, q_in, s, op);
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  const int code = HF_SPARSE_DISPATCH(
      q.scalar_type(), hf_sparse_attention_fwd, q.data_ptr(), k.data_ptr(), v.data_ptr(),
      l.kv_ptr.data_ptr<int32_t>(), l.num_tiles ? l.kv_blocks.data_ptr<int32_t>() : nullptr,
      l.num_tiles ? l.mask_index.data_ptr<int32_t>() : nullptr, l.num_partial ? l.bits.data_ptr<int64_t>() : nullptr,
      l.num_tiles, l.num_partial, float_or_null(bias), out.data_ptr(), lse.data_ptr<float>(), s.B, s.H, s.Hkv, s.Sq,
      s.Skv, s.D, block_q, static_cast<float>(scale), c10::cuda::getCurrentCUDAStream());
  check_attn_code(code, op);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sparse_attention_backward_cuda(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
    const at::Tensor& out_in, const at::Tensor& lse_in, const at::Tensor& kv_ptr, const at::Tensor& kv_blocks,
    const at::Tensor& mask_index, const at::Tensor& bits, const at::Tensor& key_bias, double scale, int64_t block_q) {
  const char* op = "sparse_attention_backward";
  TORCH_CHECK_VALUE(q_in.is_cuda(), "hf_sparse::", op, " (CUDA): q must be a CUDA tensor, got ", q_in.device());
  c10::cuda::CUDAGuard guard(q_in.device());
  const AttnShape s = check_qkv(q_in, k_in, v_in, block_q, op);
  check_cuda(grad_out_in, q_in, op, "grad_out");
  check_cuda(out_in, q_in, op, "out");
  check_cuda(lse_in, q_in, op, "lse");
  TORCH_CHECK_VALUE(grad_out_in.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(), "hf_sparse::", op,
                    " (CUDA): grad_out and out must have q's shape ", q_in.sizes(), ", got ", grad_out_in.sizes(),
                    " and ", out_in.sizes());
  TORCH_CHECK_TYPE(grad_out_in.scalar_type() == q_in.scalar_type() && out_in.scalar_type() == q_in.scalar_type(),
                   "hf_sparse::", op, " (CUDA): grad_out and out must have q's dtype ", q_in.scalar_type());
  TORCH_CHECK_TYPE(lse_in.scalar_type() == at::kFloat, "hf_sparse::", op, " (CUDA): lse must be float32, got ",
                   lse_in.scalar_type());
  TORCH_CHECK_VALUE(lse_in.dim() == 3 && lse_in.size(0) == s.B && lse_in.size(1) == s.H && lse_in.size(2) == s.Sq,
                    "hf_sparse::", op, " (CUDA): lse must be (", s.B, ", ", s.H, ", ", s.Sq, "), got ",
                    lse_in.sizes());
  at::Tensor dq = at::empty_like(q_in, at::MemoryFormat::Contiguous);
  at::Tensor dk = at::empty_like(k_in, at::MemoryFormat::Contiguous);
  at::Tensor dv = at::empty_like(v_in, at::MemoryFormat::Contiguous);
  if (q_in.numel() == 0 || k_in.numel() == 0) return {dq.zero_(), dk.zero_(), dv.zero_()};
  const Layout l = check_layout(q_in, kv_ptr, kv_blocks, mask_index, bits, s, block_q, op);
  const at::Tensor bias = check_key_bias(key_bias, q_in, s, op);
  // The CSC transpose the dK/dV kernel walks (one CTA per key block, no atomics), built on the host.
  const int64_t nkb = (s.Skv + HF_SPARSE_ATTN_KEY_BLOCK - 1) / HF_SPARSE_ATTN_KEY_BLOCK;
  auto host_int = at::TensorOptions().dtype(at::kInt).device(at::kCPU);
  at::Tensor h_q_ptr = at::empty({nkb + 1}, host_int);
  at::Tensor h_q_blocks = at::empty({l.num_tiles}, host_int);
  at::Tensor h_t_mask = at::empty({l.num_tiles}, host_int);
  int code = hf_sparse_attention_transpose_layout(
      l.h_kv_ptr.data_ptr<int32_t>(), l.num_tiles ? l.h_kv_blocks.data_ptr<int32_t>() : nullptr,
      l.num_tiles ? l.h_mask_index.data_ptr<int32_t>() : nullptr, l.num_tiles, s.Sq, s.Skv, block_q,
      h_q_ptr.data_ptr<int32_t>(), l.num_tiles ? h_q_blocks.data_ptr<int32_t>() : nullptr,
      l.num_tiles ? h_t_mask.data_ptr<int32_t>() : nullptr);
  check_attn_code(code, op);
  auto dev_int = q_in.options().dtype(at::kInt);
  at::Tensor q_ptr = h_q_ptr.to(dev_int), q_blocks = h_q_blocks.to(dev_int), t_mask = h_t_mask.to(dev_int);
  at::Tensor workspace = at::empty({s.B, s.H, s.Sq}, q_in.options().dtype(at::kFloat));
  auto q = q_in.contiguous(), k = k_in.contiguous(), v = v_in.contiguous();
  auto out = out_in.contiguous(), grad_out = grad_out_in.contiguous(), lse = lse_in.contiguous();
  code = HF_SPARSE_DISPATCH(
      q.scalar_type(), hf_sparse_attention_bwd, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(),
      grad_out.data_ptr(), lse.data_ptr<float>(), nullptr, l.kv_ptr.data_ptr<int32_t>(),
      l.num_tiles ? l.kv_blocks.data_ptr<int32_t>() : nullptr, l.num_tiles ? l.mask_index.data_ptr<int32_t>() : nullptr,
      l.num_partial ? l.bits.data_ptr<int64_t>() : nullptr, l.num_tiles, l.num_partial, q_ptr.data_ptr<int32_t>(),
      l.num_tiles ? q_blocks.data_ptr<int32_t>() : nullptr, l.num_tiles ? t_mask.data_ptr<int32_t>() : nullptr,
      float_or_null(bias), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), workspace.data_ptr<float>(), s.B, s.H, s.Hkv,
      s.Sq, s.Skv, s.D, block_q, static_cast<float>(scale), c10::cuda::getCurrentCUDAStream());
  check_attn_code(code, op);
  return {dq, dk, dv};
}

// --- the training ops and N:M, on top of the CSR kernel ---------------------------------------------------------

// The CSR (int32 columns) of W^T for W in CSR, built on the device: a stable sort of the entries by column keeps
// each transposed row's entries in ascending original-row order, so the products are deterministic. The row
// pointers are clamped into a monotone 0 .. nnz sequence first, so that with the structure check switched off a
// malformed crow gives wrong numbers, never an out-of-range gather (a column out of range makes bincount's
// length differ from cols: an exception).
std::tuple<at::Tensor, at::Tensor, at::Tensor> transpose_csr(const at::Tensor& crow, const at::Tensor& col,
                                                             const at::Tensor& values, int64_t rows, int64_t cols) {
  const auto index = crow.options().dtype(at::kLong);
  const int64_t nnz = col.numel();
  at::Tensor bounds = std::get<0>(at::cummax(crow.to(at::kLong).clamp(0, nnz), 0));
  bounds.select(0, 0).fill_(0);
  bounds.select(0, rows).fill_(nnz);
  at::Tensor counts = bounds.narrow(0, 1, rows) - bounds.narrow(0, 0, rows);
  at::Tensor row_of = at::repeat_interleave(at::arange(rows, index), counts);
  at::Tensor col64 = col.to(at::kLong);
  at::Tensor order = at::argsort(col64, /*stable=*/true);
  at::Tensor per_col = at::bincount(col64, {}, cols);
  TORCH_CHECK_VALUE(per_col.numel() == cols, "hf_sparse::spmm_csr_t (CUDA): a col is out of [0, ", cols, ")");
  at::Tensor t_crow = at::zeros({cols + 1}, index);
  t_crow.narrow(0, 1, cols).copy_(per_col.cumsum(0));
  return {t_crow.to(at::kInt), row_of.index_select(0, order).to(at::kInt), values.index_select(0, order)};
}

// dXt (cols, N) = W^T @ dYt, W (rows x cols) in CSR with values of the dense dtype: spmm_csr on W's transpose.
at::Tensor spmm_csr_t_cuda(const at::Tensor& crow_in, const at::Tensor& col_in, const at::Tensor& values_in,
                           int64_t rows, int64_t cols, const at::Tensor& yt_in) {
  const char* op = "spmm_csr_t";
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "hf_sparse::", op, " (CUDA): negative shape (", rows, ", ", cols, ")");
  TORCH_CHECK_VALUE(yt_in.is_cuda(), "hf_sparse::", op, " (CUDA): yt must be a CUDA tensor, got ", yt_in.device());
  c10::cuda::CUDAGuard guard(yt_in.device());
  check_csr_args(crow_in, col_in, yt_in, rows, op);
  check_dense(yt_in, rows, op, "yt", "(rows, N)");
  check_cuda(values_in, yt_in, op, "values");
  check_same_dtype(values_in, yt_in, op, "yt");
  TORCH_CHECK_VALUE(values_in.dim() == 1 && values_in.numel() == col_in.numel(), "hf_sparse::", op,
                    " (CUDA): values must be 1-D with one entry per col (", col_in.numel(), "), got ",
                    values_in.sizes());
  const int64_t n = yt_in.size(1);
  auto crow = crow_in.contiguous(), col = col_in.contiguous(), values = values_in.contiguous();
  check_structure_on_device(crow, col, rows, cols, op, "(cols of the weight)");
  at::Tensor out = at::empty({cols, n}, yt_in.options());
  if (out.numel() == 0) return out;
  if (rows == 0 || col.numel() == 0) return out.zero_();
  auto yt = yt_in.contiguous();
  auto [t_crow, t_col, t_values] = transpose_csr(crow, col, values, rows, cols);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int code = HF_SPARSE_DISPATCH(yt.scalar_type(), hf_sparse_spmm_csr, t_crow.data_ptr<int32_t>(),
                                      t_col.data_ptr(), 32, t_values.data_ptr(), t_col.numel(), nullptr, cols, rows,
                                      yt.data_ptr(), n, 0, out.data_ptr(), stream);
  check_code(code, op);
  return out;
}

// out (nnz,) = dot(Yt[row(p)], Xt[col(p)]): the value gradient.
at::Tensor sddmm_csr_cuda(const at::Tensor& crow_in, const at::Tensor& col_in, int64_t rows, int64_t cols,
                          const at::Tensor& yt_in, const at::Tensor& xt_in) {
  const char* op = "sddmm_csr";
  TORCH_CHECK_VALUE(rows >= 0 && cols >= 0, "hf_sparse::", op, " (CUDA): negative shape (", rows, ", ", cols, ")");
  TORCH_CHECK_VALUE(xt_in.is_cuda(), "hf_sparse::", op, " (CUDA): xt must be a CUDA tensor, got ", xt_in.device());
  c10::cuda::CUDAGuard guard(xt_in.device());
  const int bits = check_csr_args(crow_in, col_in, xt_in, rows, op);
  check_cuda(yt_in, xt_in, op, "yt");
  check_dense(yt_in, rows, op, "yt", "(rows, N)");
  check_dense(xt_in, cols, op, "xt", "(cols, N)");
  check_same_dtype(yt_in, xt_in, op, "xt");
  TORCH_CHECK_VALUE(yt_in.size(1) == xt_in.size(1), "hf_sparse::", op, " (CUDA): yt and xt must have the same N, got ",
                    yt_in.size(1), " and ", xt_in.size(1));
  const int64_t nnz = col_in.numel(), n = xt_in.size(1);
  auto crow = crow_in.contiguous(), col = col_in.contiguous();
  check_structure_on_device(crow, col, rows, cols, op, "(cols of the weight)");
  at::Tensor out = at::empty({nnz}, xt_in.options());
  if (nnz == 0) return out;
  if (n == 0 || rows == 0 || cols == 0) return out.zero_();
  auto yt = yt_in.contiguous(), xt = xt_in.contiguous();
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int code = HF_SPARSE_DISPATCH(xt.scalar_type(), hf_sparse_sddmm_csr, crow.data_ptr<int32_t>(), col.data_ptr(),
                                      bits, nnz, rows, cols, yt.data_ptr(), xt.data_ptr(), n, out.data_ptr(), stream);
  check_code(code, op);
  return out;
}

// N:M (values and int8 in-group positions, both (rows, cols / m * n)) as CSR: entry j of row r is column
// (j / n) * m + indices[r, j]; every row has cols / m * n entries. The CSR kernel then runs it (whether a dedicated
// N:M kernel pays is for a GPU benchmark to say; for 2:4 in float16 / bfloat16, hf_sparse's dispatch prefers
// torch's semi-structured sparse tensor cores where they are available).
at::Tensor nm_impl(const at::Tensor& values_in, const at::Tensor& indices_in, const c10::optional<at::Tensor>& scales,
                   int64_t nn, int64_t mm, int64_t cols, const at::Tensor& xt_in, bool transpose_out, const char* op) {
  TORCH_CHECK_VALUE(nn > 0 && nn <= mm && mm <= 127, "hf_sparse::", op, " (CUDA): need 0 < n <= m <= 127, got n=", nn,
                    ", m=", mm);
  TORCH_CHECK_VALUE(cols >= 0 && cols % mm == 0, "hf_sparse::", op, " (CUDA): cols=", cols,
                    " is not divisible by m=", mm);
  TORCH_CHECK_VALUE(values_in.dim() == 2 && indices_in.dim() == 2 && values_in.sizes() == indices_in.sizes() &&
                        values_in.size(1) == cols / mm * nn,
                    "hf_sparse::", op, " (CUDA): values and indices must both be (rows, cols/m*n=", cols / mm * nn,
                    "), got ", values_in.sizes(), " and ", indices_in.sizes());
  TORCH_CHECK_VALUE(xt_in.is_cuda(), "hf_sparse::", op, " (CUDA): xt must be a CUDA tensor, got ", xt_in.device());
  c10::cuda::CUDAGuard guard(xt_in.device());
  check_cuda(indices_in, xt_in, op, "indices");
  TORCH_CHECK_TYPE(indices_in.scalar_type() == at::kChar, "hf_sparse::", op, " (CUDA): indices must be int8, got ",
                   indices_in.scalar_type());
  const int64_t rows = values_in.size(0), width = values_in.size(1);
  TORCH_CHECK_VALUE(rows * width <= INT32_MAX, "hf_sparse::", op, " (CUDA): more than 2^31 - 1 entries");
  if (check_indices_enabled() && indices_in.numel() > 0) {
    auto mm_pair = at::aminmax(indices_in);
    TORCH_CHECK_VALUE(std::get<0>(mm_pair).item<int>() >= 0 && std::get<1>(mm_pair).item<int>() < mm, "hf_sparse::",
                      op, " (CUDA): every index must be in [0, m=", mm,
                      "); HF_SPARSE_CUDA_CHECK_INDICES=0 skips this check");
  }
  const auto index = indices_in.options().dtype(at::kInt);
  at::Tensor group = at::arange(width, index).div(nn, "floor").mul(mm);
  at::Tensor col = (indices_in.contiguous().to(at::kInt) + group).reshape({-1});
  at::Tensor crow = at::arange(rows + 1, index).mul(width);
  return csr_impl(crow, col, values_in.reshape({-1}), scales, rows, cols, xt_in, transpose_out, op);
}

at::Tensor spmm_nm_cuda(const at::Tensor& values, const at::Tensor& indices, int64_t nn, int64_t mm, int64_t cols,
                        const at::Tensor& xt, bool transpose_out) {
  return nm_impl(values, indices, c10::nullopt, nn, mm, cols, xt, transpose_out, "spmm_nm");
}

at::Tensor spmm_qnm_cuda(const at::Tensor& values, const at::Tensor& indices, const at::Tensor& scales, int64_t nn,
                         int64_t mm, int64_t cols, const at::Tensor& xt, bool transpose_out) {
  return nm_impl(values, indices, scales, nn, mm, cols, xt, transpose_out, "spmm_qnm");
}

#undef HF_SPARSE_DISPATCH

}  // namespace

HF_SPARSE_LIBRARY_IMPL(CUDA, m) {
  m.impl("spmm_csr", &spmm_csr_cuda);
  m.impl("spmm_qcsr", &spmm_qcsr_cuda);
  m.impl("linear_csr", &linear_csr_cuda);
  m.impl("linear_qcsr", &linear_qcsr_cuda);
  m.impl("spmm_bsr", &spmm_bsr_cuda);
  m.impl("spmm_qbsr", &spmm_qbsr_cuda);
  m.impl("spmm_nm", &spmm_nm_cuda);
  m.impl("spmm_qnm", &spmm_qnm_cuda);
  m.impl("spmm_csr_t", &spmm_csr_t_cuda);
  m.impl("sddmm_csr", &sddmm_csr_cuda);
  m.impl("sparse_attention", &sparse_attention_cuda);
  m.impl("sparse_attention_backward", &sparse_attention_backward_cuda);
}
