"""The ``task: lm`` recipe: a causal language model evaluated and fine-tuned with a sparse attention pattern.

A recipe is a YAML mapping with the sections below; unknown keys, wrong types and impossible values are
:class:`~hf_sparse.errors.RecipeError` s naming the file, the key's dotted place and its line::

    task: lm
    name: smollm2-windowed
    seed: 42
    threads: 1
    model: {name: smollm2-135m}
    data: {eval_documents: 2, train_documents: null, seed: 0}
    attention: {pattern: window, window: 256, global_positions: [0, 1, 2, 3]}
    finetune: {steps: 24, learning_rate: 5.0e-5, batch_size: 1, seq_len: 1024, dense_control: true}
    eval: {lengths: [512, 2048], check_full_window: true}
    checkpoint: {verify: true, latency_rounds: 3}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from ..attention.config import SparseAttentionConfig
from ..config import BaseConfig, check_name, check_seed, register_config
from ..errors import ConfigError

__all__ = [
    "LmModelSection",
    "LmDataSection",
    "LmFinetuneSection",
    "LmEvalSection",
    "LmCheckpointSection",
    "LmRecipe",
    "load_lm_recipe",
    "SMOLLM2_ALIASES",
]

#: What ``hf-sparse lm`` writes in its output folder besides the model (a recipe's name must not be one of them).
LM_OUTPUTS = ("trainer", "recipe.yaml", "report.json", "report.md")

#: Names that mean the packaged SmolLM2-135M-Instruct (converted once to float32 safetensors, see
#: :func:`hf_sparse.data.smollm2_path`).
SMOLLM2_ALIASES = ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct")


@register_config("lm_model")
@dataclasses.dataclass(frozen=True)
class LmModelSection(BaseConfig):
    """The causal language model.

    Args:
        name: ``smollm2-135m`` (the packaged SmolLM2-135M-Instruct), a local folder written by ``save_pretrained``,
            or a Hub id (needs the Hub, or its copy in the local cache).
    """

    name: str = "smollm2-135m"

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError("LmModelSection.name must name a model (an alias, a folder or a Hub id), got ''.")


@register_config("lm_data")
@dataclasses.dataclass(frozen=True)
class LmDataSection(BaseConfig):
    """Which real long documents (:func:`hf_sparse.data.load_long_documents`: whole convention speeches) are held
    out for evaluation and which are used for fine-tuning.

    Args:
        eval_documents: how many documents are held out, drawn with ``seed`` among those at least as long as the
            longest ``eval.lengths``.
        train_documents: how many of the other documents (at least ``finetune.seq_len`` tokens long; never a
            held-out one) are used for fine-tuning, drawn with ``seed``; null: all of them.
        seed: the draw of both sets (the held-out set depends on ``seed`` and the evaluation length only).
    """

    eval_documents: int = 2
    train_documents: int | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.eval_documents < 1:
            raise ConfigError(f"LmDataSection.eval_documents must be >= 1, got {self.eval_documents}.")
        if self.train_documents is not None and self.train_documents < 1:
            raise ConfigError(
                f"LmDataSection.train_documents must be >= 1 (or null for all), got {self.train_documents}."
            )
        check_seed(self.seed, "LmDataSection.seed")


@register_config("lm_finetune")
@dataclasses.dataclass(frozen=True)
class LmFinetuneSection(BaseConfig):
    """The short fine-tuning with the sparse attention pattern (the stock ``Trainer``, causal-LM loss, on CPU).

    Each training document is cut into non-overlapping pieces of ``seq_len`` tokens (the remainder is dropped; no
    piece spans two documents); the Trainer draws them in a seeded order.

    Args:
        steps: optimizer steps; 0 skips the fine-tuning (the job then measures the pattern as it is).
        learning_rate: peak learning rate (AdamW).
        lr_scheduler: ``constant`` or ``linear`` decay to 0 over ``steps``.
        warmup_steps: linear warm-up steps.
        batch_size: pieces per step.
        seq_len: tokens per piece.
        dense_control: also fine-tune a copy of the dense model, with full attention and the same settings and data,
            and evaluate it: the control that tells adaptation to the pattern from adaptation to the documents'
            domain (doubles the fine-tuning time).
    """

    steps: int = 12
    learning_rate: float = 1e-4
    lr_scheduler: Literal["constant", "linear"] = "constant"
    warmup_steps: int = 0
    batch_size: int = 1
    seq_len: int = 1024
    dense_control: bool = False

    def validate(self) -> None:
        if self.steps < 0:
            raise ConfigError(f"LmFinetuneSection.steps must be >= 0 (0: no fine-tuning), got {self.steps}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"LmFinetuneSection.learning_rate must be > 0, got {self.learning_rate}.")
        if self.warmup_steps < 0:
            raise ConfigError(f"LmFinetuneSection.warmup_steps must be >= 0, got {self.warmup_steps}.")
        if self.batch_size < 1:
            raise ConfigError(f"LmFinetuneSection.batch_size must be >= 1, got {self.batch_size}.")
        if self.seq_len < 2:
            raise ConfigError(
                f"LmFinetuneSection.seq_len must be >= 2 (a token and its successor), got {self.seq_len}."
            )


@register_config("lm_eval")
@dataclasses.dataclass(frozen=True)
class LmEvalSection(BaseConfig):
    """How perplexity is measured.

    Args:
        lengths: for each length L, the first L tokens of every held-out document in one forward pass (batch 1, no
            padding, no sliding evaluation); perplexity = exp of the mean negative log-likelihood of tokens 2..L of
            all held-out documents pooled. The longest length is also the length of the reload check and of the
            latency measurement.
        check_full_window: before anything else, run the model with a window covering the longest length (our
            kernel, a pattern that allows everything the causal mask allows) and compare its logits with ``sdpa``'s:
            the correctness anchor of every number after it.
    """

    lengths: tuple[int, ...] = (2048,)
    check_full_window: bool = True

    def validate(self) -> None:
        if not self.lengths:
            raise ConfigError("LmEvalSection.lengths must hold at least one sequence length, got [].")
        for length in self.lengths:
            if length < 2:
                raise ConfigError(f"LmEvalSection.lengths must be >= 2 tokens each, got {list(self.lengths)}.")
        if len(set(self.lengths)) != len(self.lengths):
            raise ConfigError(f"LmEvalSection.lengths must not repeat a length, got {list(self.lengths)}.")

    @property
    def longest(self) -> int:
        return max(self.lengths)


@register_config("lm_checkpoint")
@dataclasses.dataclass(frozen=True)
class LmCheckpointSection(BaseConfig):
    """How the model with the pattern is saved, checked and timed.

    Args:
        verify: reload the saved folder with ``from_pretrained(..., attn_implementation="hf_sparse")`` and check
            that it gives the logits the saved model gave on the first held-out document (longest eval length).
        latency_rounds: interleaved rounds timing one forward pass at the longest eval length, the saved model with
            the pattern against the same weights with ``sdpa`` full attention; 0 skips the timing.
    """

    verify: bool = True
    latency_rounds: int = 3

    def validate(self) -> None:
        if self.latency_rounds < 0:
            raise ConfigError(f"LmCheckpointSection.latency_rounds must be >= 0 (0: none), got {self.latency_rounds}.")


def _default_attention() -> SparseAttentionConfig:
    # A window of 256 keys plus 4 "attention sinks" (the first positions, which every query also sees).
    return SparseAttentionConfig(pattern="window", window=256, global_positions=(0, 1, 2, 3))


@register_config("lm_recipe")
@dataclasses.dataclass(frozen=True)
class LmRecipe(BaseConfig):
    """A causal-LM job with a sparse attention pattern (``hf-sparse lm``).

    Args:
        task: ``lm`` (what tells this recipe from a ``hf-sparse compress`` one).
        name: a label for the report.
        seed: fine-tuning order and initialisation of anything random.
        threads: torch threads for the whole job (null: torch's default, one per core). On a machine shared with
            other jobs, 1 avoids OpenMP threads waiting for each other at every operation (measured on a loaded
            2-core machine: the small real test of ``tests/lm`` used 24 s of CPU time with 1 thread, 143 s with 2).
        model, data, attention, finetune, eval, checkpoint: see each section's class.
    """

    task: Literal["lm"] = "lm"
    name: str = "smollm2-windowed"
    seed: int = 42
    threads: int | None = None
    model: LmModelSection = dataclasses.field(default_factory=LmModelSection)
    data: LmDataSection = dataclasses.field(default_factory=LmDataSection)
    attention: SparseAttentionConfig = dataclasses.field(default_factory=_default_attention)
    finetune: LmFinetuneSection = dataclasses.field(default_factory=LmFinetuneSection)
    eval: LmEvalSection = dataclasses.field(default_factory=LmEvalSection)
    checkpoint: LmCheckpointSection = dataclasses.field(default_factory=LmCheckpointSection)

    def validate(self) -> None:
        check_seed(self.seed, "seed")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or null for torch's default), got {self.threads}.")
        # The model is saved as ``<output>/<name>``: one path component, not a file the job writes itself.
        check_name(self.name, "name", taken=LM_OUTPUTS)
        if self.attention.pattern == "lowrank":
            raise ConfigError(
                "attention.pattern 'lowrank' pools keys along the whole sequence, so it cannot respect a causal "
                "language model's mask; use 'window', 'dilated' or 'bigbird'."
            )
        if self.attention.causal:
            raise ConfigError("attention.causal: a causal language model is causal already; remove the key.")


def load_lm_recipe(path: str | Path) -> LmRecipe:
    """Read and validate a ``task: lm`` recipe (YAML).

    Raises:
        RecipeError: the file is missing or not YAML, is another kind of recipe, or a key or value is wrong (the
            message names the file, the key's dotted place and its line).
    """
    # The loader and the key-to-line lookup of the compress recipes: the same YAML dialect (``5e-5`` is a float,
    # a key written twice is refused), the same bounds and the same error anchoring in every recipe format.
    from ..recipe_yaml import load_task_recipe

    return load_task_recipe(path, LmRecipe, "lm", "task: lm, model:, data:, attention: ...")
