"""YAML recipes: the complete description of a compression job, validated by the config classes.

A recipe is a YAML mapping whose sections are config classes (``model``, ``data``, ``dense``, ``pruned``,
``pruning``). Unknown keys and wrong types are errors naming the file and the key's dotted place in it.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import yaml

from ._resources import data_dir
from .attention.config import SparseAttentionConfig
from .config import BaseConfig, check_name, check_seed, register_config
from .distillation.config import DistillationConfig
from .embeddings.config import EmbeddingCompressionConfig
from .errors import ConfigError, RecipeError, quote
from .lowrank.config import LowRankConfig
from .pruning.config import PruningConfig
from .pruning.regularization import RegularizationConfig
from .pruning.structured import StructuredPruningConfig
from .quantization.config import QuantizationConfig

__all__ = [
    "ModelSection",
    "DataSection",
    "TrainSection",
    "CheckpointSection",
    "SweepSection",
    "GuardSection",
    "SensitivitySection",
    "DistillationSection",
    "Recipe",
    "load_recipe",
    "dump_recipe",
    "packaged_recipes",
    "DEFAULT_RECIPE",
]

#: Name of the embedded default recipe (``recipes/minilm-rotten-tomatoes.yaml``).
DEFAULT_RECIPE = "minilm-rotten-tomatoes"

#: What ``hf-sparse compress`` and ``sweep`` write directly in the output folder besides the runs (a recipe's name
#: must not be one of them).
JOB_OUTPUTS = (
    "dense",
    "trainer",
    "plots",
    "teacher-cache",
    "recipe.yaml",
    "report.json",
    "report.md",
    "sweep.json",
    "sweep.md",
)


@dataclasses.dataclass(frozen=True)
class ModelSection(BaseConfig):
    """Which model to compress.

    Args:
        name: A packaged alias (``minilm-l6``), a local folder, or a Hub id.
        max_length: Tokenizer truncation length.
    """

    name: str = "minilm-l6"
    max_length: int = 128

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError(
                f"model.name must name a model (a packaged alias such as 'minilm-l6', a local folder or a cached Hub "
                f"id), got {quote(self.name)}."
            )
        if self.max_length < 8:
            raise ConfigError(f"model.max_length must be >= 8, got {self.max_length}.")


@dataclasses.dataclass(frozen=True)
class DataSection(BaseConfig):
    """Which data, how it is split and how much of it is used.

    Args:
        dataset: The task's data set.
        seed: Seed of the splits and subsets.
        validation_fraction, test_fraction: Split sizes (fractions of all examples).
        train_limit, test_limit: Use a stratified, seeded subset of this many examples (null = the whole split).
    """

    dataset: Literal["rotten_tomatoes"] = "rotten_tomatoes"
    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    train_limit: int | None = None
    test_limit: int | None = None

    def validate(self) -> None:
        for key in ("validation_fraction", "test_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"data.{key} must be in (0, 1), got {getattr(self, key)}.")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"data.validation_fraction + data.test_fraction must be below 1 (the rest is the training split), got "
                f"{self.validation_fraction} + {self.test_fraction}."
            )
        check_seed(self.seed, "data.seed")
        for key in ("train_limit", "test_limit"):
            value = getattr(self, key)
            if value is not None and value < 2:
                raise ConfigError(f"data.{key} must be >= 2 or null, got {value}.")


@dataclasses.dataclass(frozen=True)
class TrainSection(BaseConfig):
    """Fine-tuning hyper-parameters (mapped onto ``transformers.TrainingArguments``).

    Args:
        learning_rate: Peak learning rate of AdamW.
        epochs: Passes over the training data (ignored when ``max_steps`` > 0).
        max_steps: Optimizer steps; -1 to train for ``epochs``.
        batch_size: Examples per step per device.
        gradient_accumulation_steps: Batches accumulated per optimizer step.
        weight_decay: AdamW weight decay.
        warmup_fraction: Fraction of the steps with a linear learning-rate warm-up.
        seed: Seed of initialisation, dropout and data order.
        logging_steps: Steps between log lines.
    """

    learning_rate: float = 5e-5
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    seed: int = 42
    logging_steps: int = 25

    def validate(self) -> None:
        # Messages name fields as TrainSection.<field>: in a recipe that becomes dense.<field> or pruned.<field>.
        if self.learning_rate <= 0:
            raise ConfigError(f"TrainSection.learning_rate must be > 0, got {self.learning_rate}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"TrainSection.max_steps must be -1 (use epochs) or > 0, got {self.max_steps}.")
        if self.epochs < 0:
            raise ConfigError(f"TrainSection.epochs must be >= 0, got {self.epochs}.")
        if self.max_steps == -1 and self.epochs == 0:
            raise ConfigError(
                "TrainSection.epochs is 0 and TrainSection.max_steps is -1 (train for epochs): nothing would train; "
                "set epochs > 0 or max_steps > 0."
            )
        for key in ("batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"TrainSection.{key} must be >= 1, got {getattr(self, key)}.")
        if self.weight_decay < 0:
            raise ConfigError(f"TrainSection.weight_decay must be >= 0, got {self.weight_decay}.")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"TrainSection.warmup_fraction must be in [0, 1), got {self.warmup_fraction}.")
        check_seed(self.seed, "TrainSection.seed")


@dataclasses.dataclass(frozen=True)
class CheckpointSection(BaseConfig):
    """How each pruned model is saved, checked and measured.

    Args:
        format: ``"auto"``: each pruned layer is stored in the format ``sparsify_`` predicts fastest on this machine
            for ``batch_hint`` tokens per call, or kept dense; a format name (``"csr"``, ``"bsr"``, ``"hybrid"``,
            ``"nm"``, ...) stores every pruned layer in it; ``"dense"`` saves plain weights with zeros (loads
            without hf_sparse, no smaller on disk).
        batch_hint: Tokens per call the automatic format choice optimises for.
        min_sparsity: Layers pruned less than this stay dense.
        verify: Reload each saved checkpoint with ``from_pretrained`` and compare its test-split predictions with
            the model that was saved.
        latency_rounds: Interleaved rounds of the latency measurement (one padded test review, batch 1, at
            ``model.max_length`` tokens) of each saved model against the dense baseline; 0 skips it.
        save_steps: Every this many optimizer steps each fine-tuning writes a Trainer checkpoint (model, optimizer,
            schedule, RNG, pruning masks and callback state) under ``<output>/trainer/<run>/``, so an interrupted job
            continues from where it stopped with ``hf-sparse compress --resume`` (the two most recent are kept, and
            deleted once the run is saved); 0 writes none (a resumed job then repeats unfinished runs).
    """

    format: str = "auto"
    batch_hint: int = 128
    min_sparsity: float = 0.3
    verify: bool = True
    latency_rounds: int = 20
    save_steps: int = 100

    def validate(self) -> None:
        from .formats import FORMATS

        allowed = ["auto", "dense", *sorted(FORMATS)]
        if self.format not in allowed:
            raise ConfigError(f"checkpoint.format must be one of {allowed}, got {quote(self.format)}.")
        if self.batch_hint < 1:
            raise ConfigError(f"checkpoint.batch_hint must be >= 1, got {self.batch_hint}.")
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ConfigError(f"checkpoint.min_sparsity must be in [0, 1], got {self.min_sparsity}.")
        if self.latency_rounds < 0:
            raise ConfigError(f"checkpoint.latency_rounds must be >= 0, got {self.latency_rounds}.")
        if self.save_steps < 0:
            raise ConfigError(f"checkpoint.save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}.")


@dataclasses.dataclass(frozen=True)
class SweepSection(BaseConfig):
    """A grid of pruning runs compared on the same data (``hf-sparse sweep``): every criterion x granularity x
    sparsity, each pruned from the same fine-tuned dense model and fine-tuned with the recipe's ``pruned``
    section. Gradual criteria (magnitude, movement, taylor, random) follow the recipe's ``pruning`` schedule;
    one-shot criteria (wanda, sparsegpt) prune at step 0 from calibration data, are evaluated before any
    fine-tuning, then fine-tuned with their mask fixed.

    Args:
        criteria: Criterion names (see ``PruningConfig.criterion``).
        granularities: ``"unstructured"``, ``"block"`` (``pruning.block``) or ``"nm"`` (``pruning.n``:``pruning.m``,
            which fixes its sparsity at ``1 - n/m``: run once).
        sparsities: Target sparsities of the unstructured and block runs.
        finetune: Fine-tune each pruned model (false: one-shot criteria only, evaluated as pruned).
    """

    criteria: tuple[str, ...] = ("magnitude", "movement", "taylor", "wanda", "sparsegpt")
    granularities: tuple[str, ...] = ("unstructured", "block", "nm")
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    finetune: bool = True

    def validate(self) -> None:
        from .pruning.criteria import CRITERIA

        for key in ("criteria", "granularities", "sparsities"):
            if not getattr(self, key):
                raise ConfigError(
                    f"sweep.{key} is empty: the sweep runs every combination, so each list needs an entry."
                )
        for c in self.criteria:
            if c not in CRITERIA:
                raise ConfigError(f"sweep.criteria: unknown criterion {quote(c)}; known: {sorted(CRITERIA)}.")
        for g in self.granularities:
            if g not in ("unstructured", "block", "nm"):
                raise ConfigError(f"sweep.granularities: {quote(g)} is not one of ['unstructured', 'block', 'nm'].")
        for s in self.sparsities:
            if not 0 < s < 1:
                raise ConfigError(f"sweep.sparsities must each be in (0, 1), got {s}.")


@dataclasses.dataclass(frozen=True)
class GuardSection(BaseConfig):
    """An accuracy-guarded run of ``hf-sparse compress``: the fine-tuned dense model is pruned stage by stage
    (``pruning``'s criterion and granularity, one-shot per stage, then ``steps_per_stage`` fine-tuning steps with the
    mask fixed), validation accuracy is measured after each stage, and pruning stops at the first stage that loses
    more than ``max_drop``, rolling the model back to the last stage within it
    (:func:`~hf_sparse.pruning.guarded_prune_`). The history goes into the report; the accepted model is saved as
    ``guarded-<pct>``.

    Args:
        max_drop: Largest accepted drop of validation accuracy below the dense model's (0.01 = one point).
        stages: Increasing target sparsities.
        steps_per_stage: Fine-tuning steps after each stage (the ``pruned`` section's other settings).
        validation_examples: Seeded validation examples each evaluation reads (null = all).
    """

    max_drop: float = 0.01
    stages: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    steps_per_stage: int = 100
    validation_examples: int | None = None

    def validate(self) -> None:
        if self.max_drop < 0:
            raise ConfigError(f"guard.max_drop must be >= 0, got {self.max_drop}.")
        if not self.stages or any(not 0 < s < 1 for s in self.stages) or list(self.stages) != sorted(set(self.stages)):
            raise ConfigError(f"guard.stages must be increasing sparsities in (0, 1), got {list(self.stages)}.")
        if self.steps_per_stage < 0:
            raise ConfigError(f"guard.steps_per_stage must be >= 0, got {self.steps_per_stage}.")
        if self.validation_examples is not None and self.validation_examples < 2:
            raise ConfigError(f"guard.validation_examples must be >= 2 or null (all), got {self.validation_examples}.")


@dataclasses.dataclass(frozen=True)
class SensitivitySection(BaseConfig):
    """Per-layer sparsities from a measured sensitivity scan: before the pruned runs, each pruned layer of the
    fine-tuned dense model is pruned alone at each of ``sparsities`` and validation accuracy measured
    (:func:`~hf_sparse.pruning.sensitivity_scan`); every run then gets ``pruning.layer_sparsity`` from
    :func:`~hf_sparse.pruning.allocate_sparsity` at its target (sensitive layers pruned less). The scan is in the
    report.

    Args:
        sparsities: Sparsities each layer is scanned at (scan up to the highest target).
        validation_examples: Seeded validation examples each evaluation reads (null = all; the scan runs
            ``layers x sparsities`` evaluations).
    """

    sparsities: tuple[float, ...] = (0.5, 0.7, 0.9)
    validation_examples: int | None = 512

    def validate(self) -> None:
        if not self.sparsities or any(not 0 < s < 1 for s in self.sparsities):
            raise ConfigError(f"sensitivity.sparsities must be in (0, 1), got {list(self.sparsities)}.")
        if self.validation_examples is not None and self.validation_examples < 2:
            raise ConfigError(
                f"sensitivity.validation_examples must be >= 2 or null (all), got {self.validation_examples}."
            )


@dataclasses.dataclass(frozen=True)
class StageDistillationSection(DistillationConfig):
    """Distillation during one stage of a staged recipe, with the fields of :class:`~hf_sparse.DistillationConfig`
    and:

    Args:
        cache: Cache the teacher's outputs on disk (in ``cache_dir``, default ``<output>/teacher-cache``): the
            first epoch that needs them computes them, later epochs, stages and runs read them. In a recipe
            ``cache_dir`` is a relative path of plain names, inside the output folder.
        teacher: The teacher: a sequence classifier already fine-tuned on the task (a packaged alias, a local folder
            or a cached Hub id) with the task's labels and the student's vocabulary. Null: the recipe's fine-tuned
            dense baseline. Checked before any training.
    """

    cache: bool = True
    teacher: str | None = None

    def validate(self) -> None:
        if self.cache and self.attention_weight > 0:
            raise ConfigError(
                "distillation: attention maps cannot be cached; set cache: false to use attention_weight."
            )
        if self.teacher is not None and not self.teacher.strip():
            raise ConfigError("distillation.teacher must name a model (a folder, packaged alias, Hub id) or be null.")
        super().validate()
        if self.cache_dir is not None:
            # In a recipe the cache is part of the job's output: a relative path of plain names, under the output
            # folder (a recipe never makes a job write elsewhere).
            for part in self.cache_dir.split("/"):
                check_name(part, "distillation.cache_dir")

    def to_config(self, output_dir) -> DistillationConfig:
        """The DistillationConfig of a run writing to ``output_dir``."""
        from .resilience import confined_path

        fields = {k: getattr(self, k) for k in DistillationConfig.field_names()}
        if self.cache and fields["cache_dir"] is None:
            fields["cache_dir"] = str(confined_path(output_dir, "teacher-cache"))
        elif fields["cache_dir"] is not None:
            fields["cache_dir"] = str(confined_path(output_dir, fields["cache_dir"]))
        if not self.cache:
            fields["cache_dir"] = None
        return DistillationConfig(**fields)


@dataclasses.dataclass(frozen=True)
class DistillationSection(StageDistillationSection):
    """Distillation of each pruned run from the fine-tuned dense baseline (the teacher), with the fields of
    :class:`StageDistillationSection` (``cache``, ``teacher``) and:

    Args:
        compare: Also train each pruned run without distillation (same seed and steps), so the report shows the
            gain of distillation beside the dense baseline.
        student_from: ``"dense"``: each student starts as a copy of the fine-tuned dense model (then pruned or cut
            by ``structured``); ``"pretrained"``: as a copy of the pre-trained model with a fresh classifier (the
            DistilBERT setting: the student learns the task only from the labels and the teacher).
    """

    compare: bool = True
    student_from: Literal["dense", "pretrained"] = "dense"


@register_config("recipe_stage_quantization")
@dataclasses.dataclass(frozen=True)
class StageQuantizationSection(QuantizationConfig):
    """Quantisation in a staged recipe or of each run, with the fields of :class:`~hf_sparse.QuantizationConfig`
    and:

    Args:
        mode: ``"qat"``: fine-tuning with fake quantisation (``QATCallback``; in a staged recipe from this stage on),
            then conversion to integer layers; ``"ptq"``: fine-tuning in float, quantised afterwards (calibrated on
            ``calibration_samples`` training examples; in a staged recipe at the end of this stage, the last).
        calibration_samples: training examples that calibrate static activation ranges (PTQ).
    """

    mode: Literal["qat", "ptq"] = "qat"
    calibration_samples: int = 256

    def validate(self) -> None:
        super().validate()
        if self.calibration_samples < 1:
            raise ConfigError(f"quantization.calibration_samples must be >= 1, got {self.calibration_samples}.")

    def to_config(self, *, post_training: bool = False) -> QuantizationConfig:
        """The QuantizationConfig of a run; ``post_training``: for PTQ, where scales come from the observed ranges
        (a learned step size needs training, so ``lsq`` is switched off)."""
        fields = {k: getattr(self, k) for k in QuantizationConfig.field_names()}
        if post_training:
            fields["weight"] = fields["weight"].replace(lsq=False)
            if fields["embedding"] is not None:
                fields["embedding"] = fields["embedding"].replace(lsq=False)
        return QuantizationConfig(**fields)


@register_config("recipe_quantization")
@dataclasses.dataclass(frozen=True)
class QuantizationSection(StageQuantizationSection):
    """Quantisation of each run, with the fields of :class:`StageQuantizationSection` (``mode``,
    ``calibration_samples``) and:

    Args:
        compare_ptq: with ``mode: qat``, also run each configuration as ``ptq`` (same training, quantised after),
            so the report shows QAT, PTQ and the float model of the same training side by side.
    """

    compare_ptq: bool = True


@register_config("recipe_lowrank")
@dataclasses.dataclass(frozen=True)
class LowRankSection(LowRankConfig):
    """Low-rank factorisation of each run, with the fields of :class:`~hf_sparse.LowRankConfig` and:

    Args:
        mode: ``"oneshot"``: each run's layers are factorised by truncated SVD before its fine-tuning;
            ``"gradual"``: each run fine-tunes its dense layers while :class:`~hf_sparse.LowRankCallback` lowers
            their ranks along a cubic schedule (and applies the nuclear-norm penalty when ``nuclear_weight`` > 0),
            then factorises them when training ends.
        nuclear_weight, prox_every, update_every: the callback's penalty weight, steps between proximal steps and
            steps between rank projections (``gradual`` only).
        schedule_end: the fraction of the run's optimizer steps by which ranks reach their targets (``gradual``).

    With a ``sensitivity`` section in the recipe, the ranks come from a measured scan
    (:func:`~hf_sparse.lowrank.rank_sensitivity_scan`, its ``sparsities`` read as fractions of each layer's values
    removed) allocated at ``compression`` (:func:`~hf_sparse.lowrank.allocate_ranks`).
    """

    mode: Literal["oneshot", "gradual"] = "oneshot"
    nuclear_weight: float = 0.0
    prox_every: int = 50
    update_every: int = 50
    schedule_end: float = 0.6

    def validate(self) -> None:
        super().validate()
        if self.mode == "oneshot" and (self.nuclear_weight > 0):
            raise ConfigError("lowrank.nuclear_weight needs mode: gradual (the penalty acts while training).")
        if self.nuclear_weight < 0:
            raise ConfigError(f"lowrank.nuclear_weight must be >= 0, got {self.nuclear_weight}.")
        for key in ("prox_every", "update_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"lowrank.{key} must be >= 1 (optimizer steps), got {getattr(self, key)}.")
        if not 0.0 < self.schedule_end <= 1.0:
            raise ConfigError(f"lowrank.schedule_end must be in (0, 1], got {self.schedule_end}.")
        if self.mode == "gradual" and self.embeddings:
            raise ConfigError(
                "lowrank: mode gradual lowers Linear layers' ranks while training; embedding tables are factorised "
                "one-shot — use mode: oneshot with embeddings."
            )

    def to_config(self) -> LowRankConfig:
        """The plain LowRankConfig of this section."""
        return LowRankConfig(**{k: getattr(self, k) for k in LowRankConfig.field_names()})


@register_config("recipe_stage")
@dataclasses.dataclass(frozen=True)
class StageSection(BaseConfig):
    """One stage of a staged recipe: the model as the previous stage left it (the fine-tuned dense baseline for the
    first) is transformed, then fine-tuned with this stage's callbacks. What a stage did stays done: pruning masks are
    kept fixed in the stages after it, quantisation-aware training continues to the end, tables stay compressed.

    Applied when the stage starts, in this order: ``attention``, ``structured``, ``lowrank`` (truncated SVD),
    ``embeddings``, ``quantization`` (``mode: qat``: fake quantisation from here on). During the stage's training:
    ``pruning`` (its schedule counts this stage's steps; it starts from the masks of earlier stages),
    ``distillation``, ``regularization``. ``quantization`` with ``mode: ptq`` quantises at the end of the stage
    (only in the last one).

    Args:
        name: A short label (letters, digits, ``-``, ``_``), unique in the recipe; the report's row of the stage.
        train: The stage's fine-tuning (null: no training, transforms only).
        pruning, structured, distillation, quantization, lowrank, embeddings, attention, regularization: As the
            recipe sections of the same names, for this stage.
    """

    name: str = "stage"
    train: TrainSection | None = dataclasses.field(default_factory=TrainSection)
    pruning: PruningConfig | None = None
    structured: StructuredPruningConfig | None = None
    distillation: StageDistillationSection | None = None
    quantization: StageQuantizationSection | None = None
    lowrank: LowRankConfig | None = None
    embeddings: EmbeddingCompressionConfig | None = None
    attention: SparseAttentionConfig | None = None
    regularization: RegularizationConfig | None = None

    def validate(self) -> None:
        # The stage's name is part of its Trainer folder (``trainer/<recipe>-<i>-<stage>``): a path component.
        check_name(self.name, "StageSection.name")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.name):
            raise ConfigError(
                f"StageSection.name must be 1-40 letters, digits, '-' or '_' (it names the stage's folder), got "
                f"{quote(self.name)}."
            )
        if self.train is None:
            for key in ("pruning", "distillation", "regularization"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"stage {quote(self.name)}: {key} acts during training; give the stage a train section."
                    )
            if self.quantization is not None and self.quantization.mode == "qat":
                raise ConfigError(
                    f"stage {self.name!r}: quantization mode qat trains; give the stage a train section or use ptq."
                )
        if self.pruning is not None and self.pruning.granularity == "layer":
            raise ConfigError(f"stage {quote(self.name)}: pruning.granularity layer: use structured.layers_to_drop.")


@register_config("recipe_override")
@dataclasses.dataclass(frozen=True)
class OverrideSection(BaseConfig):
    """Settings of some modules that differ from the rest, for every stage and run of the recipe.

    Args:
        modules: Module names: exact qualified names, full-name regular expressions, or name components (as
            ``target_modules``); each must match at least one module of the model.
        sparsity: Final pruning sparsity of the matched pruned modules (``pruning.layer_sparsity``).
        bits: Weight bits of the matched quantised Linear layers (``quantization.module_bits``).
        rank: Rank of the matched factorised Linear layers (``lowrank.module_ranks``).
        skip: Methods that leave the matched modules alone: ``pruning``, ``quantization``, ``lowrank`` (added to
            their ``exclude_modules``).
    """

    modules: tuple[str, ...] = ()
    sparsity: float | None = None
    bits: int | None = None
    rank: int | None = None
    skip: tuple[Literal["pruning", "quantization", "lowrank"], ...] = ()

    def validate(self) -> None:
        if not self.modules or any(not m.strip() for m in self.modules):
            raise ConfigError("overrides: each entry needs modules: a list of module names or patterns.")
        for pattern in self.modules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"overrides.modules: {quote(pattern)} is not a valid regular expression ({exc})."
                ) from None
        if self.sparsity is None and self.bits is None and self.rank is None and not self.skip:
            raise ConfigError(f"overrides for {list(self.modules)}: set sparsity, bits, rank or skip.")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            raise ConfigError(f"overrides.sparsity must be in [0, 1), got {self.sparsity}.")
        if self.bits is not None and not 2 <= self.bits <= 8:
            raise ConfigError(f"overrides.bits must be in [2, 8], got {self.bits}.")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"overrides.rank must be >= 1, got {self.rank}.")
        for method, value in (("pruning", self.sparsity), ("quantization", self.bits), ("lowrank", self.rank)):
            if method in self.skip and value is not None:
                raise ConfigError(f"overrides for {list(self.modules)}: skip {method} and set its value at once.")


@register_config("recipe")
@dataclasses.dataclass(frozen=True)
class Recipe(BaseConfig):
    """A compression job: fine-tune the dense baseline, then prune copies of it while fine-tuning further.

    Args:
        name: A label for reports.
        model, data: What to compress and on which data.
        dense: Fine-tuning of the dense baseline.
        pruned: Fine-tuning of each pruned model (starting from the fine-tuned dense one).
        pruning: How to prune (shared by all pruned runs).
        sparsities: One pruned run per target sparsity; replaces ``pruning.sparsity``. Null: one run at
            ``pruning.sparsity``.
        save_dense: Also save the fine-tuned dense baseline.
        checkpoint: How the pruned models are saved (sparse formats by default), verified and timed.
        sweep: The grid ``hf-sparse sweep`` runs (ignored by ``hf-sparse compress``).
        structured: Heads and FFN neurons (and layers) removed physically from each pruned copy before its
            fine-tuning (a :class:`~hf_sparse.pruning.StructuredPruningConfig`; the ``taylor`` criterion reads 256
            training examples). A sparsity of 0 in ``sparsities`` is then a run with structured pruning only.
        regularization: Penalties, DropConnect and L0 gates added to each pruned run's fine-tuning
            (:class:`~hf_sparse.RegularizationCallback`; gates are finalized — units removed — when it ends).
        guard: An extra accuracy-guarded progressive run (see :class:`GuardSection`).
        sensitivity: Per-layer sparsity allocation from a sensitivity scan (see :class:`SensitivitySection`).
        distillation: Each pruned run also learns from the fine-tuned dense model (see
            :class:`DistillationSection`).
        quantization: Each run is also quantised, by QAT or PTQ (see :class:`QuantizationSection`); a sparsity
            of 0 in ``sparsities`` is then a quantised dense run.
        lowrank: Each run's Linear layers (and any embedding tables it names) are factorised by truncated SVD
            before its fine-tuning, or gradually during it (see :class:`LowRankSection`); a sparsity of 0 in
            ``sparsities`` is then a low-rank run without pruning.
        embeddings: Each run's embedding tables are replaced by compressed ones before its fine-tuning
            (:class:`~hf_sparse.embeddings.EmbeddingCompressionConfig`: row-wise int8/4/2, hashing, QR, TT, row
            pruning, low rank, per table; id frequencies are counted on the training set); a sparsity of 0 in
            ``sparsities`` is then a run with compressed embeddings only.
        attention: Each run is fine-tuned (from the dense baseline, trained with full attention) with this sparse
            attention pattern (:class:`~hf_sparse.attention.SparseAttentionConfig`, ``attn_implementation=
            "hf_sparse"``); a sparsity of 0 in ``sparsities`` is then a dense-weight run with sparse attention.
        stages: A staged recipe: one run that goes through these stages in order, starting from the fine-tuned dense
            baseline (see :class:`StageSection`); the method sections above then belong inside the stages. The run
            is saved as ``<output>/<name>/`` and the report gives the test accuracy after each stage.
        overrides: Per-module settings applied to every stage and run (see :class:`OverrideSection`), e.g. a lower
            sparsity for the first layer, or the classifier left unquantised.
    """

    name: str = DEFAULT_RECIPE
    model: ModelSection = dataclasses.field(default_factory=ModelSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    dense: TrainSection = dataclasses.field(default_factory=TrainSection)
    pruned: TrainSection = dataclasses.field(default_factory=TrainSection)
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    sparsities: tuple[float, ...] | None = None
    save_dense: bool = False
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    sweep: SweepSection = dataclasses.field(default_factory=SweepSection)
    structured: StructuredPruningConfig | None = None
    regularization: RegularizationConfig | None = None
    guard: GuardSection | None = None
    sensitivity: SensitivitySection | None = None
    distillation: DistillationSection | None = None
    quantization: QuantizationSection | None = None
    attention: SparseAttentionConfig | None = None
    lowrank: LowRankSection | None = None
    embeddings: EmbeddingCompressionConfig | None = None
    stages: tuple[StageSection, ...] = ()
    overrides: tuple[OverrideSection, ...] = ()

    def validate(self) -> None:
        # A staged recipe saves its run as ``<output>/<name>``: one component, and not a folder the job writes itself.
        check_name(self.name, "name", taken=JOB_OUTPUTS)
        if self.sparsities is not None:
            if not self.sparsities:
                raise ConfigError(
                    "sparsities is empty: give at least one target sparsity (one pruned run each), or null for one "
                    "run at pruning.sparsity."
                )
            pcts = [round(100 * s) for s in self.sparsities]
            if len(set(pcts)) != len(pcts):
                raise ConfigError(
                    "sparsities must differ in whole percents (each run is saved as pruned-<percent>), got "
                    f"{list(self.sparsities)}."
                )
        if self.stages:
            self._validate_stages()
        if self.lowrank is not None and self.sensitivity is not None and self.lowrank.compression is None:
            raise ConfigError(
                "lowrank with a sensitivity section: set lowrank.compression (the fraction of the layers' values "
                "the factors keep); the scan spreads it over the layers."
            )
        zero_ok = any(
            x is not None for x in (self.structured, self.quantization, self.attention, self.lowrank, self.embeddings)
        )
        if self.lowrank is not None and any(s > 0 for s in (self.sparsities or (self.pruning.sparsity,))):
            raise ConfigError(
                "lowrank: factorised layers are not pruned by the pruning schedule; set sparsities: [0.0] and use "
                "lowrank.sparse_density for low rank + sparse."
            )
        for s in self.sparsities or ():
            if not 0 < s < 1 and not (s == 0 and zero_ok):
                raise ConfigError(
                    "sparsities must each be in (0, 1) (0 is allowed with a structured, quantization, attention, "
                    "lowrank or embeddings section), "
                    f"got {s}."
                )

    def _validate_stages(self) -> None:
        for key in (
            "structured",
            "regularization",
            "guard",
            "sensitivity",
            "distillation",
            "quantization",
            "attention",
            "lowrank",
            "embeddings",
            "sparsities",
        ):
            if getattr(self, key) is not None:
                raise ConfigError(
                    f"{key}: a recipe with stages runs its methods inside the stages; move {key} into the stage "
                    "that uses it (or remove stages)."
                )
        if self.pruning != PruningConfig():
            raise ConfigError("pruning: a recipe with stages prunes inside its stages; move pruning into a stage.")
        names = [st.name for st in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stages: names must be unique, got {names}.")
        pruned_in = None
        quantized_in = None
        for i, st in enumerate(self.stages):
            where = f"stages[{i}] ({st.name})"
            if pruned_in is not None:
                for key in ("structured", "lowrank", "embeddings"):
                    if getattr(st, key) is not None:
                        raise ConfigError(
                            f"{where}.{key}: changes the shapes of layers that stage {pruned_in!r} pruned (its masks "
                            f"would no longer fit); put {key} in a stage before {pruned_in!r}."
                        )
            if st.quantization is not None:
                if quantized_in is not None:
                    raise ConfigError(
                        f"{where}.quantization: stage {quote(quantized_in)} already quantises; quantisation-aware "
                        "training continues through the later stages by itself."
                    )
                quantized_in = st.name
                if st.quantization.mode == "ptq" and i != len(self.stages) - 1:
                    raise ConfigError(
                        f"{where}.quantization: mode ptq turns the layers into integer ones at the end of the stage; "
                        "nothing trains after it, so it must be the last stage (or use mode qat)."
                    )
            if quantized_in is not None and quantized_in != st.name and (st.lowrank or st.embeddings or st.structured):
                raise ConfigError(
                    f"{where}: transforms layers after stage {quantized_in!r} started quantisation; move it earlier."
                )
            if st.pruning is not None:
                pruned_in = st.name

    def pruning_runs(self) -> list[PruningConfig]:
        """The PruningConfig of each pruned run."""
        if self.sparsities is None:
            return [self.pruning]
        return [
            self.pruning.replace(
                sparsity=s,
                initial_sparsity=min(self.pruning.initial_sparsity, s),
                layer_sparsity={} if s == 0 else self.pruning.layer_sparsity,
            )
            for s in self.sparsities
        ]


#: Bounds of what a recipe file may hold. Recipes are a few kilobytes of hand-written settings; each bound is far
#: above any real one and far below what would cost noticeable memory or time (or blow Python's recursion limit).
MAX_RECIPE_BYTES = 1 << 20
#: Nesting of mappings and lists, counted along the document as aliases expand it.
MAX_RECIPE_DEPTH = 32
#: Alias uses (``*name``) in one file.
MAX_RECIPE_ALIASES = 64
#: Values in the document with every alias expanded (what the configs walk and an error message could show).
MAX_RECIPE_NODES = 20_000
#: Characters of an integer or float scalar (a seed needs 10; Python refuses ints of more than 4300 digits anyway).
MAX_NUMBER_CHARS = 64
#: The longest error message a recipe can cause: the tail is cut (values are quoted bounded already; this is the
#: guarantee for whatever text a parser or a check adds).
MAX_MESSAGE_CHARS = 4000

#: Characters YAML refuses, and a recipe never needs: C0 controls but tab, newline and carriage return; DEL; C1.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ufffe\uffff]")


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``5e-5`` as a float (YAML 1.1 wants ``5.0e-5``; people write ``5e-5``), refuses
    a key written twice in one mapping (plain YAML keeps the last one and silently drops the first), and bounds what
    a small file can expand into: nesting depth, alias uses, the size of the document with aliases expanded (a
    "billion laughs" file of under 1 KB is refused while it is composed, before any value is built), and the length
    of numbers (a 5000-digit integer would raise a bare ValueError in ``int``)."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_RECIPE_ALIASES:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"more than {MAX_RECIPE_ALIASES} aliases (*name); each copies what it refers to, and a recipe "
                    "needs few: write the values out",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_RECIPE_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_RECIPE_DEPTH} levels deep (no recipe setting is)",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # e.g. a timestamp with month 13: the constructor's own error, placed at the value's line
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value ({type(exc).__name__}: {quote(str(exc))})", node.start_mark
            ) from None

    def _number_scalar(self, node) -> str:
        value = self.construct_scalar(node)
        if len(value) > MAX_NUMBER_CHARS:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS}); no recipe setting needs it",
                node.start_mark,
            )
        return value

    def construct_yaml_int(self, node):
        self._number_scalar(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node):
        self._number_scalar(node)
        return super().construct_yaml_float(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], yaml.Node] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merge keys (<<) may be overridden on purpose
                first = seen.setdefault((key_node.tag, key_node.value), key_node)
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {quote(key_node.value)} (first on line {first.start_mark.line + 1}); "
                        "each key may appear once",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_RecipeLoader.add_constructor("tag:yaml.org,2002:int", _RecipeLoader.construct_yaml_int)
_RecipeLoader.add_constructor("tag:yaml.org,2002:float", _RecipeLoader.construct_yaml_float)
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed document that aliases make huge, deep or cyclic once expanded (the configs walk every
    value as if it were written out). Iterative, with each shared node measured once: a billion-laughs file costs
    a few hundred steps here."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_ = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(node):
        if isinstance(node, yaml.MappingNode):
            return [n for pair in node.value for n in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            kids = [done[id(c)] for c in children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            done[key] = (size, depth)
            if size > MAX_RECIPE_NODES or depth > MAX_RECIPE_DEPTH:
                what = (
                    f"expands (through aliases) to more than {MAX_RECIPE_NODES} values"
                    if size > MAX_RECIPE_NODES
                    else f"expands (through aliases) to more than {MAX_RECIPE_DEPTH} levels of nesting"
                )
                raise yaml.composer.ComposerError(None, None, f"this value {what}", node.start_mark)
            continue
        if key in done:
            continue
        if key in open_:
            raise yaml.composer.ComposerError(
                None, None, "an alias refers to a value that contains it (a cycle)", node.start_mark
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped with hf_sparse, by name (file name without ``.yaml``)."""
    return {p.stem: p for p in sorted(data_dir("recipes").glob("*.yaml"))}


def bounded_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters (what a recipe's error can show is bounded, whatever produced it)."""
    return message if len(message) <= limit else message[: limit - 40] + f" ... [{len(message) - limit + 40} more]"


def read_recipe_yaml(path: str | Path) -> tuple[Any, Any]:
    """The YAML document of a recipe file and its node tree (which keeps each key's line, for error messages),
    read with the recipes' loader: ``5e-5`` is a float, a key written twice is refused, and the file's size, its
    nesting, its aliases and its numbers are bounded (see :data:`MAX_RECIPE_BYTES` and the limits after it). Every
    recipe format (``compress``, ``sweep``, ``lm``, ``recsys``) is read through here.

    Raises:
        RecipeError: the file cannot be read, is too large, is not UTF-8 text, holds control characters, is not
            YAML or exceeds a bound (the message gives the file and, where there is one, the line).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror or type(exc).__name__}).") from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise RecipeError(
            f"{path}: larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a few kilobytes of settings (is this "
            "the right file?)."
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{path}, line {line}: not a UTF-8 text file (byte {exc.start} cannot be decoded); save the recipe as "
            "UTF-8."
        ) from None
    control = _CONTROL.search(text)
    if control is not None:
        line = text.count("\n", 0, control.start()) + 1
        column = control.start() - (text.rfind("\n", 0, control.start()) + 1) + 1
        raise RecipeError(
            f"{path}, line {line}: control character U+{ord(control.group()):04X} at column {column}; a recipe is "
            "plain text (write it as an escape inside double quotes if a value really needs it)."
        )
    loader = _RecipeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _check_expansion(root)
        data: Any = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise RecipeError(bounded_message(f"{where}: not valid YAML: {exc}")) from None
    except RecursionError:  # not reachable within the bounds above; kept so no recipe ever gives a traceback
        raise RecipeError(f"{path}: nested too deeply to read.") from None
    finally:
        loader.dispose()
    return data, root


def recipe_task(data: Any) -> str | None:
    """The ``task:`` of a read recipe document (``lm``, ``recsys``), or None (a classification recipe)."""
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else None


def validate_recipe_document(cls: type[BaseConfig], data: Any, root: Any, path: str | Path, kind: str):
    """``cls.from_dict(data)`` of a document :func:`read_recipe_yaml` read from ``path``, with any ConfigError
    turned into a RecipeError that names the file, the line of the key (when the file holds it) and the key.

    Args:
        kind: What the mapping holds, for the message when the document is not a mapping.
    """
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a mapping of sections and settings ({kind}), got a {type(data).__name__}: "
            f"{quote(data, 60)}."
        )
    try:
        return cls.from_dict(data)
    except ConfigError as exc:
        line = _key_line(root, str(exc))
        where = f"{path}, line {line}" if line is not None else str(path)
        raise RecipeError(bounded_message(f"{where}: {exc}")) from None
    except RecursionError:  # not reachable within the loader's bounds; no recipe ever gives a traceback
        raise RecipeError(f"{path}: nested too deeply to validate.") from None


def load_recipe(source: str | Path | None = None) -> Recipe:
    """Read and validate a recipe.

    Args:
        source: A YAML file, the name of a packaged recipe (see :func:`packaged_recipes`), or None for the
            embedded default (``minilm-rotten-tomatoes``).

    Raises:
        RecipeError: the file is missing, empty, not UTF-8 text or not YAML (a key written twice included), exceeds
            the loader's bounds, or does not validate. The message names the file, the line of the offending key when
            the file holds it (``recipe.yaml, line 23: pruning.sparsity must be in [0, 1), got 1.5.``) and the key's
            dotted place.
    """
    source = DEFAULT_RECIPE if source is None else source
    path = Path(source)
    if not path.is_file():
        known = packaged_recipes()
        if str(source) in known:
            path = known[str(source)]
        else:
            raise RecipeError(
                f"No recipe file {quote(str(source))}, and no packaged recipe of that name ({sorted(known)})."
            )
    data, root = read_recipe_yaml(path)
    if data is None:
        # An empty file is more likely a mistake (a truncated copy, the wrong path) than a request for every default.
        raise RecipeError(
            f"{path} is empty (no settings, or only comments). Write the settings that differ from the defaults, "
            f"`{{}}` to take every default, or give no recipe to run the packaged default {DEFAULT_RECIPE!r}."
        )
    if recipe_task(data) == "recsys":
        raise RecipeError(
            f"{path} is a recommender recipe (task: recsys); run it with `hf-sparse compress {source}` or "
            f"`hf-sparse recsys {source}` (hf_sparse.recsys.compress.load_recsys_recipe reads it)."
        )
    if recipe_task(data) == "lm":
        raise RecipeError(
            f"{path} is a causal-LM recipe (task: lm); run it with `hf-sparse compress {source}` or "
            f"`hf-sparse lm {source}` (hf_sparse.lm.load_lm_recipe reads it)."
        )
    return validate_recipe_document(Recipe, data, root, path, "name:, model:, pruning: ...")


#: The dotted key a ConfigError message is about: quoted in ``Unknown key 'pruning.sparsty'`` / ``Missing required
#: key ...``, else the message's first word (``pruning.sparsity must be ...``, ``in pruning: ...``, ``lowrank: ...``).
_QUOTED_KEY = re.compile(r"(?:Unknown|Missing required) key '([^']+)'")
_LEADING_KEY = re.compile(r"(?:in )?([A-Za-z_][\w\-]*(?:\.[^\s:,;'()]+|\[\d+\])*)")


def _key_line(node: yaml.Node | None, message: str) -> int | None:
    """1-based line, in the YAML document composed as ``node``, of the key a ConfigError ``message`` names (the
    deepest part of its dotted path that the document holds), or None when the message names no key of it."""
    quoted = _QUOTED_KEY.search(message)
    leading = _LEADING_KEY.match(message)
    dotted = quoted.group(1) if quoted else leading.group(1) if leading else None
    if not dotted:
        return None
    line, rest = None, dotted
    while rest and node is not None:
        if isinstance(node, yaml.MappingNode):
            # The longest key that starts the rest of the path: keys may hold dots (regexes in ``tables``).
            matches = [
                (key, value)
                for key, value in node.value
                if isinstance(key, yaml.ScalarNode)
                and (rest == key.value or rest.startswith((key.value + ".", key.value + "[")))
            ]
            if not matches:
                break
            key, node = max(matches, key=lambda kv: len(kv[0].value))
            line, rest = key.start_mark.line + 1, rest[len(key.value) :].removeprefix(".")
        elif isinstance(node, yaml.SequenceNode):
            index = re.match(r"\[(\d+)\]", rest)
            if index is None or int(index.group(1)) >= len(node.value):
                break
            node = node.value[int(index.group(1))]
            line, rest = node.start_mark.line + 1, rest[index.end() :].removeprefix(".")
        else:
            break
    return line


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default written out)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
