"""Teacher outputs cached on disk, reused across epochs and runs.

Layout: ``<cache_dir>/teacher-<fingerprint>/shard-<n>.safetensors`` (``shard-<n>-rank<r>.safetensors`` when the
processes of a multi-process run each write the outputs of their own batches). The fingerprint hashes the teacher's
config, weights and what is stored (logits, which hidden layers), so a different or further-trained teacher gets
its own folder. Inside, each example is keyed by a hash of every model input the teacher gets at its valid tokens
(token ids, token types, attention mask, and an encoder-decoder model's decoder inputs at its valid decoder
tokens...), so a changed data set, tokenisation (other text, another tokenizer, another ``max_length``) or target
sequence gives new keys and the teacher runs again: stale outputs are never read. Hidden states (float16) and
per-token logits (float32) are stored per valid token and put back at the valid positions of whatever padding the
batch has.
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


def _valid(mask) -> torch.Tensor | None:
    return mask.bool().cpu() if isinstance(mask, torch.Tensor) else None


def example_keys(inputs: Mapping[str, torch.Tensor], decoder_mask: torch.Tensor | None = None) -> list[bytes]:
    """One 16-byte key per example of a batch: a hash of every (name, values at the valid tokens) of its model
    inputs, so the same example padded differently keeps its key.

    Decoder inputs of an encoder-decoder model (``decoder_*``) are selected by ``decoder_mask`` (default:
    ``decoder_attention_mask``; hashed whole without one), never by the encoder's ``attention_mask``: decoder tokens
    at positions the encoder pads are still part of the example.

    Shapes:
        inputs: name -> (B, L) tensors (``attention_mask`` selects the valid tokens; all tokens without one).
        decoder_mask: None or (B, Ld), the valid decoder positions (e.g. where the labels are not ignored).
    """
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor) and k not in NON_INPUT_KEYS}
    if not tensors:
        raise FormatError("Teacher cache: the batch has no model inputs to key examples by.")
    first = next(iter(tensors.values()))
    batch = first.shape[0]
    valid = _valid(inputs.get("attention_mask"))
    decoder_valid = _valid(decoder_mask if decoder_mask is not None else inputs.get("decoder_attention_mask"))
    arrays = {k: v.detach().cpu() for k, v in sorted(tensors.items())}
    keys = []
    for i in range(batch):
        h = hashlib.blake2b(digest_size=16)
        for name, t in arrays.items():
            row = t[i]
            select = decoder_valid if name.startswith("decoder_") else valid
            if select is not None and row.shape[:1] == select.shape[1:2]:
                row = row[select[i]]
            h.update(name.encode())
            h.update(str(tuple(row.shape)).encode())
            h.update(row.to(torch.int64).numpy().tobytes() if not row.is_floating_point() else row.numpy().tobytes())
        keys.append(h.digest())
    return keys


def _stored_logits(logits: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """One example's logits as stored: (C,) as they are, (L, C) per token at its valid positions."""
    if logits.dim() == 2 and valid is not None and valid.shape[0] == logits.shape[0]:
        return logits[valid]
    return logits


class TeacherCache:
    """Teacher logits (and hidden states of chosen layers) per example, on disk.

    Per-token logits ((B, L, C): token classification, language models, an encoder-decoder model's decoder) are
    stored at the valid tokens of their own mask (``logits_mask``: the decoder's for an encoder-decoder model).

    Args:
        directory: The cache folder (created on first write).
        teacher: The teacher model (fingerprinted once, here).
        hidden_layers: Indices into the teacher's ``hidden_states`` to store (0 = embeddings, ``j + 1`` = output
            of layer ``j``); empty stores logits only.
    """

    def __init__(self, directory: str | Path, teacher: torch.nn.Module, hidden_layers: Sequence[int] = ()):
        self.hidden_layers = tuple(sorted(set(int(i) for i in hidden_layers)))
        # v2: per-token logits are stored at the valid tokens (v1 kept them padded, at the batch's length).
        self.fingerprint = teacher_fingerprint(teacher, {"hidden_layers": list(self.hidden_layers), "v": 2})
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
                    logit_rows = f.get_tensor("logit_rows")
                    hidden = {j: f.get_tensor(f"hidden.{j}") for j in self.hidden_layers}
            except Exception as exc:  # a truncated or foreign file: skip it, the teacher recomputes those examples
                logger.warning("Teacher cache: ignoring unreadable shard %s (%s).", shard, exc)
                continue
            # logit_rows: -1 for an example's (C,) logits (one row of the stored matrix), else its valid tokens.
            n_keys = keys.shape[0] if keys.dim() == 2 else -1
            rows = logit_rows.numpy()
            logit_offsets = np.concatenate([[0], np.cumsum(np.maximum(rows, 1))])
            if (
                keys.dim() != 2
                or keys.shape[1] != 16
                or lengths.shape[0] != n_keys
                or rows.shape[0] != n_keys
                or logits.shape[0] != logit_offsets[-1]
            ):
                logger.warning("Teacher cache: ignoring malformed shard %s.", shard)
                continue
            offsets = np.concatenate([[0], np.cumsum(lengths.numpy())])
            if any(h.shape[0] != offsets[-1] for h in hidden.values()):
                logger.warning("Teacher cache: ignoring shard %s whose hidden states do not match its lengths.", shard)
                continue
            for n, key in enumerate(keys.numpy()):
                block = logits[logit_offsets[n] : logit_offsets[n + 1]]
                entry = {"logits": block[0] if rows[n] < 0 else block}
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
        if len({e["logits"].dim() for e in entries}) > 1:
            raise FormatError("Teacher cache: one batch of examples holds both per-example and per-token logits.")
        per_token = entries[0]["logits"].dim() == 2
        tensors = {
            "keys": torch.from_numpy(np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 16).copy()),
            "logits": torch.cat([e["logits"] if per_token else e["logits"][None] for e in entries]).contiguous(),
            "logit_rows": torch.tensor(
                [e["logits"].shape[0] if per_token else -1 for e in entries], dtype=torch.int64
            ),
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
    def get(
        self,
        keys: Sequence[bytes],
        mask: torch.Tensor | None,
        device: torch.device,
        logits_mask: torch.Tensor | None = None,
    ) -> dict | None:
        """The cached outputs of a whole batch, or None when any example is missing (or was stored for other
        valid positions).

        Args:
            mask: (B, L) valid tokens of the hidden states (and of per-token logits without ``logits_mask``).
            logits_mask: (B, Lt) valid tokens of per-token logits, when they follow another sequence (the decoder's).

        Returns:
            ``{"logits": (B, ...) float32, "hidden": {j: (B, L, H) float32}}``, hidden states and per-token logits
            zero at padding.
        """
        if not all(k in self._entries for k in keys):
            self.misses += len(keys)
            return None
        entries = [self._entries[k] for k in keys]
        logits = self._logits_back(entries, logits_mask if logits_mask is not None else mask, device)
        if logits is None:
            self.misses += len(keys)
            return None
        out = {"logits": logits, "hidden": {}}
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

    @staticmethod
    def _logits_back(entries, mask, device) -> torch.Tensor | None:
        """The batch's logits from stored entries: stacked, or per-token rows put back at the valid positions of
        ``mask`` (None when the rows do not fit them)."""
        if entries[0]["logits"].dim() == 1 or mask is None:
            if len({tuple(e["logits"].shape) for e in entries}) > 1:
                return None
            return torch.stack([e["logits"] for e in entries]).to(device)
        valid = mask.bool().to(device)
        if any(e["logits"].dim() != 2 or e["logits"].shape[0] != int(valid[i].sum()) for i, e in enumerate(entries)):
            return None  # the same inputs with another mask: recompute rather than misplace tokens
        full = torch.zeros(*valid.shape, entries[0]["logits"].shape[-1], device=device, dtype=torch.float32)
        full[valid] = torch.cat([e["logits"] for e in entries]).to(device=device, dtype=torch.float32)
        return full

    def put(
        self,
        keys: Sequence[bytes],
        logits: torch.Tensor,
        hidden: Mapping[int, torch.Tensor],
        mask,
        logits_mask: torch.Tensor | None = None,
    ) -> None:
        """Store a batch's teacher outputs (examples already cached are skipped).

        Shapes:
            logits: (B, C) or (B, Lt, C). hidden: j -> (B, L, H) for every ``j`` in :attr:`hidden_layers`.
            mask: (B, L) or None. logits_mask: (B, Lt) or None (per-token logits follow ``mask`` then).
        """
        valid = mask.bool() if isinstance(mask, torch.Tensor) else None
        lvalid = logits_mask.bool() if isinstance(logits_mask, torch.Tensor) else valid
        for i, key in enumerate(keys):
            if key in self._entries:
                continue
            row = _stored_logits(logits[i], None if lvalid is None else lvalid[i].to(logits.device))
            entry = {"logits": row.detach().float().cpu().clone()}
            for j in self.hidden_layers:
                h = hidden[j][i]
                if valid is not None:
                    h = h[valid[i]]
                entry[f"hidden.{j}"] = h.detach().to(torch.float16).cpu().clone()
            self._entries[key] = entry
            self._pending.append(key)
