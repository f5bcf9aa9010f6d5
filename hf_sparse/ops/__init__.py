"""hf_sparse:: ops: typed wrappers, fake impls, autograd formulas, pure-PyTorch references, the lazy loader, and the
cost model that picks a storage format per layer from kernel timings on this machine."""

from ._loader import cuda_status as cuda_kernel_status
from ._loader import load as load_kernels
from ._loader import load_cuda as load_cuda_kernels
from ._loader import status as kernel_status
from .choose import CostModel, FormatChoice, calibrate, choose_format, cost_model
from .embedding import (
    explain_qrow,
    lookup_rows,
    qrow_embedding_bag,
    qrow_embedding_bag_reference,
    qrow_lookup,
    qrow_lookup_reference,
)
from .spmm import (
    BACKENDS,
    dequantize_weight,
    dynamic_int8_linear,
    explain,
    sparse_linear,
    spmm,
    spmm_csr,
    spmm_csr_reference,
    spmm_reference,
)

__all__ = [
    "load_kernels",
    "kernel_status",
    "load_cuda_kernels",
    "cuda_kernel_status",
    "spmm",
    "spmm_reference",
    "sparse_linear",
    "spmm_csr",
    "spmm_csr_reference",
    "dequantize_weight",
    "dynamic_int8_linear",
    "explain",
    "BACKENDS",
    "qrow_lookup",
    "qrow_lookup_reference",
    "qrow_embedding_bag",
    "qrow_embedding_bag_reference",
    "explain_qrow",
    "lookup_rows",
    "choose_format",
    "FormatChoice",
    "CostModel",
    "cost_model",
    "calibrate",
]
