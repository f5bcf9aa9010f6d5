"""One-shot post-training pruning from calibration data, without fine-tuning: Wanda and SparseGPT.

* **Wanda** (Sun et al., 2023, "A Simple and Effective Pruning Approach for Large Language Models"): weight
  ``W_ij`` (output row ``i``, input column ``j``) is scored ``|W_ij| * ||X_j||₂``, the norm of input feature ``j``
  over the calibration tokens, and each output row keeps its highest-scoring weights (each row is one comparison
  group: its output is what the scores are comparable within). The surviving weights are not changed.
* **SparseGPT** (Frantar & Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): for each layer, minimise ``||W Xᵀ - Ŵ Xᵀ||²`` over sparse ``Ŵ`` approximately, column by column.
  Removing weight ``w_q`` and optimally updating the not-yet-processed weights of its row is the Optimal Brain
  Surgeon step, whose cost ``w_q² / [H⁻¹]_qq`` and update ``-(w_q / [H⁻¹]_qq) H⁻¹_{q,:}`` need the inverse Hessian
  of the *remaining* columns. Eliminating the columns in order makes these successive inverses the rows of the
  upper Cholesky factor of ``H⁻¹``, so one factorisation serves the whole layer. Updates to columns beyond the
  current block of ``blocksize`` columns are deferred and applied as one matrix product (lazy batch updates), and
  the mask of each block is chosen just before the block is processed, from the weights as updated so far
  (adaptive mask selection).

Both run block by block over the transformer (see :func:`~hf_sparse.pruning.calibration.calibrate_sequentially`):
the calibration inputs of block ``i + 1`` are recomputed after block ``i`` is pruned.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, quote
from ..nn.linear_like import linear_features, linear_weight
from ..nn.matching import match_linears
from .calibration import InputStats, calibrate_sequentially, collect_input_stats
from .config import DEFAULT_EXCLUDE
from .granularity import granular_masks
from .stats import model_parameter_counts, sparsity_report

__all__ = [
    "wanda_scores",
    "wanda_mask",
    "sparsegpt_prune_weight",
    "wanda_prune_",
    "sparsegpt_prune_",
]


# -- argument checks ---------------------------------------------------------------------------------------------


def _check_sparsity_nm(who: str, sparsity: float | None, nm: Sequence[int] | None) -> tuple[float, tuple | None]:
    """Validated ``(sparsity, nm)``; with ``nm=(n, m)`` the sparsity is ``1 - n/m`` (``sparsity`` may be None)."""
    if nm is not None:
        if (
            not isinstance(nm, Sequence)
            or len(nm) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in nm)
        ):
            raise ConfigError(f"{who}: nm must be a pair of integers (n, m), e.g. (2, 4); got {quote(nm)}.")
        n, m = nm
        if not 1 <= n < m:
            raise ConfigError(f"{who}: nm=(n, m) needs 1 <= n < m (keep n of every m weights); got {tuple(nm)}.")
        implied = 1.0 - n / m
        if sparsity is not None and not math.isclose(sparsity, implied, abs_tol=1e-9):
            raise ConfigError(
                f"{who}: sparsity={sparsity} contradicts nm={tuple(nm)}, which prunes exactly {implied:g}; pass "
                f"sparsity={implied:g} or None."
            )
        return implied, (n, m)
    if sparsity is None or isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ConfigError(
            f"{who}: sparsity must be a number in [0, 1) (or None with nm=(n, m)); got {quote(sparsity)}."
        )
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"{who}: sparsity must be in [0, 1), got {sparsity}.")
    return float(sparsity), None


def _check_nm_divides(who: str, modules: Mapping[str, nn.Module], nm: tuple | None) -> None:
    if nm is None:
        return
    ins = {n: linear_features(m)[0] for n, m in modules.items()}
    bad = {n: k for n, k in ins.items() if k % nm[1]}
    if bad:
        raise ConfigError(
            f"{who}: nm={nm} groups {nm[1]} consecutive input columns, but these layers' in_features are not "
            f"divisible by {nm[1]}: {dict(list(bad.items())[:5])}. Exclude them (exclude_modules) or pick another m."
        )


# -- Wanda ----------------------------------------------------------------------------------------------------


def wanda_scores(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``|W_ij| * ||X_j||₂``.

    Args:
        weight: The Linear weight.
        sq_norms: ``sum_t x_tj**2`` per input column (``InputStats.sums`` of kind ``"norms"``).

    Shapes:
        weight: ``(out_features, in_features)``. sq_norms: ``(in_features,)``.
        Returns: ``(out_features, in_features)``, float32.
    """
    return weight.detach().abs().float() * sq_norms.to(weight.device).float().clamp_min(0).sqrt().unsqueeze(0)


def _keep_top_per_row(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` largest entries of every row (last dimension)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if keep > 0:
        mask.scatter_(-1, torch.topk(scores, keep, dim=-1, largest=True, sorted=False).indices, True)
    return mask


def wanda_mask(
    weight: torch.Tensor, sq_norms: torch.Tensor, sparsity: float | None = None, nm: tuple[int, int] | None = None
) -> torch.Tensor:
    """Keep-mask of Wanda: per output row, the ``in_features - round(sparsity * in_features)`` highest scores of
    :func:`wanda_scores`; with ``nm=(n, m)``, the ``n`` highest of every group of ``m`` consecutive input columns
    of each row. Ties are broken arbitrarily.

    Shapes:
        weight: ``(out_features, in_features)``. sq_norms: ``(in_features,)``.
        Returns: ``(out_features, in_features)``, bool (True = keep).
    """
    sparsity, nm = _check_sparsity_nm("wanda_mask", sparsity, nm)
    scores = wanda_scores(weight, sq_norms)
    rows, cols = scores.shape
    if nm is not None:
        n, m = nm
        if cols % m:
            raise ConfigError(f"wanda_mask: in_features={cols} is not divisible by m={m} of nm={nm}.")
        return _keep_top_per_row(scores.reshape(rows, cols // m, m), n).reshape(rows, cols)
    return _keep_top_per_row(scores, cols - round(sparsity * cols))


# -- SparseGPT ------------------------------------------------------------------------------------------------


def _inverse_hessian_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp·I)⁻¹`` (so ``(H + damp·I)⁻¹ = UᵀU``), in float64.

    Row ``q`` of ``U`` is the ``q``-th row of the inverse Hessian of columns ``q..`` after columns ``< q`` were
    eliminated, divided by the square root of its diagonal: exactly what the OBS update of column ``q`` needs.
    If the damped matrix is still not positive definite (rounding on a nearly singular ``H``), the damping is
    raised tenfold, up to four times.
    """
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(5):
        lower, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp = damp * 10 if damp > 0 else 1e-8 * float(hessian.diagonal().abs().mean().clamp_min(1e-30))
    raise RuntimeError(
        "SparseGPT: the calibration Hessian is not positive definite even after raising the dampening 10^4-fold; "
        "use more calibration samples or a larger percdamp."
    )


def _lowest_k_flat(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of ``scores``' shape that drops exactly its ``k`` lowest entries (all dimensions together)."""
    flat = scores.reshape(-1)
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k > 0:
        keep[torch.topk(flat, k, largest=False, sorted=False).indices] = False
    return keep.reshape(scores.shape)


@torch.no_grad()
def sparsegpt_prune_weight(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float | None = None,
    *,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    block: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one weight matrix with SparseGPT and reconstruct the surviving weights.

    Processes input columns left to right in blocks of ``blocksize``. At the start of each block the weights to
    prune are chosen from the OBS saliency ``(w_ij / U_jj)²`` of the block's (already updated) weights, where
    ``U_jj² = [H_{j:,j:}⁻¹]_jj`` after the previous columns were eliminated: the ``k`` lowest of the block's
    ``rows x blocksize`` saliencies, ``k`` chosen so the layer ends with exactly ``round(sparsity * numel)``
    zeros; with ``nm=(n, m)`` instead the ``m - n`` lowest of every group of ``m`` columns of each row, chosen when
    the group is reached. Then column ``j`` is set to its pruned value and the error
    ``e = (w_j - ŵ_j) / U_jj`` is propagated to the later columns ``W[:, j+1:] -= e U_{j, j+1:}`` (inside the block
    at once, beyond it in one product per block).

    ``H`` is dampened by ``percdamp * mean(diag(H))`` on its diagonal. Inputs that never fire (``H_jj = 0``, e.g.
    a feature that is zero on every calibration token) get ``H_jj = 1``: they are decoupled from the others, and
    their weights rank lowest (removing them changes no calibration output), but they are only pruned as far as
    the sparsity target asks, never all at once, so the layer's sparsity stays exact.

    Args:
        weight: The Linear weight (not modified).
        hessian: ``2 XᵀX`` of the layer inputs (any positive scale: it cancels, except in the relative dampening).
        sparsity: Fraction of weights to zero, in [0, 1); may be None with ``nm``.
        nm: ``(n, m)``: keep ``n`` of every ``m`` consecutive input columns per row.
        blocksize: Columns per lazy-update block (with ``nm``, rounded down to a multiple of ``m``; with ``block``,
            to a multiple of its columns).
        percdamp: Relative dampening of the Hessian's diagonal.
        block: ``(r, c)``: prune whole ``r x c`` tiles, ranked by the sum of their weights' saliencies (chosen
            per lazy-update block, like unstructured masks); the weight's shape must be divisible by it.

    Returns:
        ``(new_weight, keep_mask)``: the reconstructed weight in ``weight``'s dtype, pruned entries exactly zero,
        and the boolean keep-mask.

    Shapes:
        weight: ``(out_features, in_features)``. hessian: ``(in_features, in_features)``.
        Returns: ``(out_features, in_features)`` twice.
    """
    sparsity, nm = _check_sparsity_nm("sparsegpt_prune_weight", sparsity, nm)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConfigError(f"sparsegpt_prune_weight: blocksize must be a positive integer, got {quote(blocksize)}.")
    if not (isinstance(percdamp, (int, float)) and math.isfinite(percdamp) and percdamp >= 0):
        raise ConfigError(f"sparsegpt_prune_weight: percdamp must be a finite number >= 0, got {quote(percdamp)}.")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ConfigError(
            f"sparsegpt_prune_weight: hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols}) for a "
            f"weight of shape {tuple(weight.shape)}."
        )
    if nm is not None:
        if cols % nm[1]:
            raise ConfigError(f"sparsegpt_prune_weight: in_features={cols} is not divisible by m={nm[1]}.")
        # N:M groups must not straddle two blocks (a group's mask is chosen from weights updated up to its start).
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    if block is not None:
        if nm is not None:
            raise ConfigError("sparsegpt_prune_weight: pass nm or block, not both.")
        br, bc = block
        if rows % br or cols % bc:
            raise ConfigError(
                f"sparsegpt_prune_weight: weight of shape {tuple(weight.shape)} does not divide into {br}x{bc} blocks."
            )
        blocksize = max(bc, blocksize - blocksize % bc)

    # float64 for the factorisations (cheap next to the column loop, and robust on ill-conditioned H), float32 for
    # the weights' updates.
    W = weight.detach().float().clone(memory_format=torch.contiguous_format)
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    damp = percdamp * float(H.diagonal().mean())
    U = _inverse_hessian_cholesky(H, damp).float()
    diag_u = U.diagonal()

    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d1 = diag_u[i1:i2]
        dead1 = dead[i1:i2]
        keep1 = torch.ones_like(W1, dtype=torch.bool)
        err1 = torch.zeros_like(W1)
        if nm is None:
            saliency = (W1 / d1) ** 2
            saliency[:, dead1] = -1.0  # below every real saliency (>= 0): free to prune
            if block is None:
                # Cumulative rounding: the per-block counts add up to exactly round(sparsity * rows * cols).
                k = round(sparsity * rows * i2) - round(sparsity * rows * i1)
                keep1 = _lowest_k_flat(saliency, k)
            else:
                tiles = saliency.reshape(rows // br, br, (i2 - i1) // bc, bc).sum(dim=(1, 3))
                per_col = rows // br / bc  # tiles per column of the weight
                k = round(sparsity * per_col * i2) - round(sparsity * per_col * i1)
                keep1 = _lowest_k_flat(tiles, k).repeat_interleave(br, 0).repeat_interleave(bc, 1)
        for j in range(i2 - i1):
            if nm is not None and j % nm[1] == 0:
                n, m = nm
                saliency = (W1[:, j : j + m] / d1[j : j + m]) ** 2
                saliency[:, dead1[j : j + m]] = -1.0
                keep1[:, j : j + m] = _keep_top_per_row(saliency, n)
            w = W1[:, j]
            e = (w - w * keep1[:, j]) / d1[j]
            # OBS update of this and the later columns of the block; column j itself becomes its pruned value.
            W1[:, j:] -= e.unsqueeze(1) * U1[j, j:].unsqueeze(0)
            err1[:, j] = e
        W1.masked_fill_(~keep1, 0.0)
        W[:, i1:i2] = W1
        keep[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:] -= err1 @ U[i1:i2, i2:]  # the deferred (lazy) update of every later column
    W.masked_fill_(~keep, 0.0)
    return W.to(weight.dtype), keep


# -- model transforms ---------------------------------------------------------------------------------------------


def _stat_or_warn(stats: InputStats, name: str, module: nn.Linear, method: str) -> torch.Tensor | None:
    if name in stats.sums and stats.tokens.get(name, 0) > 0:
        return stats.sums[name]
    warnings.warn(
        f"{method}: {quote(name)} saw no calibration tokens (not used by the model's forward on these batches?); "
        "it is "
        "pruned by weight magnitude instead.",
        stacklevel=3,
    )
    return None


def _run(
    method: str,
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    sparsity: float,
    nm: tuple | None,
    modules: Mapping[str, nn.Linear],
    kind: str,
    prune_one,
    sequential: bool,
    progress: bool,
) -> dict:
    start = time.perf_counter()

    def prune_fn(chosen: Mapping[str, nn.Linear], stats: InputStats) -> None:
        for name, module in chosen.items():
            prune_one(name, module, _stat_or_warn(stats, name, module, method))

    if sequential:
        calibration = calibrate_sequentially(model, batches, modules, kind, prune_fn, progress=progress)
    else:
        stats = collect_input_stats(model, batches, modules, kind, progress=progress)
        prune_fn(modules, stats)
        calibration = {"batches": stats.batches, "tokens": next(iter(stats.tokens.values()), 0)}
    report = sparsity_report(modules, target_sparsity=sparsity)
    report.update(model_parameter_counts(model))
    report.update(
        method=method,
        nm=list(nm) if nm is not None else None,
        sequential=sequential,
        calibration=calibration,
        seconds=time.perf_counter() - start,
    )
    return report


@torch.no_grad()
def wanda_prune_(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    sparsity: float | None,
    *,
    target_modules: Sequence[str] = (),
    exclude_modules: Sequence[str] = DEFAULT_EXCLUDE,
    nm: tuple[int, int] | None = None,
    sequential: bool = True,
    progress: bool = True,
) -> dict:
    """Prune ``model``'s Linear layers in place with Wanda (Sun et al., 2023), from calibration batches.

    Each selected layer keeps, per output row, the weights with the highest ``|W_ij| * ||X_j||₂`` (see
    :func:`wanda_mask`); surviving weights are unchanged, pruned ones are exactly zero.

    Args:
        model: Any model whose ``forward`` takes the batches' keys.
        batches: Dicts for ``model(**batch)`` (a few hundred real samples in all is plenty); padding tokens are
            left out of the statistics when a batch has ``attention_mask``.
        sparsity: Fraction of each row's weights to zero, in [0, 1). None allowed with ``nm``.
        target_modules, exclude_modules: Module selection, as in :class:`~hf_sparse.pruning.PruningConfig`
            (:func:`~hf_sparse.nn.matching.match_linears`).
        nm: ``(n, m)`` for N:M semi-structured sparsity, e.g. ``(2, 4)``; implies ``sparsity = 1 - n/m``.
        sequential: Prune block by block, recomputing later blocks' inputs from the pruned earlier blocks (the
            paper's setup); False calibrates everything on the dense model in one pass.
        progress: Show tqdm progress bars.

    Returns:
        The sparsity report of :func:`~hf_sparse.pruning.stats.sparsity_report` plus model parameter counts,
        ``method``, ``nm``, ``sequential``, ``calibration`` (batches and tokens) and ``seconds``.

    Raises:
        ConfigError: bad ``sparsity``/``nm``, a selected layer's ``in_features`` not divisible by ``m``, no layer
            selected, or empty ``batches``.
    """
    sparsity, nm = _check_sparsity_nm("wanda_prune_", sparsity, nm)
    modules = match_linears(model, target_modules, exclude_modules, who="wanda_prune_")
    _check_nm_divides("wanda_prune_", modules, nm)

    def prune_one(name: str, module: nn.Module, sq_norms: torch.Tensor | None) -> None:
        w = linear_weight(module)  # (out, in); a Conv1D's transposed view, edited in place
        if sq_norms is None:
            sq_norms = torch.ones(w.shape[1], device=w.device)
        mask = wanda_mask(w, sq_norms, None if nm else sparsity, nm)
        w.masked_fill_(~mask.to(w.device), 0.0)

    return _run("wanda", model, batches, sparsity, nm, modules, "norms", prune_one, sequential, progress)


@torch.no_grad()
def sparsegpt_prune_(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    sparsity: float | None,
    *,
    target_modules: Sequence[str] = (),
    exclude_modules: Sequence[str] = DEFAULT_EXCLUDE,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    sequential: bool = True,
    progress: bool = True,
) -> dict:
    """Prune ``model``'s Linear layers in place with SparseGPT (Frantar & Alistarh, 2023), from calibration batches.

    For each selected layer, the Hessian ``2 XᵀX`` of its calibration inputs drives an OBS-style column-by-column
    pruning that also updates the surviving weights to reconstruct the layer's dense outputs (see
    :func:`sparsegpt_prune_weight`). Each layer ends with exactly ``round(sparsity * numel)`` zeros (or exact N:M).

    Args:
        model, batches, target_modules, exclude_modules, nm, sequential, progress: As in :func:`wanda_prune_`.
        sparsity: Fraction of each layer's weights to zero, in [0, 1). None allowed with ``nm``.
        blocksize: Columns per lazy-update / mask-selection block (with ``nm``, rounded down to a multiple of
            ``m``).
        percdamp: Dampening ``λ = percdamp * mean(diag(H))`` added to the Hessian's diagonal.

    Returns:
        As :func:`wanda_prune_` (``method="sparsegpt"``).

    Raises:
        ConfigError: as :func:`wanda_prune_`, plus a bad ``blocksize`` or ``percdamp``.
    """
    sparsity, nm = _check_sparsity_nm("sparsegpt_prune_", sparsity, nm)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ConfigError(f"sparsegpt_prune_: blocksize must be a positive integer, got {quote(blocksize)}.")
    if not (isinstance(percdamp, (int, float)) and math.isfinite(percdamp) and percdamp >= 0):
        raise ConfigError(f"sparsegpt_prune_: percdamp must be a finite number >= 0, got {quote(percdamp)}.")
    modules = match_linears(model, target_modules, exclude_modules, who="sparsegpt_prune_")
    _check_nm_divides("sparsegpt_prune_", modules, nm)

    def prune_one(name: str, module: nn.Module, hessian: torch.Tensor | None) -> None:
        w = linear_weight(module)  # (out, in); a Conv1D's transposed view, edited in place
        if hessian is None:
            hessian = torch.eye(w.shape[1], device=w.device)  # H = I: magnitude pruning
        new_weight, _ = sparsegpt_prune_weight(
            w,
            hessian,
            None if nm else sparsity,
            nm=nm,
            blocksize=blocksize,
            percdamp=percdamp,
        )
        w.copy_(new_weight)

    return _run("sparsegpt", model, batches, sparsity, nm, modules, "hessian", prune_one, sequential, progress)


@torch.no_grad()
def calibrated_prune_(
    model: nn.Module,
    modules: Mapping[str, nn.Linear],
    batches: Iterable[Mapping[str, Any]],
    method: str,
    sparsity: float,
    *,
    granularity: str = "unstructured",
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] | None = None,
    sequential: bool = True,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Prune ``modules`` of ``model`` in place with Wanda or SparseGPT at any granularity; return the keep-masks.

    The engine behind ``PruningConfig(criterion="wanda" | "sparsegpt")``. ``"unstructured"`` and ``"nm"`` follow
    :func:`wanda_prune_` / :func:`sparsegpt_prune_` (per-row Wanda comparison, per-layer SparseGPT sparsity);
    ``"block"`` ranks ``block``-shaped tiles by their summed scores, each layer pruned to ``sparsity`` (Wanda: the
    ``|W| * ||X||`` scores; SparseGPT: the OBS saliencies, with the surviving weights reconstructed).

    Returns:
        ``{module name: bool keep-mask}``.
    """
    if method not in ("wanda", "sparsegpt"):
        raise ConfigError(f"calibrated_prune_: method must be 'wanda' or 'sparsegpt', got {quote(method)}.")
    if granularity not in ("unstructured", "block", "nm"):
        raise ConfigError(
            f"calibrated_prune_: granularity must be 'unstructured', 'block' or 'nm', got {quote(granularity)}."
        )
    nm = tuple(nm) if granularity == "nm" else None
    block = tuple(block) if granularity == "block" else None
    _check_nm_divides(method, modules, nm)
    masks: dict[str, torch.Tensor] = {}

    def prune_one(name: str, module: nn.Module, stat: torch.Tensor | None) -> None:
        w = linear_weight(module)  # (out, in); a Conv1D's transposed view, edited in place
        if method == "wanda":
            sq = stat if stat is not None else torch.ones(w.shape[1], device=w.device)
            if block is not None:
                scores = {name: wanda_scores(w, sq)}
                mask = granular_masks(scores, sparsity, granularity="block", scope="layer", block=block)[name]
            else:
                mask = wanda_mask(w, sq, None if nm else sparsity, nm)
            w.masked_fill_(~mask.to(w.device), 0.0)
        else:
            hessian = stat if stat is not None else torch.eye(w.shape[1], device=w.device)
            new_weight, mask = sparsegpt_prune_weight(w, hessian, None if nm else sparsity, nm=nm, block=block)
            w.copy_(new_weight)
        masks[name] = mask.to(w.device)

    kind = "norms" if method == "wanda" else "hessian"
    _run(method, model, batches, sparsity, nm, modules, kind, prune_one, sequential, progress)
    return masks
