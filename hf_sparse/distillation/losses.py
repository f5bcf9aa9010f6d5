"""Distillation losses as pure functions: logits KD, hidden states, attention maps, embeddings.

Every function takes the student's and the teacher's tensors (the teacher's already detached or produced under
``no_grad``) and an optional ``mask`` of valid tokens, and returns a scalar. Averages run over valid tokens only, so
padding never contributes, whatever the padding side.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError, quote

__all__ = [
    "attention_loss",
    "combine_losses",
    "embedding_loss",
    "hidden_state_loss",
    "kd_loss",
]


def _check_same(who: str, student: torch.Tensor, teacher: torch.Tensor, dims: slice = slice(None)) -> None:
    if tuple(student.shape[dims]) != tuple(teacher.shape[dims]):
        raise ConfigError(
            f"{who}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} do not match; "
            "distil from a teacher run on the same batch (same tokenizer and padding)."
        )


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, L) over positions where ``mask`` (B, L) is non-zero; plain mean without a mask."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits distillation (Hinton et al. 2015): ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over examples
    (or over valid tokens for token-level logits).

    The ``T²`` factor keeps the gradient's scale independent of the temperature, so ``alpha`` means the same at any
    ``T``.

    Shapes:
        student_logits, teacher_logits: (B, C) for sequence classification or (B, L, C) per token.
        mask: None, or (B, L) with 1 for tokens that count (per-token logits only).
        Returns: a scalar.
    """
    _check_same("kd_loss", student_logits, teacher_logits)
    if not temperature > 0:
        raise ConfigError(f"kd_loss: temperature must be > 0, got {temperature}.")
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_item = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    if per_item.dim() == 2:
        loss = _masked_mean(per_item, mask)
    else:
        loss = per_item.mean()
    return loss * temperature**2


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: Literal["mse", "cosine"] = "mse",
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Hidden-state matching (TinyBERT, MiniLM's predecessors): MSE, or ``1 - cosine`` per token, averaged over
    valid tokens. ``projection`` maps the student's width to the teacher's when they differ (a learned
    ``nn.Linear(student_width, teacher_width)``).

    MSE is the mean over the hidden dimension, so its scale does not grow with the width.

    Shapes:
        student_hidden: (B, L, Hs). teacher_hidden: (B, L, Ht); Hs == Ht unless ``projection`` maps Hs to Ht.
        mask: None or (B, L). Returns: a scalar.
    """
    if projection is not None:
        student_hidden = projection(student_hidden)
    _check_same("hidden_state_loss", student_hidden, teacher_hidden)
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "mse":
        per_token = (s - t).pow(2).mean(-1)
    elif kind == "cosine":
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    else:
        raise ConfigError(f"hidden_state_loss: kind must be 'mse' or 'cosine', got {quote(kind)}.")
    return _masked_mean(per_token, mask)


def embedding_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: Literal["mse", "cosine"] = "mse",
    projection: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Embedding-layer matching: :func:`hidden_state_loss` on the embedding outputs (``hidden_states[0]`` of a
    transformers model: token + position + type embeddings after their LayerNorm).

    Shapes:
        student_embeddings: (B, L, Hs). teacher_embeddings: (B, L, Ht). mask: None or (B, L). Returns: a scalar.
    """
    return hidden_state_loss(student_embeddings, teacher_embeddings, mask, kind=kind, projection=projection)


def attention_loss(
    student_attention: torch.Tensor,
    teacher_attention: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: Literal["kl", "mse"] = "kl",
) -> torch.Tensor:
    """Attention-map transfer per head: ``KL(teacher row ‖ student row)`` summed over keys (MiniLM, Wang et al.
    2020), or the MSE of the probabilities (TinyBERT), averaged over heads and valid query tokens.

    When the head counts differ (a student with pruned heads), both maps are averaged over their heads first: heads
    of different models have no one-to-one correspondence.

    Shapes:
        student_attention: (B, Hs, L, L) attention probabilities (rows sum to 1).
        teacher_attention: (B, Ht, L, L). mask: None or (B, L), the valid query (and key) tokens.
        Returns: a scalar.
    """
    if student_attention.dim() != 4 or teacher_attention.dim() != 4:
        raise ConfigError(
            f"attention_loss: expected (batch, heads, query, key) maps, got {tuple(student_attention.shape)} and "
            f"{tuple(teacher_attention.shape)}."
        )
    _check_same("attention_loss", student_attention, teacher_attention, slice(2, None))
    _check_same("attention_loss", student_attention, teacher_attention, slice(0, 1))
    s, t = student_attention.float(), teacher_attention.float()
    if s.shape[1] != t.shape[1]:
        s, t = s.mean(1, keepdim=True), t.mean(1, keepdim=True)
    if kind == "kl":
        # Teacher probabilities of 0 (masked keys) contribute 0; the student's log is clamped for the same keys.
        per_row = torch.xlogy(t, t) - t * torch.log(s.clamp_min(1e-12))
        per_row = per_row.sum(-1)  # (B, H, L)
    elif kind == "mse":
        per_row = (s - t).pow(2).mean(-1)
    else:
        raise ConfigError(f"attention_loss: kind must be 'kl' or 'mse', got {quote(kind)}.")
    per_query = per_row.mean(1)  # over heads: (B, L)
    return _masked_mean(per_query, mask)


def combine_losses(
    task_loss: torch.Tensor | None,
    kd: torch.Tensor | None,
    alpha: float,
    extra: dict[str, tuple[float, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """``(1 - alpha) · task + alpha · kd + Σ weight · loss`` over ``extra``; without a task loss (no labels), ``kd``
    counts fully.

    Shapes:
        task_loss, kd: scalars or None. extra: name -> (weight, scalar). Returns: a scalar.
    """
    if task_loss is None and kd is None and not extra:
        raise ConfigError("combine_losses: nothing to combine (no task loss, no KD loss, no extra losses).")
    if task_loss is None:
        total = kd if kd is not None else 0.0
    elif kd is None:
        total = task_loss
    else:
        total = (1.0 - alpha) * task_loss + alpha * kd
    for weight, value in (extra or {}).values():
        total = total + weight * value
    return total
