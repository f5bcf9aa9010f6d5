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
import warnings
from pathlib import Path

import torch

from .._resources import data_dir
from ..errors import ConfigError, quote
from ..machine import isa_flags
from ._namespace import NAMESPACE

__all__ = [
    "load",
    "status",
    "isa_path",
    "cpu_flags",
    "cpu_flag_names",
    "ISA_PATHS",
    "build_dir",
    "load_cuda",
    "cuda_status",
    "cuda_build_dir",
    "cuda_archs",
]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict = {
    "loaded": None,
    "reason": "not built yet (built on first use)",
    "isa": None,
    "int8_kernels": None,
    "amx": "amx: C++ ops not loaded",
}


def _sources() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return [root / "schema.cpp", *sorted((root / "cpu").glob("*.cpp"))]


def _headers() -> list[Path]:
    root = data_dir("kernels") / "csrc"
    return sorted([*root.glob("*.h"), *(root / "cpu").glob("*.h")])


#: The instruction-set paths of the CPU build, lowest first: the /proc/cpuinfo flags each needs, the compiler options
#: it adds (on top of the lower paths'), and optional extras (a flag, the option used where the CPU lists it). A path
#: is taken when the CPU lists all of its flags and those of every lower path.
ISA_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "portable": ((), (), ()),
    "avx2": (("avx2", "fma"), ("-mavx2", "-mfma"), (("f16c", "-mf16c"), ("avx_vnni", "-mavxvnni"))),
    "avx512": (
        ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
        ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"),
        (("avx512_vnni", "-mavx512vnni"), ("avx512_bf16", "-mavx512bf16")),
    ),
}


def _requested_isa() -> str | None:
    """The path ``HF_SPARSE_ISA`` asks for (``HF_SPARSE_PORTABLE=1``: ``portable``), or None for the CPU's best."""
    if os.environ.get("HF_SPARSE_PORTABLE") == "1":
        return "portable"
    asked = os.environ.get("HF_SPARSE_ISA", "").strip().lower()
    if not asked:
        return None
    if asked not in ISA_PATHS:
        raise ConfigError(f"HF_SPARSE_ISA={quote(asked)} is not a kernel path; choose one of {list(ISA_PATHS)}.")
    return asked


def isa_path(flags: list[str] | None = None) -> str:
    """The instruction-set path the CPU kernels are built for: the highest of :data:`ISA_PATHS` whose flags this CPU
    reports (``flags``, default :func:`hf_sparse.machine.isa_flags` read from /proc/cpuinfo), capped by the
    environment variable ``HF_SPARSE_ISA`` (``portable``, ``avx2`` or ``avx512``: e.g. to test a lower path).

    Raises:
        ConfigError: ``HF_SPARSE_ISA`` names no path, or a path this CPU cannot run.
    """
    have = set(isa_flags() if flags is None else flags)
    best, needed = "portable", set()
    for name, (required, _, _) in ISA_PATHS.items():
        needed |= set(required)
        if not needed <= have:
            break
        best = name
    asked = _requested_isa()
    if asked is None:
        return best
    order = list(ISA_PATHS)
    if order.index(asked) > order.index(best):
        raise ConfigError(
            f"HF_SPARSE_ISA={asked!r} needs CPU flags this machine does not report (its best path is {best!r}); "
            "a build for it would stop with an illegal instruction."
        )
    return asked


def cpu_flags(flags: list[str] | None = None, path: str | None = None) -> list[str]:
    """Compiler options for the CPU build: those of :func:`isa_path` (or ``path``) and every lower path, plus the
    optional extras the CPU lists (F16C, VNNI, AVX-512 BF16). ``portable``: none (one-lane C++)."""
    have = set(isa_flags() if flags is None else flags)
    path = isa_path(flags) if path is None else path
    out: list[str] = []
    for name, (_, options, extras) in ISA_PATHS.items():
        out += [*options, *(opt for flag, opt in extras if flag in have)]
        if name == path:
            break
    return out


def cpu_flag_names(flags: list[str] | None = None, path: str | None = None) -> list[str]:
    """The /proc/cpuinfo flags a CPU needs to run the build of :func:`cpu_flags` (same arguments), e.g.
    ``["avx2", "fma", "f16c", "avx512f", ..., "avx512_vnni"]``: what a prebuilt package checks before loading."""
    have = set(isa_flags() if flags is None else flags)
    path = isa_path(flags) if path is None else path
    out: list[str] = []
    for name, (required, _, extras) in ISA_PATHS.items():
        out += [*required, *(flag for flag, _ in extras if flag in have)]
        if name == path:
            break
    return out


def build_dir(path: str | None = None) -> Path:
    """Cache folder of the build, keyed by the sources' paths and content, the torch version and the compiler options
    of the instruction-set path (default: :func:`isa_path`)."""
    digest = hashlib.sha256(torch.__version__.encode())
    digest.update(" ".join(cpu_flags(path=path)).encode())
    for src in [*_sources(), *_headers()]:
        # the path too: the build files name the sources by absolute path, so two checkouts sharing one folder
        # would make each rebuild everything whenever the other has built
        digest.update(str(src.resolve()).encode())
        digest.update(src.read_bytes())
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))
    return base / "torch_extensions" / f"cpu-{digest.hexdigest()[:16]}"


def _build(path: str) -> Path:
    from torch.utils.cpp_extension import load as cpp_load

    folder = build_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    cpp_load(
        name="hf_sparse_cpu",
        sources=[str(s) for s in _sources()],
        extra_cflags=["-O3", *cpu_flags(path=path), "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        build_directory=str(folder),
        is_python_module=False,
        verbose=False,
    )
    return folder


def load() -> bool:
    """Build (once, cached) and load the CPU ops for the best instruction-set path of this CPU (:func:`isa_path`;
    where the compiler cannot build a path, the next lower one). Safe to call many times; thread-safe.

    Raises:
        ConfigError: ``HF_SPARSE_ISA`` names no path, or one this CPU cannot run.
    """
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
        order = list(ISA_PATHS)
        best = isa_path()
        for path in reversed(order[: order.index(best) + 1]):
            try:
                folder = _build(path)
                from . import _autograd, _fake  # noqa: F401  (both need the op schemas registered first)

                ops = getattr(torch.ops, NAMESPACE)
                _state.update(
                    loaded=True, reason=f"built for {path} in {folder}", isa=path, int8_kernels=ops.cpu_isa()
                )
                _check_amx(ops)
                break
            except Exception as exc:  # any build or load failure: a lower path, then the reference path
                first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if path != "portable":
                    logger.warning(
                        "hf_sparse: the %s build of the C++ ops failed (%s); trying a lower path", path, first
                    )
                    continue
                logger.warning("hf_sparse: C++ ops unavailable, using the PyTorch reference path: %s", exc)
                _state.update(loaded=False, reason=f"build failed: {first}")
        return _state["loaded"]


def _check_amx(ops) -> None:
    """Runs the AMX gates once, right after loading (CPU flags, the kernel's tile permission, and the self-checks
    that compare the tile kernels with the vector ones on a seeded problem), and warns when a self-check failed: the
    tile kernels are then off for this process and the ops take the vector kernels."""
    line = ops.amx_status()
    if "self-check failed" in line:
        msg = f"hf_sparse: the AMX tile kernels disagree with the vector kernels, so they are off: {line}"
        logger.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _amx_line() -> str:
    if not _state["loaded"]:
        return _state["amx"]
    try:
        return getattr(torch.ops, NAMESPACE).amx_status()
    except Exception as exc:  # status() never raises
        return f"amx: unknown ({type(exc).__name__}: {exc})"


def status() -> dict:
    """``{"loaded": bool | None, "reason": str, "isa": str | None, "int8_kernels": str | None, "amx": str,
    "cuda": str}``: ``loaded`` None means not attempted yet; ``isa`` is the instruction-set path the loaded build was
    compiled for (``portable``, ``avx2``, ``avx512``), ``int8_kernels`` what the integer dot products use in it (e.g.
    ``avx512-vnni``); ``cuda`` is :func:`cuda_status`.

    ``amx`` says whether the Intel AMX tile kernels are in use and, if not, why, then how many kernel runs took
    them, e.g. ``"amx: in use: int8 tiles for linear_qbsr_dyn with 16 x 64k blocks, ...; calls: int8 3, bf16 0"``
    or ``"amx: CPU lacks amx_tile; calls: int8 0, bf16 0"``. Other reasons: ``"amx: tile permission refused (...)"``
    (the Linux kernel did not grant tile data), ``"amx: self-check failed (...)"`` (the tile kernels disagreed with
    the vector kernels on a seeded problem: they are off for the process, with a warning), ``"amx: disabled by
    HF_SPARSE_DISABLE_AMX=1"``, ``"amx: not compiled (...)"`` (builds other than avx512). Where AMX is off the same
    ops take the vector kernels; the results are the same (int8: the same bits; bf16: within a bf16 step)."""
    return {**_state, "amx": _amx_line(), "cuda": cuda_status()}


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
        digest.update(str(src.resolve()).encode())  # per checkout, as build_dir
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
