"""The distillation sections of a recipe (flat, or in a stage): a :class:`~hf_sparse.DistillationConfig` plus the
teacher and the cache a job uses."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..config import check_name
from ..errors import ConfigError
from ..resilience import confined_path
from .config import DistillationConfig

__all__ = ["StageDistillationSection", "DistillationSection"]


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
            DistilBERT setting: the student learns the task only from the labels and the teacher).
    """

    compare: bool = True
    student_from: Literal["dense", "pretrained"] = "dense"
