"""Top-k sparsified gradient exchange with error feedback, as a DDP communication hook.

Each rank adds the residual it kept from earlier steps to its gradient bucket, sends the ``k`` entries of largest
magnitude (``k = ratio * entries``) as (values, indices) to every rank with one ``all_gather``, and keeps what it
did not send as the new residual (error feedback: nothing is lost, only delayed; Aji & Heafield 2017, Lin et al.
2018). Every rank then adds the gathered contributions into a dense buffer in rank order and divides by the world
size, so all ranks apply bitwise the same averaged gradient and the replicas stay identical. ``all_gather`` works
on gloo (CPU) as well as NCCL.

The pure parts (:func:`topk_select`, :func:`pack_sparse`, :func:`unpack_sparse`, :func:`sparse_mean`) are plain
tensor functions, testable in one process.
"""

# No ``from __future__ import annotations``: DDP compares the hooks' annotations with dist.GradBucket at runtime.
import logging
import math

import torch
import torch.distributed as dist

from ..errors import ConfigError, quote

__all__ = [
    "TopKState",
    "topk_hook",
    "allreduce_mean_hook",
    "entries_to_send",
    "index_dtype",
    "topk_select",
    "pack_sparse",
    "unpack_sparse",
    "sparse_mean",
]

logger = logging.getLogger(__name__)


def index_dtype(numel: int) -> torch.dtype:
    """dtype of the indices sent for a bucket of ``numel`` entries: int32 (4 bytes) below 2**31 entries."""
    return torch.int32 if numel < 2**31 else torch.int64


def entries_to_send(numel: int, ratio: float) -> int:
    """``k``: how many of a bucket's ``numel`` entries are sent at ``ratio`` (at least one, at most all)."""
    return max(1, min(numel, round(ratio * numel)))


#: Below this many entries (or above this fraction sent) :func:`topk_select` calls ``torch.topk`` directly.
_DIRECT_TOPK_NUMEL = 1 << 16
_DIRECT_TOPK_RATIO = 0.1


@torch.no_grad()
def topk_select(acc: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` entries of ``acc`` with the largest magnitude: (values, indices). Exact (ties broken arbitrarily).

    ``torch.topk`` over a whole bucket costs about a second per 20 million entries on one CPU core, far more than
    sending the result. Large buckets take a shortcut that returns the same entries: a threshold is read off a
    sample of magnitudes (set so that about 1.25 k entries pass it), the entries above it are gathered, and
    ``torch.topk`` runs on those few; when fewer than ``k`` pass (an unlucky sample), on everything. The sample is
    drawn from a generator with a fixed seed, so the selection is reproducible.

    Shapes:
        acc: (n,). Returns: values (k,) in ``acc``'s dtype, indices (k,) of :func:`index_dtype`.
    """
    n = acc.numel()
    magnitude = acc.abs()
    if n <= _DIRECT_TOPK_NUMEL or k > _DIRECT_TOPK_RATIO * n:
        indices = torch.topk(magnitude, k, sorted=False).indices
    else:
        samples = min(n, max(1 << 14, n // 100))
        g = torch.Generator(device="cpu").manual_seed(0)
        sample = magnitude[torch.randint(0, n, (samples,), generator=g).to(acc.device)]
        keep = max(1, min(samples, math.ceil(1.25 * k * samples / n)))
        threshold = torch.topk(sample, keep, sorted=False).values.min()
        candidates = (magnitude >= threshold).nonzero().squeeze(1)
        if candidates.numel() >= k:
            indices = candidates[torch.topk(magnitude[candidates], k, sorted=False).indices]
        else:
            indices = torch.topk(magnitude, k, sorted=False).indices
    return acc[indices], indices.to(index_dtype(n))


def pack_sparse(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values and indices as one byte buffer (values first), so a single ``all_gather`` carries both.

    Shapes:
        values: (k,) any dtype; indices: (k,) int32 or int64. Returns: (k * (value bytes + index bytes),) uint8.
    """
    return torch.cat([values.contiguous().view(torch.uint8), indices.contiguous().view(torch.uint8)])


def _view_as(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Reinterpreting bytes needs an offset aligned to the element size (2-byte values, odd k): copy when it is not.
    if raw.storage_offset() % torch.empty((), dtype=dtype).element_size():
        raw = raw.clone()
    return raw.view(dtype)


def unpack_sparse(
    payload: torch.Tensor, k: int, dtype: torch.dtype, indices_dtype: torch.dtype = torch.int32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_sparse` for ``k`` values of ``dtype``: (values, indices as int64)."""
    split = k * torch.empty((), dtype=dtype).element_size()
    return _view_as(payload[:split], dtype), _view_as(payload[split:], indices_dtype).long()


def sparse_mean(
    contributions: list[tuple[torch.Tensor, torch.Tensor]],
    numel: int,
    dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The mean over ranks of sparse vectors given as (values, indices), dense.

    Added rank by rank in list order (indices are distinct within one rank), so every rank that gets the same list
    computes bitwise the same result.

    Args:
        out: A (numel,) tensor to write the result into (overwritten), instead of a new one of ``dtype``.

    Shapes:
        contributions: one (values (k,), indices (k,)) pair per rank. Returns: (numel,).
    """
    if out is None:
        out = torch.zeros(numel, dtype=dtype, device=contributions[0][0].device)
    else:
        out.zero_()
    for values, indices in contributions:
        out.index_add_(0, indices.to(out.device), values.to(out.dtype))
    return out.div_(len(contributions))


class TopKState:
    """State of :func:`topk_hook`: the ratio, the warm-up and the residuals (one per bucket, keyed by its index).

    Args:
        ratio: Fraction of each bucket's entries sent per step, in (0, 1] (0.01: one entry in a hundred).
        warmup_steps: Optimizer steps of plain averaging all-reduce before sparsification starts.
        error_feedback: Keep what was not sent and add it to the next step's gradient (without it the unsent
            entries are dropped).
        process_group: The group to average over (default: the whole world).

    DDP rebuilds its buckets once, after the first step, in the order gradients became ready, so bucket ``i``
    may hold other parameters from the second step on. Each residual remembers which parameters it covers; when a
    bucket's parameters change, its residual is rebuilt from the old residuals parameter by parameter, so nothing
    that was held back is lost.
    """

    def __init__(
        self,
        ratio: float = 0.01,
        *,
        warmup_steps: int = 0,
        error_feedback: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ):
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
            raise ConfigError(f"TopKState.ratio must be a fraction in (0, 1], got {quote(ratio)}.")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"TopKState.warmup_steps must be an integer >= 0, got {quote(warmup_steps)}.")
        self.ratio = float(ratio)
        self.warmup_steps = warmup_steps
        self.error_feedback = bool(error_feedback)
        self.process_group = process_group
        #: Optimizer steps seen so far (counted at each step's last bucket).
        self.iter = 0
        #: bucket index -> residual (float32, the bucket's length): what this rank has not sent yet.
        self.residuals: dict[int, torch.Tensor] = {}
        #: bucket index -> parameter layout of its residual: ((id(param), numel), ...).
        self._layouts: dict[int, tuple[tuple[int, int], ...]] = {}
        #: Per-parameter pieces of residuals whose bucket was rebuilt, until a new bucket takes them.
        self._orphans: dict[int, torch.Tensor] = {}
        self._stored_at: dict[int, int] = {}
        #: Entries sent by this rank in the last step, per bucket index.
        self.sent_entries: dict[int, int] = {}

    def _advance(self, bucket: dist.GradBucket) -> None:
        if bucket.is_last():
            self.iter += 1

    def residual_for(self, index: int, layout: tuple[tuple[int, int], ...], numel: int, device) -> torch.Tensor:
        """The residual of bucket ``index`` laid out as ``layout`` (zeros where nothing was held back)."""
        old = self.residuals.get(index)
        if old is not None and self._layouts.get(index) == layout:
            return old
        stale = [i for i, t in self._stored_at.items() if t < self.iter]
        if stale:
            # DDP rebuilt its buckets: cut the residuals of earlier steps into per-parameter pieces, so each new
            # bucket takes its parameters' pieces wherever they were held.
            logger.debug("Top-k hook: bucket %d changed its parameters; residuals re-laid out.", index)
            for i in stale:
                res, offset = self.residuals.pop(i), 0
                for pid, n in self._layouts.pop(i):
                    self._orphans[pid] = res[offset : offset + n]
                    offset += n
                del self._stored_at[i]
        fresh = torch.zeros(numel, dtype=torch.float32, device=device)
        offset = 0
        for pid, n in layout:
            piece = self._orphans.pop(pid, None)
            if piece is not None and piece.numel() == n:
                fresh[offset : offset + n] = piece
            offset += n
        return fresh

    def residual_of(self, param: torch.Tensor) -> torch.Tensor | None:
        """The part of the residuals that belongs to ``param`` (flattened, float32), or None when none is held."""
        for index, layout in self._layouts.items():
            offset = 0
            for pid, n in layout:
                if pid == id(param):
                    return self.residuals[index][offset : offset + n]
                offset += n
        piece = self._orphans.get(id(param))
        return piece

    def store(self, index: int, layout: tuple[tuple[int, int], ...], residual: torch.Tensor) -> None:
        self.residuals[index] = residual
        self._layouts[index] = layout
        self._stored_at[index] = self.iter


def _group(process_group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    return process_group if process_group is not None else dist.group.WORLD


def _allreduce_mean(group: dist.ProcessGroup, tensor: torch.Tensor) -> torch.futures.Future[torch.Tensor]:
    tensor.div_(group.size())
    return dist.all_reduce(tensor, group=group, async_op=True).get_future().then(lambda fut: fut.value()[0])


def allreduce_mean_hook(
    process_group: dist.ProcessGroup | None, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """Plain averaging all-reduce of the bucket (what DDP does without a hook), written in Python so that
    :class:`~hf_sparse.distributed.CommCounter` sees its collective."""
    return _allreduce_mean(_group(process_group), bucket.buffer())


def topk_hook(state: TopKState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: top-k sparsification with error feedback (see the module docstring).

    Register with ``ddp_model.register_comm_hook(TopKState(ratio=0.01), topk_hook)``, or through
    :func:`~hf_sparse.distributed.register_comm_hook` with the Trainer.
    """
    group = _group(state.process_group)
    buffer = bucket.buffer()
    index = bucket.index()
    if state.iter < state.warmup_steps:
        state._advance(bucket)
        return _allreduce_mean(group, buffer)
    numel = buffer.numel()
    layout = tuple((id(p), p.numel()) for p in bucket.parameters())
    acc = buffer.detach().float()
    if state.error_feedback:
        acc = acc + state.residual_for(index, layout, numel, buffer.device)
    k = entries_to_send(numel, state.ratio)
    values, indices = topk_select(acc, k)
    sent = values.to(buffer.dtype)
    if state.error_feedback:
        # acc is a fresh tensor here and becomes the residual: less what was sent, as sent (after rounding to a
        # half-precision bucket's dtype; exactly zero there for float32).
        acc.index_add_(0, indices.long(), sent.float(), alpha=-1.0)
        state.store(index, layout, acc)
    state.sent_entries[index] = k
    payload = pack_sparse(sent, indices)
    world = group.size()
    gathered = [torch.empty_like(payload) for _ in range(world)]
    state._advance(bucket)

    def decode(fut: torch.futures.Future) -> torch.Tensor:
        fut.wait()
        parts = [unpack_sparse(p, k, buffer.dtype, index_dtype(numel)) for p in gathered]
        if buffer.dtype == torch.float32:
            return sparse_mean(parts, numel, out=buffer)
        # Half-precision buckets: add up in float32, round once.
        return buffer.copy_(sparse_mean(parts, numel, torch.float32))

    return dist.all_gather(gathered, payload, group=group, async_op=True).get_future().then(decode)
