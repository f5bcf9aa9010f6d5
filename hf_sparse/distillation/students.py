"""Students and teachers: a shallower student cut from the teacher, a frozen float snapshot as teacher, and the
mapping between student and teacher layers."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch.nn as nn

from ..errors import ConfigError, quote
from ..nn.roles import UnsupportedFamilyError, layer_lists, refuse, roles_for
from ..nn.structure import find_layers, stack_names
from ..pruning.structured import _dropped_so_far, drop_layers_

__all__ = [
    "ARCHITECTURE_KEYS",
    "KEPT_LAYERS_KEY",
    "check_start_architecture",
    "locate_start_model",
    "kept_layers_by_stack",
    "auto_layer_map",
    "freeze_teacher",
    "layer_map_for",
    "student_from_teacher",
    "teacher_snapshot",
]

FEATURE = "student_from_teacher"


def _num_layers(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if isinstance(n, int):
        return n
    return len(find_layers(model))


def _depths(teacher: nn.Module, stack: str | None, explicit: bool) -> dict[str, int]:
    """The number of layers ``keep_every`` / ``keep_layers`` count, per layer list they apply to (``""`` for a
    model with one layer list)."""
    entry = roles_for(teacher, FEATURE)
    stacks = stack_names(layer_lists(teacher, entry))
    if not stacks:
        raise refuse(teacher, FEATURE, f"no layer list matching {list(entry.layers)} was found in the model.")
    if stacks == [""]:
        if stack not in (None, ""):
            raise ConfigError(f"student_from_teacher: stack={quote(stack)} names a layer list this model lacks.")
        # ALBERT: the layers are repetitions of one shared layer, counted by the config
        n = int(teacher.config.num_hidden_layers) if entry.shared_layers else len(find_layers(teacher, FEATURE))
        return {"": n}
    if stack is None and not explicit:
        chosen = stacks  # keep_every applies to every layer list (encoder and decoder each lose layers)
    elif stack in stacks:
        chosen = [stack]
    else:
        raise refuse(
            teacher,
            FEATURE,
            f"the model has the layer lists {stacks}; say which one keep_layers names with "
            f"stack={quote(stacks[0])} or stack={quote(stacks[-1])} (got {quote(stack)}).",
        )
    layers = find_layers(teacher, FEATURE)
    return {s: sum(p.stack == s for p in layers) for s in chosen}


def student_from_teacher(
    teacher: nn.Module,
    *,
    keep_every: int | None = None,
    keep_layers: Sequence[int] | None = None,
    stack: str | None = None,
) -> nn.Module:
    """A shallower student initialised from the teacher's weights: a deep copy with layers removed
    (:func:`~hf_sparse.pruning.structured.drop_layers_`, so every family of the module-role table works: the
    caches' layer indices, ``num_hidden_layers`` and ``layer_types`` follow).

    ``keep_every=k`` keeps every k-th layer counted from the first, ending on the top one when ``k`` divides the
    depth (6 layers, k=2: layers 1, 3, 5), which is the teacher layer the uniform :func:`auto_layer_map` pairs each
    student layer with. The layers removed are recorded in the student's config, so a saved student reloads with
    ``from_pretrained`` and :func:`layer_map_for` maps its layers back to the teacher's.

    Args:
        teacher: A transformers model of a family in the module-role table; it is not modified.
        keep_every: Keep layers ``k-1, 2k-1, ...`` (of every layer list of a seq2seq model unless ``stack``).
        keep_layers: The 0-based teacher layers to keep, instead of ``keep_every`` (a seq2seq model needs
            ``stack``).
        stack: In a seq2seq model (T5, BART), the layer list to cut: ``"encoder"`` or ``"decoder"``.

    Raises:
        ConfigError: neither or both given, an index out of range, or nothing kept.
        UnsupportedFamilyError: the family is not in the role table, ``keep_layers`` of a seq2seq model without
            ``stack``, or a cut :func:`~hf_sparse.pruning.structured.drop_layers_` refuses (dropping ModernBERT's
            first layer, GPT-2 scaling by the layer index, ALBERT with several layer groups).
    """
    if (keep_every is None) == (keep_layers is None):
        raise ConfigError("student_from_teacher: give exactly one of keep_every=k or keep_layers=[...].")
    drop: list = []
    kept_by_stack: dict[str, list[int]] = {}
    for stack_name, n in _depths(teacher, stack, keep_layers is not None).items():
        if keep_every is not None:
            if not (isinstance(keep_every, int) and 1 <= keep_every <= n):
                raise ConfigError(
                    f"student_from_teacher: keep_every must be an integer in [1, {n}], got {quote(keep_every)}."
                )
            keep = list(range(keep_every - 1, n, keep_every))
        else:
            keep = sorted(set(int(i) for i in keep_layers))  # type: ignore[union-attr]
            if not keep or keep[0] < 0 or keep[-1] >= n:
                raise ConfigError(
                    f"student_from_teacher: keep_layers must name layers in [0, {n - 1}] of the teacher, got "
                    f"{list(keep_layers)}."  # type: ignore[arg-type]
                )
        gone = [i for i in range(n) if i not in keep]
        drop += [f"{stack_name}.{i}" for i in gone] if stack_name else gone
        kept_by_stack[stack_name] = keep
    student = copy.deepcopy(teacher)
    try:
        drop_layers_(student, drop)
    except UnsupportedFamilyError as exc:
        reason = f"removing layers {drop} is refused: {exc} Choose keep_layers instead."
        raise refuse(teacher, FEATURE, reason) from None
    if "" not in kept_by_stack:  # seq2seq: the kept layers of each stack, for the Distiller's layer maps
        record = dict(kept_layers_by_stack(teacher) or {})
        for stack_name, keep in kept_by_stack.items():
            before = record.get(stack_name)  # a student of a student: indices of the first teacher
            record[stack_name] = [before[i] for i in keep] if before else keep
        setattr(student.config, KEPT_LAYERS_KEY, record)
    student.train(teacher.training)
    for p in student.parameters():
        p.requires_grad_(True)
    return student


#: The config attribute (saved in config.json) where a seq2seq student records, per layer list, the teacher layers
#: it kept (single-stack students record the dropped ones in ``quantization_config.structure``).
KEPT_LAYERS_KEY = "hf_sparse_kept_layers"


def kept_layers_by_stack(model: nn.Module) -> dict[str, list[int]] | None:
    """The teacher layers a seq2seq student made by :func:`student_from_teacher` kept, per layer list
    (``{"encoder": [1, 3], "decoder": [1, 3]}``), or None."""
    record = getattr(getattr(model, "config", None), KEPT_LAYERS_KEY, None)
    if not isinstance(record, dict):
        return None
    return {str(k): [int(i) for i in v] for k, v in record.items() if isinstance(v, (list, tuple))}


def freeze_teacher(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with every parameter frozen (in place); returns it."""
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def teacher_snapshot(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` to teach the model itself once it is changed: quantisation-aware training
    takes the snapshot of the float model, then quantises ``model`` and distils from the snapshot.

    Take it before the model is pruned: the copy is of the weights as they are now. A model already prepared for
    quantisation-aware training gives its float self: the copy's fake quantisers are switched off.
    """
    from ..nn.qat import FakeQuantizer

    snapshot = copy.deepcopy(model)
    for module in snapshot.modules():
        if isinstance(module, FakeQuantizer):
            module.enabled = False
    return freeze_teacher(snapshot)


def auto_layer_map(student_layers: int, teacher_layers: int, kept: Sequence[int] | None = None) -> list[int]:
    """For each student layer, the teacher layer it learns from.

    - ``kept`` (the teacher layers a layer-dropped student kept, in order): those layers;
    - same depth: one to one (a pruned student);
    - shallower: uniform, student layer ``i`` from teacher layer ``round((i + 1) * T / S) - 1``, so the top layers
      meet (6 -> 3: ``[1, 3, 5]``; 12 -> 4: ``[2, 5, 8, 11]``).

    Raises:
        ConfigError: a student deeper than its teacher (give an explicit ``layer_map``), or ``kept`` that does not fit.
    """
    if kept is not None:
        kept = list(kept)
        if len(kept) != student_layers or (kept and (min(kept) < 0 or max(kept) >= teacher_layers)):
            raise ConfigError(
                f"auto_layer_map: the student records kept teacher layers {kept}, which do not fit a {student_layers}-"
                f"layer student of a {teacher_layers}-layer teacher; give DistillationConfig.layer_map."
            )
        return kept
    if student_layers == teacher_layers:
        return list(range(student_layers))
    if student_layers > teacher_layers:
        raise ConfigError(
            f"auto_layer_map: the student has more layers ({student_layers}) than the teacher ({teacher_layers}); "
            "give DistillationConfig.layer_map (one teacher layer per student layer, -1 for none)."
        )
    return [round((i + 1) * teacher_layers / student_layers) - 1 for i in range(student_layers)]


def layer_map_for(student: nn.Module, teacher: nn.Module, explicit: Sequence[int] = ()) -> list[int]:
    """The layer map of a (student, teacher) pair: ``explicit`` when given (checked against both depths), else
    :func:`auto_layer_map`, using the layers a layer-dropped student records as removed."""
    s, t = _num_layers(student), _num_layers(teacher)
    if explicit:
        explicit = list(explicit)
        if len(explicit) != s or any(j >= t for j in explicit):
            raise ConfigError(
                f"DistillationConfig.layer_map must give one teacher layer in [0, {t - 1}] (or -1) for each of the "
                f"student's {s} layers, got {explicit}."
            )
        return explicit
    dropped = _dropped_so_far(student)
    kept = None
    if dropped and s + len(dropped) == t and not _dropped_so_far(teacher):
        kept = [i for i in range(t) if i not in dropped]
    return auto_layer_map(s, t, kept)


#: The config fields that decide a model's weight shapes and computation: a model a student starts from
#: (``distillation.student_from``) must agree with the job's model on each one it sets.
ARCHITECTURE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
    "hidden_act",
    "position_embedding_type",
)


def locate_start_model(value: str, who: str = "distillation.student_from") -> str:
    """The model folder (absolute) or cached Hub id a student starts from: ``value`` as a folder (relative to the
    working folder; a recipe loader already made a folder beside the recipe absolute), else a Hub id whose config
    is in the local cache.

    Raises:
        ConfigError: neither; the message says which job writes such a folder and the command that runs it (the
            packaged recipe named like the folder's parent when there is one, e.g. ``minilm-pofa-upstream``).
    """
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{who} {quote(value)}: the folder holds no config.json; name the folder a job saved a model in "
                "(<output>/<run>, e.g. minilm-pofa-upstream/pruned-80-kd)."
            )
        return str(path.resolve())
    if not path.is_absolute() and not value.startswith((".", "~")) and value.count("/") == 1:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(value, local_files_only=True)
            return value  # a cached Hub model
        except (OSError, ValueError):
            pass
    raise ConfigError(_missing_start_message(value, path, who))


def _missing_start_message(value: str, path, who: str) -> str:
    from .._resources import data_dir

    output, run = path.parent, path.name
    recipe = data_dir("recipes") / f"{output.name}.yaml"
    if output.name and recipe.is_file():
        command = f"hf-sparse compress {output.name} --output {output}"
        origin = f"the packaged recipe {output.name} saves it"
    else:
        command = f"hf-sparse compress <the recipe that saves it> --output {output}"
        origin = "a job saves it"
    return (
        f"{who} {quote(value)}: no model folder there ({path.absolute()}) and no cached Hub model of that name. The "
        f"students start from a model another job saves ({origin} as {quote(run)} in its output folder): run that job "
        f"first, `{command}`, from the folder you run this recipe from (a relative student_from is read against the "
        "recipe file's folder when it exists there, else against the working folder)."
    )


def check_start_architecture(start_config, model_config, start: str, model: str, who: str) -> None:
    """Refuse a model to start students from whose architecture (:data:`ARCHITECTURE_KEYS`) differs from the job's
    model, or that is saved in a compressed checkpoint format (its layers would not be plain trainable ones).

    Raises:
        ConfigError: naming both models and every differing setting.
    """
    differ = []
    for key in ARCHITECTURE_KEYS:
        a, b = getattr(start_config, key, None), getattr(model_config, key, None)
        if a is not None and b is not None and a != b:
            differ.append(f"{key} {quote(a)} vs {quote(b)}")
    if differ:
        raise ConfigError(
            f"{who} {quote(start)} does not have the architecture of model.name {quote(model)}: "
            f"{'; '.join(differ)} (student_from vs model.name). A student starts from a model of the same "
            "architecture (e.g. that model pruned by an upstream masked-lm recipe)."
        )
    quantization = getattr(start_config, "quantization_config", None)
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    method = method or getattr(quantization, "quant_method", None)
    if quantization is not None:
        raise ConfigError(
            f"{who} {quote(start)} is stored in a compressed checkpoint format (quantization_config "
            f"{quote(method)}); a student needs plain weights with zeros: save the model it comes from with "
            "checkpoint.format: dense."
        )
