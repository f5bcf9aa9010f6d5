"""Prune a causal language model one-shot (SparseGPT, Wanda or magnitude), without any training, on your text.

What it does:
  1. loads --model (default: the packaged SmolLM2-135M-Instruct, converted once from its GGUF file) and your text
     (--data: a .txt file, one document per line, or any file `hf_sparse.data.load_user_data` reads with a text
     column; default: the packaged 2012 and 2016 convention speeches), and holds out a seeded fifth of the
     documents: they are never calibrated on;
  2. measures the dense model's perplexity on non-overlapping windows of the held-out documents;
  3. prunes every Linear layer of its blocks (not the LM head, not the embeddings) to --sparsity, or to the N:M
     --pattern (e.g. 2:4), with --method: SparseGPT or Wanda calibrated block by block on --samples sequences of
     --seq-len tokens drawn from the other documents (only one block's inputs are held at a time), or magnitude;
  4. measures the pruned model's perplexity, stores the pruned layers sparse (`sparsify_`), saves it to --output,
     reloads it with `from_pretrained` and checks its logits.

    python examples/prune_causal_lm.py                                   # SmolLM2, SparseGPT 50%, the speeches
    python examples/prune_causal_lm.py --method wanda --pattern 2:4 --data my-text.txt --model my-llama

Time on the real model (SmolLM2-135M, the defaults: 64 calibration sequences of 512 tokens, 16,384 held-out
tokens, as the packaged `smollm2-oneshot` recipe): the pruning took 806 s with SparseGPT, 324 s with Wanda and 2 s
by magnitude on one thread of an AMD EPYC Zen 4 (docs/results.md, "Results of one-shot pruning of a causal LM",
where SparseGPT at 50% raised the perplexity from 24.6 to 39.4), plus a minute or two for the two perplexity
measurements. --samples, --seq-len, --eval-tokens and --limit make a quick try.
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_sparse
from hf_sparse.data import load_long_documents, load_user_data, resolve_model, smollm2_path
from hf_sparse.lm import window_perplexity
from hf_sparse.pruning import sparsegpt_prune_, wanda_prune_


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a decoder LM folder or cached Hub id (default: SmolLM2-135M)")
    p.add_argument("--data", default=None, help="your text (default: the packaged convention speeches)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--output", default="pruned-lm", help="folder the pruned model is saved to")
    p.add_argument("--method", choices=("sparsegpt", "wanda", "magnitude"), default="sparsegpt")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--pattern", default=None, help="N:M instead of --sparsity, e.g. 2:4")
    p.add_argument("--samples", type=int, default=64, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=16384, help="held-out tokens the perplexity is measured on")
    p.add_argument("--limit", type=int, default=None, help="use this many documents (a seeded subset)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def documents(args) -> list[str]:
    if args.data is None:
        docs = [d["text"] for d in load_long_documents(None, min_tokens=0, max_tokens=10**9)]
    else:
        columns = {"text": args.text_column} if args.text_column else None
        data = load_user_data(args.data, task="causal-lm", columns=columns, seed=args.seed)
        docs = [text for split in data.splits.values() for text in split["text"]]
    if args.limit is not None and args.limit < len(docs):
        docs = random.Random(args.seed).sample(docs, args.limit)
    return docs


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """The documents as one token stream, the end-of-text token between them (as LMs are pre-trained)."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    path = resolve_model(args.model) if args.model else str(smollm2_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    docs = documents(args)
    random.Random(args.seed).shuffle(docs)
    held = max(1, round(len(docs) / 5))
    calibration, held_out = token_stream(tokenizer, docs[held:]), token_stream(tokenizer, docs[:held])
    n_eval = min(args.eval_tokens, held_out.numel()) // args.seq_len
    if n_eval < 1 or calibration.numel() <= args.seq_len:
        raise SystemExit(f"too little text for --seq-len {args.seq_len}: use more documents or shorter sequences")
    windows = held_out[: n_eval * args.seq_len].view(n_eval, args.seq_len)
    rng = random.Random(args.seed)
    starts = [rng.randrange(calibration.numel() - args.seq_len) for _ in range(args.samples)]
    sequences = torch.stack([calibration[s : s + args.seq_len] for s in starts])
    batches = [{"input_ids": chunk} for chunk in sequences.split(8)]
    print(f"{len(docs)} documents: {held} held out ({windows.numel()} tokens scored), {args.samples} calibration "
          f"sequences of {args.seq_len} tokens from the others")  # fmt: skip

    with torch.no_grad():
        dense = window_perplexity(model, windows)["perplexity"]
    print(f"dense perplexity {dense:.2f}")

    nm = tuple(int(x) for x in args.pattern.split(":")) if args.pattern else None
    sparsity = None if nm else args.sparsity
    if args.method == "sparsegpt":
        report = sparsegpt_prune_(model, batches, sparsity, nm=nm)
    elif args.method == "wanda":
        report = wanda_prune_(model, batches, sparsity, nm=nm)
    else:
        granularity = {"granularity": "nm", "n": nm[0], "m": nm[1]} if nm else {}
        target = 1 - nm[0] / nm[1] if nm else sparsity
        config = hf_sparse.PruningConfig(sparsity=target, scope="layer", schedule="oneshot", **granularity)
        report = hf_sparse.prune_(model, config)
    with torch.no_grad():
        pruned = window_perplexity(model, windows)["perplexity"]
    print(f"{args.method} {args.pattern or f'{args.sparsity:.0%}'}: {report['sparsity']:.1%} of the pruned layers' "
          f"weights are zero; perplexity {pruned:.2f} ({pruned / dense - 1:+.1%} against dense)")  # fmt: skip

    hf_sparse.sparsify_(model, batch_hint=args.seq_len)
    model.save_pretrained(args.output)
    tokenizer.save_pretrained(args.output)
    reloaded = AutoModelForCausalLM.from_pretrained(args.output).eval()
    with torch.no_grad():
        first = windows[:1]
        same = bool(torch.equal(reloaded(input_ids=first).logits, model(input_ids=first).logits))
    print(f"saved to {args.output}; reloaded with the same logits: {same}")
    return {"dense": dense, "pruned": pruned, "sparsity": report["sparsity"], "same_logits": same}


if __name__ == "__main__":
    main()
