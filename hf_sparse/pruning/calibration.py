"""Calibration statistics of ``nn.Linear`` inputs for post-training (one-shot) pruning.

Two statistics are collected with forward pre-hooks, accumulated batch by batch so memory does not grow with the
number of calibration samples:

* ``"norms"`` (Wanda): for each input column ``j`` the sum over tokens of ``x_j**2`` (the squared L2 norm of that
  column of the stacked inputs ``X``).
* ``"hessian"`` (SparseGPT): ``H = 2 XᵀX`` (``in_features x in_features``), the Hessian of the layer-wise
  reconstruction loss ``||WXᵀ - ŴXᵀ||²`` with respect to each row of ``Ŵ``.

Here ``X`` stacks the inputs of a layer as rows (``tokens x in_features``); the papers write the same matrix
transposed. Padding tokens are left out when a batch carries an ``attention_mask``: they are not part of any real
input, and a sentence padded to 64 tokens would otherwise count its padding many times.

Statistics are sums (not means) accumulated in float64: per batch the products are formed in float32 (fast on every
device), and the running total is float64 so a few hundred thousand tokens do not lose the small contributions.

:func:`calibrate_sequentially` runs the calibrate-then-prune loop block by block (the original algorithm of both
papers): the inputs of transformer block ``i + 1`` are recomputed from the outputs of block ``i`` *after* it was
pruned, so later blocks are calibrated on what the pruned model actually feeds them.

:func:`loss_gradients` gives the loss gradients of labelled calibration batches instead (second-order criteria such
as ``obert`` build their Fisher from them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, quote
from ..nn.linear_like import linear_layout
from ..nn.roles import family_of, layer_lists

__all__ = ["InputStats", "collect_input_stats", "find_blocks", "calibrate_sequentially", "loss_gradients"]

StatKind = Literal["norms", "hessian"]


@dataclasses.dataclass
class InputStats:
    """Accumulated input statistics of some ``nn.Linear`` layers.

    Attributes:
        kind: ``"norms"`` or ``"hessian"``.
        sums: module name -> ``sum_t x_t**2`` (shape ``(in_features,)``) for ``"norms"``, or ``2 XᵀX`` (shape
            ``(in_features, in_features)``) for ``"hessian"``; float64, on the layer's device.
        tokens: module name -> number of input rows (tokens) accumulated.
        batches: number of calibration batches seen.
    """

    kind: StatKind
    sums: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    tokens: dict[str, int] = dataclasses.field(default_factory=dict)
    batches: int = 0

    def mean(self, name: str) -> torch.Tensor:
        """The sum for ``name`` divided by its token count (``2 XᵀX / n`` for the Hessian)."""
        return self.sums[name] / max(self.tokens[name], 1)


def _check_kind(kind: str) -> None:
    if kind not in ("norms", "hessian"):
        raise ConfigError(f"kind must be 'norms' (Wanda) or 'hessian' (SparseGPT), got {quote(kind)}.")


class _Collector:
    """Forward pre-hooks on ``modules`` that add each input batch to :class:`InputStats`.

    ``token_mask`` is set by the caller before each forward: a ``(batch, seq)`` boolean tensor of real tokens, or
    ``None`` (every row counts). An input whose leading dimensions are not ``(batch, seq)`` (e.g. a pooler that sees
    one vector per sequence) is taken whole.
    """

    def __init__(self, modules: Mapping[str, nn.Linear], kind: StatKind):
        _check_kind(kind)
        self.stats = InputStats(kind)
        self.token_mask: torch.Tensor | None = None
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            self.add(name, x)

        return hook

    @torch.no_grad()
    def add(self, name: str, x: torch.Tensor) -> None:
        mask = self.token_mask
        if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
            x = x[mask.to(x.device)]
        x = x.reshape(-1, x.shape[-1]).float()
        stats = self.stats
        if stats.kind == "norms":
            batch_sum = x.pow(2).sum(0)
        else:
            batch_sum = 2.0 * (x.T @ x)
        if name in stats.sums:
            stats.sums[name] += batch_sum.double()
            stats.tokens[name] += x.shape[0]
        else:
            stats.sums[name] = batch_sum.double()
            stats.tokens[name] = x.shape[0]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _token_mask(batch: Mapping[str, Any]) -> torch.Tensor | None:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        return mask.bool()
    return None


class _EvalNoGrad:
    """``model.eval()`` and ``torch.no_grad()`` for the duration, restoring the training flag afterwards (dropout
    must be off while measuring the inputs a deployed model sees)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.no_grad = torch.no_grad()
        self.no_grad.__enter__()

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)


@torch.no_grad()
def collect_input_stats(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    modules: Mapping[str, nn.Linear],
    kind: StatKind = "norms",
    *,
    progress: bool = True,
) -> InputStats:
    """Run ``model(**batch)`` over ``batches`` and accumulate input statistics of ``modules`` (one pass, no
    pruning in between).

    Args:
        model: The model; run in eval mode without gradients (its training flag is restored afterwards).
        batches: Dicts of model inputs (e.g. ``input_ids``, ``attention_mask``); tensors are moved to the model's
            device. Iterated once, so a generator works.
        modules: Name -> ``nn.Linear`` whose inputs are measured (e.g. from
            :func:`~hf_sparse.nn.matching.match_linears`).
        kind: ``"norms"`` for Wanda's squared column norms, ``"hessian"`` for SparseGPT's ``2 XᵀX``.
        progress: Show a tqdm progress bar over batches.

    Returns:
        :class:`InputStats` with one entry per module that saw at least one input.

    Raises:
        ConfigError: ``kind`` is unknown or ``batches`` is empty.

    Shapes:
        batch["attention_mask"] (optional): ``(batch, seq)``; rows of inputs shaped ``(batch, seq, in_features)``
        where it is 0 are skipped. Returns: ``sums[name]`` is ``(in_features,)`` or ``(in_features, in_features)``.
    """
    collector = _Collector(modules, kind)
    device = _model_device(model)
    try:
        with _EvalNoGrad(model):
            for batch in tqdm(batches, desc=f"calibration ({kind})", disable=not progress, leave=False):
                collector.token_mask = _token_mask(batch)
                model(**_to_device(batch, device))
                collector.stats.batches += 1
    finally:
        collector.remove()
    if collector.stats.batches == 0:
        raise ConfigError("batches is empty: one-shot pruning needs at least one calibration batch.")
    return collector.stats


def find_blocks(model: nn.Module, modules: Mapping[str, nn.Module]) -> tuple[str, nn.ModuleList] | None:
    """The ``nn.ModuleList`` of repeated blocks (e.g. ``bert.encoder.layer``, ``model.layers``) that holds the most
    of ``modules``, or ``None`` when no list holds at least two of them."""
    best: tuple[str, nn.ModuleList] | None = None
    best_count = 1
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        prefix = f"{name}." if name else ""
        count = sum(1 for n in modules if n.startswith(prefix))
        if count > best_count:
            best, best_count = (name, m), count
    return best


class _StopForward(Exception):
    """Raised by the hook on the last block once its inputs are captured: nothing after it needs to run."""


def _without_cache(kwargs: dict) -> dict:
    # A block run again by hand must not grow a decoder's KV cache: calibration needs no cache.
    kwargs = dict(kwargs)
    for key in ("past_key_values", "past_key_value", "cache"):
        if key in kwargs:
            kwargs[key] = None
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def _with_hidden(args: tuple, kwargs: dict, hidden: torch.Tensor | None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of a block call with its hidden states (the first positional argument, or
    ``hidden_states=``) replaced by ``hidden``."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


#: One batch's captured calls: block index -> ``(args, kwargs)``, and the batch's token mask.
_Captured = tuple[dict[int, tuple[tuple, dict]], "torch.Tensor | None"]


def _capture_block_inputs(
    model: nn.Module,
    blocks: nn.ModuleList,
    first: int,
    batches: Iterable[Mapping[str, Any]],
    progress: bool,
    last: int | None = None,
) -> list[_Captured]:
    """The arguments every block from ``first`` to ``last`` (default: the last block) is called with in one pass of
    the (dense) model, per batch; the pass stops at block ``last``, since nothing after it is calibrated.

    The first block's call is kept whole. Of the later blocks' calls everything but the hidden states is kept
    (those come from the already pruned block before, see :func:`calibrate_sequentially`): the arguments a model
    computes once and hands to some layers only, or that differ from layer to layer, stay as the model passes
    them: T5's relative position bias (made by its first layer), ModernBERT's and Gemma's local-attention masks
    and rotary embeddings of the layers that use them.
    """
    captured: list[_Captured] = []
    current: dict[int, tuple[tuple, dict]] = {}
    last = len(blocks) - 1 if last is None else last

    def hook_for(i: int):
        def hook(module, args, kwargs):
            if i in current:  # a block called twice in one pass: its first call is the one in the layer order
                return
            args, kwargs = tuple(args), _without_cache(kwargs)
            current[i] = (args, kwargs) if i == first else _with_hidden(args, kwargs, None)
            if i == last:
                raise _StopForward

        return hook

    device = _model_device(model)
    handles = [blocks[i].register_forward_pre_hook(hook_for(i), with_kwargs=True) for i in range(first, last + 1)]
    try:
        for batch in tqdm(batches, desc="calibration inputs", disable=not progress, leave=False):
            current = {}
            try:
                model(**_to_device(batch, device))
            except _StopForward:
                pass
            if first in current:
                captured.append((current, _token_mask(batch)))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _block_output(block: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states ``block`` returns for this call."""
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


PruneFn = Callable[[Mapping[str, nn.Linear], InputStats], None]


@torch.no_grad()
def calibrate_sequentially(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    modules: Mapping[str, nn.Linear],
    kind: StatKind,
    prune_fn: PruneFn,
    *,
    progress: bool = True,
) -> dict[str, int]:
    """Calibrate and prune ``modules`` block by block, feeding each block the outputs of the already pruned ones.

    The blocks are those of the family's layer lists (:func:`~hf_sparse.nn.roles.layer_lists`), list after list in
    model order: a seq2seq encoder first, then its decoder, calibrated on what the pruned encoder gives it (a model
    without a table entry: the ``nn.ModuleList`` holding the most selected modules, :func:`find_blocks`). For each
    list, one pass of the model (stopped at the list's last block) captures the arguments each block is called
    with: the first block that contains selected modules whole, the later ones without their hidden states, so the
    arguments a model gives some layers only, or each layer its own, are the model's (T5's shared relative position
    bias, the local-attention masks and rotary embeddings of ModernBERT's and Gemma's sliding-window layers). Then,
    for each block in order: hooks collect the statistics of its selected layers over all captured inputs (the layers
    of one block are measured together, with the block still dense, as in the papers' reference setup),
    ``prune_fn(block_modules, stats)`` prunes them, and the pruned block is run again; its output, with the next
    block's captured arguments, is the next block's input. Selected modules outside the block lists (a pooler, a
    head) are calibrated last, in one pass of the whole (already pruned) model.

    When the model has no ``nn.ModuleList`` of blocks holding at least two selected layers, or its family runs one
    layer's weights at every depth (ALBERT, see :mod:`hf_sparse.nn.roles`), everything is calibrated in one pass of
    the dense model and pruned afterwards (no sequential refresh): a shared layer's statistics must cover its inputs
    at every depth, not only the first call's.

    Captured block inputs are kept on the model's device for the whole run: about ``samples x seq x hidden`` values
    (12 MB for 128 MiniLM sentences of 64 tokens).

    Args:
        model, batches, modules, kind, progress: As in :func:`collect_input_stats`.
        prune_fn: Prunes the given modules in place from their statistics.

    Returns:
        ``{"batches": ..., "tokens": ...}`` (tokens seen by the first selected layer).

    Raises:
        ConfigError: ``kind`` is unknown or ``batches`` is empty.
    """
    _check_kind(kind)
    entry = family_of(model)
    lists: list[tuple[str, nn.ModuleList]] = []
    if entry is not None and not entry.shared_layers:
        # Every layer list of the family in model order (a seq2seq encoder before its decoder), so the decoder is
        # calibrated on what the already pruned encoder gives it.
        lists = [(n, ml) for n, ml in layer_lists(model, entry) if any(m.startswith(f"{n}.") for m in modules)]
        if sum(1 for m in modules if any(m.startswith(f"{n}.") for n, _ in lists)) < 2:
            lists = []
    if not lists and (entry is None or not entry.shared_layers):
        found = find_blocks(model, modules)
        lists = [found] if found is not None else []
    if not lists:
        stats = collect_input_stats(model, batches, modules, kind, progress=progress)
        prune_fn(modules, stats)
        return {"batches": stats.batches, "tokens": next(iter(stats.tokens.values()), 0)}

    batches = list(batches)  # iterated once per layer list, and again for modules outside them
    remaining = dict(modules)
    result = {"batches": 0, "tokens": 0}
    for list_name, blocks in lists:
        prefix = f"{list_name}." if list_name else ""
        per_block: dict[int, dict[str, nn.Module]] = {}
        for name in list(remaining):
            head = name[len(prefix) :].split(".", 1)[0] if name.startswith(prefix) else ""
            if head.isdigit() and int(head) < len(blocks):
                per_block.setdefault(int(head), {})[name] = remaining.pop(name)
        if per_block:
            done = _prune_blocks(model, blocks, per_block, batches, kind, prune_fn, progress)
            result = {"batches": done["batches"], "tokens": result["tokens"] or done["tokens"]}
    if remaining:
        stats = collect_input_stats(model, batches, remaining, kind, progress=progress)
        prune_fn(remaining, stats)
    return result


def _prune_blocks(
    model: nn.Module,
    blocks: nn.ModuleList,
    per_block: dict[int, dict[str, nn.Module]],
    batches: list,
    kind: StatKind,
    prune_fn: PruneFn,
    progress: bool,
) -> dict[str, int]:
    """The block-by-block loop of :func:`calibrate_sequentially` over one list of blocks (``per_block``: the
    selected modules of each block, by index)."""
    first = min(per_block)
    tokens = 0
    with _EvalNoGrad(model):
        captured = _capture_block_inputs(model, blocks, first, batches, progress, last=max(per_block))
        if not captured:
            raise ConfigError("batches is empty: one-shot pruning needs at least one calibration batch.")
        # Per batch: the (args, kwargs) of the block about to run; its hidden states are the previous block's output.
        inputs = [(calls[first], mask) for calls, mask in captured]
        for i in tqdm(range(first, max(per_block) + 1), desc=f"sequential pruning ({kind})", disable=not progress):
            block = blocks[i]
            chosen = per_block.get(i, {})
            if chosen:
                collector = _Collector(chosen, kind)
                try:
                    for (args, kwargs), mask in inputs:
                        collector.token_mask = mask
                        block(*args, **kwargs)
                        collector.stats.batches += 1
                finally:
                    collector.remove()
                if not tokens:
                    tokens = next(iter(collector.stats.tokens.values()), 0)
                prune_fn(chosen, collector.stats)
            if i + 1 < len(blocks) and any(j > i for j in per_block):
                following = []
                for ((args, kwargs), mask), (calls, _) in zip(inputs, captured):
                    hidden = _block_output(block, args, kwargs)
                    # The next block's own arguments where the model called it, else this block's (a layer the
                    # capture pass did not reach takes what its predecessor took).
                    next_args, next_kwargs = calls.get(i + 1, (args, kwargs))
                    following.append((_with_hidden(next_args, next_kwargs, hidden), mask))
                inputs = following
    return {"batches": len(inputs), "tokens": tokens}


def _split_batch(batch: Mapping[str, Any], size: int | None) -> list[dict[str, Any]]:
    """``batch`` cut along its first dimension into pieces of at most ``size`` examples (None: whole)."""
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if size is None or not tensors:
        return [dict(batch)]
    n = int(tensors[0].shape[0])
    return [
        {k: (v[i : i + size] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
        for i in range(0, n, size)
    ]


def loss_gradients(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    modules: Mapping[str, nn.Module],
    *,
    micro_batch: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """The gradients of the model's loss with respect to the weights of ``modules``, one dict per (micro-)batch.

    Each batch (split into pieces of ``micro_batch`` examples when given) is run as ``model(**batch)`` in eval mode
    (no dropout; the training flag is restored afterwards), and its ``loss`` differentiated with
    ``torch.autograd.grad`` for the selected weights only: no parameter's ``.grad`` is touched, so this can run
    inside a training loop. Weights that do not require gradients, or that the loss does not reach, are left out.

    Args:
        model: A model that returns a loss when its batch carries labels (Hugging Face models do).
        batches: Dicts of model inputs with labels; tensors are moved to the model's device.
        modules: Name -> module whose ``weight`` gradient is wanted.
        micro_batch: Examples per gradient (None: one gradient per batch).

    Yields:
        ``{name: gradient}`` in the ``(out, in)`` orientation of
        :func:`~hf_sparse.nn.linear_like.linear_weight` (a ``Conv1D``'s gradient transposed).

    Raises:
        ConfigError: a batch gives no loss (no labels).
    """
    device = _model_device(model)
    names = [n for n, m in modules.items() if m.weight.requires_grad]
    params = [modules[n].weight for n in names]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            for piece in _split_batch(batch, micro_batch):
                with torch.enable_grad():
                    out = model(**_to_device(piece, device))
                    loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
                    if loss is None:
                        raise ConfigError(
                            "Gradients for pruning need labelled calibration batches: the model returned no loss for "
                            f"a batch with keys {quote(sorted(piece))}. Include the labels (e.g. 'labels')."
                        )
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                yield {n: linear_layout(modules[n], g) for n, g in zip(names, grads) if g is not None}
    finally:
        model.train(was_training)
