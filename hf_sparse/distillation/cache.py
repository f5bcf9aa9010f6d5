"""Teacher outputs cached on disk, reused across epochs and runs.

Layout: ``<cache_dir>/teacher-<fingerprint>/shard-<n>.safetensors`` (``shard-<n>-rank<r>.safetensors`` when the
processes of a multi-process run each write the outputs of their own batches). The fingerprint hashes the teacher's
config, weights and what is stored (logits, which hidden layers), so a different or further-trained teacher gets
its own folder. Inside, each example is keyed by a hash of its model inputs at its valid tokens (token ids, token
types, attention mask...), so a changed data set or tokenisation (other text, another tokenizer, another
``max_length``) gives new keys and the teacher runs again: stale outputs are never read. Hidden states are stored
per valid token in float16 and put back at the valid positions of whatever padding the batch has.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..distributed.sync import process_rank, world_size
from ..errors import FormatError

__all__ = ["TeacherCache", "example_keys", "teacher_fingerprint"]

logger = logging.getLogger(__name__)

#: Batch entries that are not model inputs of the teacher (never part of a key).
NON_INPUT_KEYS = frozenset({"labels", "label", "num_items_in_batch", "output_hidden_states", "output_attentions"})


def teacher_fingerprint(teacher: torch.nn.Module, extra: Mapping | None = None) -> str:
    """A 16-hex-digit hash of the teacher's config (without bookkeeping keys such as ``_name_or_path``), every
    parameter and buffer (names, shapes, values) and ``extra`` (what is cached)."""
    h = hashlib.blake2b(digest_size=8)
    config = getattr(teacher, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        # Bookkeeping keys (where it was loaded from, library version, attention backend) do not change outputs.
        fields = {k: v for k, v in config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    for name, tensor in teacher.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(json.dumps(extra or {}, sort_keys=True).encode())
    return h.hexdigest()


def example_keys(inputs: Mapping[str, torch.Tensor]) -> list[bytes]:
    """One 16-byte key per example of a batch: a hash of every (name, values at the valid tokens) of its model
    inputs, so the same example padded differently keeps its key.

    Shapes:
        inputs: name -> (B, L) tensors (``attention_mask`` selects the valid tokens; all tokens without one).
    """
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and k not in NON_INPUT_KEYS}
    if not tensors:
        raise FormatError("Teacher cache: the batch has no model inputs to key examples by.")
    first = next(iter(tensors.values()))
    batch = first.shape[0]
    mask = inputs.get("attention_mask")
    valid = mask.bool().cpu() if isinstance(mask, torch.Tensor) else None
    arrays = {k: v.detach().cpu() for k, v in sorted(tensors.items())}
    keys = []
    for i in range(batch):
        h = hashlib.blake2b(digest_size=16)
        for name, t in arrays.items():
            row = t[i]
            if valid is not None and row.shape[:1] == valid.shape[1:2]:
                row = row[valid[i]]
            h.update(name.encode())
            h.update(str(tuple(row.shape)).encode())
            h.update(row.to(torch.int64).numpy().tobytes() if not row.is_floating_point() else row.numpy().tobytes())
        keys.append(h.digest())
    return keys


class TeacherCache:
    """Teacher logits (and hidden states of chosen layers) per example, on disk.

    Args:
        directory: The cache folder (created on first write).
        teacher: The teacher model (fingerprinted once, here).
        hidden_layers: Indices into the teacher's ``hidden_states`` to store (0 = embeddings, ``j + 1`` = output
            of layer ``j``); empty stores logits only.
    """

    def __init__(self, directory: str | Path, teacher: torch.nn.Module, hidden_layers: Sequence[int] = ()):
        self.hidden_layers = tuple(sorted(set(int(i) for i in hidden_layers)))
        self.fingerprint = teacher_fingerprint(teacher, {"hidden_layers": list(self.hidden_layers), "v": 1})
        self.folder = Path(directory) / f"teacher-{self.fingerprint}"
        self._entries: dict[bytes, dict[str, torch.Tensor]] = {}
        self._pending: list[bytes] = []
        self.hits = 0
        self.misses = 0
        self._load()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    # -- disk ---------------------------------------------------------------------------------------------------------
    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys = f.get_tensor("keys")
                    logits = f.get_tensor("logits")
                    lengths = f.get_tensor("lengths")
                    hidden = {j: f.get_tensor(f"hidden.{j}") for j in self.hidden_layers}
            except Exception as exc:  # a truncated or foreign file: skip it, the teacher recomputes those examples
                logger.warning("Teacher cache: ignoring unreadable shard %s (%s).", shard, exc)
                continue
            if keys.dim() != 2 or keys.shape[1] != 16 or logits.shape[0] != keys.shape[0] != lengths.shape[0]:
                logger.warning("Teacher cache: ignoring malformed shard %s.", shard)
                continue
            offsets = np.concatenate([[0], np.cumsum(lengths.numpy())])
            if any(h.shape[0] != offsets[-1] for h in hidden.values()):
                logger.warning("Teacher cache: ignoring shard %s whose hidden states do not match its lengths.", shard)
                continue
            for n, key in enumerate(keys.numpy()):
                entry = {"logits": logits[n]}
                for j, h in hidden.items():
                    entry[f"hidden.{j}"] = h[offsets[n] : offsets[n + 1]]
                self._entries[key.tobytes()] = entry
        if self._entries:
            logger.info("Teacher cache: %d examples loaded from %s", len(self._entries), self.folder)

    def flush(self) -> Path | None:
        """Write the examples added since the last flush as a new shard; returns its path (None if nothing new)."""
        if not self._pending:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = [self._entries[k] for k in self._pending]
        tensors = {
            "keys": torch.from_numpy(np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 16).copy()),
            "logits": torch.stack([e["logits"] for e in entries]).contiguous(),
            "lengths": torch.tensor(
                [e[f"hidden.{self.hidden_layers[0]}"].shape[0] if self.hidden_layers else 0 for e in entries],
                dtype=torch.int64,
            ),
        }
        for j in self.hidden_layers:
            tensors[f"hidden.{j}"] = torch.cat([e[f"hidden.{j}"] for e in entries]).contiguous()
        # In a multi-process run every rank caches the teacher outputs of its own batches into the same folder:
        # its shards carry its rank, so two ranks never write (or stage) the same file.
        tag = f"-rank{process_rank():05d}" if world_size() > 1 else ""
        n = len(list(self.folder.glob("shard-*.safetensors")))
        path = self.folder / f"shard-{n:05d}{tag}.safetensors"
        while path.exists():
            n += 1
            path = self.folder / f"shard-{n:05d}{tag}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"fingerprint": self.fingerprint, "format": "hf_sparse-teacher-cache"})
        tmp.replace(path)
        self._pending = []
        return path

    # -- lookups ------------------------------------------------------------------------------------------------------
    def get(self, keys: Sequence[bytes], mask: torch.Tensor | None, device: torch.device) -> dict | None:
        """The cached outputs of a whole batch, or None when any example is missing.

        Returns:
            ``{"logits": (B, ...) float32, "hidden": {j: (B, L, H) float32}}``, hidden states zero at padding.
        """
        if not all(k in self._entries for k in keys):
            self.misses += len(keys)
            return None
        entries = [self._entries[k] for k in keys]
        out = {"logits": torch.stack([e["logits"] for e in entries]).to(device), "hidden": {}}
        if self.hidden_layers:
            if mask is None:
                raise FormatError(
                    "Teacher cache: hidden states are cached per valid token; the batch needs attention_mask."
                )
            valid = mask.bool()
            for j in self.hidden_layers:
                rows = torch.cat([e[f"hidden.{j}"] for e in entries]).to(device=device, dtype=torch.float32)
                if rows.shape[0] != int(valid.sum()):
                    self.misses += len(keys)
                    return None  # the same ids with another mask: recompute rather than misplace tokens
                full = torch.zeros(*valid.shape, rows.shape[-1], device=device, dtype=torch.float32)
                full[valid] = rows
                out["hidden"][j] = full
        self.hits += len(keys)
        return out

    def put(self, keys: Sequence[bytes], logits: torch.Tensor, hidden: Mapping[int, torch.Tensor], mask) -> None:
        """Store a batch's teacher outputs (examples already cached are skipped).

        Shapes:
            logits: (B, ...). hidden: j -> (B, L, H) for every ``j`` in :attr:`hidden_layers`. mask: (B, L) or None.
        """
        valid = mask.bool() if isinstance(mask, torch.Tensor) else None
        for i, key in enumerate(keys):
            if key in self._entries:
                continue
            entry = {"logits": logits[i].detach().float().cpu().clone()}
            for j in self.hidden_layers:
                h = hidden[j][i]
                if valid is not None:
                    h = h[valid[i]]
                entry[f"hidden.{j}"] = h.detach().to(torch.float16).cpu().clone()
            self._entries[key] = entry
            self._pending.append(key)
