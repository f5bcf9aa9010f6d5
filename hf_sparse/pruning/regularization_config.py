"""``RegularizationConfig``: the penalties, stochastic layers and gates that
:func:`~hf_sparse.pruning.attach_regularization` attaches to a model for pruning-aware training."""

from __future__ import annotations

import dataclasses
import math
import re

from ..config import BaseConfig, register_config
from ..errors import ConfigError, quote
from .config import DEFAULT_EXCLUDE

__all__ = ["RegularizationConfig", "UNITS"]

#: Structural units that group lasso and gates know about.
UNITS: tuple[str, ...] = ("head", "neuron")


# -- configuration -------------------------------------------------------------------------------------------------
@register_config("regularization")
@dataclasses.dataclass(frozen=True)
class RegularizationConfig(BaseConfig):
    """Penalties and stochastic layers that prepare a model for pruning while it trains.

    Every term is off by default; a default config attaches nothing but the (zero) penalty hook.

    Args:
        l1: Coefficient of the L1 penalty ``sum |w|`` over the weights of the selected ``nn.Linear`` layers (biases
            are not penalised). Pushes individual weights to zero before unstructured pruning.
        group_lasso: Coefficient of the group-lasso penalty ``sum_g ||w_g||_2`` over the structural units named in
            ``groups`` of every encoder layer: an attention head's group is its rows of ``query``/``key``/``value``
            and its columns of the attention output projection; an FFN neuron's group is its row of
            ``intermediate.dense`` and its column of ``output.dense`` (weights only). Drives whole units to zero,
            ready for :func:`~hf_sparse.pruning.structured.structured_prune_`. The groups come from the encoder's
            structure (:func:`~hf_sparse.nn.structure.find_encoder_layers`); ``target_modules`` and
            ``exclude_modules`` do not apply to them.
        groups: Units of the group lasso, a subset of ``("head", "neuron")``.
        normalize: Divide the L1 term by the number of selected weights and the group-lasso term by the number of
            groups, so a coefficient means the same on a 2-layer test model and on BERT-large (the terms become
            mean ``|w|`` and mean group norm). With ``False`` the terms are plain sums, as in most papers.
        target_modules: Regular expressions over qualified module names selecting the ``nn.Linear`` layers of the L1
            penalty and DropConnect (``re.fullmatch``; a plain word also matches as a name component). Empty means
            every ``nn.Linear``. Same rules as :class:`~hf_sparse.PruningConfig`.
        exclude_modules: Names (components) or regular expressions never selected; wins over ``target_modules``.
            Defaults to task heads, poolers and embeddings (:data:`~hf_sparse.pruning.config.DEFAULT_EXCLUDE`).
        dropconnect: Probability of dropping each weight of the selected layers in every training forward
            (Wan et al. 2013), in [0, 1). Kept weights are scaled by ``1 / (1 - p)``; in eval mode the weight is
            used as it is. Masks are drawn from torch's global RNG, which the Trainer seeds with ``args.seed``.
        gates: Units that get learnable hard-concrete L0 gates, a subset of ``("head", "neuron")``: one gate per
            attention head / FFN neuron of every encoder layer.
        gate_penalty: Coefficient of the gates' sparsity penalty. With ``gate_target_density=None`` the penalty is
            ``gate_penalty * expected_density`` (the expected L0 norm, as a fraction); otherwise it is
            ``gate_penalty * (expected_density - gate_target_density) ** 2``, which steers the expected density
            to the target instead of to zero. ``expected_density`` is the expected fraction of the gated
            parameters that stay (see :meth:`RegularizationHandle.expected_density`).
        gate_target_density: Expected density the quadratic penalty aims at, in [0, 1], or ``None``.
        gate_init_keep: Initial probability that a gate is non-zero (the initial expected density), in (0, 1). At
            the default 0.99 every deterministic gate starts at exactly 1, so a pretrained model's eval outputs
            do not change when the gates are attached (the deterministic gate reaches 1 from about 0.982).
        gate_temperature: Temperature ``beta`` of the hard-concrete distribution (2/3 in Louizos et al.).
        gate_limits: Stretch interval ``(l, r)`` of the hard-concrete distribution, ``l < 0 < 1 < r``; stretching
            beyond [0, 1] and clipping gives gates exact zeros and ones. Default ``(-0.1, 1.1)``.
        gate_lr_multiplier: Multiplies the learning rate of the gates relative to the rest of the model. The stock
            Trainer has one learning rate, typically ~2e-5 for fine-tuning, at which ``log_alpha`` barely moves
            (CoFi trains the gates at ~0.01-0.1, hundreds of times faster). The gate stores ``log_alpha / m`` as its
            parameter and uses ``log_alpha = m * param`` with the gradient passed through unscaled, which is
            exactly a learning-rate multiplier ``m`` for SGD and Adam alike, and leaves gradient clipping unchanged.

    Raises:
        ConfigError: a value outside its range, naming the field and the allowed values.
    """

    l1: float = 0.0
    group_lasso: float = 0.0
    groups: tuple[str, ...] = UNITS
    normalize: bool = True
    target_modules: tuple[str, ...] = ()
    exclude_modules: tuple[str, ...] = DEFAULT_EXCLUDE
    dropconnect: float = 0.0
    gates: tuple[str, ...] = ()
    gate_penalty: float = 0.0
    gate_target_density: float | None = None
    gate_init_keep: float = 0.99
    gate_temperature: float = 2.0 / 3.0
    gate_limits: tuple[float, ...] = (-0.1, 1.1)
    gate_lr_multiplier: float = 1.0

    def validate(self) -> None:
        name = type(self).__name__
        for key in ("l1", "group_lasso", "gate_penalty"):
            value = getattr(self, key)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ConfigError(f"{name}.{key} must be a finite number >= 0, got {value}.")
        for key in ("groups", "gates"):
            units = getattr(self, key)
            bad = [u for u in units if u not in UNITS]
            if bad or len(set(units)) != len(units):
                raise ConfigError(
                    f"{name}.{key} must be distinct values from {list(UNITS)}, got {list(units)}"
                    + (f" ({quote(bad[0])} is not one of them)." if bad else " (duplicates).")
                )
        if self.group_lasso > 0 and not self.groups:
            raise ConfigError(
                f"{name}.group_lasso is {self.group_lasso} but {name}.groups is empty; name the units to penalise "
                f"(any of {list(UNITS)}) or set group_lasso=0."
            )
        if not 0.0 <= self.dropconnect < 1.0:
            raise ConfigError(f"{name}.dropconnect must be in [0, 1), got {self.dropconnect}.")
        if not self.gates and (self.gate_penalty > 0 or self.gate_target_density is not None):
            raise ConfigError(
                f"{name}.gate_penalty / gate_target_density are set but {name}.gates is empty, so there is nothing "
                f"to penalise; set gates to a subset of {list(UNITS)}."
            )
        if self.gate_target_density is not None and not 0.0 <= self.gate_target_density <= 1.0:
            raise ConfigError(f"{name}.gate_target_density must be in [0, 1] or null, got {self.gate_target_density}.")
        if not 0.0 < self.gate_init_keep < 1.0:
            raise ConfigError(f"{name}.gate_init_keep must be in (0, 1) (exclusive), got {self.gate_init_keep}.")
        if not self.gate_temperature > 0.0:
            raise ConfigError(f"{name}.gate_temperature must be > 0, got {self.gate_temperature}.")
        if len(self.gate_limits) != 2 or not (self.gate_limits[0] < 0.0 and self.gate_limits[1] > 1.0):
            raise ConfigError(
                f"{name}.gate_limits must be two numbers (l, r) with l < 0 and r > 1 (the stretch that lets gates "
                f"reach exactly 0 and 1), got {list(self.gate_limits)}."
            )
        if not (self.gate_lr_multiplier > 0.0 and math.isfinite(self.gate_lr_multiplier)):
            raise ConfigError(f"{name}.gate_lr_multiplier must be a finite number > 0, got {self.gate_lr_multiplier}.")
        for key in ("target_modules", "exclude_modules"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ConfigError(
                        f"{name}.{key} has an invalid regular expression {quote(pattern)}: {exc}."
                    ) from None

    @property
    def uses_linears(self) -> bool:
        """Whether a term needs the selected ``nn.Linear`` layers (L1 or DropConnect)."""
        return self.l1 > 0 or self.dropconnect > 0
