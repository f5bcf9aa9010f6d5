"""From a classification recipe to what runs: its ``overrides`` resolved into exact module names, its plans (one
single-stage run per combination of a flat recipe's settings, or one run of its stages), and every plan checked
against the model built on the meta device before any data is read or any training starts."""

from __future__ import annotations

import torch

from ..config import anchor_message
from ..data import LABEL_NAMES, resolve_model
from ..errors import ConfigError, RecipeError, quote
from ..method import METHOD_REGISTRY
from .heads import head_for, meta_task_model
from .plan import RunPlan, Stage, expand_variants, method_sections, run_name

__all__ = ["preflight", "recipe_plans"]


#: The report entries of a run that prunes no weights (the pruning method's record replaces them when it prunes).
_UNPRUNED = {"sparsity": 0.0, "pruned_params": 0, "prunable_params": 0, "layers": {}}


def recipe_plans(recipe, *, adjust=None) -> list[RunPlan]:
    """The runs of ``recipe``: for a flat recipe, one single-stage run per target sparsity and per variant its
    methods ask for (with and without a teacher, QAT and PTQ...), in that order; for a staged recipe, one run.

    Args:
        adjust: ``adjust(sections) -> sections``: changes each flat run's sections before it is named (the
            sensitivity scan's per-layer sparsities and ranks).
    """
    if recipe.stages:
        return [_staged_plan(recipe.name, recipe.stages, recipe.pruning)]
    if recipe.candidates:
        return [
            _staged_plan(c.name, c.stages, recipe.pruning, staged=len(c.stages) > 1, start_from=c.start_from)
            for c in recipe.candidates
        ]
    distil = recipe.distillation
    start_from = distil.student_from if distil is not None else "dense"  # dense, pretrained or a model folder
    plans = []
    for cfg in recipe.pruning_runs():
        sections = {k: v for k, v in method_sections(recipe).items() if k != "pruning"}
        if cfg.sparsity > 0:
            sections["pruning"] = cfg
        if adjust is not None:
            sections = adjust(sections)
        for chosen, extra in expand_variants(sections):
            record = {
                **_UNPRUNED,
                "target_sparsity": cfg.sparsity,
                "pruning_config": chosen.get("pruning", cfg).to_dict(),
            }
            plans.append(
                RunPlan(
                    run_name(chosen),
                    (Stage("train", recipe.pruned, chosen),),
                    record={**record, **extra},
                    start_from=start_from,
                )
            )
    return plans


def _staged_plan(name: str, stage_sections, default_pruning, *, staged: bool = True, start_from: str = "dense"):
    """One run of ``stage_sections`` (a staged recipe's stages, or a candidate's), named ``name``."""
    stages = tuple(Stage(st.name, st.train, method_sections(st)) for st in stage_sections)
    used = [s.sections["pruning"] for s in stages if "pruning" in s.sections]
    cfg = used[-1] if used else default_pruning
    record = {**_UNPRUNED, "target_sparsity": cfg.sparsity if used else 0.0, "pruning_config": cfg.to_dict()}
    return RunPlan(name, stages, record=record, staged=staged, start_from=start_from)


def _check_stage(model, stage: Stage, where: str, info: dict) -> None:
    """Every method of ``stage`` checked (and applied, where it changes shapes or names) on the meta ``model``."""
    methods = sorted((METHOD_REGISTRY.get(n) for n in stage.sections), key=lambda m: m.sort_key)
    for method in methods:
        if stage.train is None and method.trains:
            raise ConfigError(f"{where}{method.name} acts during training; give the stage a train section.")
        method.preflight(model, stage.sections[method.name], where, info)


def preflight(recipe):
    """Every check of ``recipe`` that needs the model, run before any data is read or any training starts: the model
    and the teacher load, and every module name, layer index and layer map the recipe gives (in its sections, its
    stages and its ``overrides``) exists in them — a typo must not surface after the dense baseline's fine-tuning.
    Each run the recipe plans is checked by its methods' ``preflight`` hooks against the model on the meta device,
    transformed as the earlier methods and stages would (layers dropped, attention switched).

    Returns:
        The recipe with its ``overrides`` resolved into the sections they change (exact module names in
        ``layer_sparsity``, ``module_bits``, ``module_ranks`` and ``exclude_modules``): what the job runs and what
        is saved with each checkpoint.

    Raises:
        RecipeError: the message names the recipe key and what the model has instead.
    """
    head = head_for(recipe.task)
    # The labels are known before the data is read for the packaged data and where the recipe names them; otherwise
    # the model's own head size stands in here, and the teacher's labels are checked once the data is read.
    if not head.labelled:
        label_names = None
    elif recipe.data.packaged:
        label_names = LABEL_NAMES
    else:
        label_names = recipe.data.label_names
    num_labels = len(label_names) if label_names is not None else None

    def meta_model():
        return meta_task_model(head, resolve_model(recipe.model.name), "model.name", num_labels=num_labels)

    try:
        model = meta_model()
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and recipe.model.max_length > positions:
            raise ConfigError(
                f"model.max_length {recipe.model.max_length} is beyond the model's {positions} positions "
                "(max_position_embeddings); use at most that."
            )
        info = {
            "cut": False,
            "num_labels": num_labels,
            "label_names": label_names,
            "meta_teacher": lambda name, who: meta_task_model(head, resolve_model(name), who, num_labels=None),
            "meta_model": meta_model,
        }
        if recipe.stages:
            # Each stage's overrides are resolved, and the stage checked, against the model as the stages before it
            # leave it.
            stages = []
            for i, st in enumerate(recipe.stages):
                st = _resolve_overrides(recipe, model, st)
                _check_stage(model, Stage(st.name, st.train, method_sections(st)), f"stages[{i}].", info)
                stages.append(st)
            return recipe.replace(stages=tuple(stages))
        if recipe.candidates:
            # Each candidate from its own start, its stages resolved and checked in order as for a staged recipe.
            candidates = []
            for c, cand in enumerate(recipe.candidates):
                model = meta_model()
                stages = []
                for i, st in enumerate(cand.stages):
                    st = _resolve_overrides(recipe, model, st, sections=cand.stages)
                    _check_stage(
                        model, Stage(st.name, st.train, method_sections(st)), f"candidates[{c}].stages[{i}].", info
                    )
                    stages.append(st)
                candidates.append(cand.replace(stages=tuple(stages)))
            return recipe.replace(candidates=tuple(candidates))
        recipe = _resolve_overrides(recipe, model, recipe)
        checked = set()
        for plan in recipe_plans(recipe):
            (stage,) = plan.stages
            if stage.sections.keys() - checked:  # every method once, on a model that the others transformed
                checked |= stage.sections.keys()
                model = meta_model()
                _check_stage(model, stage, "", {**info, "cut": False})
        return recipe
    except RecipeError:
        raise
    except ConfigError as exc:
        message = anchor_message(recipe, str(exc))
        raise RecipeError(
            f"recipe {quote(recipe.name)} does not fit its model ({recipe.model.name}): {message}"
        ) from None


def _resolve_overrides(recipe, model, section, *, sections=None):
    """``section`` (the recipe itself, or one of its stages) with each entry of ``recipe.overrides`` turned into the
    exact module names of ``model`` in the pruning, quantization and lowrank settings it changes (``sections``: the
    stages the section belongs to, when not the recipe's own)."""
    from ..nn.matching import _matches

    names = [n for n, _ in model.named_modules() if n]
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    sections = sections or recipe.stages or (recipe,)
    for i, entry in enumerate(recipe.overrides):
        matched = [n for n in names if any(_matches(n, p) for p in entry.modules)]
        if not matched:
            raise ConfigError(
                f"overrides[{i}].modules: {list(entry.modules)} match no module of the model; its modules include "
                f"{names[:8]}."
            )
        layers = [n for n in matched if n in linears]
        for method, value in (("pruning", entry.sparsity), ("quantization", entry.bits), ("lowrank", entry.rank)):
            if value is None and method not in entry.skip:
                continue
            if method == "pruning" and not recipe.stages and not recipe.candidates:
                present = any(cfg.sparsity > 0 for cfg in recipe.pruning_runs())
            else:
                present = any(getattr(sec, method) is not None for sec in sections)
            if not present:
                raise ConfigError(
                    f"overrides[{i}] sets {method} for {list(entry.modules)}, but the recipe has no {method}."
                )
        if (entry.sparsity is not None or entry.bits is not None or entry.rank is not None) and not layers:
            raise ConfigError(f"overrides[{i}].modules: {list(entry.modules)} match no Linear layer: {matched[:6]}.")
        section = _override_section(section, entry, layers, matched)
    return section


def _override_section(sec, entry, layers: list[str], matched: list[str]):
    """A recipe or stage with one ``overrides`` entry applied to its pruning, quantization and lowrank sections."""
    changes = {}
    if sec.pruning is not None and entry.sparsity is not None:
        changes["pruning"] = {
            "layer_sparsity": {**sec.pruning.layer_sparsity, **dict.fromkeys(layers, entry.sparsity)}
        }
    if sec.quantization is not None and entry.bits is not None:
        changes["quantization"] = {
            "module_bits": {**sec.quantization.module_bits, **dict.fromkeys(layers, entry.bits)}
        }
    if sec.lowrank is not None and entry.rank is not None:
        changes["lowrank"] = {"module_ranks": {**sec.lowrank.module_ranks, **dict.fromkeys(layers, entry.rank)}}
    for method in entry.skip:
        if getattr(sec, method) is not None:
            excluded = (*getattr(sec, method).exclude_modules, *matched)
            changes.setdefault(method, {})["exclude_modules"] = excluded
    return sec.replace(**{key: getattr(sec, key).replace(**fields) for key, fields in changes.items()})
