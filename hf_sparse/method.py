"""The ``Method`` abstraction: what one compression method declares so that ``apply_`` and the job runner can use it
without knowing it by name.

A method (pruning, structured pruning, regularisation, quantisation, low rank, distillation, sparse attention,
compressed embeddings, or one a user registers) is one folder with its config, its model transform and its Trainer
callback, and one :func:`register_method` call that declares its hooks:

* ``order`` — where it runs among the methods of a stage (its transform at the stage's start, its finalize step after
  the stage's training, its conversion before the model is saved);
* ``preflight`` — checks against the model built on the meta device, before any data is read or training starts;
* ``apply`` — the one-shot transform ``hf_sparse.apply_(model, config)`` runs;
* ``start`` / ``callbacks`` / ``finalize`` / ``convert`` — what a job does with it: at the start of a stage, during
  the stage's training, after it, and once at the end of the run before saving;
* ``tag`` / ``describe`` / ``record`` / ``report`` — its part of the run's name, its description in words, its entry
  in the run's report and its section of ``report.md``.

Methods that declare ``carry=True`` keep acting in the stages after the one that started them (pruning masks stay
fixed, quantisation-aware training continues): their ``callbacks`` and ``convert`` hooks are called with the section
set to ``None`` in such later stages.

This module is the bottom layer of the package: it imports nothing but the standard library and the core modules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import BaseConfig
from .errors import ConfigError, quote
from .registry import Registry

__all__ = [
    "Method",
    "RunContext",
    "METHOD_REGISTRY",
    "register_method",
    "method_for",
    "ordered_methods",
    "report_metric",
    "is_fraction_metric",
    "delta_text",
    "metric_cell",
]


@dataclasses.dataclass
class RunContext:
    """What a method's job hooks see of the run they are part of.

    Attributes:
        model: The model being compressed (changed in place by the hooks).
        task: The task running the job: it provides ``calibration_batches(samples, seed)``,
            ``token_frequencies(model)``, ``teacher(name)`` (a frozen teacher; ``None``: the fine-tuned dense
            baseline), ``evaluate(model)`` (the task's metric) and ``dense_model``.
        output_dir: The job's output folder (every write is confined to it).
        seed: The seed of the current stage's training.
        state: Per-method state carried from stage to stage, keyed by method name (e.g. pruning masks).
        results: What each method's hooks reported in this run, keyed by method name (its ``record`` reads it).
        checkpoint: How the job stores the model (format, batch hint, minimum sparsity), or ``None``.
        stage: The name of the stage running now; ``stages``: every stage's name, in order.
    """

    model: Any
    task: Any
    output_dir: Path
    seed: int = 42
    state: dict[str, dict] = dataclasses.field(default_factory=dict)
    results: dict[str, dict] = dataclasses.field(default_factory=dict)
    checkpoint: Any = None
    stage: str = "stage"
    stages: tuple[str, ...] = ()

    def result(self, method: str) -> dict:
        """The mutable result entry of ``method`` in this run."""
        return self.results.setdefault(method, {})


def _none(*_args, **_kwargs):
    return None


@dataclasses.dataclass(frozen=True)
class Method:
    """One compression method and its hooks (see the module docstring). Only ``name``, ``config_class`` and
    ``apply`` are required; a hook left out does nothing.

    Args:
        name: The method's name: its recipe section, its report key and its key in :data:`METHOD_REGISTRY`.
        config_class: The config ``apply_`` takes (subclasses such as a recipe section are accepted too).
        apply: ``apply(model, config, **kwargs) -> report``: the one-shot transform of ``apply_``.
        order: Position among a stage's methods (lower first): transforms, finalize and convert steps run in it.
        callback_order: Position of its Trainer callbacks among the stage's (lower first); default ``order``.
        init_callbacks: Its callbacks must be given to ``Trainer(callbacks=...)`` (they act when the optimizer is
            created) rather than attached after.
        trains: It acts during training only: a stage without training cannot hold it.
        carry: It keeps acting in later stages (hooks then get ``section=None``).
        preflight: ``preflight(meta_model, section, where) -> None``: raise ``ConfigError`` on what cannot fit;
            may transform the meta model as the method would (later sections are checked against the result).
        start: ``start(model, section, ctx)``: the transform at the start of a stage (default: ``apply``).
        callbacks: ``callbacks(section | None, ctx) -> list``: Trainer callbacks of the stage.
        finalize: ``finalize(model, section, callbacks, ctx)``: after the stage's training.
        convert: ``convert(model, section | None, ctx) -> dict[str, str]``: once at the end of the run, before
            saving; returns the stored format of each layer it converted.
        tag: ``tag(section) -> (position, text)``: its part of the run's name (joined by position).
        describe: ``describe(section) -> str``: what it does, in words (logs, report).
        record: ``record(section, ctx) -> dict | None``: its entry in the run's report.
        report: ``report(report_dict) -> list[str]``: its Markdown section of ``report.md`` (lines).
        variants: ``variants(section) -> [(section | None, record | None), ...]``: the runs a flat recipe makes of
            this section, for comparisons (e.g. QAT and PTQ of the same training; with and without a teacher); a
            ``None`` section leaves the method out of that run and ``record`` is its report entry there.
    """

    name: str
    config_class: type
    apply: Callable[..., Any]
    order: int = 100
    callback_order: int | None = None
    init_callbacks: bool = False
    trains: bool = False
    carry: bool = False
    preflight: Callable[..., None] = _none
    start: Callable[..., Any] | None = None
    callbacks: Callable[..., list] = lambda section, ctx: []
    finalize: Callable[..., Any] = _none
    convert: Callable[..., dict | None] = _none
    tag: Callable[[Any], tuple[int, str] | None] = _none
    describe: Callable[[Any], str] = lambda section: ""
    record: Callable[..., dict | None] = _none
    report: Callable[[dict], list[str]] = lambda report: []
    variants: Callable[[Any], list] = lambda section: [(section, None)]

    def __post_init__(self) -> None:
        if not isinstance(self.config_class, type) or not issubclass(self.config_class, BaseConfig):
            raise ConfigError(
                f"Method {quote(self.name)}: config_class must be an hf_sparse config class (a BaseConfig), got "
                f"{quote(self.config_class)}."
            )
        if not callable(self.apply):
            raise ConfigError(f"Method {quote(self.name)}: apply must be callable, got {quote(self.apply)}.")

    def run_start(self, model, section, ctx: RunContext) -> Any:
        """The stage-start transform: ``start`` if declared, else ``apply(model, section)``."""
        if self.start is not None:
            return self.start(model, section, ctx)
        return self.apply(model, section)

    @property
    def sort_key(self) -> tuple[int, str]:
        return (self.order, self.name)

    @property
    def callback_key(self) -> tuple[int, str]:
        return (self.order if self.callback_order is None else self.callback_order, self.name)


#: Every registered method by name (built-in ones register when :mod:`hf_sparse.apply` is imported).
METHOD_REGISTRY: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    """Register ``method`` under ``method.name`` (the recipe section and report key it uses).

    Raises:
        ConfigError: the name is taken, or another registered method takes the same config class.
    """
    if not isinstance(method, Method):
        raise ConfigError(f"register_method needs a Method, got {quote(method)}.")
    if method.name in METHOD_REGISTRY:
        METHOD_REGISTRY.register(method.name, method)  # raises, naming the registered one
    for name, other in METHOD_REGISTRY.items():
        if other.config_class is method.config_class:
            raise ConfigError(
                f"Method {quote(method.name)}: config class {method.config_class.__name__} is already the config of "
                f"method {quote(name)}."
            )
    METHOD_REGISTRY.register(method.name, method)
    return method


def unregister_method(name: str) -> None:
    """Remove a registered method (for plugins' and tests' clean-up)."""
    METHOD_REGISTRY.unregister(name)


def method_for(config: Any) -> Method:
    """The registered method whose config class ``config`` is an instance of (the most specific one).

    Raises:
        ConfigError: no registered method takes this config type.
    """
    best = None
    for _, method in METHOD_REGISTRY.items():
        if isinstance(config, method.config_class):
            if best is None or issubclass(method.config_class, best.config_class):
                best = method
    if best is None:
        known = [f"{m.config_class.__name__} ({n})" for n, m in METHOD_REGISTRY.items()]
        raise ConfigError(
            f"No hf_sparse method takes a {type(config).__name__}; registered methods take: {known or 'none'}."
        )
    return best


def ordered_methods(names) -> list[Method]:
    """The registered methods named in ``names``, in the order they run."""
    return sorted((METHOD_REGISTRY.get(n) for n in names), key=lambda m: m.sort_key)


# -- the compared metric of a job's report, as the methods' report sections write it -------------------------------
def report_metric(report: dict) -> dict:
    """The compared metric of a report: ``key``, ``name``, ``higher_is_better`` and ``all`` (every reported metric,
    key -> name); reports written before the jobs had tasks compared test accuracy."""
    metric = report.get("metric")
    if isinstance(metric, dict) and metric.get("key"):
        return {"higher_is_better": True, "all": {metric["key"]: metric.get("name", metric["key"])}, **metric}
    return {"key": "test_accuracy", "name": "accuracy", "higher_is_better": True, "all": {"test_accuracy": "accuracy"}}


def is_fraction_metric(key: str) -> bool:
    """Whether the metric of report key ``key`` is a fraction (accuracy, F1: differences in points) rather than a
    perplexity (differences as they are)."""
    return "perplexity" not in key


def delta_text(delta: float, key: str) -> str:
    """A difference of metric ``key`` to the dense model: in points for fractions, as it is for perplexities."""
    return f"{100 * delta:+.2f}" if is_fraction_metric(key) else f"{delta:+.3f}"


def metric_cell(value, key: str) -> str:
    """A metric value as the report writes it (``–`` when missing)."""
    if not isinstance(value, (int, float)):
        return "–"
    return f"{value:.4f}" if is_fraction_metric(key) else f"{value:.3f}"
