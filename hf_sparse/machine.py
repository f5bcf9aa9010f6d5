"""What machine a result was measured on (recorded in every report and benchmark record): the CPU model and its
micro-architecture, the vector instruction sets it reports, its caches, cores, torch's own CPU capability, GPU and
library versions."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["machine_info", "cpu_caches", "llc_bytes", "isa_flags", "cpu_identity", "torch_threads"]

#: The instruction-set flags of /proc/cpuinfo that decide which kernels and dense paths are fast, in a stable order.
ISA_FLAGS = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)

#: (vendor, family, model) -> micro-architecture, for the CPUs this project is measured on (a virtual machine often
#: reports only "AMD EPYC" as the model name). Unknown ones are reported as family/model numbers.
_UARCH = {
    ("AuthenticAMD", 23, 49): "AMD Zen 2 (Rome)",
    ("AuthenticAMD", 25, 1): "AMD Zen 3 (Milan)",
    ("AuthenticAMD", 25, 17): "AMD Zen 4 (Genoa)",
    ("AuthenticAMD", 25, 160): "AMD Zen 4c (Bergamo)",
    ("AuthenticAMD", 26, 2): "AMD Zen 5 (Turin)",
    ("AuthenticAMD", 26, 17): "AMD Zen 5 (Turin)",
    ("GenuineIntel", 6, 106): "Intel Ice Lake-SP",
    ("GenuineIntel", 6, 143): "Intel Sapphire Rapids",
    ("GenuineIntel", 6, 207): "Intel Emerald Rapids",
    ("GenuineIntel", 6, 173): "Intel Granite Rapids",
}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_identity() -> dict:
    """Vendor, family, model, stepping and the micro-architecture they name (or ``None`` when unknown)."""
    info = _cpuinfo()

    def number(key: str) -> int | None:
        value = info.get(key, "")
        return int(value) if value.isdigit() else None

    vendor, family, model = info.get("vendor_id"), number("cpu family"), number("model")
    return {
        "vendor": vendor,
        "family": family,
        "model": model,
        "stepping": number("stepping"),
        "uarch": _UARCH.get((vendor, family, model)),
    }


def isa_flags() -> list[str]:
    """The instruction sets of :data:`ISA_FLAGS` this CPU reports."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in ISA_FLAGS if f in flags]


def _size(text: str) -> int | None:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)", text.strip())
    if match is None:
        return None
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]


def cpu_caches(root: str | os.PathLike = "/sys/devices/system/cpu/cpu0/cache") -> list[dict]:
    """The first CPU's caches from sysfs: level, type, bytes, and the CPUs that share each (empty when unreadable)."""
    caches = []
    for index in sorted(Path(root).glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = _size((index / "size").read_text())
            shared = (index / "shared_cpu_list").read_text().strip()
        except (OSError, ValueError):
            continue
        if size is not None:
            caches.append({"level": level, "type": kind, "bytes": size, "shared_cpu_list": shared})
    return caches


def llc_bytes(caches: list[dict] | None = None) -> int | None:
    """Bytes of the last-level cache (the largest level's unified or data cache), or ``None`` when unknown."""
    caches = cpu_caches() if caches is None else caches
    data = [c for c in caches if c["type"] in ("Unified", "Data")]
    if not data:
        return None
    top = max(c["level"] for c in data)
    return max(c["bytes"] for c in data if c["level"] == top)


def machine_info() -> dict:
    """CPU model, micro-architecture, ISA flags, caches, cores, threads torch uses, torch's CPU capability, GPU (if
    any) and library versions."""
    import torch
    import transformers

    caches = cpu_caches()
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    info = {
        "cpu": _cpu_model(),
        **cpu_identity(),
        "isa_flags": isa_flags(),
        "torch_cpu_capability": capability,
        "caches": caches,
        "llc_bytes": llc_bytes(caches),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch using ``threads`` threads (``None``: as it is); the caller's setting comes back
    afterwards, also when the block raises (a job's ``threads:`` setting must not outlive the job)."""
    import torch

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
