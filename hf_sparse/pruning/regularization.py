"""Regularisation for pruning-aware training: L1, group lasso, DropConnect and learnable hard-concrete L0 gates.

Everything here attaches to a model through public PyTorch APIs only, so the stock :class:`transformers.Trainer`
trains the model unchanged:

* the penalties are added to ``outputs.loss`` by a forward hook on the top-level model (training mode only);
* DropConnect is a :mod:`torch.nn.utils.parametrize` parametrization of the selected ``nn.Linear`` weights;
* hard-concrete gates (Louizos et al. 2018, "Learning Sparse Neural Networks through L0 Regularization"; used for
  heads and FFN neurons by CoFi, Xia et al. 2022) are small modules registered as children of the encoder layers —
  hence parameters of the model, which the Trainer's optimizer picks up — and act through forward pre-hooks on the
  inputs of the attention and FFN output projections.

After training, :meth:`RegularizationHandle.finalize_` turns the gates into structure: units whose deterministic
gate is zero are removed physically (:func:`~hf_sparse.pruning.structured.prune_heads_` /
:func:`~hf_sparse.pruning.structured.prune_neurons_`), the other gate values are folded into the output
projections, and the gates disappear, leaving a plain, smaller transformers model that computes what the gated model
computed in eval mode.

The configuration is in :mod:`hf_sparse.pruning.regularization_config`; the gates, their hard-concrete maths and
DropConnect in :mod:`hf_sparse.pruning.gates`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..nn.matching import match_linears
from ..nn.structure import EncoderLayerParts, find_encoder_layers
from .gates import (
    DropConnect,
    HardConcreteGate,
    hard_concrete_deterministic,
    hard_concrete_log_alpha,
    hard_concrete_prob_nonzero,
    hard_concrete_sample,
)
from .regularization_config import RegularizationConfig
from .structured import prune_heads_, prune_neurons_

__all__ = [
    "RegularizationConfig",
    "RegularizationHandle",
    "attach_regularization",
    "HardConcreteGate",
    "DropConnect",
    "hard_concrete_sample",
    "hard_concrete_deterministic",
    "hard_concrete_prob_nonzero",
    "hard_concrete_log_alpha",
]

logger = logging.getLogger(__name__)

#: Names of the gate modules registered on each encoder layer (one per unit kind).
_GATE_ATTR = {"head": "hf_sparse_head_gate", "neuron": "hf_sparse_neuron_gate"}


def _raw_weight(module: nn.Module) -> torch.Tensor:
    """The trained weight of ``module``: under DropConnect, the parametrization's original, not a dropped copy."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _head_param_count(parts: EncoderLayerParts) -> int:
    """Weights one attention head owns: its rows of query/key/value and its columns of the output projection."""
    qkv = sum(getattr(parts.attention, n).in_features for n in ("query", "key", "value"))
    return (qkv + parts.attention_output.out_features) * parts.head_size


def _neuron_param_count(parts: EncoderLayerParts) -> int:
    return parts.intermediate.in_features + parts.ffn_output.out_features


# -- the handle ----------------------------------------------------------------------------------------------------
class RegularizationHandle:
    """What :func:`attach_regularization` attached to a model, and the means to read, remove or finalize it.

    Attributes:
        model: The model the hooks, parametrizations and gates are attached to.
        config: The :class:`RegularizationConfig`.
        modules: The selected ``nn.Linear`` layers (L1, DropConnect), by qualified name; empty when neither is on.
        layers: The encoder layers (group lasso, gates); empty when neither is on.
        gates: ``{"head" | "neuron": {layer index: HardConcreteGate}}`` for the gated unit kinds.
    """

    def __init__(
        self,
        model: nn.Module,
        config: RegularizationConfig,
        modules: dict[str, nn.Linear],
        layers: list[EncoderLayerParts],
    ):
        self.model = model
        self.config = config
        self.modules = modules
        self.layers = layers
        self.gates: dict[str, dict[int, HardConcreteGate]] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._dropconnect_on = False
        self._attached = False
        self._warned_tuple = False

    @property
    def attached(self) -> bool:
        """False once :meth:`remove` or :meth:`finalize_` ran."""
        return self._attached

    # -- attaching ------------------------------------------------------------------------------------------------
    def _attach(self) -> None:
        cfg = self.config
        for kind in cfg.gates:
            for parts in self.layers:
                layer = self.model.get_submodule(parts.layer_name)
                if hasattr(layer, _GATE_ATTR[kind]):
                    raise ConfigError(
                        f"{parts.layer_name} already has {kind} gates ({_GATE_ATTR[kind]}): regularization is "
                        "attached twice. Call handle.remove() (or handle.finalize_()) on the first attachment first."
                    )
        if cfg.dropconnect > 0:
            taken = [n for n, m in self.modules.items() if parametrize.is_parametrized(m, "weight")]
            if taken:
                raise ConfigError(
                    f"RegularizationConfig.dropconnect: the weights of {taken[:3]} are already parametrized (is "
                    "regularization attached twice?). Remove the other parametrization or exclude these modules "
                    "with exclude_modules."
                )
        # Gates first: they must exist before anything (the Trainer's optimizer) collects the model's parameters.
        for kind in cfg.gates:
            self.gates[kind] = {}
            for parts in self.layers:
                n = parts.num_heads if kind == "head" else parts.num_neurons
                target = parts.attention_output if kind == "head" else parts.ffn_output
                gate = HardConcreteGate(
                    n,
                    init_keep=cfg.gate_init_keep,
                    temperature=cfg.gate_temperature,
                    limits=(cfg.gate_limits[0], cfg.gate_limits[1]),
                    lr_multiplier=cfg.gate_lr_multiplier,
                    device=target.weight.device,
                )
                gate.train(self.model.training)
                # A child of the encoder layer: moves with the model, is saved and restored in Trainer checkpoints,
                # and is a parameter the optimizer sees. add_module is nn.Module's public API on this instance.
                self.model.get_submodule(parts.layer_name).add_module(_GATE_ATTR[kind], gate)
                self.gates[kind][parts.index] = gate
                hook = self._make_gate_hook(gate, parts.head_size if kind == "head" else 1)
                self._hooks.append(target.register_forward_pre_hook(hook))
        self._hooks.append(self.model.register_forward_hook(self._add_penalty))
        self.add_dropconnect()
        self._attached = True

    def add_dropconnect(self) -> None:
        """(Re-)register the DropConnect parametrizations (no-op when ``config.dropconnect`` is 0 or they are on)."""
        if self.config.dropconnect <= 0 or self._dropconnect_on:
            return
        for module in self.modules.values():
            drop = DropConnect(self.config.dropconnect)
            drop.train(module.training)
            parametrize.register_parametrization(module, "weight", drop)
        self._dropconnect_on = True

    def remove_dropconnect(self) -> None:
        """Remove the DropConnect parametrizations, keeping the trained weights (the parametrizations' originals:
        the same ``nn.Parameter`` objects, so an optimizer holding them is unaffected)."""
        if not self._dropconnect_on:
            return
        for module in self.modules.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._dropconnect_on = False

    # -- hooks ----------------------------------------------------------------------------------------------------
    def _make_gate_hook(self, gate: HardConcreteGate, repeat: int):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            # Drawn here, inside the layer, like dropout: gradient checkpointing recomputes the layer with the RNG
            # state restored, so the recomputation draws the same gate sample as the forward pass.
            scale = gate().to(x.dtype)
            if repeat > 1:  # a head's gate scales its head_size columns of the attention context
                scale = scale.repeat_interleave(repeat)
            return (x * scale, *args[1:])

        return hook

    def _add_penalty(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not module.training:
            return None
        if isinstance(output, Mapping):
            loss = output.get("loss")
            if loss is None:
                return None
            # ModelOutput.__setitem__ keeps the attribute (outputs.loss) and the key (outputs["loss"]) in step.
            output["loss"] = loss + self.penalty().to(device=loss.device, dtype=loss.dtype)
            return output
        if isinstance(output, tuple) and not self._warned_tuple:
            self._warned_tuple = True
            logger.warning(
                "hf_sparse regularization: %s returned a tuple, so the penalty cannot be added to its loss (which "
                "element is the loss is unknown). Call the model with return_dict=True (the default).",
                type(module).__name__,
            )
        return None

    # -- penalties ------------------------------------------------------------------------------------------------
    def _check_attached(self) -> None:
        if not self._attached:
            raise ConfigError(
                "This RegularizationHandle was removed or finalized; attach again with attach_regularization()."
            )

    def penalty_terms(self) -> dict[str, torch.Tensor]:
        """The active penalty terms, already multiplied by their coefficients: ``"l1"``, ``"group_lasso"``,
        ``"gates"`` (fp32 scalars, differentiable)."""
        self._check_attached()
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        if cfg.l1 > 0:
            total = sum(_raw_weight(m).float().abs().sum() for m in self.modules.values())
            count = sum(_raw_weight(m).numel() for m in self.modules.values())
            terms["l1"] = cfg.l1 * (total / max(count, 1) if cfg.normalize else total)
        if cfg.group_lasso > 0:
            norms = self.group_norms()
            flat = torch.cat([t for per_layer in norms.values() for t in per_layer.values()])
            terms["group_lasso"] = cfg.group_lasso * (flat.mean() if cfg.normalize else flat.sum())
        if self.gates and (cfg.gate_penalty > 0):
            density = self.expected_density()
            if cfg.gate_target_density is None:
                terms["gates"] = cfg.gate_penalty * density
            else:
                terms["gates"] = cfg.gate_penalty * (density - cfg.gate_target_density) ** 2
        return terms

    def penalty(self) -> torch.Tensor:
        """The total penalty that is added to the loss of every training forward (an fp32 scalar, differentiable).

        Raises:
            ConfigError: the handle was removed or finalized.
        """
        terms = self.penalty_terms()
        if not terms:
            return torch.zeros((), device=self._device())
        return torch.stack([t.to(self._device()) for t in terms.values()]).sum()

    def group_norms(self) -> dict[str, dict[int, torch.Tensor]]:
        """The L2 norm of each group of the group lasso: ``{"head": {layer: (num_heads,)}, "neuron": {layer:
        (intermediate_size,)}}`` for the kinds in ``config.groups`` (fp32, differentiable).

        ``torch.linalg.vector_norm`` has a zero (sub)gradient at a zero group, so groups that reached zero stay
        finite in the backward pass.
        """
        out: dict[str, dict[int, torch.Tensor]] = {}
        for kind in self.config.groups:
            out[kind] = {}
            for parts in self.layers:
                if kind == "head":
                    h = parts.num_heads
                    pieces = [
                        _raw_weight(getattr(parts.attention, n)).float().reshape(h, -1)
                        for n in ("query", "key", "value")
                    ]
                    # Output projection (hidden, heads * head_size): a head's columns are a row block of the transpose.
                    pieces.append(_raw_weight(parts.attention_output).float().t().reshape(h, -1))
                else:
                    pieces = [
                        _raw_weight(parts.intermediate).float(),
                        _raw_weight(parts.ffn_output).float().t(),
                    ]
                out[kind][parts.index] = torch.linalg.vector_norm(torch.cat(pieces, dim=1), dim=1)
        return out

    def expected_density(self) -> torch.Tensor:
        """Expected fraction of the gated parameters that survive: ``sum_u P(z_u != 0) * n_u / sum_u n_u`` over all
        gates ``u``, where ``n_u`` is the number of weights the unit owns (a head: its query/key/value rows and
        output-projection columns; a neuron: its two FFN weight vectors). Weighting by size makes the target
        density a fraction of encoder weights, not of units (a BERT layer has 12 heads but 3072 neurons).

        Returns:
            A differentiable fp32 scalar.

        Raises:
            ConfigError: no gates are attached.
        """
        self._check_attached()
        if not self.gates:
            raise ConfigError("expected_density needs gates; RegularizationConfig.gates is empty.")
        kept = total = None
        for kind, per_layer in self.gates.items():
            for index, gate in per_layer.items():
                parts = self.layers[index]
                size = _head_param_count(parts) if kind == "head" else _neuron_param_count(parts)
                k = gate.prob_nonzero().sum() * size
                kept = k if kept is None else kept + k.to(kept.device)
                total = (total or 0) + size * gate.scaled_log_alpha.numel()
        return kept / max(total, 1)

    def deterministic_gates(self) -> dict[str, dict[int, torch.Tensor]]:
        """The eval-mode gate values, ``{"head" | "neuron": {layer: (n,)}}`` (detached)."""
        with torch.no_grad():
            return {k: {i: g.deterministic().detach() for i, g in per.items()} for k, per in self.gates.items()}

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gates' parameters, e.g. for an optimizer with a separate parameter group."""
        return [g.scaled_log_alpha for per in self.gates.values() for g in per.values()]

    def stats(self) -> dict[str, float]:
        """Numbers for the training log: ``reg_penalty`` and each term (``reg_l1``, ``reg_group_lasso``,
        ``reg_gates``); with gates ``gate_density`` (:meth:`expected_density`), and per kind
        ``gate_density_head`` / ``gate_density_neuron`` (mean ``P(z != 0)``) and ``gates_closed_head`` /
        ``gates_closed_neuron`` (units whose deterministic gate is 0: :meth:`finalize_` would remove them)."""
        with torch.no_grad():
            terms = self.penalty_terms()
            out = {"reg_penalty": float(sum(float(t) for t in terms.values()))}
            out.update({f"reg_{k}": float(v) for k, v in terms.items()})
            if self.gates:
                out["gate_density"] = float(self.expected_density())
                for kind, per_layer in self.gates.items():
                    probs = torch.cat([g.prob_nonzero().float().cpu() for g in per_layer.values()])
                    closed = sum(int((g.deterministic() == 0).sum()) for g in per_layer.values())
                    out[f"gate_density_{kind}"] = float(probs.mean())
                    out[f"gates_closed_{kind}"] = float(closed)
        return out

    # -- removal --------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach everything: hooks, DropConnect (keeping the trained weights) and the gate modules.

        The gates are deleted without being applied: the model computes as if it had never been gated. To keep
        what the gates learned, call :meth:`finalize_` instead.
        """
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.remove_dropconnect()
        for kind, per_layer in self.gates.items():
            for index in per_layer:
                layer = self.model.get_submodule(self.layers[index].layer_name)
                if hasattr(layer, _GATE_ATTR[kind]):
                    delattr(layer, _GATE_ATTR[kind])
        self.gates = {}
        self._attached = False

    @torch.no_grad()
    def finalize_(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Turn the learned gates into structure, in place, and detach everything (as :meth:`remove`).

        Heads and neurons whose deterministic gate is 0 are removed physically (every layer keeps at least one
        head: if all its head gates are 0, the head with the largest ``log_alpha`` stays, its output columns
        zeroed); the other gate values are multiplied into the matching columns of the attention / FFN output
        projection. In eval mode the result computes what the gated model computed, and it is a plain
        transformers model whose ``save_pretrained`` records the new sizes (see
        :mod:`hf_sparse.pruning.structured`).

        Args:
            model: The model the handle is attached to (checked), or ``None`` for :attr:`model`.

        Returns:
            ``{"params_before", "params_after", "layers": [{"layer", "heads_before", "heads_kept",
            "neurons_before", "neurons_kept"}], "head_gates" / "neuron_gates": {layer: [gate values of the kept
            units]}}`` with indices as they were before this call.

        Raises:
            ConfigError: ``model`` is not the attached model, no gates are attached, or the handle was removed.
        """
        self._check_attached()
        if model is not None and model is not self.model:
            raise ConfigError(
                f"finalize_ got a different model ({type(model).__name__} at {id(model):#x}) from the one the gates "
                "are attached to; pass the attached model (handle.model) or nothing."
            )
        if not self.gates:
            raise ConfigError("finalize_ needs gates, but RegularizationConfig.gates is empty; use remove() instead.")
        model = self.model
        values = self.deterministic_gates()
        log_alphas = {k: {i: g.log_alpha.detach() for i, g in per.items()} for k, per in self.gates.items()}
        params_before = _param_count(model)
        self.remove()  # plain nn.Linear layers again, no hooks, no gate modules
        layers = find_encoder_layers(model)
        heads_before = {p.index: p.num_heads for p in layers}
        neurons_before = {p.index: p.num_neurons for p in layers}
        remove_heads: dict[int, list[int]] = {}
        remove_neurons: dict[int, list[int]] = {}
        for index, z in values.get("head", {}).items():
            parts = layers[index]
            w = parts.attention_output.weight
            w.mul_(z.to(w.device, w.dtype).repeat_interleave(parts.head_size))
            closed = (z == 0).nonzero().flatten().tolist()
            if len(closed) == parts.num_heads:  # prune_heads_ keeps one head; keep the most open one (output is 0)
                closed.remove(int(log_alphas["head"][index].argmax()))
            if closed:
                remove_heads[index] = closed
        for index, z in values.get("neuron", {}).items():
            parts = layers[index]
            w = parts.ffn_output.weight
            w.mul_(z.to(w.device, w.dtype))
            closed = (z == 0).nonzero().flatten().tolist()
            if closed:
                remove_neurons[index] = closed
        if remove_heads:
            prune_heads_(model, remove_heads)
        if remove_neurons:
            prune_neurons_(model, remove_neurons)
        report: dict[str, Any] = {"params_before": params_before, "params_after": _param_count(model), "layers": []}
        for index in heads_before:
            report["layers"].append(
                {
                    "layer": index,
                    "heads_before": heads_before[index],
                    "heads_kept": [h for h in range(heads_before[index]) if h not in remove_heads.get(index, ())],
                    "neurons_before": neurons_before[index],
                    "neurons_kept": [
                        j for j in range(neurons_before[index]) if j not in remove_neurons.get(index, ())
                    ],
                }
            )
        for kind, per_layer in values.items():
            removed = remove_heads if kind == "head" else remove_neurons
            report[f"{kind}_gates"] = {
                i: [float(v) for j, v in enumerate(z.tolist()) if j not in removed.get(i, ())]
                for i, z in per_layer.items()
            }
        return report

    def _device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")


def _param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def attach_regularization(model: nn.Module, config: RegularizationConfig | Mapping[str, Any]) -> RegularizationHandle:
    """Attach the penalties, DropConnect and gates of ``config`` to ``model``, in place.

    - The total penalty (:meth:`RegularizationHandle.penalty`) is added to ``outputs.loss`` by a forward hook on
      ``model`` whenever ``model`` is in training mode and its output has a ``loss`` (so the Trainer's loss, its
      logged ``loss`` included, contains it; eval losses do not). It is added to every forward: when a model
      normalises its loss over a whole gradient-accumulation step (``num_items_in_batch``, mostly causal LMs),
      the penalty's relative weight is multiplied by ``gradient_accumulation_steps``.
    - DropConnect parametrizes the selected ``nn.Linear`` weights (training mode only).
    - Gates are registered as children of the encoder layers; attach before creating an optimizer (the
      :class:`~hf_sparse.RegularizationCallback` attaches in ``on_init_end``, before the
      Trainer creates its optimizer). Note that the Trainer applies ``weight_decay`` to them too (it pulls
      ``log_alpha`` towards 0, a keep probability of ~0.83).

    Also the ``apply_`` handler for :class:`RegularizationConfig`.

    Args:
        model: The model (top-level: the one whose output carries the loss).
        config: A :class:`RegularizationConfig` or its dict form.

    Returns:
        The :class:`RegularizationHandle` (penalty, stats, ``remove``, ``finalize_``).

    Raises:
        ConfigError: nothing selected by ``target_modules`` (L1, DropConnect), a model without BERT-style encoder
            layers (group lasso, gates), or regularization already attached.
    """
    if not isinstance(config, RegularizationConfig):
        if isinstance(config, Mapping):
            config = RegularizationConfig.from_dict(config)
        else:
            raise ConfigError(f"attach_regularization needs a RegularizationConfig, got {type(config).__name__}.")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"attach_regularization needs a torch.nn.Module, got {type(model).__name__}.")
    modules: dict[str, nn.Linear] = {}
    if config.uses_linears:
        modules = match_linears(model, config.target_modules, config.exclude_modules, who="RegularizationConfig")
    layers: list[EncoderLayerParts] = []
    if config.group_lasso > 0 or config.gates:
        try:
            layers = find_encoder_layers(model)
        except ConfigError as exc:
            raise ConfigError(
                f"RegularizationConfig.group_lasso / gates work on attention heads and FFN neurons: {exc} Use l1 or "
                "dropconnect for other models."
            ) from None
    handle = RegularizationHandle(model, config, modules, layers)
    handle._attach()
    return handle
