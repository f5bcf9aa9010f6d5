"""The metrics of the jobs' tasks, computed locally from predictions and labels (no metric downloads): accuracy and
macro F1 of a classifier, entity-level F1 of IOB2 tagging, masked-LM perplexity.

Every function is pure NumPy on arrays the task's prediction step gathered; label value ``-100`` (what transformers'
losses ignore: padding, later sub-tokens of a word, unmasked positions) never counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "accuracy",
    "macro_f1",
    "entity_spans",
    "entity_scores",
    "token_predictions",
    "masked_lm_perplexity",
]

#: The label of a position that is not scored.
IGNORE_INDEX = -100


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``predictions`` equal to ``labels`` (positions labelled :data:`IGNORE_INDEX` left out).

    Shapes:
        predictions, labels: any shape, the same for both.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    keep = labels != IGNORE_INDEX
    if not keep.any():
        return float("nan")
    return float((predictions[keep] == labels[keep]).mean())


def macro_f1(predictions: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores.

    The classes averaged are those that occur among ``labels`` or ``predictions`` (as scikit-learn's
    ``f1_score(average="macro")``): a class absent from both has no defined F1 and is left out, while a class that
    occurs but is never predicted correctly counts with F1 0.

    Shapes:
        predictions, labels: ``(N,)`` integer class ids.
    """
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    keep = labels != IGNORE_INDEX
    predictions, labels = predictions[keep], labels[keep]
    if labels.size == 0:
        return float("nan")
    size = max(int(labels.max()), int(predictions.max()), (num_labels or 0) - 1) + 1
    true_pos = np.bincount(labels[predictions == labels], minlength=size).astype(np.float64)
    predicted = np.bincount(predictions, minlength=size).astype(np.float64)
    actual = np.bincount(labels, minlength=size).astype(np.float64)
    present = (predicted + actual) > 0
    # F1 = 2 TP / (predicted + actual): equal to 2PR/(P+R) and defined (0) where one of P, R is 0/0.
    f1 = 2 * true_pos[present] / (predicted[present] + actual[present])
    return float(f1.mean())


def _split_tag(tag: str) -> tuple[str, str]:
    """``("B", "PER")`` of ``"B-PER"``; ``("O", "")`` of ``"O"``; a tag without a ``B-``/``I-`` prefix (IO
    tagging, ``"PER"``) continues an entity of its type, as ``I-`` does."""
    if tag == "O" or not tag:
        return "O", ""
    if len(tag) > 2 and tag[1] in "-_" and tag[0] in "BI":
        return tag[0], tag[2:]
    return "I", tag


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """The entities of one IOB2 (BIO) tag sequence as ``(type, start, end)`` with ``end`` exclusive.

    ``B-X`` starts an entity of type X; ``I-X`` continues the entity before it when that entity has type X, and
    otherwise starts one (an ``I-`` without its ``B-``, the lenient reading of the CoNLL evaluation script and
    seqeval's default mode); ``O`` ends any entity.

    Example: ``["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]`` -> ``[("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)]``.
    """
    spans: list[tuple[str, int, int]] = []
    current: list | None = None  # [type, start]
    for i, tag in enumerate(tags):
        prefix, kind = _split_tag(tag)
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if prefix != "O" and current is None:
            current = [kind, i]
    if current is not None:
        spans.append((current[0], current[1], len(tags)))
    return spans


def entity_scores(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float | int]:
    """Entity-level precision, recall and F1 of tag sequences, micro-averaged over all entities: an entity counts
    as found only when its type and both boundaries match exactly (CoNLL-2003 evaluation).

    Args:
        predicted, gold: One list of tag strings per sentence (the same lengths, sentence by sentence).

    Returns:
        ``precision``, ``recall``, ``f1`` (0.0 where undefined: no predicted or no gold entities), and the counts
        ``predicted_entities``, ``gold_entities``, ``correct_entities``.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"entity_scores: {len(predicted)} predicted sentences but {len(gold)} gold ones.")
    found = correct = total = 0
    for i, (pred, true) in enumerate(zip(predicted, gold)):
        if len(pred) != len(true):
            raise ValueError(f"entity_scores: sentence {i} has {len(pred)} predicted tags but {len(true)} gold ones.")
        p, g = set(entity_spans(pred)), set(entity_spans(true))
        found += len(p)
        total += len(g)
        correct += len(p & g)
    precision = correct / found if found else 0.0
    recall = correct / total if total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "predicted_entities": found,
        "gold_entities": total,
        "correct_entities": correct,
    }


def token_predictions(
    logits: np.ndarray, labels: np.ndarray, names: Sequence[str]
) -> tuple[list[list[str]], list[list[str]]]:
    """The predicted and gold tag names of each sentence, at the scored positions (the first sub-token of each
    word: labels other than :data:`IGNORE_INDEX`).

    Shapes:
        logits: ``(N, L, C)`` (or predicted ids ``(N, L)``); labels: ``(N, L)``.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    ids = logits.argmax(-1) if logits.ndim == 3 else logits
    predicted, gold = [], []
    for row_ids, row_labels in zip(ids, labels):
        keep = row_labels != IGNORE_INDEX
        predicted.append([names[int(t)] for t in row_ids[keep]])
        gold.append([names[int(t)] for t in row_labels[keep]])
    return predicted, gold


def masked_lm_perplexity(token_nll: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """``(perplexity, mean negative log-likelihood, masked tokens)`` of a masked LM from the negative
    log-likelihood of the true token at each position; only positions with a label count (the masked ones).

    Shapes:
        token_nll, labels: ``(N, L)``.
    """
    token_nll, labels = np.asarray(token_nll, dtype=np.float64), np.asarray(labels)
    keep = labels != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        return float("nan"), float("nan"), 0
    mean = float(token_nll[keep].mean())
    return float(math.exp(min(mean, 700.0))), mean, count
