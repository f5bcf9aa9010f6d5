"""Builds and loads the C++ ops on first use (cached); never lets a missing compiler break ``import hf_sparse``.

``load()`` returns True when the ``hf_sparse::`` ops are registered with their CPU kernels; otherwise callers use
the pure-PyTorch reference and :func:`status` says why (``hf-sparse info`` prints it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
from pathlib import Path

import torch

from .._resources import data_dir

__all__ = ["load", "status", "build_dir", "load_cuda", "cuda_status", "cuda_build_dir", "cuda_archs"]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {"loaded": None, "reason": "not built yet (built on first use)"}


def _sources() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return [root / "schema.cpp", *sorted((root / "cpu").glob("*.cpp"))]


def _headers() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return sorted([*root.glob("*.h"), *(root / "cpu").glob("*.h")])


def cpu_flags() -> list[str]:
    """Vector ISA flags for this CPU: AVX2 + FMA where /proc/cpuinfo lists both (plus F16C, float16 <-> float32
    conversions, where it is listed too), else the portable one-lane path (``HF_SPARSE_PORTABLE=1`` forces the
    portable path, e.g. to test it or to build for older CPUs)."""
    if os.environ.get("HF_SPARSE_PORTABLE") == "1":
        return []
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    if not {"avx2", "fma"} <= words:
        return []
    return ["-mavx2", "-mfma", *(["-mf16c"] if "f16c" in words else [])]


def build_dir() -> Path:
    """Cache folder of the build, keyed by the sources' content and the torch version."""
    digest = hashlib.sha256(torch.__version__.encode())
    digest.update(" ".join(cpu_flags()).encode())
    for src in [*_sources(), *_headers()]:
        digest.update(src.read_bytes())
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))
    return base / "torch_extensions" / f"cpu-{digest.hexdigest()[:16]}"


def load() -> bool:
    """Build (once, cached) and load the CPU ops. Safe to call many times; thread-safe."""
    done = _state["loaded"]
    if done is not None:  # the common case, on every layer call: no lock
        return done
    with _lock:
        if _state["loaded"] is not None:
            return _state["loaded"]
        if os.environ.get("HF_SPARSE_DISABLE_KERNELS") == "1":
            _state.update(loaded=False, reason="disabled by HF_SPARSE_DISABLE_KERNELS=1")
            return False
        if shutil.which(os.environ.get("CXX", "c++")) is None:
            _state.update(loaded=False, reason="no C++ compiler found (set CXX or install g++)")
            return False
        try:
            from torch.utils.cpp_extension import load as cpp_load

            folder = build_dir()
            folder.mkdir(parents=True, exist_ok=True)
            cpp_load(
                name="hf_sparse_cpu",
                sources=[str(s) for s in _sources()],
                extra_cflags=["-O3", *cpu_flags(), "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                build_directory=str(folder),
                is_python_module=False,
                verbose=False,
            )
            from . import _autograd, _fake  # noqa: F401  (both need the op schemas registered first)

            _state.update(loaded=True, reason=f"built in {folder}")
        except Exception as exc:  # any build or load failure: fall back to the reference path
            logger.warning("hf_sparse: C++ ops unavailable, using the PyTorch reference path: %s", exc)
            _state.update(loaded=False, reason=f"build failed: {str(exc).splitlines()[0][:300]}")
        return _state["loaded"]


def status() -> dict:
    """``{"loaded": bool | None, "reason": str, "cuda": str}`` (None: not attempted yet); ``cuda`` is
    :func:`cuda_status`."""
    return {**_state, "cuda": cuda_status()}


# --- the CUDA extension -------------------------------------------------------------------------------------------
# A second, schema-free extension: binding.cpp registers CUDA impls of the schemas that schema.cpp (built into the CPU
# extension above) defines, so it is loaded only after that one. Built only where it can run: a CUDA build of torch,
# a visible GPU and nvcc; anywhere else status() says which is missing, and nothing is attempted.

_cuda_state: dict = {"loaded": None, "reason": None, "folder": None}
# Always compiled for these (A100 / H100-H200 class), plus the current device's architecture when it is another one.
_BASE_ARCHS = ("80", "90")


def _cuda_sources() -> list[Path]:
    root = data_dir("kernels") / "csrc" / "cuda"
    return [root / "binding.cpp", root / "spmm.cu", root / "sparse_attention.cu"]


def _cuda_headers() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return sorted([*root.glob("*.h"), *(root / "cuda").glob("*.h")])


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME, "/usr/local/cuda"):
        if home and os.access(Path(home) / "bin" / "nvcc", os.X_OK):
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_unavailable() -> str | None:
    """Why the CUDA extension cannot be built here (None: it can). Cheap: nothing is compiled."""
    if os.environ.get("HF_SPARSE_DISABLE_KERNELS") == "1":
        return "disabled by HF_SPARSE_DISABLE_KERNELS=1"
    if torch.version.cuda is None:
        return f"torch has no CUDA (torch {torch.__version__} is a CPU build)"
    try:
        available = torch.cuda.is_available()
    except Exception:  # a broken driver install must not break status()
        available = False
    if not available:
        return "no GPU (torch.cuda.is_available() is False)"
    if _nvcc() is None:
        return "nvcc missing (set CUDA_HOME or put nvcc on PATH)"
    return None


def cuda_archs() -> list[str]:
    """Compute capabilities to build for: sm_80, sm_90 and the current device's (e.g. "89")."""
    archs = list(_BASE_ARCHS)
    try:
        major, minor = torch.cuda.get_device_capability()
        if f"{major}{minor}" not in archs:
            archs.append(f"{major}{minor}")
    except Exception:  # no device: the base archs only
        pass
    return archs


def cuda_build_dir() -> Path:
    """Cache folder of the CUDA build, keyed by the sources' content, torch's and CUDA's versions and the archs."""
    digest = hashlib.sha256(f"{torch.__version__} {torch.version.cuda} {' '.join(cuda_archs())}".encode())
    for src in [*_cuda_sources(), *_cuda_headers()]:
        digest.update(src.read_bytes())
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))
    return base / "torch_extensions" / f"cuda-{digest.hexdigest()[:16]}"


def load_cuda() -> bool:
    """Build (once, cached) and load the CUDA impls; True when they are registered. Never raises."""
    done = _cuda_state["loaded"]
    if done is not None:
        return done
    why = _cuda_unavailable()
    if why is not None:  # not cached: a later call (e.g. after CUDA_HOME is set) may succeed
        _cuda_state["reason"] = why
        return False
    if not load():  # the schemas live in the CPU extension
        _cuda_state["reason"] = f"the CPU extension (which defines the op schemas) is not loaded: {_state['reason']}"
        return False
    with _lock:
        if _cuda_state["loaded"] is not None:
            return _cuda_state["loaded"]
        try:
            from torch.utils.cpp_extension import load as cpp_load

            folder = cuda_build_dir()
            folder.mkdir(parents=True, exist_ok=True)
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in cuda_archs()]
            cpp_load(
                name="hf_sparse_cuda",
                sources=[str(s) for s in _cuda_sources()],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "-lineinfo", *gencode],
                build_directory=str(folder),
                is_python_module=False,
                verbose=os.environ.get("HF_SPARSE_VERBOSE_BUILD") == "1",
            )
            _cuda_state.update(loaded=True, reason=None, folder=str(folder))
        except Exception as exc:  # any build or load failure: CUDA tensors take the reference path
            logger.warning("hf_sparse: CUDA ops unavailable, using the PyTorch reference path: %s", exc)
            _cuda_state.update(loaded=False, reason=f"build failed: {str(exc).splitlines()[0][:300]}")
        return _cuda_state["loaded"]


def cuda_status() -> str:
    """``"built in <folder>"`` or ``"not built (reason: ...)"``; nothing is built to answer."""
    if _cuda_state["loaded"]:
        return f"built in {_cuda_state['folder']}"
    why = _cuda_state["reason"] or _cuda_unavailable()
    return f"not built (reason: {why or 'not attempted yet: built on first use of a CUDA tensor'})"
