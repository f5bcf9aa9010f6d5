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
from ..nn.roles import layer_lists, refuse, roles_for
from .cache import NON_INPUT_KEYS, TeacherCache, example_keys
from .config import DistillationConfig
from .losses import attention_loss, combine_losses, embedding_loss, hidden_state_loss, kd_loss
from .students import auto_layer_map, freeze_teacher, kept_layers_by_stack, layer_map_for

__all__ = ["PROJECTIONS_ATTR", "Distiller", "stack_layer_maps"]

logger = logging.getLogger(__name__)

#: Name under which the learned width projections sit on the student while it trains (so the Trainer's optimizer
#: and checkpoints include them); removed by :meth:`Distiller.detach`.
PROJECTIONS_ATTR = "hf_sparse_distill_projections"


def _hidden_size(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "hidden_size", None)


def _attn_implementation(model: nn.Module) -> str | None:
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def _forward_options(model: nn.Module, **wanted) -> dict[str, Any]:
    """The keyword options of ``wanted`` that ``model.forward`` takes (by name, or through ``**kwargs``); a model
    with a plain signature (a recommender) is not handed options it would reject."""
    params = inspect.signature(model.forward).parameters
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in wanted.items() if k in params or var_kw}


def _is_seq2seq(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


#: The label value transformers' losses ignore (padding of ``labels``).
IGNORE_INDEX = -100


def _seq2seq_stack_maps(student: nn.Module, teacher: nn.Module, explicit) -> list[tuple[str, list[int]]]:
    """For an encoder-decoder pair: ``[("encoder_", map), ("decoder_", map)]``, each mapping the student's layers of
    one stack to the teacher's layers of the same stack (an encoder layer never learns from a decoder layer).

    ``explicit`` (``DistillationConfig.layer_map``) lists the student's encoder layers then its decoder layers, each
    naming a teacher layer (0-based) of the same stack or -1.
    """
    feature = "distillation (hidden-state, embedding or attention matching)"
    stacks = []
    for model in (student, teacher):
        lists = layer_lists(model, roles_for(model, feature))
        if len(lists) != 2:
            raise refuse(
                model,
                feature,
                f"an encoder-decoder model needs an encoder and a decoder layer list, found {[n for n, _ in lists]}.",
            )
        stacks.append([len(layers) for _, layers in lists])
    (s_enc, s_dec), (t_enc, t_dec) = stacks
    if explicit:
        explicit = list(explicit)
        enc, dec = explicit[:s_enc], explicit[s_enc:]
        if len(explicit) != s_enc + s_dec or any(j >= t_enc for j in enc) or any(j >= t_dec for j in dec):
            raise ConfigError(
                f"DistillationConfig.layer_map of an encoder-decoder student lists its {s_enc} encoder layers then "
                f"its {s_dec} decoder layers, each a teacher layer of the same stack (encoder: [0, {t_enc - 1}], "
                f"decoder: [0, {t_dec - 1}]) or -1; got {explicit}."
            )
        return [("encoder_", enc), ("decoder_", dec)]
    # a student cut by student_from_teacher learns from the layers it kept (when the teacher is the uncut model)
    kept = kept_layers_by_stack(student) or {}
    cut_teacher = kept_layers_by_stack(teacher)
    maps = []
    for (stack, _), s_n, t_n in zip(layer_lists(student), (s_enc, s_dec), (t_enc, t_dec)):
        mine = next((v for k, v in kept.items() if k in stack.split(".")), None)
        usable = mine is not None and not cut_teacher and len(mine) == s_n and all(0 <= j < t_n for j in mine)
        maps.append(list(mine) if usable else auto_layer_map(s_n, t_n))
    return [("encoder_", maps[0]), ("decoder_", maps[1])]


def _key(prefix: str, index: int):
    """The key of a teacher output: the index for a single stack, ``(stack, index)`` for an encoder-decoder model."""
    return index if not prefix else (prefix, index)


def _stack_output(out, prefix: str, what: str, model: nn.Module):
    """``out.<prefix><what>`` (``hidden_states``, ``encoder_attentions`` ...), refused by name when missing."""
    value = getattr(out, f"{prefix}{what}", None)
    if value is None:
        raise refuse(
            model,
            "distillation",
            f"its output has no {prefix}{what} (asked for with output_{what}=True), which the hidden-state, embedding "
            "and attention terms need; set those weights to 0 for logits distillation only.",
        )
    return value


def stack_layer_maps(student: nn.Module, teacher: nn.Module, explicit=()) -> list[tuple[str, list[int]]]:
    """The layer maps of a (student, teacher) pair, one per stack of layers: ``[("", map)]`` for an encoder or a
    decoder, ``[("encoder_", map), ("decoder_", map)]`` for an encoder-decoder model (``explicit`` is
    ``DistillationConfig.layer_map``).

    Raises:
        ConfigError: ``explicit`` does not fit the two models.
        UnsupportedFamilyError: one model is an encoder-decoder model and the other is not, or the layer lists of
            an encoder-decoder family are not in the module-role table.
    """
    if _is_seq2seq(student) != _is_seq2seq(teacher):
        seq2seq = student if _is_seq2seq(student) else teacher
        raise refuse(
            seq2seq,
            "distillation",
            f"the {'student' if seq2seq is student else 'teacher'} is an encoder-decoder model and the other is "
            "not; both must read the same inputs and predict the same positions.",
        )
    if _is_seq2seq(student):
        return _seq2seq_stack_maps(student, teacher, explicit)
    return [("", layer_map_for(student, teacher, explicit))]


class Distiller:
    """Teacher, layer map, projections and cache of one distillation run.

    While attached, every training-mode forward of the student (``student(**batch)``, as the Trainer calls it) also
    runs the teacher on the same inputs (or reads its outputs from the cache) and replaces ``outputs.loss`` with
    the :class:`~hf_sparse.DistillationConfig` combination. Eval-mode forwards are untouched, so evaluation reports
    the task loss.

    Every model family of the module-role table works: encoders (logits per example or per token), decoders (logits
    over the vocabulary at every position: student and teacher predict the same next tokens from the same inputs;
    padding is masked by ``attention_mask``) and encoder-decoder models. For those, a batch with ``labels`` but no
    ``decoder_input_ids`` gets the decoder inputs the student would build from the labels
    (``prepare_decoder_input_ids_from_labels``), passed to both models, so the teacher predicts the same target
    positions; the logits are masked where the labels are ignored (-100) or by ``decoder_attention_mask``, and the
    hidden-state, embedding and attention terms match encoder layers with encoder layers and decoder layers with
    decoder layers.

    Args:
        student: The model being trained.
        teacher: The dense model; frozen and put in eval mode here (gradients never reach it).
        config: A :class:`~hf_sparse.DistillationConfig`.

    Raises:
        ConfigError: a layer map that does not fit the two models.
        UnsupportedFamilyError: what cannot be honoured for the pair, naming the family: an encoder-decoder model
            with a decoder-only or encoder-only one, hidden-state matching without ``config.hidden_size``, hidden
            states of an encoder-decoder model in the teacher cache, a family whose layer lists are not in the
            module-role table (hidden-state or attention matching of an encoder-decoder model), and, at the forward
            pass, ``inputs_embeds`` (the teacher reads token ids) or an output without the hidden states or
            attention maps a term needs.
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
        self.seq2seq = _is_seq2seq(student)
        if self.seq2seq != _is_seq2seq(teacher):
            stack_layer_maps(student, teacher)  # raises, naming the encoder-decoder family
        for name, model in (("student", student), ("teacher", teacher)):
            if self.seq2seq and not callable(getattr(model, "prepare_decoder_input_ids_from_labels", None)):
                raise refuse(
                    model,
                    "distillation",
                    f"the {name} has no prepare_decoder_input_ids_from_labels, so the decoder inputs the teacher "
                    "needs cannot be built from the labels the same way as the student's.",
                )
        # (output prefix, student layer -> teacher layer): "" is a single stack's hidden_states / attentions; an
        # encoder-decoder model has "encoder_" and "decoder_" stacks, each matched only with the same stack.
        self.stack_maps: list[tuple[str, list[int]]] = []
        if cfg.needs_hidden or cfg.needs_attentions:
            self.stack_maps = stack_layer_maps(student, teacher, cfg.layer_map)
        #: For each student layer in order (encoder then decoder layers of an encoder-decoder model), the teacher
        #: layer of the same stack it learns from (-1: none).
        self.layer_map = [j for _, m in self.stack_maps for j in m]
        #: (student layer, teacher layer) pairs that are matched (0-based, within one stack).
        self.pairs = [(i, j) for _, m in self.stack_maps for i, j in enumerate(m) if j >= 0]
        self._stack_pairs = [(prefix, [(i, j) for i, j in enumerate(m) if j >= 0]) for prefix, m in self.stack_maps]
        self._embedding_stacks = [prefix for prefix, _ in self.stack_maps] if cfg.embedding_weight > 0 else []
        self.projections = nn.ModuleDict()
        if cfg.needs_hidden:
            hs, ht = _hidden_size(student), _hidden_size(teacher)
            if hs is None or ht is None:
                raise refuse(
                    student if hs is None else teacher,
                    "distillation (hidden-state and embedding matching)",
                    "it needs config.hidden_size on both models to match their widths; set hidden_weight=0 and "
                    "embedding_weight=0 for logits distillation only.",
                )
            if hs != ht:
                # One learned map per matched layer (TinyBERT), created with the student's dtype and device.
                ref = next(student.parameters())
                names = []
                if cfg.hidden_weight > 0:
                    names += [self._projection_name(p, i) for p, pairs in self._stack_pairs for i, _ in pairs]
                names += [self._projection_name(p, None) for p in self._embedding_stacks]
                for name in names:
                    self.projections[name] = nn.Linear(hs, ht).to(device=ref.device, dtype=ref.dtype)
        teacher_hidden = set()
        if cfg.hidden_weight > 0:
            teacher_hidden |= {(p, j + 1) for p, pairs in self._stack_pairs for _, j in pairs}
        teacher_hidden |= {(p, 0) for p in self._embedding_stacks}
        # (output prefix, index into the teacher's hidden states) of every teacher hidden state the terms use.
        self._teacher_hidden = sorted(teacher_hidden)
        #: The teacher hidden states the terms use: indices into ``hidden_states`` (0 = embeddings, ``j + 1`` = output
        #: of layer ``j``), what the teacher cache stores; ``(stack, index)`` pairs for an encoder-decoder model.
        self.teacher_hidden = self._teacher_hidden if self.seq2seq else [j for _, j in self._teacher_hidden]
        if cfg.cache_dir and self.seq2seq and self._teacher_hidden:
            raise refuse(
                teacher,
                "distillation with a teacher-output cache",
                "the cache stores hidden states of one token sequence, and an encoder-decoder model has two (the "
                "encoder's and the decoder's); set cache_dir=None, or hidden_weight=0 and embedding_weight=0 to cache "
                "the logits only.",
            )
        self.cache = (
            TeacherCache(cfg.cache_dir, teacher, [j for _, j in self._teacher_hidden]) if cfg.cache_dir else None
        )
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

    @staticmethod
    def _projection_name(prefix: str, layer: int | None) -> str:
        # "layer_0" / "embeddings" for a single stack (the names checkpoints of earlier runs hold), prefixed with
        # the stack ("encoder_layer_0", "decoder_embeddings") for an encoder-decoder model.
        return f"{prefix}layer_{layer}" if layer is not None else f"{prefix}embeddings"

    # -- teacher ------------------------------------------------------------------------------------------------------
    def _teacher_inputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The model inputs the teacher gets: the student's, with the decoder inputs an encoder-decoder student
        would build from ``labels`` built here (by the student's own ``prepare_decoder_input_ids_from_labels``),
        so the teacher predicts the same target positions from the same decoder tokens."""
        for key in ("inputs_embeds", "decoder_inputs_embeds"):
            if inputs.get(key) is not None:
                raise refuse(
                    self.student,
                    "distillation",
                    f"the batch passes {key}, vectors of the student's own embedding table that the teacher cannot "
                    "read; pass token ids (input_ids / decoder_input_ids).",
                )
        feed = {k: v for k, v in inputs.items() if k not in NON_INPUT_KEYS and k != "return_dict" and v is not None}
        labels = inputs.get("labels")
        if self.seq2seq and feed.get("decoder_input_ids") is None and isinstance(labels, torch.Tensor):
            feed["decoder_input_ids"] = self.student.prepare_decoder_input_ids_from_labels(labels=labels)
        return feed

    def _masks(self, feed: Mapping[str, Any], labels) -> dict[str, torch.Tensor | None]:
        """The valid-token mask of each stack (``""``, or ``"encoder_"`` / ``"decoder_"``) and of the logits."""
        mask = feed.get("attention_mask")
        if not self.seq2seq:
            return {"": mask, "logits": mask}
        decoder = feed.get("decoder_attention_mask")
        if decoder is None and isinstance(labels, torch.Tensor) and labels.dim() == 2:
            # Decoder inputs built from padded labels: the positions whose label is ignored are padding.
            decoder = labels != IGNORE_INDEX
        return {"encoder_": mask, "decoder_": decoder, "logits": decoder}

    @torch.no_grad()
    def teacher_outputs(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """The teacher's logits, hidden states (of :attr:`teacher_hidden`) and attention maps (of the matched
        layers) on a batch, from the cache when every example is in it.

        ``inputs`` is the student's batch (``labels`` included: an encoder-decoder teacher gets the decoder inputs
        built from them, see :meth:`_teacher_inputs`).

        Returns:
            ``{"logits": (B, ...), "hidden": {j: (B, L, H)}, "attentions": {j: (B, Ht, L, L)}}``; for an
            encoder-decoder model the keys are ``(stack, j)`` with ``stack`` ``"encoder_"`` or ``"decoder_"``.
        """
        feed = self._teacher_inputs(inputs)
        return self._run_teacher(feed, self._masks(feed, inputs.get("labels")))

    def _run_teacher(self, feed: dict[str, Any], masks: Mapping[str, Any]) -> dict[str, Any]:
        mask = masks.get("", masks.get("encoder_"))
        keys = None
        if self.cache is not None:
            keys = example_keys(feed, masks.get("decoder_"))
            cached = self.cache.get(keys, mask, self._device(), logits_mask=masks["logits"])
            if cached is not None:
                return {"logits": cached["logits"], "hidden": cached["hidden"], "attentions": {}}
        device = next(self.teacher.parameters()).device
        feed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in feed.items()}
        options = {"return_dict": True}
        if self.teacher_hidden:
            options["output_hidden_states"] = True
        if self.config.needs_attentions:
            options["output_attentions"] = True
        if "logits_to_keep" not in feed and "logits_to_keep" in inspect.signature(self.teacher.forward).parameters:
            options["logits_to_keep"] = 0  # every position (a model may keep none by default when given labels)
        out = self.teacher(**feed, **_forward_options(self.teacher, **options))
        self.teacher_calls += 1
        hidden = {
            _key(p, j): _stack_output(out, p, "hidden_states", self.teacher)[j].float()
            for p, j in self._teacher_hidden
        }
        attentions = {}
        if self.config.needs_attentions:
            attentions = {
                _key(p, j): _stack_output(out, p, "attentions", self.teacher)[j]
                for p, pairs in self._stack_pairs
                for _, j in pairs
            }
        result = {"logits": out.logits.float(), "hidden": hidden, "attentions": attentions}
        if self.cache is not None:
            self.cache.put(keys, result["logits"], hidden, mask, masks["logits"])  # single-stack: int keys
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
            keys = example_keys(feed, self._masks(feed, batch.get("labels")).get("decoder_"))
            if all(k in self.cache for k in keys):
                continue
            before = len(self.cache)
            self._run_teacher(feed, self._masks(feed, batch.get("labels")))
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
        feed = self._teacher_inputs(kwargs)
        if self.seq2seq and kwargs.get("decoder_input_ids") is None and "decoder_input_ids" in feed:
            # The student gets the very decoder inputs the teacher gets (the ones it would build from the labels).
            kwargs["decoder_input_ids"] = feed["decoder_input_ids"]
        masks = self._masks(feed, kwargs.get("labels"))
        self._pending = {"feed": feed, "masks": masks, "num_items": kwargs.get("num_items_in_batch")}
        if kwargs.get("logits_to_keep") is None and "logits_to_keep" in self._forward_signature.parameters:
            # Logits at every position, as the teacher's: a model given labels may keep none by default (SASRec).
            kwargs["logits_to_keep"] = 0
        flags = {}
        if self.teacher_hidden:
            flags["output_hidden_states"] = True
        if self.config.needs_attentions:
            flags["output_attentions"] = True
        # A forward without these options is refused by name where the missing outputs are read (_stack_output).
        kwargs.update(_forward_options(module, **flags))
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
        teacher = self._run_teacher(pending["feed"], pending["masks"])
        terms = self.loss_terms(output, teacher, pending["masks"])
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

    def loss_terms(self, student_out, teacher: Mapping[str, Any], masks) -> dict[str, tuple[float, torch.Tensor]]:
        """name -> (weight, value) of every active term (``kd``'s weight is ``alpha``, applied by
        :func:`~hf_sparse.distillation.losses.combine_losses`).

        ``masks``: the valid-token mask of each stack and of the logits (see :meth:`_masks`), or one
        ``attention_mask`` for a single-stack model."""
        if not isinstance(masks, Mapping):
            masks = {"": masks, "logits": masks}
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
            mask = masks.get("logits") if logits.dim() == 3 else None
            terms["kd"] = (cfg.alpha, kd_loss(logits, t_logits, cfg.temperature, mask))
        projection = self.projections if len(self.projections) else None
        if cfg.hidden_weight > 0 and self.pairs:
            losses = []
            for prefix, pairs in self._stack_pairs:
                s_hidden = _stack_output(student_out, prefix, "hidden_states", self.student)
                for i, j in pairs:
                    losses.append(
                        hidden_state_loss(
                            s_hidden[i + 1],
                            teacher["hidden"][_key(prefix, j + 1)].to(s_hidden[i + 1].device),
                            masks.get(prefix),
                            kind=cfg.hidden_loss,
                            projection=projection[self._projection_name(prefix, i)] if projection else None,
                        )
                    )
            terms["hidden"] = (cfg.hidden_weight, torch.stack(losses).mean())
        if cfg.embedding_weight > 0:
            losses = []
            for prefix in self._embedding_stacks:
                s_emb = _stack_output(student_out, prefix, "hidden_states", self.student)[0]
                losses.append(
                    embedding_loss(
                        s_emb,
                        teacher["hidden"][_key(prefix, 0)].to(s_emb.device),
                        masks.get(prefix),
                        kind=cfg.hidden_loss,
                        projection=projection[self._projection_name(prefix, None)] if projection else None,
                    )
                )
            terms["embedding"] = (cfg.embedding_weight, torch.stack(losses).mean())
        if cfg.attention_weight > 0 and self.pairs:
            losses = []
            for prefix, pairs in self._stack_pairs:
                s_att = _stack_output(student_out, prefix, "attentions", self.student)
                if not s_att or s_att[0] is None:
                    raise refuse(
                        self.student,
                        "distillation (attention transfer)",
                        "the student returned no attention maps with output_attentions=True under eager attention.",
                    )
                for i, j in pairs:
                    losses.append(
                        attention_loss(
                            s_att[i],
                            teacher["attentions"][_key(prefix, j)].to(s_att[i].device),
                            masks.get(prefix),
                            kind=cfg.attention_loss,
                        )
                    )
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
