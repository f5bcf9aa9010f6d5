"""The Distiller: runs the teacher beside a student in training and turns the student's loss into the distillation
loss, through forward hooks on the student (no Trainer subclass, no patched ``forward``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from ..errors import ConfigError
from .cache import NON_INPUT_KEYS, TeacherCache, example_keys
from .config import DistillationConfig
from .losses import attention_loss, combine_losses, embedding_loss, hidden_state_loss, kd_loss
from .students import freeze_teacher, layer_map_for

__all__ = ["PROJECTIONS_ATTR", "Distiller"]

logger = logging.getLogger(__name__)

#: Name under which the learned width projections sit on the student while it trains (so the Trainer's optimizer
#: and checkpoints include them); removed by :meth:`Distiller.detach`.
PROJECTIONS_ATTR = "hf_sparse_distill_projections"


def _hidden_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "hidden_size", None)


def _attn_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


class Distiller:
    """Teacher, layer map, projections and cache of one distillation run.

    While attached, every training-mode forward of the student (``student(**batch)``, as the Trainer calls it) also
    runs the teacher on the same inputs (or reads its outputs from the cache) and replaces ``outputs.loss`` with
    the :class:`~hf_sparse.DistillationConfig` combination. Eval-mode forwards are untouched, so evaluation reports
    the task loss.

    Args:
        student: The model being trained.
        teacher: The dense model; frozen and put in eval mode here (gradients never reach it).
        config: A :class:`~hf_sparse.DistillationConfig`.

    Raises:
        ConfigError: a layer map that does not fit the two models, or hidden-state matching between models without
            a ``config.hidden_size``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillationConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, DistillationConfig) else DistillationConfig.from_dict(config)
        if teacher is student:
            raise ConfigError(
                "Distiller: the teacher is the student itself; pass a separate model, or teacher_snapshot(model) "
                "for a frozen copy of it."
            )
        self.student = student
        self.teacher = freeze_teacher(teacher)
        cfg = self.config
        self.layer_map = (
            layer_map_for(student, teacher, cfg.layer_map) if cfg.needs_hidden or cfg.needs_attentions else []
        )
        #: (student layer, teacher layer) pairs that are matched (0-based encoder layers).
        self.pairs = [(i, j) for i, j in enumerate(self.layer_map) if j >= 0]
        self.projections = nn.ModuleDict()
        if cfg.needs_hidden:
            hs, ht = _hidden_size(student), _hidden_size(teacher)
            if hs is None or ht is None:
                raise ConfigError(
                    "Distiller: hidden-state and embedding matching need config.hidden_size on both models; set "
                    "hidden_weight=0 and embedding_weight=0 for logits distillation only."
                )
            if hs != ht:
                # One learned map per matched layer (TinyBERT), created with the student's dtype and device.
                ref = next(student.parameters())
                names = ([f"layer_{i}" for i, _ in self.pairs] if cfg.hidden_weight > 0 else []) + (
                    ["embeddings"] if cfg.embedding_weight > 0 else []
                )
                for name in names:
                    self.projections[name] = nn.Linear(hs, ht).to(device=ref.device, dtype=ref.dtype)
        teacher_hidden = set()
        if cfg.hidden_weight > 0:
            teacher_hidden |= {j + 1 for _, j in self.pairs}
        if cfg.embedding_weight > 0:
            teacher_hidden.add(0)
        self.teacher_hidden = sorted(teacher_hidden)
        self.cache = TeacherCache(cfg.cache_dir, teacher, self.teacher_hidden) if cfg.cache_dir else None
        #: Divides the distillation terms when the Trainer normalises the task loss over an accumulated step itself
        #: (models that take ``num_items_in_batch``); set by :class:`~hf_sparse.DistillationCallback`.
        self.gradient_accumulation_steps = 1
        self.teacher_calls = 0
        self._sums: dict[str, float] = {}
        self._count = 0
        self._hooks: list = []
        self._pending: dict[str, Any] | None = None
        self._attn_before: dict[int, str | None] = {}
        self._forward_signature = inspect.signature(student.forward)

    # -- attach / detach ----------------------------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return bool(self._hooks)

    def attach(self) -> Distiller:
        """Register the hooks (and the projections, as ``student.hf_sparse_distill_projections``)."""
        if self.attached:
            return self
        if len(self.projections):
            self.student.add_module(PROJECTIONS_ATTR, self.projections)
        if self.config.needs_attentions:
            for model in (self.student, self.teacher):
                self._attn_before[id(model)] = _attn_implementation(model)
                if _attn_implementation(model) != "eager":
                    model.set_attn_implementation("eager")
        self.sync_device()
        # prepend: the distillation mix runs before other loss hooks (regularisation penalties are added unscaled).
        self._hooks.append(self.student.register_forward_pre_hook(self._pre_forward, with_kwargs=True, prepend=True))
        self._hooks.append(self.student.register_forward_hook(self._post_forward, with_kwargs=True, prepend=True))
        return self

    def detach(self) -> None:
        """Remove the hooks and the projections from the student, restore attention implementations, flush the
        cache. The projections stay in :attr:`projections`, so :meth:`attach` can resume."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if PROJECTIONS_ATTR in self.student._modules:
            del self.student._modules[PROJECTIONS_ATTR]
        for model in (self.student, self.teacher):
            before = self._attn_before.pop(id(model), None)
            if before is not None and before != _attn_implementation(model):
                model.set_attn_implementation(before)
        if self.cache is not None:
            self.cache.flush()

    def sync_device(self) -> None:
        """Move the teacher to the student's device."""
        ref = next(self.student.parameters(), None)
        if ref is not None:
            self.teacher.to(ref.device)

    # -- teacher ------------------------------------------------------------------------------------------------------
    def _teacher_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in inputs.items() if k not in NON_INPUT_KEYS and k != "return_dict"}

    @torch.no_grad()
    def teacher_outputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The teacher's logits, hidden states (of :attr:`teacher_hidden`) and attention maps (of the matched
        layers) on a batch, from the cache when every example is in it.

        Returns:
            ``{"logits": (B, ...), "hidden": {j: (B, L, H)}, "attentions": {j: (B, Ht, L, L)}}``.
        """
        feed = self._teacher_inputs(inputs)
        mask = feed.get("attention_mask")
        keys = None
        if self.cache is not None:
            keys = example_keys(feed)
            cached = self.cache.get(keys, mask, self._device())
            if cached is not None:
                return {**cached, "attentions": {}}
        device = next(self.teacher.parameters()).device
        feed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feed.items()}
        out = self.teacher(
            **feed,
            output_hidden_states=bool(self.teacher_hidden),
            output_attentions=self.config.needs_attentions,
            return_dict=True,
        )
        self.teacher_calls += 1
        hidden = {j: out.hidden_states[j].float() for j in self.teacher_hidden}
        attentions = {}
        if self.config.needs_attentions:
            attentions = {j: out.attentions[j] for _, j in self.pairs}
        result = {"logits": out.logits.float(), "hidden": hidden, "attentions": attentions}
        if self.cache is not None:
            self.cache.put(keys, result["logits"], hidden, mask)
        return result

    def _device(self) -> torch.device:
        ref = next(self.student.parameters(), None)
        return ref.device if ref is not None else torch.device("cpu")

    @torch.no_grad()
    def fill_cache(self, dataset, collate_fn, batch_size: int = 64, progress: bool = True) -> dict[str, int]:
        """Run the teacher once over ``dataset`` (examples already cached are skipped) and write the cache.

        Args:
            dataset: Indexable examples (a ``datasets.Dataset`` or a list), tokenised as for training.
            collate_fn: Turns a list of examples into a batch (e.g. ``DataCollatorWithPadding(tokenizer)``).

        Returns:
            ``{"examples": n, "computed": m}``.
        """
        if self.cache is None:
            raise ConfigError("Distiller.fill_cache: DistillationConfig.cache_dir is not set.")
        from tqdm.auto import tqdm

        computed = 0
        n = len(dataset)
        columns = None
        for start in tqdm(range(0, n, batch_size), desc="Teacher outputs", disable=not progress):
            rows = [dataset[i] for i in range(start, min(start + batch_size, n))]
            if columns is None:
                columns = [c for c in rows[0] if c not in ("length", "text")]
            batch = collate_fn([{c: r[c] for c in columns} for r in rows])
            feed = self._teacher_inputs(batch)
            keys = example_keys(feed)
            if all(k in self.cache for k in keys):
                continue
            before = len(self.cache)
            self.teacher_outputs(feed)
            computed += len(self.cache) - before
        self.cache.flush()
        return {"examples": n, "computed": computed}

    # -- hooks --------------------------------------------------------------------------------------------------------
    def _pre_forward(self, module, args, kwargs):
        if not module.training:
            self._pending = None
            return None
        if args:
            bound = self._forward_signature.bind_partial(*args, **kwargs)
            kwargs = dict(bound.arguments)
            args = ()
        kwargs = dict(kwargs)
        self._pending = {"inputs": self._teacher_inputs(kwargs), "num_items": kwargs.get("num_items_in_batch")}
        if self.teacher_hidden:
            kwargs["output_hidden_states"] = True
        if self.config.needs_attentions:
            kwargs["output_attentions"] = True
        return args, kwargs

    def _post_forward(self, module, args, kwargs, output):
        pending, self._pending = self._pending, None
        if pending is None or not module.training:
            return None
        if not hasattr(output, "logits"):
            raise ConfigError(
                f"Distiller: the student's forward returned {type(output).__name__} without logits; distillation "
                "needs a transformers model output (return_dict=True)."
            )
        teacher = self.teacher_outputs(pending["inputs"])
        mask = pending["inputs"].get("attention_mask")
        terms = self.loss_terms(output, teacher, mask)
        scale = 1.0 / self.gradient_accumulation_steps if pending["num_items"] is not None else 1.0
        kd = terms.pop("kd", None)
        task = output.get("loss") if hasattr(output, "get") else getattr(output, "loss", None)
        kd_value = None if kd is None else kd[1] * scale
        extra = {k: (w, v * scale) for k, (w, v) in terms.items()}
        total = combine_losses(task, kd_value, self.config.alpha, extra)
        self._record(task, kd_value, extra)
        # ModelOutput.__setitem__ keeps outputs.loss and outputs["loss"] in step.
        output["loss"] = total
        return output

    def loss_terms(self, student_out, teacher: Mapping[str, Any], mask) -> dict[str, tuple[float, torch.Tensor]]:
        """name -> (weight, value) of every active term (``kd``'s weight is ``alpha``, applied by
        :func:`~hf_sparse.distillation.losses.combine_losses`)."""
        cfg = self.config
        terms: dict[str, tuple[float, torch.Tensor]] = {}
        logits = student_out.logits
        if cfg.alpha > 0:
            t_logits = teacher["logits"].to(logits.device)
            if t_logits.shape != logits.shape:
                raise ConfigError(
                    f"Distiller: student logits {tuple(logits.shape)} and teacher logits {tuple(t_logits.shape)} "
                    "differ; the two models must share the label set (num_labels) and tokenizer."
                )
            terms["kd"] = (cfg.alpha, kd_loss(logits, t_logits, cfg.temperature, mask if logits.dim() == 3 else None))
        if cfg.hidden_weight > 0 and self.pairs:
            s_hidden = student_out.hidden_states
            losses = [
                hidden_state_loss(
                    s_hidden[i + 1],
                    teacher["hidden"][j + 1].to(s_hidden[i + 1].device),
                    mask,
                    kind=cfg.hidden_loss,
                    projection=self.projections[f"layer_{i}"] if len(self.projections) else None,
                )
                for i, j in self.pairs
            ]
            terms["hidden"] = (cfg.hidden_weight, torch.stack(losses).mean())
        if cfg.embedding_weight > 0:
            terms["embedding"] = (
                cfg.embedding_weight,
                embedding_loss(
                    student_out.hidden_states[0],
                    teacher["hidden"][0].to(logits.device),
                    mask,
                    kind=cfg.hidden_loss,
                    projection=self.projections["embeddings"] if len(self.projections) else None,
                ),
            )
        if cfg.attention_weight > 0 and self.pairs:
            s_att = student_out.attentions
            if not s_att or s_att[0] is None:
                raise ConfigError(
                    "Distiller: the student returned no attention maps; attention transfer needs a model whose eager "
                    "attention returns them (BERT-family encoders do)."
                )
            losses = [
                attention_loss(s_att[i], teacher["attentions"][j].to(s_att[i].device), mask, kind=cfg.attention_loss)
                for i, j in self.pairs
            ]
            terms["attention"] = (cfg.attention_weight, torch.stack(losses).mean())
        return terms

    # -- logging ------------------------------------------------------------------------------------------------------
    def _record(self, task, kd, extra) -> None:
        values = {"task": task, "kd": kd, **{k: v for k, (_, v) in extra.items()}}
        for name, value in values.items():
            if value is not None:
                self._sums[name] = self._sums.get(name, 0.0) + float(value.detach())
        self._count += 1

    def pop_means(self) -> dict[str, float]:
        """Mean of each loss term since the last call, as ``distill_<term>`` (empty when nothing was recorded)."""
        if not self._count:
            return {}
        means = {f"distill_{k}": v / self._count for k, v in self._sums.items()}
        self._sums, self._count = {}, 0
        return means
