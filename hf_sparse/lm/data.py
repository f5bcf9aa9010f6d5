"""Held-out and fine-tuning documents of a ``task: lm`` job: whole real speeches, tokenized, split by a seeded draw."""

from __future__ import annotations

import dataclasses
import random

import torch

from ..errors import ConfigError

__all__ = ["LmDocuments", "select_documents", "split_into_pieces"]


@dataclasses.dataclass
class LmDocuments:
    """The documents of one job.

    Attributes:
        eval: held-out documents (``title``, ``speaker``, ``year``, ``tokens``, ``ids``: (1, tokens) int64).
        train: fine-tuning documents (same keys), none of them held out.
    """

    eval: list[dict]
    train: list[dict]


def select_documents(
    tokenizer, eval_documents: int, train_documents: int | None, eval_length: int, train_length: int, seed: int
) -> LmDocuments:
    """Draw ``eval_documents`` held-out documents among the real long documents of at least ``eval_length``
    tokens, and ``train_documents`` (None: all) fine-tuning documents among the other ones of at least
    ``train_length`` tokens. Both draws use ``random.Random(seed)``; the held-out draw comes first, so it does not
    depend on the fine-tuning settings.

    Raises:
        ConfigError: fewer documents are long enough than asked for (the message names the recipe key).
    """
    from ..data import load_long_documents

    # One tokenization of every speech; lengths counted without special tokens, as the model reads them here.
    docs = load_long_documents(tokenizer, min_tokens=min(eval_length, train_length), max_tokens=10**9)
    rng = random.Random(seed)
    eligible = [i for i, d in enumerate(docs) if d["tokens"] >= eval_length]
    if len(eligible) < eval_documents:
        raise ConfigError(
            f"data.eval_documents is {eval_documents}, but only {len(eligible)} documents have at least "
            f"{eval_length} tokens (the longest eval.lengths); ask for fewer or evaluate at a shorter length."
        )
    held_out = sorted(rng.sample(eligible, eval_documents))
    rest = [i for i, d in enumerate(docs) if i not in held_out and d["tokens"] >= train_length]
    if train_documents is not None:
        if len(rest) < train_documents:
            raise ConfigError(
                f"data.train_documents is {train_documents}, but only {len(rest)} other documents have at least "
                f"{train_length} tokens (finetune.seq_len)."
            )
        rest = sorted(rng.sample(rest, train_documents))

    def encoded(i: int) -> dict:
        doc = docs[i]
        ids = tokenizer(doc["text"], add_special_tokens=False, return_tensors="pt")["input_ids"]
        keep = ("title", "speaker", "year", "source", "tokens")
        return {**{k: doc[k] for k in keep}, "ids": ids}

    return LmDocuments(eval=[encoded(i) for i in held_out], train=[encoded(i) for i in rest])


def split_into_pieces(documents: list[dict], seq_len: int) -> list[torch.Tensor]:
    """Each document's ids cut into non-overlapping pieces of ``seq_len`` tokens (the remainder dropped, no piece
    spanning two documents).

    Shapes:
        documents[i]["ids"]: (1, tokens_i). Returns: pieces of shape (seq_len,).
    """
    pieces = []
    for doc in documents:
        ids = doc["ids"][0]
        for start in range(0, ids.numel() - seq_len + 1, seq_len):
            pieces.append(ids[start : start + seq_len].clone())
    return pieces
