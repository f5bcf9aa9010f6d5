// Argument checks shared by the CPU ops. Every op validates all of its arguments with these (and its own
// TORCH_CHECKs) before it reads or writes any element: the ops are public (torch.ops.hf_sparse.*), so a direct call
// with arguments nobody validated must raise, naming the op and the argument, and never touch memory outside its
// tensors. The scans over indices that this needs are O(nnz) and run once per call, outside the hot loops (or, where
// an index is checked right before its use, the kernel skips it and the call raises afterwards).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <initializer_list>
#include <new>
#include <string>
#include <utility>

namespace hf_sparse_cpu {

// Every integer size argument, and every size an op derives from one, stays below 2^40: then products of two sizes
// with a small factor (bits, a block side, bytes per element) cannot overflow int64. No real weight comes near it.
constexpr int64_t kMaxDim = int64_t{1} << 40;

inline void check_size(int64_t v, const char* op, const char* name) {
  TORCH_CHECK_VALUE(v >= 0 && v < kMaxDim, "hf_sparse::", op, ": ", name, " must be in [0, 2^40), got ", v);
}

// The dispatcher picks the CPU kernel when any argument is a CPU tensor; the others must be CPU tensors too (a raw
// pointer of another device's memory must never be read here).
inline void check_cpu(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors) {
  for (const auto& [name, t] : tensors) {
    TORCH_CHECK_VALUE(!t->defined() || t->device().is_cpu(), "hf_sparse::", op, ": ", name,
                      " must be a CPU tensor, got one on ", t->device());
  }
}

// Every entry of an integer index tensor (int8, int16, int32 or int64; contiguous) in [0, bound). The kernels check
// each index right before they use it; this scan is for the calls where nothing is used (an empty dense operand),
// so a malformed index raises whatever the other sizes are.
inline void check_index_range(const at::Tensor& idx, int64_t bound, const char* op, const char* name) {
  const int64_t n = idx.numel();
  auto scan = [&](const auto* p) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = static_cast<int64_t>(p[i]);
      TORCH_CHECK_VALUE(v >= 0 && v < bound, "hf_sparse::", op, ": ", name, "[", i, "]=", v, " is out of range [0, ",
                        bound, ")");
    }
  };
  switch (idx.scalar_type()) {
    case at::kChar: scan(idx.data_ptr<int8_t>()); break;
    case at::kShort: scan(idx.data_ptr<int16_t>()); break;
    case at::kInt: scan(idx.data_ptr<int32_t>()); break;
    case at::kLong: scan(idx.data_ptr<int64_t>()); break;
    default: TORCH_CHECK_VALUE(false, "hf_sparse::", op, ": ", name, " has an unsupported dtype ", idx.scalar_type());
  }
}

// Allocates a result. A size the machine cannot hold (a huge size argument that no input tensor bounds) raises
// naming the op and the result, rather than the allocator's message alone.
template <typename F>
at::Tensor allocate(const char* op, const char* what, F&& make) {
  std::string why;
  try {
    return make();
  } catch (const c10::Error& e) {
    why = e.what_without_backtrace();
  } catch (const std::bad_alloc&) {
    why = "std::bad_alloc";
  }
  TORCH_CHECK(false, "hf_sparse::", op, ": cannot allocate the ", what, ": ", why.substr(0, why.find('\n')));
}

}  // namespace hf_sparse_cpu
