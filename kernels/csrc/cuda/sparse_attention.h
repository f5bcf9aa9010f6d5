// Block-sparse attention on CUDA (forward and backward): the extern "C" launchers of sparse_attention.cu.
//
// Torch-free on purpose: a later .cpp binding (or any C/C++ caller) includes this header with only the CUDA
// runtime headers on its include path. The semantics are those of the CPU op hf_sparse::sparse_attention
// (kernels/csrc/cpu/attention.cpp) and its autograd formula (hf_sparse/ops/_autograd.py).
//
// Tensors (all row-major and contiguous, all device pointers unless said otherwise):
//   q, out, d_out, d_q   (B, H, Sq, D)      elements of the launcher's dtype (f32: float, f16: __half,
//   k, v, d_k, d_v       (B, Hkv, Skv, D)   bf16: __nv_bfloat16), passed as void* to keep this header C-only;
//                                           q, k, v and d_out aligned to 4 elements (16 bytes for f32, 8 for
//                                           f16/bf16: they are read 4 elements at a time)
//   lse, d_lse           (B, H, Sq)         float32 (lse is always float32, whatever the dtype)
//   key_bias             (B, Skv)           float32 added to the scaled scores (0 or -inf), or NULL for none
// H must be a multiple of Hkv: query head h reads key/value head h / (H / Hkv) (grouped-query attention).
// D (head_dim) must be 32, 64, 96 or 128. Accumulation is in float32 for every dtype.
//
// Layout (as built by hf_sparse/attention/layout.py, BlockLayout), CSR over the nqb = ceil(Sq / block_q) query
// blocks; key blocks are always 64 keys (nkb = ceil(Skv / 64)):
//   kv_ptr      int32 (nqb + 1)              tiles of query block qb are kv_ptr[qb] .. kv_ptr[qb + 1]
//   kv_blocks   int32 (num_tiles)            key-block index of each tile
//   mask_index  int32 (num_tiles)            -1: every pair of the tile is allowed; else a row of bits
//   bits        int64 (num_partial, block_q) bit j of bits[p][i] allows key 64 * kb + j for query block_q * qb + i
// Keys >= Skv are never allowed. kv_blocks / mask_index may be NULL when num_tiles == 0, bits when num_partial == 0.
//
// The backward additionally takes the transposed layout (CSC over key blocks), so that one CTA per key block owns
// that block's dK and dV and sums them without atomics (deterministic); build it on the host with
// hf_sparse_attention_transpose_layout from the CSR arrays (then copy the three arrays to the device):
//   q_ptr         int32 (nkb + 1)    entries of key block kb are q_ptr[kb] .. q_ptr[kb + 1]
//   q_blocks      int32 (num_tiles)  query-block index of each entry (ascending within a key block)
//   t_mask_index  int32 (num_tiles)  the tile's mask_index (same meaning, same bits array)
//
// The layout arrays are read on the device as given: validate them on the host first
// (hf_sparse_attention_check_layout; the CPU op checks the same). The kernels still skip a tile whose key/query
// block or mask index is out of range and clamp the pointer ranges to [0, num_tiles], so a bad layout gives wrong
// numbers but never an out-of-bounds access.
//
// Every launcher is asynchronous on `stream` and returns 0 on success or one of the codes below. The outputs are
// fully written (no need to zero them first), including rows / keys that no tile covers (zeros; lse = -inf).
// Sizes must be >= 1 (empty tensors are the caller's early return), block_q in [1, 128]; the launchers use the
// current device (cudaGetDevice) for the shared-memory limit.
#ifndef HF_SPARSE_CUDA_SPARSE_ATTENTION_H_
#define HF_SPARSE_CUDA_SPARSE_ATTENTION_H_

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Return codes. CUDA runtime failures (a launch error, or a failing cudaFuncSetAttribute / attribute query) come
// back as HF_SPARSE_ATTN_ERR_CUDA + the cudaError_t value, so cudaGetErrorString(code - HF_SPARSE_ATTN_ERR_CUDA)
// names them; hf_sparse_attention_error_string covers every code.
enum {
  HF_SPARSE_ATTN_OK = 0,
  HF_SPARSE_ATTN_ERR_NULL_POINTER = 1,   // a required pointer is NULL
  HF_SPARSE_ATTN_ERR_BAD_SIZE = 2,       // a size <= 0, H not a multiple of Hkv, negative tile counts, or a size
                                         // beyond what the grid / int32 layout can index
  HF_SPARSE_ATTN_ERR_HEAD_DIM = 3,       // head_dim not in {32, 64, 96, 128}
  HF_SPARSE_ATTN_ERR_BLOCK_Q = 4,        // block_q not in [1, HF_SPARSE_ATTN_MAX_BLOCK_Q]
  HF_SPARSE_ATTN_ERR_ALIGNMENT = 5,      // q, k, v or d_out not aligned to 4 elements
  HF_SPARSE_ATTN_ERR_SHARED_MEMORY = 6,  // the kernel needs more shared memory than the device allows per block
                                         // (use a smaller block_q; sparse_attention.cu lists the sizes: e.g. the
                                         // backward with D = 128 needs block_q <= 72 on sm_80)
  HF_SPARSE_ATTN_ERR_LAYOUT = 7,         // hf_sparse_attention_check_layout: the layout arrays are inconsistent
  HF_SPARSE_ATTN_ERR_CUDA = 1000         // + cudaError_t
};

// Largest supported block_q (query rows per block): one warp per 8 rows, so 16 warps (512 threads) per CTA.
#define HF_SPARSE_ATTN_MAX_BLOCK_Q 128
// Keys per key block, fixed by the layout (one 64-bit mask word per query row).
#define HF_SPARSE_ATTN_KEY_BLOCK 64

// A static English description of a return code.
const char* hf_sparse_attention_error_string(int code);

// Host-side check of a CSR layout (host pointers), the same conditions as the CPU op: kv_ptr starts at 0, is
// monotone and ends at num_tiles; kv_blocks in [0, nkb); mask_index in [-1, num_partial). Returns 0 or
// HF_SPARSE_ATTN_ERR_LAYOUT (HF_SPARSE_ATTN_ERR_NULL_POINTER / _BAD_SIZE / _BLOCK_Q for bad arguments).
int hf_sparse_attention_check_layout(const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,
                                     int64_t num_tiles, int64_t num_partial, int64_t q_len, int64_t kv_len,
                                     int64_t block_q);

// Host-side CSR -> CSC transpose of a (checked) layout, host pointers: fills q_ptr (nkb + 1), q_blocks and
// t_mask_index (num_tiles each) as described above; entries of one key block keep ascending query-block order.
int hf_sparse_attention_transpose_layout(const int32_t* kv_ptr, const int32_t* kv_blocks, const int32_t* mask_index,
                                         int64_t num_tiles, int64_t q_len, int64_t kv_len, int64_t block_q,
                                         int32_t* q_ptr, int32_t* q_blocks, int32_t* t_mask_index);

// Forward: out = softmax(scale * q k^T + key_bias, over the allowed keys) v, and lse (B, H, Sq) = log-sum-exp of
// the allowed scaled scores per row; a row with no allowed key gets out = 0 and lse = -inf.
int hf_sparse_attention_fwd_f32(const void* q, const void* k, const void* v, const int32_t* kv_ptr,
                               const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                               int64_t num_tiles, int64_t num_partial, const float* key_bias, void* out, float* lse,
                               int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len,
                               int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream);
int hf_sparse_attention_fwd_f16(const void* q, const void* k, const void* v, const int32_t* kv_ptr,
                               const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                               int64_t num_tiles, int64_t num_partial, const float* key_bias, void* out, float* lse,
                               int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len,
                               int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream);
int hf_sparse_attention_fwd_bf16(const void* q, const void* k, const void* v, const int32_t* kv_ptr,
                                const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                                int64_t num_tiles, int64_t num_partial, const float* key_bias, void* out, float* lse,
                                int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len,
                                int64_t head_dim, int64_t block_q, float scale, cudaStream_t stream);

// Backward: d_q (B, H, Sq, D), d_k and d_v (B, Hkv, Skv, D), in the launcher's dtype, from d_out (NULL: zero) and
// d_lse (NULL: zero) and the forward's out (may be NULL when d_out is) and lse. With P = exp(S - lse) on allowed
// pairs: dV = P^T dO, dS = P (dO V^T - rowsum(dO out) + d_lse), dQ = scale dS K, dK = scale dS^T Q; grouped
// key/value heads get the sum over their query heads. Three kernels run in order on `stream`.
// workspace: B * H * Sq floats of device scratch (holds rowsum(d_out * out) - d_lse per query row).
int hf_sparse_attention_bwd_f32(const void* q, const void* k, const void* v, const void* out, const void* d_out,
                                const float* lse, const float* d_lse, const int32_t* kv_ptr,
                                const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                                int64_t num_tiles, int64_t num_partial, const int32_t* q_ptr,
                                const int32_t* q_blocks, const int32_t* t_mask_index, const float* key_bias,
                                void* d_q, void* d_k, void* d_v, float* workspace, int64_t batch, int64_t heads,
                                int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim, int64_t block_q,
                                float scale, cudaStream_t stream);
int hf_sparse_attention_bwd_f16(const void* q, const void* k, const void* v, const void* out, const void* d_out,
                                const float* lse, const float* d_lse, const int32_t* kv_ptr,
                                const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                                int64_t num_tiles, int64_t num_partial, const int32_t* q_ptr,
                                const int32_t* q_blocks, const int32_t* t_mask_index, const float* key_bias,
                                void* d_q, void* d_k, void* d_v, float* workspace, int64_t batch, int64_t heads,
                                int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim, int64_t block_q,
                                float scale, cudaStream_t stream);
int hf_sparse_attention_bwd_bf16(const void* q, const void* k, const void* v, const void* out, const void* d_out,
                                 const float* lse, const float* d_lse, const int32_t* kv_ptr,
                                 const int32_t* kv_blocks, const int32_t* mask_index, const int64_t* bits,
                                 int64_t num_tiles, int64_t num_partial, const int32_t* q_ptr,
                                 const int32_t* q_blocks, const int32_t* t_mask_index, const float* key_bias,
                                 void* d_q, void* d_k, void* d_v, float* workspace, int64_t batch, int64_t heads,
                                 int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t head_dim, int64_t block_q,
                                 float scale, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // HF_SPARSE_CUDA_SPARSE_ATTENTION_H_
