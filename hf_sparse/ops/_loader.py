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

__all__ = ["load", "status", "build_dir"]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {"loaded": None, "reason": "not built yet (built on first use)"}


def _sources() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return [root / "schema.cpp", *sorted((root / "cpu").glob("*.cpp"))]


def _headers() -> list[Path]:
    return sorted((data_dir("kernels") / "csrc" / "cpu").glob("*.h"))


def cpu_flags() -> list[str]:
    """Vector ISA flags for this CPU: AVX2 + FMA where /proc/cpuinfo lists both, else the portable one-lane path
    (``HF_SPARSE_PORTABLE=1`` forces the portable path, e.g. to test it or to build for older CPUs)."""
    if os.environ.get("HF_SPARSE_PORTABLE") == "1":
        return []
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= words else []


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
    """``{"loaded": bool | None, "reason": str}`` (None: not attempted yet)."""
    return dict(_state)
