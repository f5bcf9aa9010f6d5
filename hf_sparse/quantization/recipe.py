"""The quantisation section of a recipe (flat, or in a stage): a :class:`~hf_sparse.QuantizationConfig` plus how a job
applies it."""

from __future__ import annotations

import dataclasses
from typing import Literal

from ..config import register_config
from ..errors import ConfigError
from .config import QuantizationConfig

__all__ = ["StageQuantizationSection", "QuantizationSection"]


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
