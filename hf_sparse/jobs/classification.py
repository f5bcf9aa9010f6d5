"""The text-classification task: the packaged sentiment data, a sequence classifier, accuracy on the test split.

:class:`ClassificationTask` is what the stage loop (:func:`~hf_sparse.jobs.runner.run_plan`) and the methods' job
hooks use of a task: a model to start from, fine-tuning, evaluation, calibration batches, token frequencies,
teachers, saving, reloading and timing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from ..data import LABEL_NAMES, load_rotten_tomatoes, resolve_model, stratified_subset
from ..errors import ConfigError, quote
from ..resilience import atomic_folder, confined_path
from .training import barrier, dense_baselines, finetune, is_main_process, latency, training_args

__all__ = ["ClassificationTask", "prepare_data", "load_classifier", "meta_classifier", "labelled_batches"]


def prepare_data(recipe):
    """The recipe's model path, tokenizer, test split (text), tokenized train and test splits, the test split's
    majority-class accuracy, and the tokenized validation split."""
    from transformers import AutoTokenizer

    model_path = resolve_model(recipe.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    splits = load_rotten_tomatoes(
        seed=recipe.data.seed,
        validation_fraction=recipe.data.validation_fraction,
        test_fraction=recipe.data.test_fraction,
    )
    train = stratified_subset(splits["train"], recipe.data.train_limit, seed=recipe.data.seed)
    test = stratified_subset(splits["test"], recipe.data.test_limit, seed=recipe.data.seed)

    def tokenize(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=recipe.model.max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    train_tok = train.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing train")
    test_tok = test.map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing test")
    val_tok = splits["validation"].map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing validation")
    majority = max(np.bincount(np.asarray(test["label"]), minlength=len(LABEL_NAMES))) / len(test)
    return model_path, tokenizer, test, train_tok, test_tok, float(majority), val_tok


def load_classifier(model_path: str, seed: int):
    """The sequence classifier of the task's labels on ``model_path`` (new head initialised with ``seed``)."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        model_path,
        num_labels=len(LABEL_NAMES),
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={n: i for i, n in enumerate(LABEL_NAMES)},
    )


def meta_classifier(model_path: str, who: str, *, num_labels: int | None = len(LABEL_NAMES)):
    """The task's classifier on ``model_path`` built on the meta device (no weights read: shapes and names only);
    ``num_labels=None`` keeps the labels of the saved config (a teacher's)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        extra = {} if num_labels is None else {"num_labels": num_labels}
        config = AutoConfig.from_pretrained(model_path, **extra)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{who}: cannot read a model config from {quote(model_path)} (a packaged alias, a local folder or a Hub "
            f"id already in the cache; there is no download here): {str(exc).splitlines()[0]}"
        ) from None
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


def labelled_batches(train_tok, tokenizer, samples: int, seed: int) -> list[dict]:
    """``samples`` seeded training examples as padded batches of 32 with labels (Taylor scores need the loss)."""
    from transformers import DataCollatorWithPadding

    subset = train_tok.shuffle(seed=seed).select(range(min(samples, len(train_tok))))
    subset = subset.remove_columns([c for c in subset.column_names if c == "length"])
    collate = DataCollatorWithPadding(tokenizer)
    return [collate([subset[j] for j in range(i, min(i + 32, len(subset)))]) for i in range(0, len(subset), 32)]


def token_frequencies(train_tok, model) -> dict[str, torch.Tensor]:
    """How often each token id occurs in the tokenised training set, for the model's input (word) embedding table,
    by its module name (its hot rows; other tables get no frequencies)."""
    table = model.get_input_embeddings()
    name = next(n for n, m in model.named_modules() if m is table)
    counts = torch.zeros(table.weight.shape[0], dtype=torch.float64)
    for row in train_tok["input_ids"]:
        counts += torch.bincount(torch.as_tensor(row), minlength=counts.numel()).double()
    return {name: counts}


def predict(model, dataset, tokenizer, section, work: Path) -> tuple[float, np.ndarray]:
    """(accuracy, logits) of ``model`` on ``dataset``."""
    from transformers import DataCollatorWithPadding, Trainer

    trainer = Trainer(
        model=model,
        args=training_args(section, work),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    output = trainer.predict(dataset, metric_key_prefix="test")
    # Predicting marks the model itself as prepared by accelerate (``_is_accelerate_prepared``); a Trainer that
    # later trains it, or a copy of it, would then skip the DDP wrapping and its ranks would drift apart.
    if "_is_accelerate_prepared" in vars(model):
        del model._is_accelerate_prepared
    logits = np.asarray(output.predictions)
    return float((logits.argmax(-1) == np.asarray(output.label_ids)).mean()), logits


class ClassificationTask:
    """Sequence classification on the recipe's data (see the module docstring).

    Args:
        recipe: The resolved recipe.
        data: What :func:`prepare_data` returned.
        dense_model: The fine-tuned dense baseline (copied by each run, timed against).
        work: The Trainer folder of the job.
    """

    metric = "test_accuracy"

    def __init__(self, recipe, data, dense_model, work: Path, *, save_steps: int = 0):
        self.recipe = recipe
        self.model_path, self.tokenizer, self.test, self.train_tok, self.test_tok, _, self.val_tok = data
        self.dense_model = dense_model
        self.work = work
        self.save_steps = save_steps
        self.default_train = recipe.pruned
        self._teachers: dict[str | None, torch.nn.Module] = {}
        self._dense_baselines = None  # built on the first latency measurement, reused by every run
        # One real test review padded to max_length, batch 1: the latency case of every saved model.
        self.latency_batch = self.tokenizer(
            [self.test[0]["text"]],
            padding="max_length",
            max_length=recipe.model.max_length,
            truncation=True,
            return_tensors="pt",
        )

    # -- what the stage loop uses ----------------------------------------------------------------------------------
    def start_model(self, start_from: str):
        if start_from == "pretrained":
            return load_classifier(self.model_path, self.recipe.pruned.seed)
        return copy.deepcopy(self.dense_model)

    def finetune(self, model, section, work_dir: Path, callbacks=(), init_callbacks=(), *, resume: bool = False):
        trainer = finetune(
            model,
            self.train_tok,
            self.tokenizer,
            section,
            work_dir,
            callbacks,
            init_callbacks,
            save_steps=self.save_steps,
            resume=resume,
        )
        return trainer.state.global_step

    def predict(self, model) -> tuple[dict[str, float], np.ndarray]:
        accuracy, logits = predict(
            model, self.test_tok, self.tokenizer, self.recipe.pruned, confined_path(self.work, "eval")
        )
        return {"test_accuracy": accuracy}, logits

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

    def verify(self, model, folder: Path, logits: np.ndarray, work: Path) -> dict:
        """Reload ``folder`` with ``from_pretrained`` and compare its test-split logits with the saved model's."""
        from transformers import AutoModelForSequenceClassification

        from ..nn import SparseEmbedding, SparseLinear
        from ..nn.quant import QuantEmbedding

        saved = json.loads((folder / "config.json").read_text())
        # A sparse-attention model names its implementation when it loads (the pattern itself is in config.json).
        extra = {"attn_implementation": "hf_sparse"} if "hf_sparse_attention" in saved else {}
        loaded = AutoModelForSequenceClassification.from_pretrained(folder, **extra)
        _, reloaded = predict(loaded, self.test_tok, self.tokenizer, self.recipe.pruned, work)
        return {
            "identical_predictions": bool((reloaded.argmax(-1) == logits.argmax(-1)).all()),
            "max_abs_logit_diff": float(np.abs(reloaded - logits).max()),
            "sparse_layers_loaded": sum(
                isinstance(m, (SparseLinear, SparseEmbedding, QuantEmbedding)) for m in loaded.modules()
            ),
        }

    def dense_baselines(self):
        """The dense configurations of this machine for the fine-tuned dense model on the latency batch
        (``checkpoint.latency_baselines`` of them), built once per job."""
        if self._dense_baselines is None:
            include = self.recipe.checkpoint.latency_baselines
            self._dense_baselines = dense_baselines(self.dense_model, self.latency_batch, include)
        return self._dense_baselines

    def latency(self, model, rounds: int) -> dict:
        return latency(model, self.dense_model, self.latency_batch, rounds, baselines=self.dense_baselines())

    # -- what the methods' job hooks use ---------------------------------------------------------------------------
    def calibration_batches(self, samples: int, seed: int) -> list[dict]:
        return labelled_batches(self.train_tok, self.tokenizer, samples, seed)

    def token_frequencies(self, model) -> dict[str, torch.Tensor]:
        return token_frequencies(self.train_tok, model)

    def teacher(self, name: str | None):
        """The frozen teacher ``name`` (a fine-tuned classifier), or the fine-tuned dense baseline for ``None``."""
        from ..distillation.students import freeze_teacher, teacher_snapshot

        if name not in self._teachers:
            self._teachers[name] = (
                teacher_snapshot(self.dense_model)
                if name is None
                else freeze_teacher(load_classifier(resolve_model(name), self.recipe.dense.seed))
            )
        return self._teachers[name]
