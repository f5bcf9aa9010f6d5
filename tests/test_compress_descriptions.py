"""The words `hf-sparse compress` puts in reports and model cards describe the pruning that actually ran."""

from hf_sparse.jobs.cards import pruning_description as _pruning_desc
from hf_sparse.pruning import PruningConfig
from hf_sparse.pruning.method import schedule_description as _schedule_desc


def test_schedule_descriptions_name_each_schedule():
    assert _schedule_desc(PruningConfig(sparsity=0.8, schedule="oneshot", start_step=3)) == "one-shot at step 3"
    assert "cubic schedule from 0.0%" in _schedule_desc(PruningConfig(sparsity=0.8, end_step=100))
    it = _schedule_desc(PruningConfig(sparsity=0.8, schedule="iterative", stages=4, end_step=400))
    assert it.startswith("4 equal prune-then-fine-tune stages") and "80.0% at step 400" in it
    rigl = _schedule_desc(PruningConfig(sparsity=0.9, schedule="rigl", end_step=500, regrow_fraction=0.3))
    assert "RigL" in rigl and "30.0%" in rigl


def test_pruning_description_names_granularity_and_embedding_tables():
    what, how = _pruning_desc(PruningConfig(sparsity=0.8, embeddings=("word_embeddings",)), 37)
    assert what == "37 pruned layers (an embedding table among them)"
    assert how == "unstructured magnitude pruning, global ranking"
    what, how = _pruning_desc(PruningConfig(sparsity=0.5, granularity="nm", n=2, m=4), 36)
    assert what == "36 pruned `nn.Linear` layers" and how.startswith("2:4 magnitude")
    assert _pruning_desc(PruningConfig(sparsity=0.5, granularity="block", block=(4, 4)), 36)[1].startswith("4x4-block")
