"""What a checkpoint's files may be, and what loading must have made of them, beyond the sparse formats' own checks.

An hf_sparse checkpoint loads exactly what it saved or raises a :class:`~hf_sparse.errors.FormatError` that names the
file, tensor or key. The quantizer (:mod:`hf_sparse.integrations.quantizer`) calls these at three points:

1. :func:`check_checkpoint_folder`, from ``update_attn_implementation``: the earliest quantizer hook of
   ``from_pretrained``, before transformers reads ``model.safetensors.index.json`` or opens a weights file. It reads
   the index itself, bounded (size, nesting, entry count), and confines every file it names to the folder.
2. :func:`check_checkpoint_files`, before the weights load: every file transformers is about to open is a regular
   ``.safetensors`` file inside the checkpoint folder, symlinks resolved (authoritative: these are the paths
   transformers opens).
3. :func:`check_loaded_model`, after the weights loaded: every tensor the model has came from the checkpoint (none
   left to transformers' random initialisation), no checkpoint tensor that belongs to the model's structure was
   dropped (a ``num_hidden_layers`` lowered in ``config.json``), and every floating-point tensor is finite.

Non-finite values are always refused, with no switch to allow them: a NaN or inf weight makes every output it touches
NaN or inf, so such a model has no use for inference or fine-tuning, and a user who wants to look at the damaged
tensors reads the file with ``safetensors.torch.load_file``, which hf_sparse does not touch.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import FormatError, quote

__all__ = ["check_checkpoint_folder", "check_checkpoint_files", "check_loaded_model", "check_tied_not_both_stored"]

_FIX = (
    "The checkpoint is corrupt or was not written by hf_sparse: restore its original files, or re-save it from "
    "the source model with `model.save_pretrained(dir)` after `import hf_sparse`."
)
#: An index of a million tensors is under 100 MB; a larger one is not a model.
_MAX_INDEX_BYTES = 64_000_000
_MAX_INDEX_ENTRIES = 2_000_000
#: Checkpoint tensors that transformers legitimately skips: buffers that older releases saved and current ones
#: recompute (the same patterns transformers drops from its own report).
_IGNORED_UNEXPECTED = (r"(^|\.)position_ids$", r"rotary_emb\.inv_freq$")
#: Elements per finiteness test: bounds the temporary boolean tensor for huge weights.
_FINITE_CHUNK = 1 << 24


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _roots(folder: str) -> tuple[str, list[str]]:
    """The folder as given (absolute, links kept) and the real folders its files may resolve into: its own real
    path, and for a Hugging Face cache snapshot (``.../snapshots/<rev>``) the repository's ``blobs`` folder, where
    the snapshot's links point."""
    given = os.path.abspath(folder)
    real = os.path.realpath(folder)
    roots = [real]
    parent = os.path.dirname(real)
    if os.path.basename(parent) == "snapshots":
        blobs = os.path.join(os.path.dirname(parent), "blobs")
        if os.path.isdir(blobs):
            roots.append(blobs)
    return given, roots


def _check_one_file(path: str, folder: str | None, context: str = "") -> None:
    """``path`` is a regular ``.safetensors`` file; with ``folder``, inside it before and after resolving links."""
    what = "checkpoint file"
    shown = quote(str(path)) + context
    if "\x00" in str(path):
        raise FormatError(f"{what} {shown} is not a valid file name (NUL character). {_FIX}")
    if folder is not None:
        given, roots = _roots(folder)
        absolute = os.path.abspath(path)
        if not _inside(absolute, given):
            raise FormatError(
                f"{what} {shown} lies outside the checkpoint folder {quote(str(folder))}: a checkpoint's files must "
                f"be inside its folder (no '..', no absolute paths). {_FIX}"
            )
        real = os.path.realpath(absolute)
        if not any(_inside(real, root) for root in roots):
            raise FormatError(
                f"{what} {shown} is a link to {quote(real)}, outside the checkpoint folder {quote(str(folder))}: a "
                f"checkpoint's files must be inside its folder. {_FIX}"
            )
    try:
        info = os.stat(path)
    except OSError as exc:
        raise FormatError(f"{what} {shown} cannot be read: {quote(exc.strerror or str(exc))}. {_FIX}") from None
    if not stat.S_ISREG(info.st_mode):
        # A device (/dev/zero), a FIFO or a folder: reading it could block or never end.
        raise FormatError(f"{what} {shown} is not a regular file. {_FIX}")
    if not str(path).endswith(".safetensors"):
        raise FormatError(
            f"{what} {shown} is not a .safetensors file: hf_sparse checkpoints are safetensors and JSON only "
            f"(transformers would read any other file with torch.load). {_FIX}"
        )


def check_checkpoint_files(files: list[str | os.PathLike] | None, name_or_path: Any) -> None:
    """Every file ``from_pretrained`` is about to open: a regular ``.safetensors`` file, inside the checkpoint folder
    once ``..`` and symlinks are resolved when the checkpoint is a local folder (a Hub download is confined by
    ``huggingface_hub``, which refuses ``..`` and absolute file names).

    Raises:
        FormatError: naming the file and the problem.
    """
    folder = name_or_path if isinstance(name_or_path, (str, os.PathLike)) and os.path.isdir(name_or_path) else None
    for f in files or ():
        _check_one_file(str(f), None if folder is None else str(folder))


def _read_index(path: Path) -> dict:
    where = f"checkpoint index {quote(path.name)}"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_INDEX_BYTES + 1)
    except OSError as exc:
        raise FormatError(f"{where} cannot be read: {quote(exc.strerror or str(exc))}. {_FIX}") from None
    if len(raw) > _MAX_INDEX_BYTES:
        raise FormatError(f"{where} is larger than {_MAX_INDEX_BYTES:,} bytes; no model's index is. {_FIX}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"{where} is not valid UTF-8 (byte {exc.start}). {_FIX}") from None
    if raw.count(b",") > 4 * _MAX_INDEX_ENTRIES:
        raise FormatError(f"{where} lists more than {4 * _MAX_INDEX_ENTRIES:,} items; no model's index does. {_FIX}")
    try:
        index = json.loads(text)
    except (ValueError, RecursionError) as exc:
        what = "it nests too deeply" if isinstance(exc, RecursionError) else quote(str(exc), 200)
        raise FormatError(f"{where} is not valid JSON ({what}). {_FIX}") from None
    if not isinstance(index, dict):
        raise FormatError(f"{where} must be a JSON object, got {quote(index)}. {_FIX}")
    weight_map, metadata = index.get("weight_map"), index.get("metadata")
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(
            f"{where}['weight_map'] must map tensor names to file names, got {quote(weight_map)}. {_FIX}"
        )
    if not isinstance(metadata, dict):
        raise FormatError(f"{where}['metadata'] must be a JSON object, got {quote(metadata)}. {_FIX}")
    dtype = metadata.get("dtype")
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16", "float64"):
        raise FormatError(f"{where}['metadata']['dtype'] is {quote(dtype)}; expected a float dtype name. {_FIX}")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise FormatError(f"{where}['weight_map'][{quote(key)}] must be a file name, got {quote(shard)}. {_FIX}")
    return index


def check_checkpoint_folder(name_or_path: Any, read_header: Callable[[str], Any] | None = None) -> None:
    """Before transformers reads anything of a local checkpoint folder: its ``*.safetensors.index*.json`` files
    (bounded: size, nesting, entries; every shard they name a regular ``.safetensors`` file inside the folder) and
    its ``model.safetensors`` (a regular file inside the folder). A repository id (not a local folder) is left to
    ``huggingface_hub`` and to :func:`check_checkpoint_files`. ``read_header`` (the quantizer's safetensors header
    check) is run on each of those files too: transformers opens the first one to guess the dtype when config.json
    has none.

    Raises:
        FormatError: naming the index, the tensor entry and the file.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not os.path.isdir(name_or_path):
        return
    folder = Path(name_or_path)
    single = folder / "model.safetensors"
    files = []
    if os.path.lexists(single):
        _check_one_file(str(single), str(folder))
        files.append(str(single))
    for path in sorted(folder.glob("*.safetensors.index*.json")):
        _check_one_file_like_index(path, folder)
        index = _read_index(path)
        checked: set[str] = set()
        for key, shard in index["weight_map"].items():
            if shard in checked:
                continue
            checked.add(shard)
            context = f" (the shard of tensor {quote(key)} in {quote(path.name)})"
            _check_one_file(os.path.join(folder, shard), str(folder), context)
            files.append(os.path.join(folder, shard))
    if read_header is not None:
        for f in files:
            read_header(f)


def _check_one_file_like_index(path: Path, folder: Path) -> None:
    _, roots = _roots(str(folder))
    real = os.path.realpath(path)
    try:
        regular = stat.S_ISREG(os.stat(real).st_mode)
    except OSError:
        regular = False
    if not regular or not any(_inside(real, root) for root in roots):
        raise FormatError(f"checkpoint index {quote(path.name)} is not a regular file inside the folder. {_FIX}")


def check_tied_not_both_stored(model: nn.Module, headers: Mapping[str, Any]) -> None:
    """A weight that ``config.json`` ties to another (``tie_word_embeddings``) is saved once; a checkpoint that
    holds both was saved from an untied model, and tying them at load would overwrite one with the other."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    for target, source in tied.items():
        if target in headers and source in headers:
            raise FormatError(
                f"checkpoint tensors {quote(target)} and {quote(source)} are both stored, but config.json ties the "
                f"first to the second (tie_word_embeddings or the like): loading would replace {quote(target)} by "
                f"{quote(source)}. {_FIX}"
            )


# -- after loading ---------------------------------------------------------------------------------------------------
def _patterns(model: nn.Module, attr: str) -> list[re.Pattern]:
    found = getattr(model, attr, None) or ()
    return [re.compile(p) for p in found if isinstance(p, str)]


def _forms(key: str, prefix: str) -> tuple[str, ...]:
    """The names a checkpoint key may take in the model: as is, and with the base model's prefix removed or added
    (transformers loads a base model's checkpoint into a model with a head, and the reverse)."""
    if not prefix:
        return (key,)
    if key.startswith(prefix + "."):
        return (key, key[len(prefix) + 1 :])
    return (key, f"{prefix}.{key}")


def _structural_owner(model: nn.Module, key: str, modules: Mapping[str, nn.Module]) -> str | None:
    """Why an unmatched checkpoint key belongs to the model's structure (so dropping it changes the model), or None:
    its module exists, or it sits in a module list past the list's end (a layer ``config.json`` no longer has)."""
    parts = key.split(".")
    owner = ".".join(parts[:-1])
    if owner in modules:
        return f"module {quote(owner)} has no tensor {quote(parts[-1])}"
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        module = modules.get(parent)
        if module is None:
            continue
        if isinstance(module, (nn.ModuleList, nn.ModuleDict)) or parts[i].isdigit():
            return f"{quote(parent)} has {len(module)} entries, none named {quote(parts[i])}"
        return None
    return None


def _is_finite(t: torch.Tensor) -> bool:
    flat = t.detach().reshape(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(_FINITE_CHUNK))


def check_loaded_model(model: nn.Module, headers: Mapping[str, Any] | None) -> None:
    """After ``from_pretrained`` loaded the weights: the model holds exactly what the checkpoint saved.

    - every parameter and persistent buffer came from the checkpoint (transformers marks what it loaded), except
      weights tied to a loaded one, tensors the model never saves, a shape the user replaced with
      ``ignore_mismatched_sizes=True``, and, when the model's class is not the one that saved the checkpoint
      (``config.json`` ``architectures``), a new task head: a module outside the base model, or one of which the
      checkpoint holds no tensor at all;
    - no checkpoint tensor (``headers``: those of the files, when known) is dropped that belongs to the model's
      structure, or, for the class that saved the checkpoint, at all;
    - every floating-point tensor is finite.

    Raises:
        FormatError: naming the tensor (and its file when known) and what is wrong.
    """
    state = model.state_dict(keep_vars=True)
    modules = dict(model.named_modules())
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    prefix = getattr(model, "base_model_prefix", "") or ""
    has_base = bool(prefix) and prefix in modules
    architectures = getattr(getattr(model, "config", None), "architectures", None)
    known_class = isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
    same_class = not known_class or type(model).__name__ in architectures
    not_saved = _patterns(model, "_keys_to_ignore_on_save")
    headers = headers or {}
    header_for: dict[str, Any] = {}
    header_keys = {form for hkey in headers for form in _forms(hkey, prefix)}
    for hkey, head in headers.items():
        for form in _forms(hkey, prefix):
            if form in state:
                header_for.setdefault(form, head)

    for key, tensor in state.items():
        if tensor is None or tensor.device.type == "meta" or getattr(tensor, "_is_hf_initialized", False):
            continue  # loaded (or offloaded to disk by accelerate, which keeps the tensor on meta)
        if key in tied or any(p.search(key) for p in not_saved):
            continue
        head = header_for.get(key)
        if head is not None and tuple(head.shape) != tuple(tensor.shape):
            continue  # ignore_mismatched_sizes=True: the user asked for a new tensor of this shape
        if not same_class and (
            (has_base and not key.startswith(prefix + "."))
            or not any(f.startswith(key.rpartition(".")[0] + ".") for f in header_keys)
        ):
            # A module the checkpoint's class does not have (a new task head, a pooler a masked LM lacks):
            # transformers initialises it and says so; a module the checkpoint holds must be complete.
            continue
        where = f"from {quote(head.file)}" if head is not None else "from the checkpoint files"
        raise FormatError(
            f"checkpoint tensor {quote(key)} is missing {where}, but the model has it: loading would initialise it "
            f"at random. (Does config.json describe a larger model than the checkpoint holds, or was the tensor "
            f"renamed?) {_FIX}"
        )

    ignored = [re.compile(p) for p in _IGNORED_UNEXPECTED] + _patterns(model, "_keys_to_ignore_on_load_unexpected")
    for hkey, head in headers.items():
        forms = _forms(hkey, prefix)
        if any(form in state for form in forms) or any(p.search(hkey) for p in ignored):
            continue
        why = next((w for w in (_structural_owner(model, f, modules) for f in forms) if w), None)
        if why is None and not same_class:
            continue  # another class's head (e.g. a classifier checkpoint loaded as a base model)
        raise FormatError(
            f"checkpoint tensor {quote(hkey)} in {quote(head.file)} is not a tensor of the model"
            + (f" ({why})" if why else "")
            + ": loading would drop it silently. (Does config.json describe a smaller model than the checkpoint "
            f"holds, or was the tensor renamed?) {_FIX}"
        )

    seen: set[int] = set()
    for key, tensor in state.items():
        if tensor is None or not tensor.is_floating_point() or tensor.device.type == "meta" or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        if not _is_finite(tensor):
            head = header_for.get(key)
            where = f" (from {quote(head.file)})" if head is not None else ""
            raise FormatError(
                f"checkpoint tensor {quote(key)}{where} holds NaN or infinite values after loading as {tensor.dtype}: "
                f"the checkpoint's values, or values beyond the range of {tensor.dtype}. hf_sparse refuses every "
                f"non-finite weight (it would make the model's outputs NaN); read the file with "
                f"safetensors.torch.load_file to inspect it. {_FIX}"
            )
