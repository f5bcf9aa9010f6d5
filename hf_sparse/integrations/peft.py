"""LoRA adapters (peft) on models with :class:`~hf_sparse.SparseLinear` layers, and merges that keep the pattern.

peft wraps only the layer types it knows. For any other type it offers one documented hook: a mapping, registered
on each ``LoraConfig``, from the layer type to a LoRA layer class written for it. :func:`register_sparse_lora`
registers :class:`SparseLoraLinear` for ``SparseLinear``; everything else is stock peft: ``get_peft_model``,
training with the ``Trainer`` (peft freezes the sparse values, only the adapters train), ``save_pretrained`` of
the adapters, ``merge_adapter`` / ``unmerge_adapter`` / ``merge_and_unload``. The registration is not saved with
the adapter (peft keeps it out of ``adapter_config.json``), so adapters load through :func:`load_lora_adapter`,
which reads the saved config, registers it and hands it to ``PeftModel.from_pretrained``.

Example::

    import hf_sparse
    from peft import LoraConfig, get_peft_model
    from hf_sparse.integrations.peft import load_lora_adapter, merge_lora, register_sparse_lora

    config = register_sparse_lora(LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    peft_model = get_peft_model(sparse_model, config)  # base(x) runs through the sparse kernel, plus B(A(x)) * s
    ...  # train it with the Trainer
    peft_model.save_pretrained("adapter")  # the adapters only

    base = AutoModelForSequenceClassification.from_pretrained("sparse-checkpoint")
    peft_model = load_lora_adapter(base, "adapter")
    merged = merge_lora(peft_model)  # SparseLinear layers again: same formats, same indices, new values
    merged.save_pretrained("merged")  # a sparse checkpoint, loads with from_pretrained

Merging. ``B @ A * scaling`` is dense, the stored weight is not, so a merge has to choose:

- ``keep_pattern=True`` (the default of :func:`merge_lora`, and what peft's own ``merge_adapter`` and
  ``merge_and_unload`` do on these layers): the delta is added at the stored positions only; format, indices and
  storage size are unchanged. The part of the delta at pruned positions is dropped, so the merged model computes
  ``W + mask * (B @ A * scaling)`` instead of the adapted model's ``W + B @ A * scaling``.
- ``keep_pattern=False`` (:func:`merge_lora` only): each adapted ``SparseLinear`` becomes a dense ``nn.Linear``
  holding the full merged weight (a transformers ``Conv1D`` where the family's checkpoints have one, GPT-2's
  projections, so the model saves as a normal checkpoint of its architecture); it computes exactly what the adapted
  model did, and its sparsity is lost.

GPT-2. Its dense projections are ``Conv1D`` layers, which peft adapts itself with ``fan_in_fan_out=True``; a
``SparseLinear`` made from one stores its weight ``(out, in)`` like every ``SparseLinear``, and ignores the flag, so
one ``LoraConfig(fan_in_fan_out=True)`` serves a GPT-2 whose layers are partly sparse.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, FormatError, MissingPackageError, quote

try:  # peft is an extra: `pip install "hf_sparse[peft]"`
    from peft import LoraConfig, PeftConfig, PeftModel, PeftType
    from peft.tuners.lora import LoraLayer, LoraModel
    from peft.tuners.tuners_utils import check_adapters_to_merge
except ImportError as exc:  # only a missing peft; any other failure inside peft propagates as it is
    if getattr(exc, "name", None) not in ("peft",):
        raise
    raise MissingPackageError("peft (LoRA adapters on sparse layers)", 'pip install "peft>=0.15"') from None
from ..formats import from_tensors
from ..nn import SparseLinear, replace_module
from ..nn.description import sparse_config_for
from ..nn.linear_like import dense_layer, stores_conv1d

try:  # the keyword arguments peft's forward hooks add for LoRA variants; none of them reaches a SparseLinear
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS as _VARIANT_KWARGS
except ImportError:  # older peft: the same single key
    _VARIANT_KWARGS = ["alora_offsets"]

__all__ = ["SparseLoraLinear", "register_sparse_lora", "load_lora_adapter", "merge_lora", "stored_mask"]

#: ``init_lora_weights`` values that touch only the adapters. PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA rewrite the
#: base weight from a decomposition of it (on a sparse weight that would need a dense one); EVA and MiCA are not
#: written for it either.
_SUPPORTED_INITS = (True, False, "gaussian", "orthogonal")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Merges are summed in at least float32: half-precision sums of many small deltas would lose them.
    return torch.promote_types(dtype, torch.float32)


def _all_finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _slot_positions(layer: SparseLinear) -> dict[str, torch.Tensor]:
    """Where each stored entry of ``layer``'s weight lives in the dense matrix.

    Returns:
        Per floating-point tensor of the format (``values``; hybrid also has ``dense_values``), an int64 tensor of
        its shape: the flat position ``row * in_features + col`` of each entry.

    Every format's ``to_dense`` places each entry at its position, so a probe whose entries hold their own number
    (1-based, exact in float64) reads the positions back without format-specific code.
    """
    tensors = layer.weight_format().tensors()
    positions = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            continue
        probe = {}
        for other, t in tensors.items():
            if not t.is_floating_point():
                probe[other] = t
            elif other == name:
                probe[other] = torch.arange(1, t.numel() + 1, dtype=torch.float64, device=t.device).reshape(t.shape)
            else:
                probe[other] = torch.zeros(t.shape, dtype=torch.float64, device=t.device)
        ids = from_tensors(probe, layer.format_params, validate=False).to_dense().reshape(-1)
        found = torch.nonzero(ids).squeeze(1)
        if found.numel() != tensor.numel():  # two entries on one position; validated formats never have that
            raise FormatError(
                f"{layer.format}: {tensor.numel()} stored entries in {quote(name)} map to {found.numel()} positions."
            )
        slots = torch.empty(tensor.numel(), dtype=torch.int64, device=tensor.device)
        slots[ids[found].to(torch.int64) - 1] = found
        positions[name] = slots.reshape(tensor.shape)
    return positions


def stored_mask(layer: SparseLinear) -> torch.Tensor:
    """The positions a pattern-keeping merge updates: every entry ``layer`` stores (explicit zeros and a format's
    padding slots included, e.g. whole BSR blocks, all n slots of an N:M group).

    Returns:
        A bool tensor of shape ``(out_features, in_features)``.
    """
    if not isinstance(layer, SparseLinear):
        raise ConfigError(f"stored_mask needs a SparseLinear, got {type(layer).__name__}.")
    mask = torch.zeros(layer.out_features * layer.in_features, dtype=torch.bool, device=layer.weight.device)
    for slots in _slot_positions(layer).values():
        mask[slots.reshape(-1)] = True
    return mask.reshape(layer.out_features, layer.in_features)


class SparseLoraLinear(nn.Module, LoraLayer):
    """A LoRA layer around a :class:`~hf_sparse.SparseLinear`: ``y = base(x) + sum_a B_a(A_a(dropout(x))) * s_a``.

    ``base(x)`` runs through the sparse kernel; the adapters are ordinary dense ``nn.Linear`` pairs, as in peft's own
    LoRA layer. peft builds this class for ``SparseLinear`` targets of a config passed through
    :func:`register_sparse_lora`; it is not meant to be constructed by hand.

    Supported: plain LoRA with several adapters, rsLoRA, ``rank_pattern`` / ``alpha_pattern``, dropout,
    ``lora_bias``, mixed-batch ``adapter_names``, and ``init_lora_weights`` in ``True``, ``False``,
    ``"gaussian"``, ``"orthogonal"``. Variants (DoRA, aLoRA, ...) and the other inits (PiSSA, OLoRA, CorDA, LoftQ,
    LoRA-GA, EVA, MiCA) raise :class:`~hf_sparse.errors.ConfigError`.

    Merging (``merge``, hence peft's ``merge_adapter`` and ``merge_and_unload``) keeps the pattern: the delta is
    added at the stored positions only (see the module docstring). The values before the first merge are kept, so
    ``unmerge`` restores them exactly rather than subtracting the delta again (which would leave rounding error);
    that copy costs one more set of stored values while merged. (peft freezes the sparse values; a change made to them
    while merged would be undone by ``unmerge``.)

    Args:
        base_layer: The ``SparseLinear`` to adapt.
        adapter_name: Name of the first adapter.
        config: The ``LoraConfig`` of that adapter.
        r: Its rank.
        lora_alpha: Its alpha (``scaling = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA).
    """

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: LoraConfig,
        r: int = 0,
        lora_alpha: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        LoraLayer.__init__(self, base_layer, **kwargs)
        if not isinstance(self.get_base_layer(), SparseLinear):
            raise ConfigError(f"SparseLoraLinear adapts SparseLinear layers, got {type(base_layer).__name__}.")
        # peft's LoRA helpers read this flag; a SparseLinear weight is (out, in) like nn.Linear's, never transposed.
        self.fan_in_fan_out = False
        self._active_adapter = adapter_name
        # Snapshot of the base layer's floating tensors (attribute name -> copy) while adapters are merged.
        self._unmerged_values: dict[str, torch.Tensor] | None = None
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        # peft's generic lookup knows only its own layer types; a SparseLinear carries both sizes itself.
        return module.in_features, module.out_features

    # -- adapters -----------------------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs: Any) -> None:
        """Add (or re-create) the adapter ``adapter_name``, after checking that ``config`` asks for plain LoRA."""
        where = kwargs.get("target_name") or "a SparseLinear layer"
        init = config.init_lora_weights
        if not any(init is ok or (isinstance(ok, str) and init == ok) for ok in _SUPPORTED_INITS):
            raise ConfigError(
                f"LoRA on {where}: init_lora_weights={quote(init)} is not supported on SparseLinear layers (inits "
                "that "
                f"decompose or rewrite the base weight, or fit it to data, need a dense one); use one of "
                f"{list(_SUPPORTED_INITS)}."
            )
        # fan_in_fan_out is not read: a SparseLinear weight is (out, in), also one made from GPT-2's Conv1D, and a
        # GPT-2 config needs the flag set for the Conv1D layers peft adapts itself (peft sets it when they appear).
        super().update_layer(adapter_name, r, lora_alpha=lora_alpha, config=config, **kwargs)

    def resolve_lora_variant(self, *, config: LoraConfig, **kwargs: Any) -> None:
        # Only vanilla LoRA is implemented here (``lora_variants`` is peft's ``{(): None}``): turn peft's ValueError
        # for anything else into the typed error, naming what to switch off.
        try:
            super().resolve_lora_variant(config=config, **kwargs)
        except ValueError as exc:
            raise ConfigError(
                f"LoRA on SparseLinear layers supports plain LoRA only ({exc}); switch off the variant (e.g. "
                "use_dora=False) or exclude the SparseLinear layers from target_modules."
            ) from None
        return None

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """The dense ``(out_features, in_features)`` update ``B @ A * scaling`` of ``adapter``, in the adapter's
        dtype (computed in at least float32)."""
        return self._dense_delta(adapter).to(self.lora_B[adapter].weight.dtype)

    def _dense_delta(self, adapter: str) -> torch.Tensor:
        weight_a, weight_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        dtype = _compute_dtype(weight_b.dtype)
        return (weight_b.to(dtype) @ weight_a.to(dtype)) * self.scaling[adapter]

    def _bias_delta(self, adapter: str) -> torch.Tensor | None:
        if not self.lora_bias.get(adapter, False):
            return None
        if self.get_base_layer().bias is None:
            raise ConfigError(
                f"Cannot merge adapter {quote(adapter)}: it was trained with lora_bias=True but the SparseLinear "
                "it adapts "
                "has no bias."
            )
        bias = self.lora_B[adapter].bias
        return bias.to(_compute_dtype(bias.dtype)) * self.scaling[adapter]

    # -- forward ------------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        adapter_names = kwargs.pop("adapter_names", None)
        for key in _VARIANT_KWARGS:
            kwargs.pop(key, None)
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if adapter_names is not None:
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            lora_a = self.lora_A[name]
            h = self._cast_input_dtype(x, lora_a.weight.dtype)
            result = result + self.lora_B[name](lora_a(self.lora_dropout[name](h))) * self.scaling[name]
        return result.to(out_dtype)

    # -- merging ------------------------------------------------------------------------------------------------------
    def _float_tensors(self) -> dict[str, torch.Tensor]:
        """The base layer's floating tensors by attribute name: ``weight_<name>`` per format tensor, and ``bias``."""
        base = self.get_base_layer()
        out = {
            f"weight_{name}": getattr(base, f"weight_{name}")
            for name, t in base.weight_format().tensors().items()
            if t.is_floating_point()
        }
        if base.bias is not None:
            out["bias"] = base.bias
        return out

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas to the stored values of the base layer, at their stored positions only.

        Format, indices and stored size stay as they are; the part of ``B @ A * scaling`` at pruned positions is
        dropped (use :func:`merge_lora` with ``keep_pattern=False`` for an exact, dense merge).

        Args:
            safe_merge: Refuse (``FormatError``) a merge whose values are not all finite; nothing is changed then.
                The new values are always computed on copies, so this costs only the check.
            adapter_names: The adapters to merge (default: the active ones). Already merged ones are skipped.
        """
        names = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        if not names:
            return
        base = self.get_base_layer()
        current = self._float_tensors()
        delta = sum(self._dense_delta(a) for a in names).reshape(-1)
        new = {}
        for name, slots in _slot_positions(base).items():
            tensor = current[f"weight_{name}"]
            new[f"weight_{name}"] = tensor.detach().to(delta.dtype) + delta[slots.to(delta.device)].to(tensor.device)
        bias_deltas = [d for d in (self._bias_delta(a) for a in names) if d is not None]
        if bias_deltas:
            new["bias"] = current["bias"].detach().to(bias_deltas[0].dtype) + sum(bias_deltas)
        if safe_merge and not _all_finite(*new.values()):
            raise FormatError(
                f"Merging adapter(s) {names} would put non-finite values into the SparseLinear; the adapters seem "
                "broken. Nothing was merged."
            )
        if not self.merged:
            self._unmerged_values = {name: t.detach().clone() for name, t in current.items()}
        with torch.no_grad():
            for name, tensor in new.items():
                current[name].copy_(tensor.to(current[name].dtype))
        self.merged_adapters.extend(names)

    def unmerge(self) -> None:
        """Take every merged adapter out again, restoring the exact values from before the first merge."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        current = self._float_tensors()
        with torch.no_grad():
            for name, saved in self._unmerged_values.items():
                current[name].copy_(saved.to(current[name].device))
        self._unmerged_values = None
        self.merged_adapters.clear()

    def unload_and_optionally_merge_module(
        self,
        merge: bool,
        safe_merge: bool,
        adapter_names: list[str] | None,
        keep_pattern: bool = True,
        conv1d: bool = False,
    ) -> nn.Module:
        """The module that replaces this wrapper when peft unloads it (peft's hook for layers that need more than
        ``merge`` + ``get_base_layer``; ``merge_and_unload`` calls it with the defaults, i.e. keeping the pattern).

        Args:
            merge: Merge the adapters first (``False``: return the base layer as it is, as peft's ``unload``).
            safe_merge: See :meth:`merge`.
            adapter_names: The adapters to merge (default: the active ones).
            keep_pattern: ``True``: merge at the stored positions and return the ``SparseLinear``. ``False``: return
                a dense ``nn.Linear`` with the base weight plus the full deltas of the adapters merged before and of
                ``adapter_names`` (the sparsity is lost; the outputs equal the adapted layer's).
            conv1d: with ``keep_pattern=False``, return a transformers ``Conv1D`` instead of an ``nn.Linear`` (the
                same function; for a place of a model whose checkpoints store a ``Conv1D``, GPT-2's projections).
        """
        if merge and keep_pattern:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        elif merge:
            return self._merged_dense_linear(safe_merge, adapter_names, conv1d=conv1d)
        return self.get_base_layer()

    def _merged_dense_linear(self, safe_merge: bool, adapter_names: list[str] | None, *, conv1d: bool) -> nn.Module:
        wanted = [a for a in check_adapters_to_merge(self, adapter_names) if a in self.lora_A]
        names = list(self.merged_adapters) + [a for a in wanted if a not in self.merged_adapters]
        base = self.get_base_layer()
        for name in names:  # refuse an unmergeable lora_bias before anything changes
            self._bias_delta(name)
        if self.merged:  # their pattern-restricted deltas come out exactly; the full ones go in below
            self.unmerge()
        weight = base.dense_weight().detach()
        weight = weight.to(_compute_dtype(weight.dtype))
        bias = None if base.bias is None else base.bias.detach().to(weight.dtype)
        for name in names:
            weight = weight + self._dense_delta(name).to(weight.device)
            bias_delta = self._bias_delta(name)
            if bias_delta is not None:
                bias = bias + bias_delta.to(bias.device)
        if safe_merge and not _all_finite(weight, bias):
            raise FormatError(f"Merging adapter(s) {names} gives non-finite weights; the adapters seem broken.")
        dtype, device = base.weight.dtype, base.weight.device
        return dense_layer(
            weight.to(device=device, dtype=dtype),
            None if bias is None else bias.to(device=device, dtype=dtype),
            conv1d=conv1d,
            requires_grad=any(p.requires_grad for p in base.parameters()),
        )

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


# -- public helpers ---------------------------------------------------------------------------------------------------
def register_sparse_lora(config: LoraConfig) -> LoraConfig:
    """Let peft wrap ``SparseLinear`` targets of ``config`` with :class:`SparseLoraLinear`; returns ``config``.

    Call it on every ``LoraConfig`` whose targets may be sparse, before ``get_peft_model`` or ``add_adapter``
    (dense targets keep peft's own layers). Without it peft stops with "Target module SparseLinear(...) is not
    supported".

    Raises:
        ConfigError: ``config`` is not a plain LoRA config (AdaLoRA and other methods do not use this hook).
    """
    if not isinstance(config, LoraConfig) or config.peft_type != PeftType.LORA:
        raise ConfigError(
            f"register_sparse_lora needs a peft LoraConfig (peft_type LORA), got {type(config).__name__}"
            f"{'' if not hasattr(config, 'peft_type') else f' with peft_type {config.peft_type}'}."
        )
    config._register_custom_module({SparseLinear: SparseLoraLinear})
    return config


_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token")


def load_lora_adapter(
    model: nn.Module,
    model_id: str | os.PathLike,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    **kwargs: Any,
) -> PeftModel:
    """Load a LoRA adapter saved by ``save_pretrained`` onto ``model``, whose ``SparseLinear`` layers it may target.

    The ``PeftModel.from_pretrained`` of this integration: it reads the adapter's config, registers it
    (:func:`register_sparse_lora`) and passes it on, since the registration is not part of the saved config.

    Args:
        model: A transformers model (e.g. a sparse checkpoint loaded with ``from_pretrained``), or a ``PeftModel``
            to add the adapter to as ``adapter_name`` (which must be new).
        model_id: Folder (or Hub id) of the saved adapter.
        adapter_name: Name to give the adapter.
        is_trainable: Load it trainable (to go on training) instead of for inference.
        kwargs: Passed to ``PeftModel.from_pretrained`` (or ``PeftModel.load_adapter``); ``subfolder``,
            ``revision``, ``cache_dir`` and ``token`` also select the config.

    Returns:
        The ``PeftModel`` (``model`` itself when it already was one).

    Raises:
        ConfigError: the saved adapter is not LoRA, or ``adapter_name`` already exists on ``model``.
    """
    config = PeftConfig.from_pretrained(str(model_id), **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})
    if not isinstance(config, LoraConfig) or config.peft_type != PeftType.LORA:
        raise ConfigError(f"{model_id}: the saved adapter is {config.peft_type}, not LoRA.")
    register_sparse_lora(config)
    if not isinstance(model, PeftModel):
        return PeftModel.from_pretrained(
            model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
        )
    if adapter_name in model.peft_config:
        raise ConfigError(
            f"The model already has an adapter named {quote(adapter_name)}; choose another adapter_name."
        )
    # Adding the (registered) config first makes load_adapter skip reading its own, unregistered copy.
    config.inference_mode = not is_trainable
    model.add_adapter(adapter_name, config)
    model.load_adapter(str(model_id), adapter_name, is_trainable=is_trainable, **kwargs)
    return model


def merge_lora(
    model: PeftModel | LoraModel,
    *,
    keep_pattern: bool = True,
    safe_merge: bool = False,
    adapter_names: list[str] | None = None,
    progress: bool = False,
) -> nn.Module:
    """Merge the LoRA adapters of ``model`` into its base model and return that (peft's ``merge_and_unload``, with a
    choice for the ``SparseLinear`` layers).

    Args:
        model: A ``PeftModel`` (or its ``LoraModel``) made with :func:`register_sparse_lora` configs.
        keep_pattern: ``True``: every adapted ``SparseLinear`` stays one, with the delta added at its stored positions
            only (same format and indices, new values; the part of ``B @ A * scaling`` at pruned positions is
            dropped), so the model saves as a sparse checkpoint of the same size. ``False``: every adapted
            ``SparseLinear`` becomes a dense ``nn.Linear`` with the full merged weight (a ``Conv1D`` where the
            family's checkpoints store one: GPT-2's projections): outputs equal the adapted model's, **the sparsity
            of those layers is lost**.
        safe_merge: Refuse non-finite merged weights (``FormatError``).
        adapter_names: The adapters to merge (default: the active ones).
        progress: Show peft's progress bar for the remaining (dense) layers.

    Returns:
        The base model, without peft layers. Its ``config.quantization_config`` is refreshed to describe the
        ``SparseLinear`` layers it still has (and removed when none is left), so ``save_pretrained`` writes a
        checkpoint that ``from_pretrained`` loads.

    Raises:
        ConfigError: ``model`` holds no LoRA adapters.
    """
    if isinstance(model, PeftModel):
        tuner = model.base_model
    elif isinstance(model, LoraModel):
        tuner = model
    else:
        raise ConfigError(f"merge_lora needs a peft PeftModel or LoraModel, got {type(model).__name__}.")
    if not isinstance(tuner, LoraModel):
        raise ConfigError(f"merge_lora merges LoRA adapters; this model's tuner is {type(tuner).__name__}.")
    inner = tuner.model
    # Unload the sparse layers first, with the requested choice; peft's own pass then finds only its dense layers.
    for name, module in list(inner.named_modules()):
        if isinstance(module, SparseLoraLinear):
            unloaded = module.unload_and_optionally_merge_module(
                merge=True,
                safe_merge=safe_merge,
                adapter_names=adapter_names,
                keep_pattern=keep_pattern,
                conv1d=stores_conv1d(inner, name),
            )
            replace_module(inner, name, unloaded)
    merged = tuner.merge_and_unload(progressbar=progress, safe_merge=safe_merge, adapter_names=adapter_names)
    _refresh_sparse_config(merged)
    return merged


def _refresh_sparse_config(model: nn.Module) -> None:
    """Make ``config.quantization_config`` describe the ``SparseLinear`` layers ``model`` has now (``save_pretrained``
    writes it; ``from_pretrained`` builds exactly those layers)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    described = sparse_config_for(model)
    if described.modules:
        config.quantization_config = described
        return
    current = getattr(config, "quantization_config", None)
    method = current.get("quant_method") if isinstance(current, dict) else getattr(current, "quant_method", None)
    if method == "hf_sparse":  # nothing sparse is left: a plain dense checkpoint
        del config.quantization_config
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer = None
