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


@pytest.fixture(scope="session")
def lower_build_cache(tmp_path_factory):
    """One ``HF_SPARSE_CACHE`` for the tests that build the kernels for a lower instruction-set path in a
    subprocess (``HF_SPARSE_ISA`` / ``HF_SPARSE_PORTABLE``), so each path compiles once per run, not once per test:
    the build folder is keyed by the sources and compiler options, and torch's build lock makes a second builder
    (another test worker) wait for the first."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if base.name.startswith("popen-gw") else base  # shared by the workers of one run
    path = root / "lower-isa-builds"
    path.mkdir(exist_ok=True)
    return path
