"""The real all-MiniLM-L6-v2 on a small seeded Rotten Tomatoes subset, pruned by the callback in the stock Trainer."""

import numpy as np
import pytest
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
)

from hf_sparse import PruningCallback, PruningConfig
from hf_sparse.data import load_rotten_tomatoes, minilm_l6_path, stratified_subset
from hf_sparse.testing import cpu_training_args

pytestmark = pytest.mark.real


def test_real_minilm_reaches_target_sparsity_and_beats_majority(tmp_path):
    path = minilm_l6_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    splits = load_rotten_tomatoes(seed=42)
    train = stratified_subset(splits["train"], 512, seed=0)
    test = stratified_subset(splits["test"], 256, seed=0)

    def tok(batch):
        return tokenizer(batch["text"], truncation=True, max_length=64)

    train = train.map(tok, batched=True, remove_columns=["text"])
    test = test.map(tok, batched=True, remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    cfg = PruningConfig(sparsity=0.5, start_step=16, end_step=48, update_every=8)
    cb = PruningCallback(cfg)
    args = cpu_training_args(
        tmp_path,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=2e-4,
        max_steps=64,
        warmup_steps=0.1,
        logging_steps=8,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[cb],
    )
    trainer.train()

    report = cb.pruner.report()
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(report["layers"]) == 36  # 6 layers x (q, k, v, attention output, intermediate, output)
    late_logs = [e for e in trainer.state.log_history if "loss" in e and e["step"] >= 48]
    assert late_logs and all(e["sparsity"] == pytest.approx(0.5, abs=1e-3) for e in late_logs)
    out = trainer.predict(test)
    accuracy = float((np.argmax(out.predictions, -1) == out.label_ids).mean())
    majority = max(np.mean(out.label_ids), 1 - np.mean(out.label_ids))
    print(f"accuracy {accuracy:.4f} majority {majority:.4f}")
    assert accuracy > majority + 0.05, (accuracy, majority)
