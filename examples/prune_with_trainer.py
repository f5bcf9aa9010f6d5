"""Prune a text classifier while it fine-tunes on your data, with the stock Trainer and `PruningCallback`.

What it does:
  1. reads your data (a .csv, .tsv, .json, .jsonl or .parquet file with a text and a label column; without --data,
     the packaged Rotten Tomatoes snippets) and splits off validation and test sets if it has none;
  2. fine-tunes --model (a folder written by save_pretrained, a packaged alias such as minilm-l6, or a Hub id in
     your cache) on it with a new classification head, while `PruningCallback` raises the sparsity of its encoder's
     Linear layers along a cubic schedule to --sparsity, reached at 60% of the steps;
  3. evaluates the pruned model on the test split (accuracy), stores its pruned layers in the sparse formats
     predicted fastest on this machine (`sparsify_`), saves it to --output, reloads it with `from_pretrained` and
     checks that it predicts the test split as the saved model did.

    python examples/prune_with_trainer.py --data reviews.csv --text-column review --label-column rating
    python examples/prune_with_trainer.py                       # all-MiniLM-L6-v2 on Rotten Tomatoes

Time on the real model (all-MiniLM-L6-v2, Rotten Tomatoes: one epoch over 10,246 snippets at batch 32 is 321
steps): about 3 minutes of training on 2 CPU cores (the step time of the default job's dense fine-tune, see
docs/results.md), plus a minute to evaluate, store and check. Expect an accuracy near the dense model's at 50%
(docs/results.md, "Results of the default job"). --max-steps and --limit make a quick try.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import hf_sparse
from hf_sparse.data import load_rotten_tomatoes, load_user_data, resolve_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="model folder, packaged alias or cached Hub id")
    p.add_argument("--data", default=None, help="your data file (default: the packaged Rotten Tomatoes snippets)")
    p.add_argument("--text-column", default=None, help="the column holding the text (default: found by its name)")
    p.add_argument("--label-column", default=None, help="the column holding the label (default: found by its name)")
    p.add_argument("--output", default="pruned-model", help="folder the sparse checkpoint is saved to")
    p.add_argument("--sparsity", type=float, default=0.5, help="target sparsity of the encoder's Linear layers")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (quick try)")
    p.add_argument("--limit", type=int, default=None, help="use this many training examples (a seeded subset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    columns = {role: name for role, name in (("text", args.text_column), ("label", args.label_column)) if name}
    limits = {"train": args.limit, "validation": args.limit, "test": args.limit} if args.limit else None
    source = args.data if args.data is not None else load_rotten_tomatoes(seed=args.seed)
    data = load_user_data(source, task="text-classification", columns=columns, seed=args.seed, limits=limits)
    labels = data.label_names
    print(f"data: {data.source}, labels {list(labels)}, {len(data.splits['train'])} training examples")

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,  # a model fine-tuned for other labels gets a new head
    )
    splits = data.splits.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length), batched=True
    )

    config = hf_sparse.PruningConfig(sparsity=args.sparsity, end_fraction=0.6, update_every=10)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            f"{args.output}-trainer",
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            warmup_steps=0.06,  # a fraction of the steps
            seed=args.seed,
            save_strategy="no",
            report_to=[],
        ),
        train_dataset=splits["train"],
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[hf_sparse.PruningCallback(config)],
    )
    trainer.train()

    test = splits["test"]
    logits = trainer.predict(test).predictions
    accuracy = float((np.argmax(logits, -1) == np.array(test["label"])).mean())
    report = hf_sparse.pruning.sparsity_report(hf_sparse.select_modules(model, config), config.sparsity)
    print(f"pruned to {report['sparsity']:.1%} of the selected weights; test accuracy {accuracy:.4f}")

    decisions = hf_sparse.sparsify_(model, batch_hint=args.max_length)
    formats = {}
    for decision in decisions.values():
        formats[decision.choice.format] = formats.get(decision.choice.format, 0) + 1
    print(f"stored layers by format: {formats}")
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)

    # `import hf_sparse` (above) lets from_pretrained read the sparse checkpoint
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output).eval()
    batch = DataCollatorWithPadding(tokenizer)([{"input_ids": ids} for ids in test["input_ids"][:64]])
    with torch.no_grad():
        same = bool(torch.equal(reloaded(**batch).logits, model.eval()(**batch).logits))
    print(f"saved to {args.output}; reloaded with the same predictions: {same}")
    return {"accuracy": accuracy, "sparsity": report["sparsity"], "same_predictions": same}


if __name__ == "__main__":
    main()
