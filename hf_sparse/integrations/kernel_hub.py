"""Our kernels as a package for Hugging Face's ``kernels`` library: built, published to the Hub, loaded back.

The ``kernels`` library loads compiled code from a Hub repository of type ``kernel``: one folder per build variant
under ``build/`` (``torch213-cpu-x86_64-linux``, ``torch213-cu130-x86_64-linux``, ...), each a Python package with
a ``metadata.json``; ``get_kernel(repo, version=N)`` picks the variant that matches the machine's torch, backend,
CPU and OS from the branch ``vN`` and imports it. :func:`build_kernel_package` writes such a folder from the same
C++/CUDA sources hf_sparse builds for itself:

- the ops are compiled with ``-DHF_SPARSE_NAMESPACE=_hf_sparse_kernels_<digest>`` (kernels/csrc/namespace.h): the
  package must load beside hf_sparse's own ``hf_sparse::`` build, and ``TORCH_LIBRARY`` may define a namespace only
  once per process; the digest of the sources, flags and torch version makes every distinct build its own namespace
  (and the variant's module ``id``);
- the package's Python is kernels/hub/ (``__init__.py``, its API; ``ops/__init__.py``, which loads the compiled
  library; ``ops/_namespace.py`` and ``attention/__init__.py``), real files whose ``@@name@@`` placeholders (the
  build's namespace, backend, library file and required CPU flags) are filled in when copied, plus hf_sparse's
  attention patterns and block layouts and the ops' autograd formulas and fake implementations, shipped unchanged:
  those modules name their namespace through ``ops/_namespace.py``, which the package carries with its own value.
  It needs only ``torch``;
- the compilation runs in a child process, so this process never loads the namespace it packages (loading the
  package later would otherwise register it twice).

:func:`register_hub_attention` loads the package's attention function from the Hub with ``kernels.get_kernel`` and
registers it with transformers. transformers can do that itself (``attn_implementation="<repo>:<function>"``), but
only with the ``kernels`` versions it was released against (transformers 5.24 wants kernels >= 0.18.2; 5.20-5.22
take 0.17.2); the registration here works with any ``kernels`` that has ``get_kernel``.

:func:`push_kernel_package` uploads the folder to a kernel repository and to its ``v<version>`` branch, replacing
only the variants it carries: builds made on a CPU machine and on a GPU machine can be pushed to the same version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .._resources import data_dir
from ..errors import HfSparseError
from ..resilience import atomic_folder, atomic_write_text
from .hub import HubError

__all__ = [
    "KERNEL_NAME",
    "KernelBuildError",
    "build_kernel_package",
    "push_kernel_package",
    "variant_name",
    "kernel_package_variants",
    "register_hub_attention",
    "hub_attention_name",
    "hub_kernels_status",
]

logger = logging.getLogger(__name__)

#: The package's name on the Hub (its Python name is hf_sparse_kernels).
KERNEL_NAME = "hf-sparse-kernels"
_BUILD_TIMEOUT_S = 1800


class KernelBuildError(HfSparseError, RuntimeError):
    """The kernel package could not be built or is malformed; the message says what to do."""


def variant_name(backend: str = "cpu") -> str:
    """The ``kernels`` build-variant name of this machine for ``backend`` (``"cpu"`` or ``"cuda"``), e.g.
    ``torch213-cpu-x86_64-linux`` or ``torch213-cu130-x86_64-linux``."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    if backend == "cpu":
        tag = "cpu"
    elif backend == "cuda":
        if torch.version.cuda is None:
            raise KernelBuildError(f"torch {torch.__version__} is a CPU build: it has no CUDA variant.")
        cmajor, cminor = torch.version.cuda.split(".")[:2]
        tag = f"cu{cmajor}{cminor}"
    else:
        raise KernelBuildError(f"unknown backend {backend!r}; choose 'cpu' or 'cuda'.")
    machine = platform.machine()
    machine = {"AMD64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    return f"torch{major}{minor}-{tag}-{machine}-{platform.system().lower()}"


def _sources(backend: str) -> tuple[list[Path], list[Path]]:
    from ..ops import _loader

    sources, headers = _loader._sources(), _loader._headers()
    if backend == "cuda":
        sources, headers = sources + _loader._cuda_sources(), headers + _loader._cuda_headers()
    return sources, headers


def _flags(backend: str) -> dict:
    from ..ops import _loader

    flags = {"cflags": ["-O3", *_loader.cpu_flags(), "-fopenmp"], "ldflags": ["-fopenmp"], "cuda_cflags": []}
    if backend == "cuda":
        gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in _loader.cuda_archs()]
        flags["cuda_cflags"] = ["-O3", "-lineinfo", *gencode]
    return flags


def _namespace(backend: str) -> str:
    sources, headers = _sources(backend)
    digest = hashlib.sha256(f"{KERNEL_NAME} {backend} {torch.__version__} {torch.version.cuda}".encode())
    digest.update(json.dumps(_flags(backend), sort_keys=True).encode())
    for path in [*sources, *headers]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"_hf_sparse_kernels_{digest.hexdigest()[:12]}"


_CHILD = """
import json, sys
import torch
from torch.utils.cpp_extension import load
spec = json.loads(sys.argv[1])
load(name=spec["name"], sources=spec["sources"], extra_cflags=spec["cflags"], extra_ldflags=spec["ldflags"],
     extra_cuda_cflags=spec["cuda_cflags"] or None, build_directory=spec["folder"], is_python_module=False,
     verbose=spec["verbose"])
ops = getattr(torch.ops, spec["name"])
missing = [op for op in ("spmm_csr", "linear_csr", "sparse_attention", "sparse_attention_backward")
           if not hasattr(ops, op)]
if missing:
    sys.exit(f"the built library registers no {missing} in namespace {spec['name']}")
"""


def _compile(backend: str, namespace: str) -> Path:
    """Build the ops into a cached folder in a child process; returns the shared library."""
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise KernelBuildError("no C++ compiler found: install g++ (or set CXX) to build the kernel package.")
    base = Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))
    folder = base / "torch_extensions" / f"hub-{namespace}"
    library = folder / f"{namespace}.so"
    if library.is_file():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    sources, _ = _sources(backend)
    flags = _flags(backend)
    define = f"-DHF_SPARSE_NAMESPACE={namespace}"
    spec = {
        "name": namespace,
        "sources": [str(s) for s in sources],
        "folder": str(folder),
        "verbose": os.environ.get("HF_SPARSE_VERBOSE_BUILD") == "1",
        "cflags": [*flags["cflags"], define],
        "ldflags": flags["ldflags"],
        "cuda_cflags": [*flags["cuda_cflags"], define] if flags["cuda_cflags"] else [],
    }
    logger.info("compiling the %s ops into %s (a minute or more the first time)", backend, folder)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise KernelBuildError(f"compiling the {backend} ops took over {_BUILD_TIMEOUT_S} s; see {folder}.") from exc
    if done.returncode != 0 or not library.is_file():
        tail = (done.stderr or done.stdout).strip()[-3000:]
        raise KernelBuildError(f"compiling the {backend} ops failed (build folder {folder}):\n{tail}")
    return library


def _digest(folder: Path) -> dict[str, str]:
    """What ``kernels`` records for a variant: base64 SHA-256 of every file but metadata.json, by relative path."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != "metadata.json":
            files[rel] = base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
    return files


#: The package's own Python files, real files under kernels/hub/ (shipped as ``hf_sparse.kernels_data``): the entry
#: point, the attention sub-package's ``__init__`` and the ops sub-package's loader and namespace module.
_PACKAGE_FILES = ("__init__.py", "attention/__init__.py", "ops/__init__.py", "ops/_namespace.py")
#: A placeholder in those files: ``@@name@@``, always inside a string literal or docstring, so the files stay valid
#: Python; :func:`_render` replaces it with the build's value of ``name``.
_PLACEHOLDER = re.compile(r"@@(\w+)@@")
_SAFE_VALUE = re.compile(r"[\w.\- ]*")  # nothing that could end a string literal


def _render(template: Path, values: dict[str, str]) -> str:
    """The text of ``template`` with every ``@@name@@`` replaced by ``values[name]``.

    Raises:
        KernelBuildError: the template names a value that is not given, or a value holds a character other than
            letters, digits, ``_``, ``.``, ``-`` and spaces.
    """
    for name, value in values.items():
        if not _SAFE_VALUE.fullmatch(value):
            raise KernelBuildError(f"the kernel package's {name} {value!r} holds characters it cannot carry.")
    text = template.read_text(encoding="utf-8")
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if unknown:
        raise KernelBuildError(f"{template}: no value for the placeholders {unknown}; reinstall hf_sparse.")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def _write_variant(folder: Path, backend: str, version: int, namespace: str, library: Path) -> None:
    from ..ops import _loader

    hf = Path(__file__).resolve().parent.parent  # the hf_sparse package
    values = {
        "namespace": namespace,
        "backend": backend,
        "library": library.name,
        "cpu_flags": " ".join(_loader.cpu_flag_names()),
    }
    templates = data_dir("kernels") / "hub"
    for rel in _PACKAGE_FILES:
        target = folder / rel
        target.parent.mkdir(exist_ok=True)
        target.write_text(_render(templates / rel, values), encoding="utf-8")
    # hf_sparse's errors module is standard-library only: the copied pattern modules raise its ConfigError and quote
    # values with its bounded repr.
    shutil.copyfile(hf / "errors.py", folder / "errors.py")
    # hf_sparse's attention patterns and layouts, and the ops' autograd formulas and fake implementations, unchanged:
    # they name their namespace through ops/_namespace.py, which carries this build's.
    for name in ("patterns.py", "layout.py"):
        shutil.copyfile(hf / "attention" / name, folder / "attention" / name)
    for name in ("_autograd.py", "_fake.py"):
        shutil.copyfile(hf / "ops" / name, folder / "ops" / name)
    shutil.copyfile(library, folder / "ops" / library.name)
    backend_info: dict = {"type": backend}
    if backend == "cuda":
        backend_info["archs"] = [f"{a[:-1]}.{a[-1]}" for a in _loader.cuda_archs()]
    metadata = {
        "name": KERNEL_NAME,
        "id": namespace,
        "version": version,
        "license": "Apache-2.0",
        "python-depends": [],
        "backend": backend_info,
        "digest": {"algorithm": "sha256", "files": _digest(folder)},
    }
    atomic_write_text(folder / "metadata.json", json.dumps(metadata, indent=2) + "\n")


def _card(variants: list[str], version: int) -> str:
    from .._version import __version__

    lines = [
        "---",
        "library_name: kernels",
        "license: apache-2.0",
        "tags: [kernels, sparse, hf_sparse]",
        "---",
        "",
        f"# {KERNEL_NAME}",
        "",
        f"The SpMM and block-sparse attention kernels of hf_sparse {__version__}, built for Hugging Face's "
        "`kernels` library. The package needs only `torch`.",
        "",
        "## Use",
        "",
        "```python",
        "from kernels import get_kernel",
        "",
        f'k = get_kernel("<this repo>", version={version}, trust_remote_code=True)',
        "y = k.linear_csr(crow, col, values, rows, cols, x)   # x @ W.T, W in CSR",
        "out = k.sparse_attention(q, key, value, window=128)  # (B, H, S, D), differentiable",
        "```",
        "",
        "A model saved by hf_sparse with sparse attention settings (`hf_sparse_attention` in its config.json), or any "
        "model whose config sets `sliding_window`, runs its attention through the package:",
        "",
        "```python",
        'model = AutoModel.from_pretrained(path, attn_implementation="<this repo>:windowed_attention", '
        "allow_all_kernels=True)",
        "```",
        "",
        "## Functions",
        "",
        "- `spmm_csr`, `spmm_bsr`, `spmm_nm`: `W @ Xt` for W in CSR, R x C blocks or N:M form;",
        "- `linear_csr`, `linear_qcsr`: `x @ W.T` for W in CSR with float or int8 values;",
        "- `sparse_attention`: attention restricted to a pattern (sliding window, global tokens, ...), with backward;",
        "- `windowed_attention`: the same as a transformers attention function;",
        "- `ops`: every op of the build (`spmm_qcsr`, `dequantize`, `qrow_embedding_bag`, ...).",
        "",
        "## Builds",
        "",
        *[f"- `{v}`" for v in variants],
        "",
        "CPU builds need AVX2 and FMA (the package says so at import on CPUs without them).",
        "",
    ]
    return "\n".join(lines)


def kernel_package_variants(folder: str | Path) -> dict[str, dict]:
    """``{variant: metadata}`` of a kernel package folder (``build/<variant>/metadata.json``).

    Raises:
        KernelBuildError: the folder holds no variant, or a variant's metadata is missing or unreadable.
    """
    build = Path(folder) / "build"
    variants = {}
    for sub in sorted(build.iterdir()) if build.is_dir() else []:
        if not sub.is_dir():
            continue
        meta = sub / "metadata.json"
        try:
            variants[sub.name] = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise KernelBuildError(f"{meta}: missing or not JSON ({exc}); rebuild the package.") from exc
    if not variants:
        raise KernelBuildError(f"{folder}: no build/<variant>/ folder; build one with `hf-sparse package-kernels`.")
    return variants


def build_kernel_package(output_dir: str | Path, *, version: int = 1, backends: tuple[str, ...] = ("cpu", "cuda")):
    """Build the kernel package for this machine into ``output_dir`` (``build/<variant>/`` and ``README.md``).

    Each backend of ``backends`` that this machine can build is built (CUDA needs a CUDA build of torch, a GPU and
    nvcc); variants already in ``output_dir`` from other machines are kept, a variant built again is replaced.

    Args:
        version: the kernel's major version (the ``v<version>`` branch users load with ``version=``).

    Returns:
        ``{"folder": Path, "built": [variant, ...], "skipped": {backend: reason}}``.

    Raises:
        KernelBuildError: nothing could be built (no compiler, compile error), or ``version`` < 1.
    """
    from ..ops import _loader

    if not isinstance(version, int) or version < 1:
        raise KernelBuildError(f"version must be an integer >= 1, got {version!r}.")
    out = Path(output_dir)
    (out / "build").mkdir(parents=True, exist_ok=True)
    built, skipped = [], {}
    for backend in backends:
        if backend == "cuda":
            why = _loader._cuda_unavailable()
            if why is not None:
                skipped["cuda"] = why
                continue
        elif backend != "cpu":
            raise KernelBuildError(f"unknown backend {backend!r}; choose from 'cpu' and 'cuda'.")
        namespace = _namespace(backend)
        library = _compile(backend, namespace)
        name = variant_name(backend)
        with atomic_folder(out / "build" / name) as folder:
            _write_variant(folder, backend, version, namespace, library)
        built.append(name)
    if not built:
        raise KernelBuildError(f"no variant could be built here: {skipped}.")
    atomic_write_text(out / "README.md", _card(sorted(kernel_package_variants(out)), version))
    return {"folder": out, "built": built, "skipped": skipped}


def push_kernel_package(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a kernel package folder to the kernel repository ``repo_id``: its main branch and ``v<version>``.

    Only the variants the folder carries are replaced on the Hub (``build/<variant>/`` of each), so packages built
    on different machines (a CPU one, a GPU one) can be pushed one after the other to the same version. The
    version comes from the variants' metadata.

    Returns:
        The URL of the commit on ``v<version>``.

    Raises:
        KernelBuildError: the folder is not a kernel package, or its variants disagree on the version. HubError:
            the server refused or failed the push (the message carries its answer); pushing again retries.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    variants = kernel_package_variants(folder)
    versions = {meta.get("version") for meta in variants.values()}
    if len(versions) != 1 or not isinstance(next(iter(versions)), int):
        raise KernelBuildError(f"{folder}: the variants disagree on the version ({sorted(map(str, versions))}).")
    version = versions.pop()
    branch = f"v{version}"
    api = HfApi(endpoint=endpoint, token=token)
    message = commit_message or f"Upload {KERNEL_NAME} builds {', '.join(sorted(variants))}"
    upload = dict(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="kernel",
        commit_message=message,
        allow_patterns=["README.md", *[f"build/{v}/**" for v in variants]],
        ignore_patterns=["**/__pycache__/**", "*.pyc", "*.tmp"],
    )
    replace = [f"build/{v}/**" for v in variants]
    try:
        api.create_repo(repo_id, repo_type="kernel", private=private, exist_ok=True)
        head = api.upload_folder(**upload, delete_patterns=replace)
        try:  # a new version starts from this build alone, not from every variant main has collected
            api.create_branch(repo_id, branch=branch, revision=head.oid, repo_type="kernel")
            replace = ["build/**"]
        except HfHubHTTPError as exc:  # the branch exists: replace this build's variants on it, keep the others
            if getattr(exc.response, "status_code", None) != 409:
                raise
        info = api.upload_folder(**upload, delete_patterns=replace, revision=branch)
    except Exception as exc:  # HfHubHTTPError, connection errors, timeouts: all mean the same to the user
        raise HubError(
            f"Pushing the kernel package {folder} to {repo_id!r} at {api.endpoint} failed: {type(exc).__name__}: "
            f"{exc}. The local folder is unchanged; run the same push again to retry."
        ) from exc
    return str(getattr(info, "commit_url", info))


def hub_kernels_status() -> dict:
    """What ``hf-sparse info`` says about kernel packages: the variant this machine builds, the installed
    ``kernels`` version, and whether transformers loads Hub attention kernels with it itself."""
    import importlib.metadata

    try:
        version = importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        version = None
    try:
        from transformers.utils.import_utils import KERNELS_MAX_VERSION, KERNELS_MIN_VERSION, is_kernels_available

        native = bool(is_kernels_available())
        wants = f">= {KERNELS_MIN_VERSION}, < {KERNELS_MAX_VERSION}"
    except ImportError:  # a transformers without Hub kernel support
        native, wants = False, "no Hub kernel support"
    return {
        "variant": variant_name("cpu"),
        "kernels": version or "not installed (pip install 'hf-sparse[hub-kernels]')",
        "transformers_loads_them": native,
        "transformers_wants_kernels": wants,
        "otherwise": "hf_sparse.integrations.kernel_hub.register_hub_attention",
    }


def hub_attention_name(repo_id: str, function: str = "windowed_attention") -> str:
    """The ``attn_implementation`` name :func:`register_hub_attention` registers: ``kernels:<repo>:<function>``
    (transformers reads ``<repo>:<function>`` as a request to load the kernel itself, which is what this avoids)."""
    return f"kernels:{repo_id}:{function}"


def register_hub_attention(
    repo_id: str,
    function: str = "windowed_attention",
    *,
    version: int | None = 1,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> str:
    """Load ``function`` of the kernel package ``repo_id`` from the Hub and register it as a transformers attention
    implementation, with the mask transformers builds for flash attention (None, or the (batch, kv_length) padding).

    Example::

        name = register_hub_attention("user/hf-sparse-kernels", trust_remote_code=True)
        model = AutoModel.from_pretrained(path, attn_implementation=name)

    Args:
        version, revision: which build to load (``kernels.get_kernel``'s arguments; ``revision`` wins).
        trust_remote_code: load from a publisher the Hub does not mark as trusted (``kernels`` refuses otherwise).

    Returns:
        The name to pass as ``attn_implementation`` (:func:`hub_attention_name`).

    Raises:
        ImportError: the ``kernels`` package is not installed. ValueError: the repository is untrusted, or the
            package has no ``function``. Whatever ``kernels.get_kernel`` raises for a missing repository or build.
    """
    try:
        from kernels import get_kernel
    except ImportError as exc:
        raise ImportError(
            "register_hub_attention needs Hugging Face's `kernels` package: pip install 'hf-sparse[hub-kernels]'."
        ) from exc
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    kwargs = {"revision": revision} if revision is not None else {"version": version}
    module = get_kernel(repo_id, trust_remote_code=trust_remote_code, **kwargs)
    attention = getattr(module, function, None)
    if not callable(attention):
        public = [n for n in getattr(module, "__all__", dir(module)) if not n.startswith("_")]
        raise ValueError(f"the kernel package {repo_id!r} has no function {function!r}; it has {public}.")
    name = hub_attention_name(repo_id, function)
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
