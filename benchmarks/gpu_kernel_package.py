"""Build the kernel package for Hugging Face's `kernels` library on this machine and check the built variant
(step 5 of benchmarks/gpu_check.sh on a GPU machine; also runs on CPU with --backend cpu).

The variant is imported the way `kernels` imports it (its metadata id as the module name, the folder as the
package), without needing the `kernels` library itself, and its ops are checked against dense maths and the
attention reference: SpMM (linear_csr), 2:4 (spmm_nm), and windowed attention forward and backward.

    python benchmarks/gpu_kernel_package.py --out /tmp/kpkg --json result.json [--backend cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch


def _import_variant(folder: Path):
    meta = json.loads((folder / "metadata.json").read_text())
    spec = importlib.util.spec_from_file_location(
        meta["id"], folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[meta["id"]] = module
    spec.loader.exec_module(module)
    return module, meta


def _checks(k, device: str) -> dict:
    from hf_sparse.attention.functional import sparse_attention_reference
    from hf_sparse.attention.patterns import SlidingWindow

    out: dict = {}
    dtype = torch.float16 if device == "cuda" else torch.float32
    tol = dict(rtol=2e-2, atol=2e-2) if device == "cuda" else dict(rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 384, generator=g) * (torch.rand(256, 384, generator=g) < 0.1)
    nz = w != 0
    crow = torch.zeros(257, dtype=torch.int32)
    crow[1:] = nz.sum(1).cumsum(0)
    col = nz.nonzero()[:, 1].to(torch.int32)
    values = w[nz].to(dtype)
    x = torch.randn(16, 384, generator=g).to(dtype)
    got = k.linear_csr(crow.to(device), col.to(device), values.to(device), 256, 384, x.to(device))
    torch.testing.assert_close(got.float().cpu(), x.float() @ (w.to(dtype).float()).T, **tol)
    out["linear_csr"] = "ok"

    keep = torch.zeros(256, 96, 4, dtype=torch.bool)
    keep.scatter_(-1, w.abs().reshape(256, 96, 4).topk(2, dim=-1).indices, True)
    w24 = torch.randn(256, 384, generator=g) * keep.reshape(256, 384)
    kept = keep.reshape(256, 96, 4)
    idx = torch.nonzero(kept)[:, 2].reshape(256, 192).to(torch.int8)
    vals = w24.reshape(256, 96, 4)[kept].reshape(256, 192).to(dtype)
    xt = torch.randn(384, 16, generator=g).to(dtype)
    got = k.spmm_nm(vals.to(device), idx.to(device), 2, 4, 384, xt.to(device))
    torch.testing.assert_close(got.float().cpu(), w24.to(dtype).float() @ xt.float(), **tol)
    out["spmm_nm"] = "ok"

    adtype = torch.bfloat16 if device == "cuda" else torch.float32
    q, key, v = (torch.randn(2, 4, 512, 64, generator=g).to(adtype).to(device).requires_grad_() for _ in range(3))
    o = k.sparse_attention(q, key, v, window=64, causal=True)
    ref = sparse_attention_reference(q.float(), key.float(), v.float(), SlidingWindow(64), causal=True)
    torch.testing.assert_close(o.float(), ref, **(dict(rtol=3e-2, atol=3e-2) if device == "cuda" else tol))
    o.float().sum().backward()
    assert all(torch.isfinite(t.grad.float()).all() for t in (q, key, v))
    out["sparse_attention"] = "ok (forward vs reference, backward finite)"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the package")
    parser.add_argument("--json", default=None, help="write the result here")
    parser.add_argument("--backend", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    from hf_sparse.integrations.kernel_hub import build_kernel_package, variant_name

    record: dict = {"backend": args.backend, "torch": torch.__version__}
    if args.backend == "cuda":
        record["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    t0 = time.perf_counter()
    try:
        result = build_kernel_package(args.out, backends=(args.backend,))
        record.update(built=result["built"], skipped=result["skipped"], build_s=time.perf_counter() - t0)
        module, meta = _import_variant(Path(args.out) / "build" / variant_name(args.backend))
        record.update(id=meta["id"], package_backend=module.BACKEND, checks=_checks(module, args.backend), ok=True)
    except Exception as exc:  # recorded for the report, and the exit code says it failed
        record.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}")
    print(json.dumps(record, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
