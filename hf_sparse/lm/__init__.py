"""Causal language models with sparse (windowed) attention: the ``task: lm`` recipe and ``hf-sparse lm``.

A recipe names the model (the packaged SmolLM2-135M by default), which real long documents are held out, the
attention pattern (:class:`~hf_sparse.attention.SparseAttentionConfig`), a short fine-tuning with it, the evaluation
lengths and the checkpoint checks; :func:`run_lm` measures perplexity with full attention and with the pattern
before and after fine-tuning, saves and reloads the model, and times it against ``sdpa``::

    report = run_lm(load_lm_recipe("recipes/smollm2-windowed.yaml"), "out")

The ``task: causal-lm`` job (:mod:`hf_sparse.lm.oneshot`) prunes a decoder one-shot (SparseGPT, Wanda, magnitude;
unstructured or N:M), calibrated block by block on the user's text, and reports held-out perplexity against dense::

    report = run_causal_lm(load_causal_lm_recipe("recipes/smollm2-oneshot.yaml"), "out")
"""

from .config import (
    LmCheckpointSection,
    LmDataSection,
    LmEvalSection,
    LmFinetuneSection,
    LmModelSection,
    LmRecipe,
    load_lm_recipe,
)
from .data import LmDocuments, select_documents, split_into_pieces
from .metrics import evaluate_perplexity, sequence_nll
from .oneshot import check_causal_decoder, run_causal_lm, window_perplexity
from .oneshot_config import (
    CausalLmCheckpointSection,
    CausalLmDataSection,
    CausalLmRecipe,
    OneShotRun,
    load_causal_lm_recipe,
)
from .run import render_lm_markdown, run_lm

__all__ = [
    "LmRecipe",
    "LmModelSection",
    "LmDataSection",
    "LmFinetuneSection",
    "LmEvalSection",
    "LmCheckpointSection",
    "load_lm_recipe",
    "run_lm",
    "render_lm_markdown",
    "LmDocuments",
    "select_documents",
    "split_into_pieces",
    "evaluate_perplexity",
    "sequence_nll",
    "CausalLmRecipe",
    "CausalLmDataSection",
    "CausalLmCheckpointSection",
    "OneShotRun",
    "load_causal_lm_recipe",
    "run_causal_lm",
    "check_causal_decoder",
    "window_perplexity",
]
