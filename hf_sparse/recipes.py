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

from . import apply as _apply  # noqa: F401  (registers the built-in methods the stages name)
from ._resources import data_dir
from .attention.config import SparseAttentionConfig
from .config import BaseConfig, check_name, register_config
from .distillation.recipe import DistillationSection, StageDistillationSection
from .embeddings.config import EmbeddingCompressionConfig
from .errors import ConfigError, RecipeError, quote
from .jobs.sections import (
    CheckpointSection,
    DataSection,
    GuardSection,
    ModelSection,
    SelectionSection,
    SensitivitySection,
    SweepSection,
    TrainSection,
)
from .lowrank.config import LowRankConfig
from .lowrank.recipe import LowRankSection
from .method import METHOD_REGISTRY
from .pruning.config import PruningConfig
from .pruning.regularization import RegularizationConfig
from .pruning.structured import StructuredPruningConfig
from .quantization.recipe import QuantizationSection, StageQuantizationSection
from .recipe_yaml import read_recipe_yaml, recipe_task, resolve_paths, validate_recipe_document

__all__ = [
    "ModelSection",
    "DataSection",
    "TrainSection",
    "CheckpointSection",
    "SweepSection",
    "GuardSection",
    "SensitivitySection",
    "SelectionSection",
    "CandidateSection",
    "DistillationSection",
    "Recipe",
    "load_recipe",
    "dump_recipe",
    "recipe_for",
    "resolve_paths",
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
        methods: Sections of methods registered by plugins (:func:`~hf_sparse.method.register_method`), by method
            name, e.g. ``methods: {my_method: {strength: 0.5}}``; each is read by its method's config class.
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
    methods: dict[str, Any] = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        self._read_methods()
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
        if self.train is None:
            for name in self.methods:
                if METHOD_REGISTRY.get(name).trains:
                    raise ConfigError(
                        f"stage {quote(self.name)}: {name} acts during training; give the stage a train section."
                    )
        if self.pruning is not None and self.pruning.granularity == "layer":
            raise ConfigError(f"stage {quote(self.name)}: pruning.granularity layer: use structured.layers_to_drop.")

    def _read_methods(self) -> None:
        """``methods`` entries read by their registered methods' config classes."""
        read = {}
        for name, value in self.methods.items():
            if name in self.field_names():
                raise ConfigError(f"stage {quote(self.name)}: write {name} as the stage's own key, not under methods.")
            key = name if len(name) <= 100 and name.isprintable() else quote(name, 100)
            if name not in METHOD_REGISTRY:
                raise ConfigError(
                    f"methods.{key}: no method of that name is registered (registered: {list(METHOD_REGISTRY)}); a "
                    "plugin registers its method with hf_sparse.method.register_method before the recipe is read."
                )
            method = METHOD_REGISTRY.get(name)
            if isinstance(value, method.config_class):
                read[name] = value
            else:
                read[name] = method.config_class._from_mapping(value, path=f"methods.{name}.")
        object.__setattr__(self, "methods", read)


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


@register_config("recipe_candidate")
@dataclasses.dataclass(frozen=True)
class CandidateSection(BaseConfig):
    """One model of a recipe's ``candidates``: a method mix taken from the fine-tuned dense baseline (or the
    pre-trained model) through its stages, then stored, evaluated, reloaded and timed like every run; the report
    compares all candidates (Pareto front, recommendation).

    Written either with ``stages`` (as a staged recipe's, see :class:`StageSection`) or, for one stage, with the
    stage's keys directly: ``{name: student-3layer, train: {...}, structured: {...}, distillation: {...}}``. A
    stage without ``train`` trains as the recipe's ``pruned`` section says; ``train: null`` does not train.

    Args:
        name: The saved model's folder name (letters, digits, ``.``, ``_``, ``-``), unique in the recipe.
        start_from: ``dense``: a copy of the fine-tuned dense baseline; ``pretrained``: the pre-trained model with a
            new task head (a student cut from it learns the task from the labels and the teacher only).
        stages: What the candidate does, in order.
    """

    name: str = "candidate"
    start_from: Literal["dense", "pretrained"] = "dense"
    stages: tuple[StageSection, ...] = ()

    @classmethod
    def _from_mapping(cls, data, *, path: str):
        if isinstance(data, dict) and "stages" not in data and "config_type" not in data:
            # One stage's keys written directly: read at the candidate's own place, so a message names the key
            # where the file has it (``candidates[0].structured...``, not ``candidates[0].stages[0]...``).
            from .config import _did_you_mean, _key_text

            allowed = sorted({*cls.field_names(), *StageSection.field_names()})
            unknown = [k for k in data if k not in allowed]
            if unknown:
                raise ConfigError(
                    f"Unknown key '{path}{_key_text(unknown[0])}' for CandidateSection (its own keys or one stage's)"
                    f"{_did_you_mean(unknown[0], allowed)}. Allowed keys: {allowed}."
                )
            data = dict(data)
            head = {k: data.pop(k) for k in ("name", "start_from") if k in data}
            stage = StageSection._from_mapping({"name": "train", **data}, path=path)
            return super()._from_mapping({**head, "stages": [stage]}, path=path)
        return super()._from_mapping(data, path=path)

    def validate(self) -> None:
        check_name(self.name, "candidates.name", taken=JOB_OUTPUTS)
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", self.name):
            raise ConfigError(
                f"candidates.name must be 1-64 letters, digits, '.', '_' or '-' (it names the model's folder), got "
                f"{quote(self.name)}."
            )
        if not self.stages:
            raise ConfigError(f"candidate {quote(self.name)}: give it stages (or one stage's keys directly).")
        check_stage_sequence(self.stages, f"candidate {self.name}: ")


#: The recipe sections a flat recipe applies to each run; a staged or candidates recipe has them inside.
_FLAT_SECTIONS = (
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
)


def check_stage_sequence(stages: tuple[StageSection, ...], where: str = "") -> None:
    """The stages of one run in an order that works: unique names, shapes changed only before pruning, one
    quantisation (PTQ only in the last stage), no transform after quantisation started."""
    names = [st.name for st in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}stages: names must be unique, got {names}.")
    pruned_in = None
    quantized_in = None
    for i, st in enumerate(stages):
        at = f"{where}stages[{i}] ({st.name})"
        if pruned_in is not None:
            for key in ("structured", "lowrank", "embeddings"):
                if getattr(st, key) is not None:
                    raise ConfigError(
                        f"{at}.{key}: changes the shapes of layers that stage {pruned_in!r} pruned (its masks "
                        f"would no longer fit); put {key} in a stage before {pruned_in!r}."
                    )
        if st.quantization is not None:
            if quantized_in is not None:
                raise ConfigError(
                    f"{at}.quantization: stage {quote(quantized_in)} already quantises; quantisation-aware "
                    "training continues through the later stages by itself."
                )
            quantized_in = st.name
            if st.quantization.mode == "ptq" and i != len(stages) - 1:
                raise ConfigError(
                    f"{at}.quantization: mode ptq turns the layers into integer ones at the end of the stage; "
                    "nothing trains after it, so it must be the last stage (or use mode qat)."
                )
        if quantized_in is not None and quantized_in != st.name and (st.lowrank or st.embeddings or st.structured):
            raise ConfigError(
                f"{at}: transforms layers after stage {quantized_in!r} started quantisation; move it earlier."
            )
        if st.pruning is not None:
            pruned_in = st.name


@register_config("recipe")
@dataclasses.dataclass(frozen=True)
class Recipe(BaseConfig):
    """A compression job: fine-tune the dense baseline, then compress copies of it and compare them with it.

    Each run is a copy of the fine-tuned dense model (or of the pre-trained one) compressed by one method mix:
    one per entry of ``sparsities`` (pruning while fine-tuning further, with the other flat sections), one per
    ``stages`` sequence, or one per ``candidates`` entry; ``selection`` then names the model to use.

    Args:
        name: A label for reports.
        task: What the model does: ``text-classification`` (single texts or pairs, any number of labels; accuracy
            and macro F1), ``token-classification`` (a tag per word; entity-level F1 of IOB2 tags) or ``masked-lm``
            (a pre-trained encoder compressed before any task fine-tuning; masked-LM perplexity on the test split,
            with the same seeded masked positions for every model). See :mod:`hf_sparse.jobs.heads`.
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
        candidates: Several method mixes compared in one job (see :class:`CandidateSection`): each is a run from the
            fine-tuned dense baseline, saved as ``<output>/<candidate name>/``, evaluated, reloaded and timed; the
            report draws the accuracy-latency and accuracy-size trade-off (Pareto front) and recommends one
            (``selection``). The method sections above then belong inside the candidates.
        selection: How the report picks the model to use (see :class:`SelectionSection`): the fastest (or
            smallest) model within ``max_drop`` of the dense model's validation metric.
        overrides: Per-module settings applied to every stage and run (see :class:`OverrideSection`), e.g. a lower
            sparsity for the first layer, or the classifier left unquantised.
    """

    name: str = DEFAULT_RECIPE
    task: Literal["text-classification", "token-classification", "masked-lm"] = "text-classification"
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
    candidates: tuple[CandidateSection, ...] = ()
    selection: SelectionSection = dataclasses.field(default_factory=SelectionSection)
    overrides: tuple[OverrideSection, ...] = ()

    @classmethod
    def _from_mapping(cls, data, *, path: str):
        # A candidate's stage without a train section trains as the recipe's ``pruned`` section says (the shared
        # training of the compressed models); ``train: null`` is a stage without training.
        if isinstance(data, dict) and isinstance(data.get("candidates"), list):
            pruned = data.get("pruned", {})
            candidates = []
            for cand in data["candidates"]:
                if isinstance(cand, dict):
                    cand = dict(cand)
                    if "stages" not in cand and "config_type" not in cand:
                        cand.setdefault("train", pruned)
                    elif isinstance(cand.get("stages"), list):
                        cand["stages"] = [
                            {**st, "train": st.get("train", pruned)} if isinstance(st, dict) else st
                            for st in cand["stages"]
                        ]
                candidates.append(cand)
            data = {**data, "candidates": candidates}
        return super()._from_mapping(data, path=path)

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
        if self.candidates:
            self._validate_candidates()
        self._validate_task()
        if self.sensitivity is not None and self.lowrank is None:
            from .pruning.criteria import CRITERIA

            criterion = CRITERIA.get(self.pruning.criterion)
            if criterion.needs_calibration or criterion.needs_gradients:
                # The scan prunes each layer one-shot from the dense model's weights; found here, not after the
                # dense baseline's fine-tuning.
                raise ConfigError(
                    f"sensitivity: the scan ranks weights without calibration inputs or gradients, and "
                    f"pruning.criterion {quote(self.pruning.criterion)} needs them; use criterion magnitude with a "
                    "sensitivity section (or remove sensitivity)."
                )
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

    def _validate_task(self) -> None:
        """What the task needs of the data section, and the job features that cannot serve the task."""
        from .jobs.heads import head_for

        head = head_for(self.task)
        if self.data.packaged and not head.packaged_data:
            raise ConfigError(
                f"data.dataset: the packaged rotten_tomatoes is text-classification data; a {self.task} recipe needs "
                "your own data (data.dataset: a file, a folder or a cached Hub id, or data.files)."
            )
        for role in self.data.columns:
            if role not in head.column_roles:
                raise ConfigError(
                    f"data.columns.{role}: not a column role of {self.task} (its roles: {list(head.column_roles)})."
                )
        if self.data.label_names is not None and not head.labelled:
            raise ConfigError(f"data.label_names: a {self.task} recipe has no labels; remove it.")
        if not head.higher_is_better:
            for key in ("guard", "sensitivity"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"{key}: measures an accuracy drop on the validation split; {self.task} is scored by "
                        f"{head.metric_name} (lower is better), which {key} does not handle. Remove {key}."
                    )

    def _validate_candidates(self) -> None:
        if self.stages:
            raise ConfigError(
                "candidates and stages: a recipe is either one staged run or a set of candidates; write the staged "
                "run as one candidate (its stages)."
            )
        self._no_flat_methods("candidates", "a recipe with candidates runs its methods inside each candidate")
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ConfigError(f"candidates: names must be unique (each names a folder), got {names}.")

    def _no_flat_methods(self, key: str, why: str) -> None:
        """No method section at the recipe's top level (they belong in the stages or candidates)."""
        for name in _FLAT_SECTIONS:
            if getattr(self, name) is not None:
                raise ConfigError(f"{name}: {why}; move {name} into the {key} that use it (or remove {key}).")
        if self.pruning != PruningConfig():
            raise ConfigError(f"pruning: {why}; move pruning into the {key} that prune.")

    def _validate_stages(self) -> None:
        for key in _FLAT_SECTIONS:
            if getattr(self, key) is not None:
                raise ConfigError(
                    f"{key}: a recipe with stages runs its methods inside the stages; move {key} into the stage "
                    "that uses it (or remove stages)."
                )
        if self.pruning != PruningConfig():
            raise ConfigError("pruning: a recipe with stages prunes inside its stages; move pruning into a stage.")
        check_stage_sequence(self.stages)

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


def packaged_recipes() -> dict[str, Path]:
    """Recipes shipped with hf_sparse, by name (file name without ``.yaml``)."""
    return {p.stem: p for p in sorted(data_dir("recipes").glob("*.yaml"))}


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
    if recipe_task(data) == "causal-lm":
        raise RecipeError(
            f"{path} is a causal-LM one-shot recipe (task: causal-lm); run it with `hf-sparse compress {source}` "
            "(hf_sparse.jobs.tasks.task_for('causal-lm').load_recipe reads it)."
        )
    recipe = validate_recipe_document(Recipe, data, root, path, "name:, model:, pruning: ...")
    return resolve_paths(recipe, path.resolve().parent)


def recipe_for(
    task: str = "text-classification",
    model: str | Path = "minilm-l6",
    data: str | Path | dict | None = None,
    *,
    columns: dict[str, str] | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    data_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> Recipe:
    """A validated recipe for ``task`` on ``model`` and ``data``: the task's starter recipe (what ``hf-sparse init``
    writes and ``hf-sparse compress --task T --model M --data D`` runs) with these values and ``overrides``.
    ``dump_recipe`` of it is the YAML the job writes to ``recipe.yaml``.

    Args:
        task: ``text-classification``, ``token-classification`` or ``masked-lm`` (see :class:`Recipe`).
        model: A packaged alias, a local folder (relative: to the working folder) or a cached Hub id.
        data: A file or folder (relative: to the working folder), a cached Hub dataset id, a mapping of split name
            to file (``{"train": "a.csv", "test": "b.csv"}``), or None for the starter's (the packaged
            ``rotten_tomatoes`` for text classification).
        columns: Role -> column name of the data (``data.columns``), e.g. ``{"text": "review", "label": "stars"}``.
        label_names: Class or tag names in id order (``data.label_names``; default: read from the data).
        data_options: Other ``data`` settings, e.g. ``{"train_limit": 2000, "seed": 1}``.
        overrides: Recipe settings by top-level key, each a value or a mapping merged into that section, e.g.
            ``sparsities=[0.5]``, ``dense={"max_steps": 100}``, ``model={"fine_tuned": False}``, ``name="my-run"``.

    Raises:
        ConfigError: a setting is invalid (the message names the key).

    Example::

        recipe = recipe_for("text-classification", "./my-bert", "reviews.csv", columns={"label": "stars"})
        print(dump_recipe(recipe))
    """
    from .jobs.starter import canonical_task, compose_recipe

    if canonical_task(task) not in ("text-classification", "token-classification", "masked-lm"):
        raise ConfigError(
            f"recipe_for builds the recipes of `hf-sparse compress`'s classification job (text-classification, "
            f"token-classification, masked-lm), not {quote(task)}; `hf-sparse init --task {task}` writes a starter "
            "recipe of that task."
        )
    # The starter recipe of the task (what `hf-sparse init` writes and `hf-sparse compress --model --data` runs), so
    # Python and the command line start from the same settings.
    document: dict[str, Any] = compose_recipe(None, task=task, model=str(model))
    if isinstance(data, dict):
        document["data"] = {k: v for k, v in document["data"].items() if k != "dataset"}
        document["data"]["files"] = {split: str(p) for split, p in data.items()}
    elif data is not None:
        document["data"]["dataset"] = str(data)
    extra = {**(data_options or {})}
    if columns:
        extra["columns"] = dict(columns)
    if label_names is not None:
        extra["label_names"] = list(label_names)
    if extra:
        document["data"] = {**document.get("data", {}), **extra}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(key), dict):
            document[key] = {**document[key], **value}
        else:
            document[key] = value
    if "name" not in overrides:
        # A name of its own (the default one is the packaged recipe's): the data's or the model's stem.
        stem = Path(str(data if data is not None and not isinstance(data, dict) else model)).stem
        safe = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "job"
        document["name"] = f"{safe}-{task}" if safe not in JOB_OUTPUTS else f"job-{task}"
    return resolve_paths(Recipe.from_dict(document), Path.cwd())


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (every default written out)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
