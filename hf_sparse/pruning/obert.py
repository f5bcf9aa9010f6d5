"""The Optimal BERT Surgeon (Kurtic et al. 2022, "The Optimal BERT Surgeon: Scalable and Accurate Second-Order
Pruning for Large Language Models"): second-order pruning scores and weight updates from a block-diagonal empirical
Fisher approximation of the loss's Hessian.

For each pruned layer, every row of the ``(out, in)`` weight is cut into blocks of ``B`` consecutive weights (the
last block of a row is shorter when ``B`` does not divide ``in``: it is zero-padded, and the padded coordinates are
decoupled from the real ones, so it is exactly the smaller block). Each block gets its own ``B x B`` Fisher

    ``F = damp * I + (1/m) sum_k g_k g_kᵀ``

from ``m`` mini-batch gradients ``g_k`` of its weights; weights of different blocks are treated as independent.
Under the local quadratic model ``dL ≈ ½ dwᵀ F dw``, removing weight ``q`` of a block and optimally moving the
block's other weights costs ``w_q² / (2 [F⁻¹]_qq)`` (the score: lowest is pruned first), and the optimal move is
``dw = -w_q F⁻¹ e_q / [F⁻¹]_qq``.

When several weights ``Q`` of one block are pruned together, :func:`obs_update` applies the exact multi-weight OBS
update ``dw = -F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q`` (not the sum of single-weight updates, which ignores their
interaction); it sets every weight of ``Q`` exactly to zero and leaves weights pruned earlier at zero.

Weights pruned before (exactly zero) are taken out of the quadratic model: their rows and columns of ``F`` are
replaced by ``damp`` on the diagonal, so the Fisher of a block is that of its remaining weights.

Memory: the accumulated Fisher of a layer holds ``out * ceil(in / B) * B * B`` float32 values, ``B`` times the
layer's weight: with ``B = 32`` the encoder Linear layers of MiniLM-L6 (10.6M weights) take about 1.4 GB. Inverses
are computed in float64 in chunks of blocks (:data:`CHUNK_BLOCKS`), so their temporary memory stays bounded.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError, PruningStateError, quote

__all__ = [
    "CHUNK_BLOCKS",
    "to_blocks",
    "from_blocks",
    "fisher_blocks_shape",
    "fisher_update",
    "fisher_normaliser",
    "fisher_inverse",
    "obert_scores",
    "obs_update",
]

#: Blocks inverted (or solved) together in float64: 8192 blocks of 32 x 32 take 64 MB.
CHUNK_BLOCKS = 8192


def _check_block(block: int) -> int:
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ConfigError(f"oBERT block size must be a positive integer, got {quote(block)}.")
    return block


def to_blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """Rows of ``t`` cut into blocks of ``block`` consecutive entries, the last block of each row zero-padded.

    Shapes:
        t: ``(out, in)``. Returns: ``(out * ceil(in / block), block)``.
    """
    _check_block(block)
    rows, cols = t.shape
    pad = (-cols) % block
    if pad:
        t = torch.nn.functional.pad(t, (0, pad))
    return t.reshape(rows * ((cols + pad) // block), block)


def from_blocks(t: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_blocks`: drops the padding.

    Shapes:
        t: ``(out * ceil(in / block), block)``. Returns: ``shape`` = ``(out, in)``.
    """
    rows, cols = shape
    return t.reshape(rows, -1)[:, :cols]


def fisher_blocks_shape(shape: tuple[int, int], block: int) -> tuple[int, int, int]:
    """Shape of the accumulated Fisher of a weight of ``shape``: ``(out * ceil(in / block), block, block)``."""
    rows, cols = shape
    return (rows * math.ceil(cols / block), block, block)


def fisher_update(state: torch.Tensor | None, grad: torch.Tensor, *, block: int, decay: float = 1.0) -> torch.Tensor:
    """Fold one gradient into the per-block sum of outer products: ``S <- decay * S + g gᵀ`` (per block).

    Args:
        state: The sum so far (None before the first gradient).
        grad: One mini-batch gradient of the weight.
        block: Block length ``B``.
        decay: Factor applied to the old sum (1: a plain sum).

    Shapes:
        grad: ``(out, in)``. state and the result: ``(out * ceil(in / B), B, B)``, float32.
    """
    g = to_blocks(grad.detach().float(), block)
    if state is None:
        return torch.einsum("nb,nc->nbc", g, g)
    expected = (g.shape[0], block, block)
    if tuple(state.shape) != expected:
        raise PruningStateError(
            f"The accumulated oBERT Fisher has shape {tuple(state.shape)}, expected {expected} for a weight of shape "
            f"{tuple(grad.shape)} with obert_block={block} (was it saved with another block size?)."
        )
    return state.baddbmm_(g.unsqueeze(2), g.unsqueeze(1), beta=decay, alpha=1.0)


def fisher_normaliser(steps: int, decay: float = 1.0) -> float:
    """Total weight of the ``steps`` gradients in a sum built by :func:`fisher_update` with ``decay``: ``steps`` for a
    plain sum, ``(1 - decay^steps) / (1 - decay)`` for an exponential moving sum. Dividing by it gives the (weighted)
    mean ``(1/m) sum g gᵀ``."""
    if steps < 1:
        raise ValueError("the oBERT Fisher needs at least one gradient")
    if decay >= 1.0:
        return float(steps)
    return (1.0 - decay**steps) / (1.0 - decay)


def _keep_blocks(keep: torch.Tensor | None, shape: tuple[int, int], block: int) -> torch.Tensor | None:
    if keep is None:
        return None
    if tuple(keep.shape) != tuple(shape):
        raise ConfigError(f"keep-mask of shape {tuple(keep.shape)} does not match the weight's {tuple(shape)}.")
    return to_blocks(keep.to(torch.bool), block)


def fisher_inverse(
    state: torch.Tensor,
    steps: int,
    *,
    shape: tuple[int, int],
    block: int,
    damp: float,
    decay: float = 1.0,
    keep: torch.Tensor | None = None,
    chunk: int = CHUNK_BLOCKS,
    relative_damp: float | None = None,
) -> torch.Tensor:
    """Inverse of every block's dampened empirical Fisher ``F = damp * I + S / normaliser``.

    With ``relative_damp`` the dampening is that fraction of the mean of the layer's Fisher diagonal over its kept
    weights (at least ``damp``), so it follows the scale of the gradients, which differs by orders of magnitude
    between layers, models and the phase of training (as SparseGPT's relative dampening does).

    Coordinates that are not kept (``keep`` False: weights pruned before, and the padding of a short last block) are
    decoupled: their rows and columns of ``S`` are zeroed, so ``F⁻¹`` restricted to the kept coordinates is the
    inverse of the kept weights' own Fisher. Inverted in float64 by Cholesky factorisation, in chunks of ``chunk``
    blocks; a block that is still not positive definite in floating point gets ten times the dampening, up to four
    times.

    Args:
        state: Sum of outer products from :func:`fisher_update`.
        steps: Gradients folded into ``state``.
        shape: The weight's ``(out, in)``.
        block, damp, decay: As in :func:`fisher_update`; ``damp`` > 0.
        keep: Bool keep-mask of the weight (None: every weight kept).

    Shapes:
        state: ``(nblocks, B, B)``. keep: ``shape``. Returns: ``(nblocks, B, B)``, float32.
    """
    _check_block(block)
    if not damp > 0:
        raise ConfigError(f"oBERT dampening must be > 0, got {quote(damp)}.")
    nblocks = fisher_blocks_shape(shape, block)[0]
    if tuple(state.shape) != (nblocks, block, block):
        raise PruningStateError(
            f"The accumulated oBERT Fisher has shape {tuple(state.shape)}, expected {(nblocks, block, block)} for a "
            f"weight of shape {tuple(shape)} with obert_block={block}."
        )
    scale = 1.0 / fisher_normaliser(steps, decay)
    # The padding of a short last block is never a real weight: decouple it like a pruned one.
    real = to_blocks(torch.ones(shape, dtype=torch.bool, device=state.device), block)
    kept = real if keep is None else real & _keep_blocks(keep.to(state.device), shape, block)
    if relative_damp is not None:
        if not relative_damp > 0:
            raise ConfigError(f"oBERT relative dampening must be > 0, got {quote(relative_damp)}.")
        diag = state.diagonal(dim1=1, dim2=2).to(torch.float64) * scale
        mean = float(diag[kept].mean()) if bool(kept.any()) else 0.0
        damp = max(damp, relative_damp * mean)
    eye = torch.eye(block, dtype=torch.float64, device=state.device)
    out = torch.empty((nblocks, block, block), dtype=torch.float32, device=state.device)
    for i in range(0, nblocks, chunk):
        j = min(i + chunk, nblocks)
        fisher = state[i:j].to(torch.float64)
        k = kept[i:j]
        if bool(k.all()):
            fisher.mul_(scale)
        else:
            k = k.to(torch.float64)
            fisher.mul_(k.unsqueeze(2) * (k.unsqueeze(1) * scale))
        fisher.diagonal(dim1=1, dim2=2).add_(damp)
        out[i:j] = _spd_inverse(fisher, damp, eye)
    return out


def _spd_inverse(fisher: torch.Tensor, damp: float, eye: torch.Tensor) -> torch.Tensor:
    """Batched inverse of symmetric positive definite matrices, raising the dampening of failing ones."""
    lower, info = torch.linalg.cholesky_ex(fisher)
    extra = damp
    for _ in range(4):
        bad = info != 0
        if not bool(bad.any()):
            break
        extra *= 10.0
        fixed, info_bad = torch.linalg.cholesky_ex(fisher[bad] + extra * eye)
        lower[bad] = fixed
        info = info.clone()
        info[bad] = info_bad
    if bool((info != 0).any()):
        raise ConfigError(
            "oBERT: some Fisher blocks are not positive definite even with 10^4 times the dampening; raise "
            "PruningConfig.obert_damp."
        )
    return torch.cholesky_inverse(lower)


def obert_scores(weight: torch.Tensor, finv: torch.Tensor, block: int) -> torch.Tensor:
    """oBERT saliency ``w_q² / (2 [F⁻¹]_qq)``: the estimated loss increase of removing weight ``q`` (and optimally
    updating the rest of its block).

    Shapes:
        weight: ``(out, in)``. finv: ``(out * ceil(in / B), B, B)`` from :func:`fisher_inverse`.
        Returns: ``(out, in)``, float32.
    """
    w = to_blocks(weight.detach().float(), block)
    diag = finv.diagonal(dim1=1, dim2=2)
    return from_blocks(w.pow(2) / (2.0 * diag), tuple(weight.shape))


@torch.no_grad()
def obs_update(
    weight: torch.Tensor, finv: torch.Tensor, keep: torch.Tensor, block: int, *, chunk: int = CHUNK_BLOCKS
) -> torch.Tensor:
    """The weight after pruning every weight that ``keep`` drops, with the exact multi-weight OBS update of the
    others in each block: ``w <- w - F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q`` for the dropped set ``Q`` of the block.

    Weights already zero in ``Q`` (pruned before) cost nothing and stay zero. Every weight of ``Q`` is set to exactly
    zero afterwards (the update gives zero up to rounding).

    Shapes:
        weight, keep: ``(out, in)``. finv: ``(out * ceil(in / B), B, B)``. Returns: ``(out, in)``, float32.
    """
    shape = tuple(weight.shape)
    w = to_blocks(weight.detach().float(), block)
    drop = ~to_blocks(keep.to(device=w.device, dtype=torch.bool), block)
    # The padding reads as dropped above (padded with False): it is not a weight, take it out of every set.
    drop &= to_blocks(torch.ones(shape, dtype=torch.bool, device=w.device), block)
    out = w.clone()
    active = (drop & (w != 0)).any(dim=1).nonzero().squeeze(1)
    for i in range(0, active.numel(), chunk):
        idx = active[i : i + chunk]
        q = drop[idx].to(torch.float64)
        a = finv[idx].to(torch.float64)
        # F⁻¹[Q, Q] on the dropped coordinates, the identity elsewhere: positive definite, and solving with it gives
        # x_Q = (F⁻¹[Q, Q])⁻¹ w_Q and x = 0 off Q.
        system = a * (q.unsqueeze(2) * q.unsqueeze(1)) + torch.diag_embed(1.0 - q)
        rhs = (w[idx].to(torch.float64) * q).unsqueeze(2)
        lower, info = torch.linalg.cholesky_ex(system)
        if bool((info != 0).any()):
            x = torch.linalg.lstsq(system, rhs).solution
        else:
            x = torch.cholesky_solve(rhs, lower)
        delta = (a @ x).squeeze(2)
        out[idx] = (w[idx].to(torch.float64) - delta).float()
    out.masked_fill_(drop, 0.0)
    return from_blocks(out, shape)
