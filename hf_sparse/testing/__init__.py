"""Tiny models and data sets shared by the tests (and handy for trying hf_sparse without real weights)."""

from __future__ import annotations

import random

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

__all__ = [
    "tiny_bert_config",
    "tiny_bert_classifier",
    "tiny_causal_lm",
    "tiny_classification_dataset",
    "cpu_training_args",
    "random_format_case",
    "synthetic_cost_model",
    "check_fresh_process_reload",
]


def tiny_bert_config(**overrides) -> BertConfig:
    """A 2-layer BERT with hidden size 32: the same module names as MiniLM/BERT, seconds to train."""
    from .families import FAMILIES

    return BertConfig(**{**FAMILIES["bert"].sizes, **overrides})


def tiny_causal_lm(kind: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised (seeded) 2-layer decoder, ``"llama"`` or ``"mistral"`` (transformers' own sliding
    window: pass ``sliding_window``), with grouped key/value heads (4 query heads, 2 key/value heads, head_dim 16)."""
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM)}
    config_cls, model_cls = classes[kind]
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return model_cls(config_cls(**kwargs)).eval()


def tiny_bert_classifier(seed: int = 0, **overrides) -> BertForSequenceClassification:
    """A randomly initialised (seeded) tiny ``BertForSequenceClassification``."""
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(**overrides)).eval()


def tiny_classification_dataset(n: int = 64, seq_len: int = 12, vocab_size: int = 128, seed: int = 0) -> Dataset:
    """Random token sequences labelled by whether token 5 occurs in them: learnable by a tiny BERT."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, vocab_size, (n, seq_len), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    pos = torch.randint(1, seq_len, (n,), generator=g)
    ids[labels == 1, pos[labels == 1]] = 5
    ids[:, 0] = 2  # a [CLS]-like first token
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": torch.ones_like(ids).tolist(),
            "labels": labels.tolist(),
        }
    )


def cpu_training_args(output_dir, **overrides) -> TrainingArguments:
    """Deterministic, quiet CPU ``TrainingArguments`` for tests: no saving, no reporting, no progress bars, seed 0,
    a log line every step. ``overrides`` are passed to ``TrainingArguments``."""
    kwargs = dict(
        output_dir=str(output_dir),
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        data_seed=0,
        dataloader_pin_memory=False,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def random_format_case(rng: random.Random, name: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A random small weight, keep-mask and format parameters valid for the format ``name`` (property tests)."""
    params = {}
    if name == "bsr":
        r, c = rng.choice([1, 2, 4, 8]), rng.choice([1, 2, 4, 16])
        rows, cols = r * rng.randint(1, 6), c * rng.randint(1, 6)
        params["block"] = (r, c)
    elif name == "nm":
        m = rng.choice([2, 4, 8])
        n = rng.randint(1, m)
        rows, cols = rng.randint(1, 12), m * rng.randint(1, 6)
        params.update(n=n, m=m)
    else:
        rows, cols = rng.randint(1, 40), rng.randint(1, 40)
    g = torch.Generator().manual_seed(rng.randint(0, 2**31))
    weight = torch.randn(rows, cols, generator=g)
    sparsity = rng.choice([0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
    mask = torch.rand(rows, cols, generator=g) >= sparsity
    if name == "nm":
        # keep at most n per group: rank random scores inside each group
        scores = torch.rand(rows, cols // params["m"], params["m"], generator=g)
        top = scores.argsort(-1, descending=True)[..., : params["n"]]
        nm_mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, top, True).reshape(rows, cols)
        mask = mask & nm_mask
    if rng.random() < 0.3:
        weight[mask & (torch.rand(rows, cols, generator=g) < 0.2)] = 0.0  # explicit zeros that are kept
    return weight, mask, params


def synthetic_cost_model(**per_entry: float):
    """A deterministic :class:`~hf_sparse.ops.CostModel`: seconds per stored entry and token, the same at every
    calibrated N, no call overhead. Defaults: dense 1 ns, CSR 4 ns, BSR 16 1.2 ns, BSR 32 1.1 ns, 2:4 0.6 ns;
    ``per_entry`` adds or overrides kinds (``"dense-bf16"``, ``"qbsr16x4"``, ...)."""
    from ..ops.choose import CALIBRATION_NS, CostModel

    costs = {"dense": 1e-9, "csr": 4e-9, "bsr16": 1.2e-9, "bsr32": 1.1e-9, "nm2:4": 0.6e-9, **per_entry}
    return CostModel(
        key="test",
        backend="test",
        threads=1,
        overhead={f: dict.fromkeys(CALIBRATION_NS, 0.0) for f in costs},
        per_entry={f: {n: c * n for n in CALIBRATION_NS} for f, c in costs.items()},
    )


def check_fresh_process_reload(model, folder, check: str = "", *, seed: int = 1) -> None:
    """Save ``model`` (a sequence classifier) to ``folder``, reload it with ``from_pretrained`` in a fresh Python
    process and assert its logits on a seeded batch equal the saved model's; ``check`` is extra Python run there
    after loading, with the reloaded model as ``m`` (e.g. an assert on a layer's format)."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    g = torch.Generator().manual_seed(seed)
    batch = {"input_ids": torch.randint(6, 128, (2, 9), generator=g), "attention_mask": torch.ones(2, 9, dtype=int)}
    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(folder)
    case = folder / "case.safetensors"
    save_file({**batch, "logits": logits}, str(case))
    script = (
        "import torch, hf_sparse\n"
        "from safetensors.torch import load_file\n"
        "from transformers import AutoModelForSequenceClassification\n"
        f"m = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}).eval()\n"
        f"{check}\n"
        f"case = load_file({str(case)!r})\n"
        "want = case.pop('logits')\n"
        "with torch.no_grad():\n"
        "    torch.testing.assert_close(m(**case).logits, want)\n"
        "print('reloaded ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "reloaded ok" in done.stdout, done.stderr[-3000:]
