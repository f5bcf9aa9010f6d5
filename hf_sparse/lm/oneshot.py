"""``task: causal-lm``: one-shot pruning of a decoder language model on the user's text, perplexity against dense.

:func:`run_causal_lm` does, in one process, on CPU in float32:

1. **checks** before any weight is read: the model is a decoder with a causal-LM head (an encoder, a classifier or
   a seq2seq model is refused with :class:`~hf_sparse.nn.roles.UnsupportedFamilyError` naming its family), the
   sequence length fits its positions, and the user's text loads (:func:`hf_sparse.data.load_user_data`: bad data
   is a :class:`~hf_sparse.errors.DataError` naming file, column and row);
2. **dense**: perplexity on the held-out windows (documents never used for calibration);
3. **each run**, from a copy of the dense model: SparseGPT or Wanda calibrated block by block on the calibration
   sequences (:func:`~hf_sparse.pruning.calibration.calibrate_sequentially`: only the current block's inputs for
   the calibration set are held, never the whole model's activations; the peak resident memory of the calibration
   is measured and reported), or magnitude pruning per layer (no calibration); each pruned layer checked for its
   exact sparsity or N:M pattern, every other parameter (LM head, embeddings, norms) checked unchanged; perplexity;
4. **checkpoint**: the pruned layers stored sparse (:func:`~hf_sparse.nn.sparsify_`), saved with the tokenizer, the
   resolved recipe and a model card, reloaded with ``from_pretrained`` and compared logit for logit on the first
   held-out window;
5. ``report.json`` and ``report.md``: perplexity dense and per run with the relative change, sparsity achieved,
   calibration time, peak memory, checkpoint bytes, the machine.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import resource
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from ..errors import ConfigError, quote
from ..resilience import atomic_folder, atomic_write_text, confined_path, remove_stale_partials
from .oneshot_config import (
    CAUSAL_LM_OUTPUTS,
    CausalLmCheckpointSection,
    CausalLmDataSection,
    CausalLmRecipe,
    OneShotRun,
    load_causal_lm_recipe,
)
from .oneshot_data import (
    CausalLmText,
    calibration_offsets,
    calibration_windows,
    covered_tokens,
    eval_windows,
    load_causal_lm_text,
    token_stream,
)

__all__ = [
    "CausalLmRecipe",
    "CausalLmDataSection",
    "CausalLmCheckpointSection",
    "OneShotRun",
    "load_causal_lm_recipe",
    "run_causal_lm",
    "check_causal_decoder",
    "window_perplexity",
    "prune_oneshot_",
    "CALIBRATION_BATCH",
]

logger = logging.getLogger(__name__)

#: Calibration sequences per forward pass: large enough for efficient matrix products, small enough that one
#: batch's MLP activations stay a few tens of MB at 512 tokens.
CALIBRATION_BATCH = 8

#: The resolved recipe saved with each checkpoint (the name every job uses).
RECIPE_FILE = "hf_sparse_recipe.yaml"

FEATURE = "one-shot causal-LM pruning (task: causal-lm)"


# -- model checks -----------------------------------------------------------------------------------------------


def check_causal_decoder(config, name: str) -> None:
    """Refuse, before its weights are read, a model that is not a decoder language model.

    Raises:
        UnsupportedFamilyError: an encoder-decoder (seq2seq) model, an encoder family (BERT ...), a model type
            without a causal-LM class in transformers, or a checkpoint whose architecture is another task's (a
            sequence classifier of a decoder family); the message names the family and the model.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from ..nn.roles import UnsupportedFamilyError, family_display_name, family_of

    stub = SimpleNamespace(config=config)
    family = family_display_name(stub)
    model_type = getattr(config, "model_type", "") or ""
    entry = family_of(stub)
    where = f"{quote(name)}: "
    if getattr(config, "is_encoder_decoder", False) or (entry is not None and entry.kind == "seq2seq"):
        raise UnsupportedFamilyError(
            family,
            FEATURE,
            f"{where}it is an encoder-decoder (seq2seq) model; this job prunes decoder-only language models and "
            "measures their next-token perplexity. Use a decoder (Llama, Qwen2, Mistral, GPT-2, SmolLM2 ...).",
        )
    if entry is not None and entry.kind != "decoder":
        raise UnsupportedFamilyError(
            family,
            FEATURE,
            f"{where}it is an {entry.kind} model (bidirectional attention, no next-token head); prune it with a "
            "text-classification or masked-lm recipe instead.",
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedFamilyError(
            family,
            FEATURE,
            f"{where}transformers has no causal-LM class for model type {quote(model_type)} "
            "(AutoModelForCausalLM cannot load it).",
        )
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        raise UnsupportedFamilyError(
            family,
            FEATURE,
            f"{where}the checkpoint is a {quote(architectures[0])}, not a language model (its head predicts "
            "something other than the next token); give the base or instruction-tuned causal LM.",
        )


def _model_path(name: str) -> tuple[str, str]:
    """(what ``from_pretrained`` reads, the name for the report and the card's ``base_model``)."""
    from ..data import hub_id, resolve_model, smollm2_path
    from .config import SMOLLM2_ALIASES

    if name in SMOLLM2_ALIASES:
        return str(smollm2_path()), "HuggingFaceTB/SmolLM2-135M-Instruct"
    return resolve_model(name), hub_id(name)


# -- measurements -----------------------------------------------------------------------------------------------


def _rss_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` (Linux), in bytes; None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident size (``VmHWM``), so the next reading is the peak of what follows.
    Linux only (``/proc/self/clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    hwm = _rss_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


@torch.no_grad()
def window_perplexity(model, windows: torch.Tensor, *, desc: str = "perplexity") -> dict[str, Any]:
    """Perplexity of ``model`` on token windows: each window one forward pass (batch 1, no padding), every token
    but a window's first predicted from the ones before it in the window; exp of the mean negative log-likelihood
    over all predicted tokens of all windows.

    Shapes:
        windows: ``(n, seq_len)`` int64.

    Returns:
        ``{"perplexity", "nll", "tokens", "windows", "first_logits"}`` (``first_logits``: the first window's logits,
        ``(1, seq_len, vocab)``, for the reload check).
    """
    model.eval()
    total, count, first = 0.0, 0, None
    for i in tqdm(range(windows.shape[0]), desc=desc, leave=False):
        ids = windows[i : i + 1]
        logits = model(input_ids=ids).logits
        nll = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum")
        total += float(nll)
        count += ids.shape[1] - 1
        if i == 0:
            first = logits.clone()
        del logits
    nll = total / count
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "tokens": count,
        "windows": int(windows.shape[0]),
        "first_logits": first,
    }


# -- pruning ----------------------------------------------------------------------------------------------------


def prune_oneshot_(model, run: OneShotRun, batches: list[dict]) -> dict[str, Any]:
    """Prune ``model`` in place as ``run`` says; SparseGPT and Wanda calibrate on ``batches`` block by block.

    Returns:
        ``{"seconds", "calibration": {"batches", "tokens"} or None, "peak_rss_bytes", "rss_before_bytes",
        "peak_reset"}`` (the peak resident memory of this process while pruning: with ``peak_reset`` false the
        process's peak since it started).
    """
    from ..pruning.apply import prune_
    from ..pruning.config import PruningConfig
    from ..pruning.oneshot import sparsegpt_prune_, wanda_prune_

    nm = run.nm
    gc.collect()
    rss_before = _rss_bytes("VmRSS") or 0
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    calibration = None
    if run.method in ("sparsegpt", "wanda"):
        kwargs = dict(
            target_modules=run.target_modules,
            exclude_modules=run.exclude_modules,
            nm=nm,
            sequential=True,
            progress=True,
        )
        if run.method == "sparsegpt":
            report = sparsegpt_prune_(
                model, batches, run.sparsity, blocksize=run.blocksize, percdamp=run.percdamp, **kwargs
            )
        else:
            report = wanda_prune_(model, batches, run.sparsity, **kwargs)
        calibration = report["calibration"]
    else:
        config = PruningConfig(
            sparsity=run.target_sparsity,
            criterion="magnitude",
            scope="layer",
            schedule="oneshot",
            granularity="nm" if nm else "unstructured",
            n=nm[0] if nm else 2,
            m=nm[1] if nm else 4,
            target_modules=run.target_modules,
            exclude_modules=run.exclude_modules,
        )
        prune_(model, config)
    return {
        "seconds": time.perf_counter() - t0,
        "calibration": calibration,
        "peak_rss_bytes": _peak_rss_bytes(),
        "rss_before_bytes": rss_before,
        "peak_reset": reset,
    }


def _layer_checks(model, dense_params: dict[str, torch.Tensor], run: OneShotRun) -> dict[str, Any]:
    """What pruning did, read from the weights: each pruned layer's sparsity (and whether every group of ``m``
    input columns of every row keeps at most ``n``), and whether every other parameter is the dense one."""
    from ..nn.linear_like import linear_weight
    from ..nn.matching import match_linears

    chosen = match_linears(model, run.target_modules, run.exclude_modules, who=f"runs[{run.label}]")
    nm = run.nm
    layers: dict[str, float] = {}
    pattern_ok = True
    zeros = total = 0
    pruned_params = set()
    for name, module in chosen.items():
        w = linear_weight(module).detach()
        z = int((w == 0).sum())
        layers[name] = z / w.numel()
        zeros += z
        total += w.numel()
        pruned_params.add(f"{name}.weight")
        if nm is not None:
            groups = (w != 0).reshape(w.shape[0], -1, nm[1]).sum(-1)
            pattern_ok = pattern_ok and bool((groups <= nm[0]).all())
    changed = [
        n
        for n, p in model.named_parameters()
        if n not in pruned_params and not torch.equal(p.detach(), dense_params[n])
    ]
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return {
        "sparsity": zeros / total if total else 0.0,
        "nonzero_params": nonzero,
        "pruned_params": zeros,
        "prunable_params": total,
        "layers": {n: round(v, 6) for n, v in layers.items()},
        "min_layer_sparsity": min(layers.values()),
        "max_layer_sparsity": max(layers.values()),
        "pattern_holds": pattern_ok if nm is not None else None,
        "unpruned_unchanged": not changed,
        "unpruned_changed": changed[:10],
    }


# -- checkpoint -------------------------------------------------------------------------------------------------


def _save(model, tokenizer, run: OneShotRun, folder: Path, section: CausalLmCheckpointSection, recipe_text: str):
    """Store the pruned layers sparse and save model, tokenizer and recipe into ``folder`` (atomic). Returns the
    storage decision per layer."""
    from ..nn import sparsify_

    formats: dict[str, str] = {}
    if section.format != "dense":
        decisions = sparsify_(
            model,
            format=section.format,
            batch_hint=section.batch_hint,
            min_sparsity=section.min_sparsity,
            target_modules=run.target_modules,
            exclude_modules=run.exclude_modules,
            progress=False,
        )
        formats = {n: d.choice.format for n, d in decisions.items()}
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(recipe_text)
    return formats


@torch.no_grad()
def _verify(model, folder: Path, window: torch.Tensor, pruned_logits: torch.Tensor) -> dict[str, Any]:
    """Reload ``folder`` with ``from_pretrained`` and compare its logits on ``window`` with the saved model's
    (identical expected: the same stored values, the same kernels) and with the pruned weights' before storage
    (a sparse format sums in another order: rounding-level differences)."""
    from transformers import AutoModelForCausalLM

    from ..nn import SparseLinear

    saved_logits = model(input_ids=window).logits
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    logits = reloaded(input_ids=window).logits
    return {
        "identical_logits": bool(torch.equal(logits, saved_logits)),
        "max_abs_logit_diff": float((logits - saved_logits).abs().max()),
        "max_abs_logit_diff_vs_pruned": float((saved_logits - pruned_logits).abs().max()),
        "sparse_layers_loaded": sum(isinstance(m, SparseLinear) for m in reloaded.modules()),
        "tokens": int(window.shape[1]),
    }


def _card(folder: Path, report: dict, entry: dict, recipe: CausalLmRecipe) -> None:
    import json

    from ..integrations.hub import RESULTS_FILE, write_model_card
    from .oneshot_report import card_results

    results = card_results(report, entry, recipe)
    atomic_write_text(folder / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    write_model_card(folder, results=results)


# -- the job ----------------------------------------------------------------------------------------------------


def run_causal_lm(recipe: CausalLmRecipe, output_dir: str | Path, *, recipe_source: str | None = None) -> dict:
    """Run ``recipe``: write ``report.json``, ``report.md``, ``recipe.yaml`` and one saved model per run
    (``<output_dir>/<run>/``) to ``output_dir``.

    With ``recipe.threads`` set, torch runs the whole job with that many threads; the caller's setting is restored
    afterwards.

    Returns:
        The report (what ``report.json`` holds).

    Raises:
        UnsupportedFamilyError: the model is not a decoder language model.
        DataError: the text cannot be used (too short, empty split, bad file ...).
        ConfigError: ``data.seq_len`` exceeds the model's positions, a run's pattern does not divide a layer, ...
    """
    from ..machine import torch_threads

    with torch_threads(recipe.threads):
        return _run(recipe, Path(output_dir), recipe_source)


def _load(recipe: CausalLmRecipe, timings: dict):
    """Config check, tokenizer, text, then the weights: every check that can fail fast runs before the load."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    path, model_id = _model_path(recipe.model.name)
    config = AutoConfig.from_pretrained(path)
    check_causal_decoder(config, recipe.model.name)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit is not None and recipe.data.seq_len > limit:
        raise ConfigError(
            f"data.seq_len: {recipe.data.seq_len} tokens exceed the {limit} positions of {quote(recipe.model.name)}; "
            f"set data.seq_len to at most {limit} in the recipe."
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = load_causal_lm_text(recipe.data)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    timings["load_s"] = time.perf_counter() - t0
    return model, tokenizer, text, path, model_id


def _windows(recipe: CausalLmRecipe, tokenizer, text: CausalLmText, timings: dict):
    t0 = time.perf_counter()
    d = recipe.data
    calib_stream = token_stream(tokenizer, text.calibration)
    held_stream = token_stream(tokenizer, text.held_out)
    starts = calibration_offsets(
        calib_stream.numel(), d.calibration_samples, d.seq_len, d.seed, f"{text.source} (calibration)"
    )
    calib = calibration_windows(calib_stream, starts, d.seq_len)
    held = eval_windows(held_stream, d.seq_len, d.eval_tokens, f"{text.source} (held out)")
    timings["tokenize_s"] = time.perf_counter() - t0
    info = {
        "source": text.source,
        "seed": d.seed,
        "calibration_documents": len(text.calibration),
        "calibration_stream_tokens": int(calib_stream.numel()),
        "calibration_sequences": int(calib.shape[0]),
        "calibration_distinct_tokens": covered_tokens(starts, d.seq_len),
        "held_out_documents": len(text.held_out),
        "held_out_stream_tokens": int(held_stream.numel()),
        "held_out_titles": text.held_out_titles,
        "seq_len": d.seq_len,
        "eval_windows": int(held.shape[0]),
    }
    return calib, held, info


def _run(recipe: CausalLmRecipe, output_dir: Path, recipe_source: str | None) -> dict:
    from ..jobs.report import write_report
    from ..jobs.training import checkpoint_bytes, dense_checkpoint_bytes
    from ..machine import machine_info
    from .oneshot_report import render_causal_lm_markdown, summary_lines

    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    labels = [run.label for run in recipe.runs]
    # Saves a killed job left half-written (hidden temporaries of this job's own outputs) go first.
    remove_stale_partials(output_dir, [*CAUSAL_LM_OUTPUTS, *labels])
    folders = {label: confined_path(output_dir, label) for label in labels}  # an escaping name fails here
    timings: dict[str, float] = {}
    torch.manual_seed(recipe.data.seed)

    model, tokenizer, text, path, model_id = _load(recipe, timings)
    calib, held, data_info = _windows(recipe, tokenizer, text, timings)
    batches = [{"input_ids": calib[i : i + CALIBRATION_BATCH]} for i in range(0, calib.shape[0], CALIBRATION_BATCH)]
    logger.info(
        "hf-sparse causal-lm: %s; %d calibration sequences of %d tokens from %d documents, %d held-out windows "
        "from %d documents",
        data_info["source"],
        calib.shape[0],
        recipe.data.seq_len,
        data_info["calibration_documents"],
        held.shape[0],
        data_info["held_out_documents"],
    )

    logger.info("hf-sparse causal-lm: dense perplexity (%d windows)", held.shape[0])
    t0 = time.perf_counter()
    dense_eval = window_perplexity(model, held, desc="perplexity (dense)")
    timings["eval_dense_s"] = time.perf_counter() - t0
    dense_eval.pop("first_logits")
    # Every run prunes a copy, so the dense model's own parameters are the reference of the unchanged-parameter check.
    dense_params = {n: p.detach() for n, p in model.named_parameters()}
    dense = {
        **dense_eval,
        "checkpoint_bytes": dense_checkpoint_bytes(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_params": sum(int((p != 0).sum()) for p in model.parameters()),
    }
    logger.info("hf-sparse causal-lm: dense perplexity %.3f", dense["perplexity"])

    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
    blocks = _block_count(model)
    recipe_text = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    report: dict[str, Any] = {
        "recipe": recipe_source or recipe.name,
        "name": recipe.name,
        "task": "causal-lm",
        "model": {
            "name": recipe.model.name,
            "hub_id": model_id,
            "path": path,
            "model_type": model.config.model_type,
            "parameters": dense["parameters"],
            "blocks": blocks,
            "hidden_size": hidden,
        },
        "data": data_info,
        "dense": dense,
        "runs": [],
        "memory": {
            # One block's inputs for the whole calibration set (float32), what block-by-block calibration holds
            # (twice while one block's outputs become the next one's inputs), against all blocks' at once.
            "one_block_activations_bytes": int(calib.numel() * (hidden or 0) * 4),
            "all_blocks_activations_bytes": int(calib.numel() * (hidden or 0) * 4 * (blocks or 0)),
            "model_bytes": int(sum(p.numel() * p.element_size() for p in model.parameters())),
        },
        "machine": machine_info(),
        "timings": timings,
    }
    for run in recipe.runs:
        entry = _one_run(
            model, tokenizer, run, recipe, batches, held, dense, dense_params, folders[run.label], recipe_text, report
        )
        entry["checkpoint_bytes"] = checkpoint_bytes(folders[run.label]) if recipe.checkpoint.save else None
        report["runs"].append(entry)
        if recipe.checkpoint.save:
            _card(folders[run.label], report, entry, recipe)
        gc.collect()

    timings["total_s"] = time.perf_counter() - started
    report["total_s"] = timings["total_s"]
    report["summary"] = summary_lines(report)
    write_report(output_dir, report, render_causal_lm_markdown(report), recipe_text, indent=1)
    return report


def _block_count(model) -> int | None:
    from ..nn.roles import layer_lists

    lists = layer_lists(model)
    return sum(len(ml) for _, ml in lists) if lists else None


def _one_run(
    model, tokenizer, run: OneShotRun, recipe, batches, held, dense, dense_params, folder, recipe_text, report
) -> dict:
    label = run.label
    what = f"{run.method}, {run.structure}" + ("" if run.nm else f" {run.target_sparsity:.0%}")
    logger.info("hf-sparse causal-lm: %s (%s)", label, what)
    pruned = copy.deepcopy(model)
    t0 = time.perf_counter()
    pruning = prune_oneshot_(pruned, run, batches if run.method != "magnitude" else [])
    checks = _layer_checks(pruned, dense_params, run)
    ev = window_perplexity(pruned, held, desc=f"perplexity ({label})")
    first_logits = ev.pop("first_logits")
    entry: dict[str, Any] = {
        "name": label,
        "method": run.method,
        "structure": run.structure,
        "target_sparsity": run.target_sparsity,
        "config": run.to_dict(header=False),
        **ev,
        "relative_change": ev["perplexity"] / dense["perplexity"] - 1.0,
        **checks,
        "prune_s": pruning["seconds"],
        "calibration": pruning["calibration"],
        "memory": {
            "rss_before_bytes": pruning["rss_before_bytes"],
            "peak_rss_bytes": pruning["peak_rss_bytes"],
            "peak_above_start_bytes": max(0, pruning["peak_rss_bytes"] - pruning["rss_before_bytes"]),
            "peak_reset": pruning["peak_reset"],
        },
    }
    logger.info(
        "hf-sparse causal-lm: %s perplexity %.3f (dense %.3f, %+.1f%%), sparsity %.1f%%, pruning %.0f s",
        label,
        ev["perplexity"],
        dense["perplexity"],
        100 * entry["relative_change"],
        100 * checks["sparsity"],
        pruning["seconds"],
    )
    if recipe.checkpoint.save:
        ts = time.perf_counter()
        entry["formats"] = _save(pruned, tokenizer, run, folder, recipe.checkpoint, recipe_text)
        entry["save_s"] = time.perf_counter() - ts
        entry["checkpoint"] = label
        if recipe.checkpoint.verify:
            entry["round_trip"] = _verify(pruned, folder, held[:1], first_logits)
            logger.info("hf-sparse causal-lm: %s reloaded: %s", label, entry["round_trip"])
    entry["run_s"] = time.perf_counter() - t0
    del pruned, first_logits
    return entry
