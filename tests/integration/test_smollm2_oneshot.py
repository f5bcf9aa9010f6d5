"""The ``task: causal-lm`` job on the real SmolLM2-135M and the packaged convention speeches, at small scale: a few
short calibration sequences, a short held-out text, the Linear layers of the first three of the 30 blocks (SparseGPT
spends about a second per layer on a CPU). SparseGPT at 50% keeps the held-out perplexity far closer to the dense
model's than magnitude pruning of the same layers (the point of calibrated reconstruction), every pruned layer is
exactly half zeros, everything else (the other blocks, the LM head, the embeddings) is unchanged, and the saved
sparse checkpoint reloads with identical logits. The full-scale numbers come from ``recipes/smollm2-oneshot.yaml``."""

from __future__ import annotations

import math

import pytest

from hf_sparse.lm.oneshot import run_causal_lm
from hf_sparse.lm.oneshot_config import CausalLmRecipe

pytestmark = pytest.mark.real

#: The Linear layers of blocks 0-2 (7 each: q, k, v, o, gate, up, down).
BLOCKS = r"model\.layers\.[0-2]\..+"


def test_smollm2_sparsegpt_beats_magnitude_and_reloads(tmp_path):
    recipe = CausalLmRecipe.from_dict(
        {
            "task": "causal-lm",
            "name": "smollm2-oneshot-small",
            "threads": 1,  # on a shared machine, OpenMP threads waiting on each other cost more than they add
            "model": {"name": "smollm2-135m"},
            "data": {"seed": 0, "calibration_samples": 8, "seq_len": 128, "eval_tokens": 1024},
            "runs": [
                {"method": "sparsegpt", "sparsity": 0.5, "target_modules": [BLOCKS]},
                {"method": "magnitude", "sparsity": 0.5, "target_modules": [BLOCKS]},
            ],
            "checkpoint": {"save": True, "verify": True, "format": "auto"},
        }
    )
    report = run_causal_lm(recipe, tmp_path)
    dense = report["dense"]["perplexity"]
    assert math.isfinite(dense) and 1 < dense < 100  # an English model on English speeches
    assert report["model"]["blocks"] == 30
    assert report["data"]["held_out_documents"] > 0 and report["data"]["eval_windows"] == 8
    runs = {r["name"]: r for r in report["runs"]}
    sgpt, mag = runs["sparsegpt-50"], runs["magnitude-50"]
    for run in (sgpt, mag):
        assert run["sparsity"] == 0.5 and run["min_layer_sparsity"] == run["max_layer_sparsity"] == 0.5
        assert len(run["layers"]) == 3 * 7 and run["unpruned_unchanged"]
        assert run["round_trip"]["identical_logits"]
        assert run["perplexity"] > dense
    assert sgpt["calibration"]["tokens"] == 8 * 128
    assert sgpt["relative_change"] < mag["relative_change"] / 2
