"""The machine description every report and benchmark record carries: CPU identity, ISA flags, caches, and the
size a "cold" benchmark case cycles through."""

from __future__ import annotations

from hf_sparse.benchmarking import MIN_COLD_BYTES, cold_bytes
from hf_sparse.machine import ISA_FLAGS, cpu_caches, llc_bytes, machine_info


def _cache(root, index, level, kind, size, shared="0"):
    folder = root / f"index{index}"
    folder.mkdir()
    for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
        (folder / name).write_text(f"{value}\n")


def test_caches_and_the_last_level_are_read_from_sysfs(tmp_path):
    _cache(tmp_path, 0, 1, "Data", "32K")
    _cache(tmp_path, 1, 1, "Instruction", "32K")
    _cache(tmp_path, 2, 2, "Unified", "1024K")
    _cache(tmp_path, 3, 3, "Unified", "32768K", "0-1")
    (tmp_path / "index4").mkdir()  # unreadable: skipped, not an error
    caches = cpu_caches(tmp_path)
    assert [(c["level"], c["type"], c["bytes"]) for c in caches] == [
        (1, "Data", 32 << 10),
        (1, "Instruction", 32 << 10),
        (2, "Unified", 1 << 20),
        (3, "Unified", 32 << 20),
    ]
    assert llc_bytes(caches) == 32 << 20
    assert llc_bytes([]) is None


def test_cold_cases_cycle_through_twice_the_last_level_cache_and_at_least_the_floor():
    assert cold_bytes(32 << 20) == MIN_COLD_BYTES
    assert cold_bytes(105 << 20) == 210 << 20
    assert cold_bytes(None) >= MIN_COLD_BYTES and cold_bytes(0) == MIN_COLD_BYTES


def test_machine_info_names_the_cpu_its_instruction_sets_and_caches():
    info = machine_info()
    assert info["cpu"] and set(info["isa_flags"]) <= set(ISA_FLAGS)
    for key in ("vendor", "family", "model", "uarch", "torch_cpu_capability", "caches", "llc_bytes"):
        assert key in info
    if info["caches"]:
        assert info["llc_bytes"] == max(
            c["bytes"]
            for c in info["caches"]
            if c["level"] == max(c["level"] for c in info["caches"]) and c["type"] != "Instruction"
        )
