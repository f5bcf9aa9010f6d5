"""hf_sparse:: ops: typed wrappers, fake impls, pure-PyTorch references and the lazy C++ loader."""

from ._loader import load as load_kernels
from ._loader import status as kernel_status
from .spmm import spmm_csr, spmm_csr_reference

__all__ = ["load_kernels", "kernel_status", "spmm_csr", "spmm_csr_reference"]
