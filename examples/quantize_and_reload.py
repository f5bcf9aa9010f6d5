"""Prune and quantise a classifier to int8 while it fine-tunes, save the sparse int8 checkpoint and reload it.

What it does:
  1. reads your data (as examples/prune_with_trainer.py; default: the packaged Rotten Tomatoes snippets);
  2. fine-tunes --model on it with a new classification head, while `PruningCallback` prunes its encoder's Linear
     layers to --sparsity (0 for none), and then stores them in int8, one of two ways (--mode):
       qat      int8 quantisation-aware training (`QATCallback`, one scale per output channel, the pruned weights
                kept at zero), then `convert_`: int8 values with a scale per row, in CSR where the layer is sparse
                (`qcsr`, run by the sparse int8 kernels), else dense (`qdense`);
       dynamic  pruned in 1x4 blocks, then `sparsify_(model, activation="dynamic")`: int8 weights in blocks times
                inputs quantised per token at run time, on the integer kernels (`qbsr`);
  3. evaluates it on the test split (accuracy), saves it to --output, reloads it with `from_pretrained` in this
     process and checks that it gives the same logits, and prints the checkpoint's size against the float model's.

    python examples/quantize_and_reload.py --data reviews.csv --text-column review --label-column rating
    python examples/quantize_and_reload.py --mode dynamic --sparsity 0.8
    python examples/quantize_and_reload.py                      # all-MiniLM-L6-v2 on Rotten Tomatoes

Time on the real model (all-MiniLM-L6-v2 on Rotten Tomatoes, one epoch of 321 steps at batch 32): about 4 minutes
on 2 CPU cores with QAT (fake-quantised layers train a little slower than float ones), 3 with --mode dynamic.
docs/results.md ("Results of quantisation") has what int8 costs there: nothing measurable on its own, and the
pruning's cost at 80%. --max-steps and --limit make a quick try.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--output", default="int8-model", help="folder the checkpoint is saved to")
    p.add_argument("--mode", choices=("qat", "dynamic"), default="qat")
    p.add_argument("--sparsity", type=float, default=0.5, help="sparsity of the encoder's Linear layers (0: none)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (quick try)")
    p.add_argument("--limit", type=int, default=None, help="use this many examples per split (a seeded subset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def main(argv=None) -> dict:
    args = parse_args(argv)
    columns = {role: name for role, name in (("text", args.text_column), ("label", args.label_column)) if name}
    limits = {"train": args.limit, "validation": args.limit, "test": args.limit} if args.limit else None
    source = args.data if args.data is not None else load_rotten_tomatoes(seed=args.seed)
    data = load_user_data(source, task="text-classification", columns=columns, seed=args.seed, limits=limits)
    labels = data.label_names

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    float_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    splits = data.splits.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length), batched=True
    )
    collator = DataCollatorWithPadding(tokenizer)

    callbacks = []
    if args.sparsity > 0:
        blocks = {"granularity": "block", "block": (1, 4)} if args.mode == "dynamic" else {}
        pruning = hf_sparse.PruningConfig(sparsity=args.sparsity, end_fraction=0.6, **blocks)
        callbacks.append(hf_sparse.PruningCallback(pruning))
    if args.mode == "qat":  # int8 weights, one scale per output channel (the default scheme); zeros stay zero
        callbacks.append(hf_sparse.QATCallback(hf_sparse.QuantizationConfig(keep_sparsity=True)))
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            f"{args.output}-trainer",
            num_train_epochs=args.epochs,
            max_steps=args.max_steps,
            learning_rate=1e-4,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.batch_size,
            warmup_steps=0.06,  # a fraction of the steps
            seed=args.seed,
            save_strategy="no",
            report_to=[],
        ),
        train_dataset=splits["train"],
        data_collator=collator,
        callbacks=callbacks,
    )
    trainer.train()

    if args.mode == "qat":
        formats = hf_sparse.convert_(model)  # QAT layers -> int8 layers (qcsr where sparse, else qdense)
        stored = list(formats.values())
    else:
        decisions = hf_sparse.sparsify_(model, activation="dynamic", batch_hint=args.max_length)
        stored = [d.choice.format for d in decisions.values()]
    print(f"stored layers by format: { {f: stored.count(f) for f in sorted(set(stored))} }")

    test = splits["test"]
    logits = trainer.predict(test).predictions
    accuracy = float((np.argmax(logits, -1) == np.array(test["label"])).mean())
    print(f"test accuracy {accuracy:.4f}")

    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output).eval()
    batch = collator([{"input_ids": ids} for ids in test["input_ids"][:64]])
    with torch.no_grad():
        same = bool(torch.equal(reloaded(**batch).logits, model.eval()(**batch).logits))
    size = folder_bytes(args.output) / float_bytes
    print(f"saved to {args.output} ({size:.1%} of the float32 weights); reloaded with the same logits: {same}")
    return {"accuracy": accuracy, "formats": stored, "same_logits": same, "size": size}


if __name__ == "__main__":
    main()
