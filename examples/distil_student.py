"""Distil a half-depth student from your fine-tuned classifier, with the stock Trainer and `DistillationCallback`.

What it does:
  1. reads your data (as examples/prune_with_trainer.py; default: the packaged Rotten Tomatoes snippets);
  2. takes the teacher: --teacher, a classifier already fine-tuned on these labels, or else fine-tunes --model
     on the data for --teacher-epochs;
  3. cuts the student from the teacher: every second layer (`student_from_teacher(teacher, keep_every=2)`: 6
     layers -> 3, the teacher's layers 1, 3, 5), and trains it for --epochs on the labels and on the teacher's
     outputs: its logits at temperature 2 and each student layer's hidden states against the teacher layer it was
     copied from;
  4. evaluates teacher and student on the test split (accuracy), saves the student to --output (a plain
     transformers checkpoint) and reloads it to check its predictions.

    python examples/distil_student.py --data reviews.csv --text-column review --label-column rating
    python examples/distil_student.py --teacher my-fine-tuned-classifier --data reviews.csv
    python examples/distil_student.py                      # all-MiniLM-L6-v2 on Rotten Tomatoes

Time on the real model (all-MiniLM-L6-v2 on Rotten Tomatoes, defaults): about 2.5 minutes for the teacher's
epoch and 3.5 minutes for the student's two epochs on 2 CPU cores (the default job's timings in
docs/results.md, which trains the same student); the student ends about 1 to 1.5 points below the teacher there.
--max-steps and --limit make a quick try.
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

from hf_sparse import DistillationCallback, DistillationConfig, student_from_teacher
from hf_sparse.data import load_rotten_tomatoes, load_user_data, resolve_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6", help="the model to fine-tune as teacher (when no --teacher)")
    p.add_argument("--teacher", default=None, help="a classifier already fine-tuned on these labels")
    p.add_argument("--data", default=None, help="your data file (default: the packaged Rotten Tomatoes snippets)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--output", default="student", help="folder the student is saved to")
    p.add_argument("--keep-every", type=int, default=2, help="keep every k-th layer of the teacher")
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of the student")
    p.add_argument("--max-steps", type=int, default=-1, help="stop each training after this many steps (quick try)")
    p.add_argument("--limit", type=int, default=None, help="use this many examples per split (a seeded subset)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def training_args(args, folder: str, learning_rate: float, epochs: float) -> TrainingArguments:
    return TrainingArguments(
        folder,
        num_train_epochs=epochs,
        max_steps=args.max_steps,
        learning_rate=learning_rate,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        warmup_steps=0.06,  # a fraction of the steps
        seed=args.seed,
        save_strategy="no",
        report_to=[],
    )


def accuracy(trainer: Trainer, test) -> float:
    logits = trainer.predict(test).predictions
    return float((np.argmax(logits, -1) == np.array(test["label"])).mean())


def main(argv=None) -> dict:
    args = parse_args(argv)
    columns = {role: name for role, name in (("text", args.text_column), ("label", args.label_column)) if name}
    limits = {"train": args.limit, "validation": args.limit, "test": args.limit} if args.limit else None
    source = args.data if args.data is not None else load_rotten_tomatoes(seed=args.seed)
    data = load_user_data(source, task="text-classification", columns=columns, seed=args.seed, limits=limits)
    labels = data.label_names

    path = resolve_model(args.teacher or args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    splits = data.splits.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=args.max_length), batched=True
    )
    collator = DataCollatorWithPadding(tokenizer)

    if args.teacher:
        teacher = AutoModelForSequenceClassification.from_pretrained(path)
        if teacher.config.num_labels != len(labels):
            raise SystemExit(f"{args.teacher} classifies {teacher.config.num_labels} labels, the data has {labels}")
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    teacher_trainer = Trainer(
        model=teacher,
        args=training_args(args, f"{args.output}-teacher", 5e-5, args.teacher_epochs),
        train_dataset=splits["train"],
        data_collator=collator,
    )
    if not args.teacher:
        teacher_trainer.train()
    teacher_accuracy = accuracy(teacher_trainer, splits["test"])
    print(f"teacher: {teacher.config.num_hidden_layers} layers, test accuracy {teacher_accuracy:.4f}")

    student = student_from_teacher(teacher, keep_every=args.keep_every)
    distil = DistillationCallback(teacher, DistillationConfig(alpha=0.5, temperature=2.0, hidden_weight=1.0))
    trainer = Trainer(
        model=student,
        args=training_args(args, f"{args.output}-trainer", 1e-4, args.epochs),
        train_dataset=splits["train"],
        data_collator=collator,
        callbacks=[distil],
    )
    trainer.train()
    student_accuracy = accuracy(trainer, splits["test"])
    print(
        f"student: {student.config.num_hidden_layers} layers, {student.num_parameters():,} parameters "
        f"({student.num_parameters() / teacher.num_parameters():.0%} of the teacher's), "
        f"test accuracy {student_accuracy:.4f} ({100 * (student_accuracy - teacher_accuracy):+.2f} points)"
    )

    student.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output).eval()
    batch = collator([{"input_ids": ids} for ids in splits["test"]["input_ids"][:64]])
    with torch.no_grad():
        same = bool(torch.equal(reloaded(**batch).logits, student.eval()(**batch).logits))
    print(f"saved to {args.output}; reloaded with the same predictions: {same}")
    return {"teacher_accuracy": teacher_accuracy, "student_accuracy": student_accuracy, "same_predictions": same}


if __name__ == "__main__":
    main()
