"""One process of `hf-sparse compress` under a multi-process launch; at the end of each fine-tuning it records, per
rank, digests of the zero pattern (the masks) and of the weights, so the test can compare the ranks."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import hf_sparse.compress as compress
import hf_sparse.jobs.classification as classification


class Digest(TrainerCallback):
    def __init__(self, name):
        self.name = name

    def on_train_end(self, args, state, control, model=None, **kwargs):
        masks, weights = hashlib.sha256(), hashlib.sha256()
        for n, p in sorted(model.named_parameters()):
            masks.update(n.encode() + (p.detach() == 0).numpy().tobytes())
            weights.update(n.encode() + p.detach().numpy().tobytes())
        rank = int(os.environ.get("RANK", "0"))
        out = Path(os.environ["DIGEST_DIR"]) / f"{self.name}-rank{rank}.json"
        out.write_text(json.dumps({"masks": masks.hexdigest(), "weights": weights.hexdigest()}))


original = compress.finetune  # the one fine-tune path: the dense baseline's (compress) and every run's


def finetune(model, train, tokenizer, section, work_dir, callbacks=(), init_callbacks=(), **kwargs):
    callbacks = [*callbacks, Digest(Path(work_dir).name)]
    return original(model, train, tokenizer, section, work_dir, callbacks, init_callbacks, **kwargs)


compress.finetune = finetune
classification.finetune = finetune
torch.manual_seed(0)
from hf_sparse.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
