"""``QuantizationConfig``: what to quantise, how, and how the bit width changes while training."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from ..config import BaseConfig, register_config
from ..errors import ConfigError
from ..formats.schemes import QuantScheme

__all__ = ["QuantizationConfig", "DEFAULT_ACTIVATION"]

#: Static activations: one asymmetric 8-bit range per tensor, smoothed over batches.
DEFAULT_ACTIVATION = QuantScheme(bits=8, granularity="tensor", symmetric=False, observer="moving_average")


def _default_weight() -> QuantScheme:
    return QuantScheme(bits=8, granularity="channel", symmetric=True)


def _default_activation() -> QuantScheme:
    return DEFAULT_ACTIVATION


def _default_exclude() -> tuple[str, ...]:
    from ..pruning.config import DEFAULT_EXCLUDE  # imported late: the pruning package imports the model modules

    return DEFAULT_EXCLUDE


@register_config("quantization")
@dataclasses.dataclass(frozen=True)
class QuantizationConfig(BaseConfig):
    """Quantisation of a model's Linear layers (and optionally its embedding tables).

    Used by :func:`~hf_sparse.quantization.prepare_qat_` (quantisation-aware training: fake-quantised weights and
    activations, straight-through gradients), :class:`~hf_sparse.QATCallback` (the same from the stock Trainer, with
    the bit schedule), :func:`~hf_sparse.quantization.quantize_` (post-training quantisation with calibration) and
    :func:`~hf_sparse.quantization.convert_` (to integer layers that save and load).

    Args:
        weight: the weights' scheme (default int8, one symmetric scale per output channel).
        activation: ``"none"`` (weight-only), ``"dynamic"`` (each token's range measured at run time) or
            ``"static"`` (one range per layer input, observed while training or calibrating, then frozen).
        activation_scheme: the activations' scheme for ``"static"`` (its observer, percentile and averaging);
            activations are always asymmetric 8-bit, one range per tensor (static) or per token (dynamic).
        embedding: scheme of the embedding tables named by ``embedding_modules`` (``None``: embeddings stay float).
            One scale per row (``granularity="channel"``) is the usual choice; 2, 4 and 8 bits.
        embedding_modules: embedding tables to quantise (module-name components or full-name regexes).
        target_modules / exclude_modules: the Linear layers to quantise (empty target: all; exclusion wins). By
            default the task head and pooler stay float.
        module_bits: weight bits per module (full names or regexes; the first matching entry wins), e.g. from
            :func:`~hf_sparse.quantization.choose_bits`. Overrides ``weight.bits`` and the schedule's end point.
        bit_schedule: progressive weight bit widths while training, e.g. ``[8, 6, 4]``: the first width until
            ``schedule_start_step``, the last from ``schedule_end_step`` on, the ones between for equal shares of
            the steps in between (``[8, 4]`` switches at ``schedule_end_step``). Widths 2 to 8, not increasing; the
            last must equal ``weight.bits``. Empty: ``weight.bits`` throughout. Layers in ``module_bits`` end at
            their own width: during the schedule a layer uses the larger of the two.
        average_bits: if set, the QAT callback chooses ``module_bits`` from a measured sensitivity scan at the start
            of training so that the mean weight bit width (weighted by parameters) is at most this; candidates are
            ``bit_candidates``.
        keep_sparsity: pruned (zero) weights stay exactly zero through QAT and conversion.
        convert_format: integer storage after conversion: ``"dense"`` (int8 / packed int4 with scales),
            ``"csr"``, ``"bsr"`` or ``"nm"`` (int8 values with per-row scales inside that sparse format, run by our
            SpMM kernels), or ``"auto"`` (for layers at least ``min_sparsity`` sparse, the sparse format that fits
            the pruning pattern: n:m, whole blocks, else CSR).
        freeze_observers_step: from this training step on, activation ranges stop updating (-1: never).
    """

    weight: QuantScheme = dataclasses.field(default_factory=_default_weight)
    activation: Literal["none", "dynamic", "static"] = "none"
    activation_scheme: QuantScheme = dataclasses.field(default_factory=_default_activation)
    embedding: QuantScheme | None = None
    embedding_modules: tuple[str, ...] = ("word_embeddings",)
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = dataclasses.field(default_factory=_default_exclude)
    module_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    bit_schedule: tuple[int, ...] = ()
    schedule_start_step: int = 0
    schedule_end_step: int = 0
    average_bits: float | None = None
    bit_candidates: tuple[int, ...] = (4, 8)
    sensitivity_batches: int = 8
    keep_sparsity: bool = True
    convert_format: Literal["auto", "dense", "csr", "bsr", "nm"] = "auto"
    min_sparsity: float = 0.3
    freeze_observers_step: int = -1

    def validate(self) -> None:
        if self.weight.bits == 2:
            raise ConfigError("QuantizationConfig.weight.bits must be 8 or 4 (2 bits is for embedding tables).")
        if self.activation != "none" and self.activation_scheme.bits != 8:
            raise ConfigError(
                f"QuantizationConfig.activation_scheme.bits must be 8, got {self.activation_scheme.bits}."
            )
        if self.activation != "none" and self.activation_scheme.symmetric:
            raise ConfigError(
                "QuantizationConfig.activation_scheme.symmetric must be false: activations use the asymmetric 8-bit "
                "grid (a zero point), which covers post-activation ranges that are mostly positive."
            )
        if self.activation_scheme.granularity == "group" or self.activation_scheme.lsq:
            raise ConfigError(
                "QuantizationConfig.activation_scheme: granularity must be 'tensor' (static) or 'channel' (per "
                "token), and lsq applies to weights only."
            )
        for name, bits in self.module_bits.items():
            if bits not in (4, 8):
                raise ConfigError(f"QuantizationConfig.module_bits[{name!r}] must be 4 or 8, got {bits}.")
            try:
                re.compile(name)
            except re.error as exc:
                raise ConfigError(
                    f"QuantizationConfig.module_bits key {name!r} is not a valid regex: {exc}."
                ) from None
        for key in ("schedule_start_step", "schedule_end_step"):
            if getattr(self, key) < 0:
                raise ConfigError(
                    f"QuantizationConfig.{key} must be >= 0 (a training step), got {getattr(self, key)}."
                )
        if self.freeze_observers_step < -1:
            raise ConfigError(
                f"QuantizationConfig.freeze_observers_step must be a training step >= 0, or -1 (never freeze), got "
                f"{self.freeze_observers_step}."
            )
        if not self.bit_candidates or any(b not in (4, 8) for b in self.bit_candidates):
            raise ConfigError(
                f"QuantizationConfig.bit_candidates must be 4 and/or 8, got {list(self.bit_candidates)}."
            )
        if self.bit_schedule:
            if any(not 2 <= b <= 8 for b in self.bit_schedule):
                raise ConfigError(
                    f"QuantizationConfig.bit_schedule entries must be between 2 and 8, got {list(self.bit_schedule)}."
                )
            if list(self.bit_schedule) != sorted(self.bit_schedule, reverse=True):
                raise ConfigError(
                    f"QuantizationConfig.bit_schedule must not increase (e.g. [8, 4]), got {list(self.bit_schedule)}."
                )
            if self.bit_schedule[-1] != self.weight.bits:
                raise ConfigError(
                    f"QuantizationConfig.bit_schedule ends at {self.bit_schedule[-1]} bits but weight.bits is "
                    f"{self.weight.bits}; the schedule must end at the bit width the model is converted to."
                )
            if self.schedule_end_step < self.schedule_start_step:
                raise ConfigError(
                    f"QuantizationConfig: need 0 <= schedule_start_step <= schedule_end_step, got "
                    f"{self.schedule_start_step} and {self.schedule_end_step}."
                )
        if self.average_bits is not None:
            if not min(self.bit_candidates) <= self.average_bits <= max(self.bit_candidates):
                raise ConfigError(
                    f"QuantizationConfig.average_bits must lie between {min(self.bit_candidates)} and "
                    f"{max(self.bit_candidates)}, got {self.average_bits}."
                )
        if self.sensitivity_batches < 1:
            raise ConfigError(f"QuantizationConfig.sensitivity_batches must be >= 1, got {self.sensitivity_batches}.")
        if not 0.0 <= self.min_sparsity <= 1.0:
            raise ConfigError(f"QuantizationConfig.min_sparsity must be in [0, 1], got {self.min_sparsity}.")
        if self.convert_format in ("csr", "bsr", "nm") and not self.weight.symmetric:
            raise ConfigError(
                f"QuantizationConfig.convert_format {self.convert_format!r} stores symmetric int8 values (no zero "
                "point); set weight.symmetric: true."
            )

    def bits_for(self, name: str) -> int:
        """Weight bits of module ``name``: the first ``module_bits`` entry that names it, else ``weight.bits``."""
        for pattern, bits in self.module_bits.items():
            if pattern == name or re.fullmatch(pattern, name):
                return bits
        return self.weight.bits

    def scheduled_bits(self, step: int) -> int:
        """The schedule's weight bit width at training step ``step`` (``weight.bits`` without a schedule)."""
        schedule = self.bit_schedule
        if len(schedule) < 2 or step >= self.schedule_end_step:
            return self.weight.bits
        middle = schedule[1:-1]
        if step < self.schedule_start_step or not middle:
            return schedule[0]
        span = max(self.schedule_end_step - self.schedule_start_step, 1)
        return middle[min(int((step - self.schedule_start_step) * len(middle) / span), len(middle) - 1)]
