"""Token-level perplexity of a causal language model on whole held-out documents."""

from __future__ import annotations

import math

import torch

__all__ = ["sequence_nll", "evaluate_perplexity"]


def sequence_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed negative log-likelihood (nats, float64) of ``ids[1:]`` under ``logits[:-1]``, and how many tokens.

    Shapes:
        logits: (1, S, vocab). ids: (1, S). Returns: (sum over S - 1 tokens, S - 1).
    """
    nll = torch.nn.functional.cross_entropy(logits[0, :-1].double(), ids[0, 1:], reduction="sum")
    return float(nll), int(ids.shape[1] - 1)


def evaluate_perplexity(
    model, documents: list[dict], lengths: tuple[int, ...], *, keep_logits_of_first: int | None = None
) -> tuple[dict[str, dict], torch.Tensor | None]:
    """Perplexity of ``model`` (as it is configured) on the first L tokens of each document, for each L in
    ``lengths``: one forward pass per document and length, batch 1, no padding, under ``torch.no_grad``.

    Not ``torch.inference_mode``: our attention caches its block layouts per length, and a layout built as an
    inference tensor cannot take part in a later fine-tuning at the same length.

    Args:
        documents: dicts with ``title`` and ``ids`` ((1, tokens) int64), each at least ``max(lengths)`` long.
        keep_logits_of_first: return the logits of the first document at this length (a reload check compares
            them) instead of computing them again.

    Returns:
        ``({str(L): {"perplexity", "nll", "tokens", "per_document": [{"title", "perplexity"}]}}, logits or None)``.
        ``perplexity`` pools every document's tokens (exp of the summed NLL over the summed token count), so a
        longer document weighs more.
    """
    out: dict[str, dict] = {}
    kept = None
    model.eval()
    with torch.no_grad():
        for length in lengths:
            total_nll, total_tokens, per_document = 0.0, 0, []
            for i, doc in enumerate(documents):
                ids = doc["ids"][:, :length]
                logits = model(input_ids=ids).logits
                nll, tokens = sequence_nll(logits, ids)
                if i == 0 and length == keep_logits_of_first:
                    kept = logits.clone()
                del logits
                total_nll += nll
                total_tokens += tokens
                per_document.append({"title": doc["title"], "perplexity": math.exp(nll / tokens)})
            out[str(length)] = {
                "perplexity": math.exp(total_nll / total_tokens),
                "nll": total_nll / total_tokens,
                "tokens": total_tokens,
                "per_document": per_document,
            }
    return out, kept
