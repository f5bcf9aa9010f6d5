"""The job settings of a classification recipe: model, data, training, checkpointing, and the job-level features
(sweep grid, accuracy guard, sensitivity scan)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from ..config import BaseConfig, check_seed
from ..errors import ConfigError, quote

__all__ = [
    "ModelSection",
    "DataSection",
    "TrainSection",
    "CheckpointSection",
    "SweepSection",
    "GuardSection",
    "SensitivitySection",
    "SelectionSection",
    "check_latency_baselines",
    "PACKAGED_DATASET",
    "COLUMN_ROLES",
]


def check_latency_baselines(value: tuple[str, ...] | None, where: str) -> None:
    """A list of dense baselines for the latency measurement (``None``: all): known names
    (:data:`hf_sparse.benchmarking.MODEL_TOLERANCES`), no repeats, ``fp32`` among them."""
    if value is None:
        return
    from ..benchmarking import MODEL_TOLERANCES

    known = list(MODEL_TOLERANCES)
    for name in value:
        if name not in known:
            raise ConfigError(f"{where}: unknown dense baseline {quote(name)}; known: {known} (or null for all).")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where} names a baseline twice: {list(value)}.")
    if "fp32" not in value:
        raise ConfigError(
            f"{where} must include 'fp32' (the reference every other baseline is checked against), got {list(value)}."
        )


@dataclasses.dataclass(frozen=True)
class ModelSection(BaseConfig):
    """Which model to compress.

    Args:
        name: A packaged alias (``minilm-l6``), a local folder, or a Hub id already in the local cache. A relative
            folder in a recipe file is read relative to the recipe file's folder when it exists there.
        max_length: Tokenizer truncation length.
        fine_tuned: Whether the model is already fine-tuned for the recipe's task. ``auto``: it is when its config
            has the task's architecture (``...ForSequenceClassification``, ``...ForTokenClassification``,
            ``...ForMaskedLM``) and, for the classification tasks, exactly the data's label names in order; the model
            as given is then the dense baseline (evaluated, not trained). ``true``: require that (an error names both
            label lists when they differ). ``false``: always fine-tune the dense baseline first (a classification
            head of another size is replaced by a new one).
    """

    name: str = "minilm-l6"
    max_length: int = 128
    fine_tuned: Literal["auto", "true", "false"] = "auto"

    def __post_init__(self) -> None:
        # YAML's true / false (and Python's) read as their words: one typed field of three values.
        if isinstance(self.fine_tuned, bool):
            object.__setattr__(self, "fine_tuned", "true" if self.fine_tuned else "false")
        super().__post_init__()

    @classmethod
    def _from_mapping(cls, data, *, path: str):
        if isinstance(data, Mapping) and isinstance(data.get("fine_tuned"), bool):
            data = {**data, "fine_tuned": "true" if data["fine_tuned"] else "false"}
        return super()._from_mapping(data, path=path)

    def validate(self) -> None:
        if not self.name.strip():
            raise ConfigError(
                f"model.name must name a model (a packaged alias such as 'minilm-l6', a local folder or a cached Hub "
                f"id), got {quote(self.name)}."
            )
        if self.max_length < 8:
            raise ConfigError(f"model.max_length must be >= 8, got {self.max_length}.")


#: The data set ``data.dataset`` names by default: the packaged Rotten Tomatoes snippets (read by their own loader,
#: so the default job's published numbers stay reproducible).
PACKAGED_DATASET = "rotten_tomatoes"
#: The roles ``data.columns`` may map (see :func:`hf_sparse.data.load_user_data`).
COLUMN_ROLES = ("text", "text_pair", "label", "tokens", "tags", "user", "item", "timestamp")
#: The split names of ``data.files``.
SPLIT_NAMES = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataSection(BaseConfig):
    """Which data, how it is split and how much of it is used.

    Args:
        dataset: ``rotten_tomatoes`` (the packaged critic snippets, two labels), or your data: a file (``.csv``,
            ``.tsv``, ``.json``, ``.jsonl``, ``.parquet``, ``.txt``), a folder written by ``save_to_disk``, or a Hub
            dataset id present in the local cache. A relative path in a recipe file is read relative to the recipe
            file's folder (so a recipe keeps working from any folder; the resolved recipe a job writes holds the
            absolute path).
        files: Instead of ``dataset``: one file per split, ``{train: a.csv, validation: b.csv, test: c.csv}``
            (``train`` required; missing splits are cut from ``train``). Relative paths as for ``dataset``.
        columns: Role -> column name of your data, e.g. ``{text: review, label: stars}`` (roles ``text``,
            ``text_pair``, ``label``, ``tokens``, ``tags``); unset roles are found by their conventional names.
        label_names: Class (or tag) names in id order; default: read from the data.
        seed: Seed of the splits and subsets.
        validation_fraction, test_fraction: Split sizes (fractions of all examples) where the data has no such split.
        train_limit, validation_limit, test_limit: Use a seeded subset (stratified by label where there is one) of
            this many examples (null = the whole split).
    """

    dataset: str | None = PACKAGED_DATASET
    files: dict[str, str] | None = None
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    label_names: tuple[str, ...] | None = None
    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    train_limit: int | None = None
    validation_limit: int | None = None
    test_limit: int | None = None

    def validate(self) -> None:
        if self.files is not None:
            if self.dataset == PACKAGED_DATASET:
                object.__setattr__(self, "dataset", None)  # files replace the default data set
            elif self.dataset is not None:
                raise ConfigError(
                    f"data.files and data.dataset ({quote(self.dataset)}) both name the data; give one of them."
                )
            unknown = [k for k in self.files if k not in SPLIT_NAMES]
            if unknown:
                raise ConfigError(
                    f"data.files.{quote(unknown[0])[1:-1]}: unknown split {quote(unknown[0])}; splits: "
                    f"{list(SPLIT_NAMES)}."
                )
            if "train" not in self.files:
                raise ConfigError(
                    f"data.files needs a train file (the job fine-tunes on it), got splits {list(self.files)}."
                )
            for split, path in self.files.items():
                if not path.strip():
                    raise ConfigError(f"data.files.{split} is empty; give the path of the {split} file.")
        elif self.dataset is None or not self.dataset.strip():
            raise ConfigError(
                "data.dataset must name the data: 'rotten_tomatoes' (packaged), a file or folder, or a cached Hub "
                "dataset id (or give data.files)."
            )
        for role, column in self.columns.items():
            if role not in COLUMN_ROLES:
                raise ConfigError(
                    f"data.columns.{quote(role)[1:-1]}: unknown role {quote(role)}; roles: {list(COLUMN_ROLES)}."
                )
            if not column.strip():
                raise ConfigError(f"data.columns.{role} is empty; give the column's name in your data.")
        if self.label_names is not None:
            if len(self.label_names) < 2:
                raise ConfigError(f"data.label_names needs at least two names, got {list(self.label_names)}.")
            if len(set(self.label_names)) != len(self.label_names):
                raise ConfigError(f"data.label_names has repeated names: {list(self.label_names)}.")
        if self.packaged and (self.columns or self.label_names is not None):
            raise ConfigError(
                "data.columns and data.label_names describe your own data; the packaged rotten_tomatoes has its own "
                "(text, label: rotten / fresh)."
            )
        for key in ("validation_fraction", "test_fraction"):
            if not 0.0 < getattr(self, key) < 1.0:
                raise ConfigError(f"data.{key} must be in (0, 1), got {getattr(self, key)}.")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"data.validation_fraction + data.test_fraction must be below 1 (the rest is the training split), got "
                f"{self.validation_fraction} + {self.test_fraction}."
            )
        check_seed(self.seed, "data.seed")
        for key in ("train_limit", "validation_limit", "test_limit"):
            value = getattr(self, key)
            if value is not None and value < 2:
                raise ConfigError(f"data.{key} must be >= 2 or null, got {value}.")

    @property
    def packaged(self) -> bool:
        """Whether this is the packaged Rotten Tomatoes data (read by its own loader)."""
        return self.files is None and self.dataset == PACKAGED_DATASET

    @property
    def source(self):
        """What :func:`hf_sparse.data.load_user_data` reads: the ``files`` mapping, or ``dataset``."""
        return dict(self.files) if self.files is not None else self.dataset

    @property
    def description(self) -> str:
        """The data in a few words, for reports and model cards (file names, not full paths)."""
        if self.files is not None:
            return ", ".join(f"{split}: {Path(path).name}" for split, path in self.files.items())
        path = Path(self.dataset)
        return path.name if path.is_absolute() else self.dataset


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
            ``model.max_length`` tokens) of each saved model against every dense configuration of the machine
            (``latency_baselines``); the report names the fastest and the ratio against it, beside the ratio
            against fp32. 0 skips it.
        latency_baselines: The dense configurations timed against (built once per job, each checked against the
            fp32 model first): ``fp32``, ``bf16`` (where the CPU has native bf16), ``torch-dynamic-int8``,
            ``onnxruntime-dynamic-int8``, ``openvino``, ``openvino-int8-weights`` (with the ``bench`` extra;
            exporting or converting takes seconds). null:
            every one this machine has. A list must include ``fp32``, the reference of the others; e.g. ``[fp32]``
            for quick checks (the report then says the others were not measured).
        numerics: The arithmetic each layer may take when it is stored (with ``format: auto``): ``keep`` (the
            default: the model's own dtype), ``fastest``, or a list among ``keep``, ``bfloat16`` (where the CPU has
            native bf16) and ``int8`` (int8 weights, per-token int8 inputs). Each layer (the pruned ones, or every
            encoder ``nn.Linear`` when nothing was pruned) is stored as the option predicted fastest on this
            machine, dense or sparse, so a layer sparse storage does not speed up stays dense in the fastest dtype
            (see ``sparsify_(numerics=...)``); the test metrics are measured after this conversion.
        runtimes: Also time each compressed model (before its storage conversion) in the dense configurations of
            this machine — bf16 where the CPU has native bf16, torch's dynamic int8, and (text classification, with
            OpenVINO installed and among ``latency_baselines``) OpenVINO with int8 weights — interleaved with the
            dense model's configurations; the fastest, when it beats float32, is evaluated on the validation and test
            splits in that configuration and becomes a model the report's selection can recommend (saved, when
            picked, as plain float32 weights in ``<output>/<run>-<configuration>/`` with how to run it).
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
    latency_baselines: tuple[str, ...] | None = None
    numerics: str | tuple[str, ...] = "keep"
    runtimes: bool = False
    save_steps: int = 100

    def validate(self) -> None:
        from ..formats import FORMATS

        allowed = ["auto", "dense", *sorted(FORMATS)]
        if self.format not in allowed:
            raise ConfigError(f"checkpoint.format must be one of {allowed}, got {quote(self.format)}.")
        if self.batch_hint < 1:
            raise ConfigError(f"checkpoint.batch_hint must be >= 1, got {self.batch_hint}.")
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ConfigError(f"checkpoint.min_sparsity must be in [0, 1], got {self.min_sparsity}.")
        if self.latency_rounds < 0:
            raise ConfigError(f"checkpoint.latency_rounds must be >= 0, got {self.latency_rounds}.")
        check_latency_baselines(self.latency_baselines, "checkpoint.latency_baselines")
        if self.save_steps < 0:
            raise ConfigError(f"checkpoint.save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}.")
        from ..ops.choose import check_numerics

        if check_numerics(self.numerics, "checkpoint.numerics") != ("keep",) and self.format != "auto":
            raise ConfigError(
                f"checkpoint.numerics {quote(self.numerics)} needs checkpoint.format auto, got {quote(self.format)}."
            )


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
        from ..pruning.criteria import CRITERIA

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
class SelectionSection(BaseConfig):
    """Which saved model the job recommends: an accuracy guard over the whole job. Among the compressed models whose
    *validation* metric is within ``max_drop`` of the dense model's (so the choice does not peek at the test split),
    and that meet ``min_speedup`` and ``max_size`` where set, the report names the fastest (``objective: latency``,
    ratio against the best dense configuration of this machine) or the smallest checkpoint (``objective: size``),
    with its test metric beside the dense one. When no model qualifies, it says so, names the closest one and
    recommends the dense model in the best dense configuration of the machine. The report also gives the Pareto
    front (no other model both more accurate and faster / smaller) and, for several accuracy budgets, the model to
    pick.

    Args:
        max_drop: Largest accepted loss of the compared metric below the dense model's, in its units (0.01 = one
            point of accuracy or F1); for metrics where lower is better (perplexity) a relative increase (0.01 = 1%).
        objective: ``latency`` (fastest at batch 1, against the best dense configuration) or ``size`` (smallest
            checkpoint on disk).
        min_speedup: A speed target: only models at least this many times faster than the best dense configuration
            qualify (null: no target; needs ``checkpoint.latency_rounds`` > 0).
        max_size: A size target: only checkpoints at most this fraction of the dense checkpoint's bytes qualify
            (null: no target).
        budgets: The accuracy budgets (same units as ``max_drop``) of the report's "which model for which budget"
            table.
    """

    max_drop: float = 0.01
    objective: Literal["latency", "size"] = "latency"
    min_speedup: float | None = None
    max_size: float | None = None
    budgets: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03, 0.05)

    def validate(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise ConfigError(f"selection.max_drop must be in [0, 1) (0.01 = one point), got {self.max_drop}.")
        if self.min_speedup is not None and not self.min_speedup > 0:
            raise ConfigError(f"selection.min_speedup must be > 0 or null, got {self.min_speedup}.")
        if self.max_size is not None and not 0 < self.max_size <= 1:
            raise ConfigError(
                f"selection.max_size must be in (0, 1] (a fraction of the dense checkpoint) or null, "
                f"got {self.max_size}."
            )
        if (
            not self.budgets
            or any(not 0 <= b < 1 for b in self.budgets)
            or list(self.budgets) != sorted(set(self.budgets))
        ):
            raise ConfigError(
                f"selection.budgets must be increasing values in [0, 1) (0.01 = one point), got {list(self.budgets)}."
            )
