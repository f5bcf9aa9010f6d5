"""The distillation sections of a recipe (flat, or in a stage): a :class:`~hf_sparse.DistillationConfig` plus the
teacher and the cache a job uses."""

from __future__ import annotations

import dataclasses

from ..config import check_name
from ..errors import ConfigError, quote
from ..resilience import confined_path
from .config import DistillationConfig

__all__ = ["StageDistillationSection", "DistillationSection", "START_CHOICES"]

#: The ``student_from`` values that are not a model: a copy of the fine-tuned dense baseline, or the pre-trained
#: model with a fresh task head.
START_CHOICES = ("dense", "pretrained")


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
            DistilBERT setting: the student learns the task only from the labels and the teacher); or a model folder
            (a path: ``./pofa-upstream/pruned-80-kd``, ``../models/x``, absolute; or a cached Hub id ``owner/name``)
            of the same architecture as ``model.name``, e.g. an encoder pruned on unlabelled text by a
            ``task: masked-lm`` recipe (Prune Once For All). Its weights are loaded into the task's model; what it
            lacks (a classification head, BERT's pooler, which a masked-LM model has none of) comes from the
            pre-trained model, the head fresh as with ``pretrained``. Its zeros stay zeros: a run must prune it
            one-shot by magnitude at step 0 to exactly its own sparsity (``pruning: {schedule: oneshot, criterion:
            magnitude, start_step: 0}``, ``sparsities: [<its sparsity>]``), which takes its zeros, and only them,
            as the masks kept fixed while it fine-tunes (checked before any training). A relative path is read
            against the recipe file's folder when it exists there, else against the working folder. The dense
            baseline and the teacher stay ``model.name`` fine-tuned on the task.
    """

    compare: bool = True
    student_from: str = "dense"

    def validate(self) -> None:
        super().validate()
        value = self.student_from
        if value in START_CHOICES:
            return
        path_like = "/" in value or "\\" in value or value.startswith((".", "~"))
        if not value.strip() or value != value.strip() or not path_like:
            raise ConfigError(
                f"distillation.student_from must be {' or '.join(START_CHOICES)}, or a model folder written as a path "
                f"(./pruned-encoder, ../pofa-upstream/pruned-80-kd, /abs/folder) or a cached Hub id (owner/name), "
                f"got {quote(value)}."
            )

    @property
    def start_model(self) -> str | None:
        """The model folder (or cached Hub id) the students start from, or None (``dense`` / ``pretrained``)."""
        return None if self.student_from in START_CHOICES else self.student_from
