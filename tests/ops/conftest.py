import pytest
import torch

from hf_sparse.ops import kernel_status, load_kernels


@pytest.fixture(scope="session")
def ops():
    """``torch.ops.hf_sparse`` with the C++ kernels built; skips only where no compiler exists or they are off."""
    if not load_kernels():
        reason = kernel_status()["reason"]
        if "no C++ compiler" in reason or "disabled" in reason:
            pytest.skip(reason)
        pytest.fail(f"the C++ ops failed to build: {reason}")
    return torch.ops.hf_sparse
