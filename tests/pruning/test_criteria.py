import torch

from hf_sparse.pruning import magnitude_scores, masks_from_scores


def test_layer_scope_prunes_each_layer_exactly():
    torch.manual_seed(0)
    scores = {"a": torch.randn(10, 10).abs(), "b": torch.randn(7, 3).abs()}
    masks = masks_from_scores(scores, 0.3, "layer")
    assert int((~masks["a"]).sum()) == 30 and int((~masks["b"]).sum()) == round(0.3 * 21)
    # the kept weights are the largest ones
    assert scores["a"][masks["a"]].min() >= scores["a"][~masks["a"]].max()


def test_global_scope_ranks_all_layers_together():
    scores = {"small": torch.full((4, 4), 0.1), "large": torch.full((4, 4), 1.0)}
    masks = masks_from_scores(scores, 0.5, "global")
    assert not masks["small"].any() and masks["large"].all()


def test_masks_are_monotone_given_previous():
    torch.manual_seed(1)
    w = torch.randn(50, 20)
    first = masks_from_scores({"w": magnitude_scores(w)}, 0.5, "layer")
    # weights change so that some pruned ones would now rank high: they must stay pruned
    w2 = w + 5 * (~first["w"]).float()
    second = masks_from_scores({"w": magnitude_scores(w2)}, 0.7, "layer", previous=first)
    assert not (second["w"] & ~first["w"]).any()
    assert int((~second["w"]).sum()) == 700


def test_zero_sparsity_keeps_everything():
    masks = masks_from_scores({"w": torch.rand(3, 3)}, 0.0)
    assert masks["w"].all()


def test_exact_counts_with_ties_on_both_sides_of_the_half():
    for sparsity in (0.3, 0.8):
        masks = masks_from_scores({"w": torch.ones(10, 10)}, sparsity, "global")
        assert int((~masks["w"]).sum()) == round(100 * sparsity)
