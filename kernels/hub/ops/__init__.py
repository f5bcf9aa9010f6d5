"""This build's compiled ops (namespace @@namespace@@), loaded once per process."""

from pathlib import Path

import torch

from ._namespace import NAMESPACE

#: "cpu" or "cuda": the backend this build of the package runs.
BACKEND = "@@backend@@"
_REQUIRED_CPU_FLAGS = tuple("@@cpu_flags@@".split())


def _check_cpu() -> None:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return
    missing = [flag for flag in _REQUIRED_CPU_FLAGS if flag not in words]
    if missing:
        raise ImportError(
            f"this build of hf-sparse-kernels needs a CPU with {', '.join(_REQUIRED_CPU_FLAGS)}; this one lacks "
            f"{', '.join(missing)}. Build a package for it with `hf-sparse package-kernels`."
        )


_check_cpu()
torch.ops.load_library(str(Path(__file__).with_name("@@library@@")))
ops = getattr(torch.ops, NAMESPACE)

from . import _autograd, _fake  # noqa: E402, F401  (they register on the ops loaded above)
