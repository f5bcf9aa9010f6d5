"""Every hf_sparse:: C++ op called directly with random malformed arguments (tests/ops/kernel_fuzz.py), under
AddressSanitizer + UBSan and on the normal build: each call returns what the raw-argument reference computes or
raises naming the op and an argument; no crash, no hang, bounded memory. The counts are printed (``-s``)."""

import re
import shutil

import kernel_fuzz as fuzz
import pytest
import torch

# Calls per op. The sanitizer run is the one the acceptance counts quote: 15 ops x 3,000 calls, under a minute
# on two cores after a one-time build of about a minute (cached, keyed by the sources).
SANITIZED_CALLS = 3000
PLAIN_CALLS = 1000
TIMEOUT_S = 1200  # a hang shows as the subprocess timing out, with the case it was on


def _check(result: dict, calls_per_op: int) -> None:
    assert not result["crashed"], (
        f"the fuzz process died (exit {result.get('rc')}) on {result['case']}:\n{result.get('stderr', '')[-5000:]}"
    )
    assert not result["hung"], f"the fuzz process hung on {result['case']}"
    print("\n" + fuzz.summary(result))
    assert not result["failures"], f"{len(result['failures'])} failures:\n" + "\n".join(result["failures"][:40])
    assert set(result["ops"]) == set(fuzz.ARG_NAMES), "every op of schema.cpp is fuzzed"
    for op, counts in result["ops"].items():
        assert counts["calls"] == calls_per_op, op
        # Both sides of the contract are exercised for every op: valid calls that match, malformed ones refused.
        assert counts["matched"] >= calls_per_op // 10 and counts["raised"] >= calls_per_op // 3, (op, counts)
    assert result["peak_rss_mb"] < 2048, result["peak_rss_mb"]


def test_every_op_is_in_the_fuzz():
    schema = (fuzz.ROOT / "kernels" / "csrc" / "schema.cpp").read_text()
    assert set(re.findall(r'm\.def\(\s*"(\w+)\(', schema)) == set(fuzz.ARG_NAMES)


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler (c++) to build the sanitizer build")
def test_direct_calls_under_address_and_undefined_behaviour_sanitizers(tmp_path):
    if fuzz.preload() is None:
        pytest.skip("the compiler has no AddressSanitizer runtime (libasan.so) to preload")
    result = fuzz.run_worker(tmp_path, calls_per_op=SANITIZED_CALLS, seed=0, sanitized=True, timeout=TIMEOUT_S)
    _check(result, SANITIZED_CALLS)


def test_direct_calls_on_the_normal_build(tmp_path, ops):
    """The same calls (another seed) on the cached optimised build, in an address space bounded to 2 GB over the
    imports'."""
    result = fuzz.run_worker(tmp_path, calls_per_op=PLAIN_CALLS, seed=1, sanitized=False, timeout=TIMEOUT_S)
    _check(result, PLAIN_CALLS)


def test_the_references_refuse_what_the_contract_refuses():
    """Spot checks of the oracle itself, so a permissive reference cannot hide a permissive kernel."""
    crow, col = torch.tensor([0, 1, 1], dtype=torch.int32), torch.tensor([2], dtype=torch.int32)
    xt = torch.ones(3, 2)
    assert fuzz.ref_spmm_csr(crow, col, torch.ones(1), 2, 3, xt)[0].shape == (2, 2)
    for bad in (
        lambda: fuzz.ref_spmm_csr(crow, torch.tensor([3], dtype=torch.int32), torch.ones(1), 2, 3, xt),
        lambda: fuzz.ref_spmm_csr(torch.tensor([0, 1, 0], dtype=torch.int32), col, torch.ones(1), 2, 3, xt),
        lambda: fuzz.ref_spmm_csr(crow, col, torch.ones(1, dtype=torch.float64), 2, 3, xt),
        lambda: fuzz.ref_spmm_csr(crow, col, torch.ones(1), -1, 3, xt),
        lambda: fuzz.ref_dequantize(torch.zeros(2, 1, dtype=torch.uint8), torch.ones(2, 1), torch.empty(0), 4, 2, 3),
    ):
        with pytest.raises(fuzz.Refused):
            bad()
