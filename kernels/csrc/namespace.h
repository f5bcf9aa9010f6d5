// The namespace the ops are registered in. hf_sparse itself loads them as hf_sparse::. The same sources also build
// the standalone package published for Hugging Face's `kernels` library (hf_sparse/integrations/kernel_hub.py), with
// -DHF_SPARSE_NAMESPACE=<a name unique to that build>: TORCH_LIBRARY may define a namespace only once per process, and
// that package has to load beside hf_sparse's own build (and beside other versions of itself).
#pragma once

#include <torch/library.h>

#ifndef HF_SPARSE_NAMESPACE
#define HF_SPARSE_NAMESPACE hf_sparse
#endif

// TORCH_LIBRARY pastes its namespace argument into identifiers, which would use the macro's name rather than its
// value: one level of indirection expands HF_SPARSE_NAMESPACE first.
#define HF_SPARSE_LIBRARY_EXPANDED(ns, m) TORCH_LIBRARY(ns, m)
#define HF_SPARSE_LIBRARY(m) HF_SPARSE_LIBRARY_EXPANDED(HF_SPARSE_NAMESPACE, m)
#define HF_SPARSE_LIBRARY_FRAGMENT_EXPANDED(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define HF_SPARSE_LIBRARY_FRAGMENT(m) HF_SPARSE_LIBRARY_FRAGMENT_EXPANDED(HF_SPARSE_NAMESPACE, m)
#define HF_SPARSE_LIBRARY_IMPL_EXPANDED(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)
#define HF_SPARSE_LIBRARY_IMPL(k, m) HF_SPARSE_LIBRARY_IMPL_EXPANDED(HF_SPARSE_NAMESPACE, k, m)
