import pytest
import torch

from hf_sparse import ConfigError
from hf_sparse.pruning import block_masks, embedding_row_masks, granular_masks, masks_from_scores, nm_masks


def _blocks(mask, r, c):
    rows, cols = mask.shape
    return mask.reshape(rows // r, r, cols // c, c).permute(0, 2, 1, 3).reshape(rows // r, cols // c, r * c)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_block_masks_are_all_or_nothing_with_exact_sparsity(scope):
    torch.manual_seed(0)
    scores = {"a": torch.rand(8, 12), "b": torch.rand(4, 16)}
    masks = block_masks(scores, 0.5, block=(2, 4), scope=scope)
    n_blocks = 0
    for name, m in masks.items():
        tiles = _blocks(m, 2, 4)
        assert (tiles.all(-1) | ~tiles.any(-1)).all(), name  # every tile kept or dropped whole
        n_blocks += tiles.shape[0] * tiles.shape[1]
        if scope == "layer":
            assert int((~m).sum()) == round(0.5 * tiles.shape[0] * tiles.shape[1]) * 8
    dropped = sum(int((~m).sum()) for m in masks.values())
    assert dropped == round(0.5 * n_blocks) * 8


def test_block_keeps_the_highest_summed_blocks_and_l2_differs_from_sum():
    # one block with one huge score vs. one block with many medium scores
    s = torch.zeros(2, 4)
    s[0, 0] = 3.0  # block (0, 0..1): sum 3, l2 3
    s[:, 2:] = 1.0  # block (0, 2..3): sum 4, l2 2
    by_sum = block_masks({"w": s}, 0.5, block=(2, 2), scope="layer", reduce="sum")["w"]
    by_l2 = block_masks({"w": s}, 0.5, block=(2, 2), scope="layer", reduce="l2")["w"]
    assert by_sum[:, 2:].all() and not by_sum[:, :2].any()
    assert by_l2[:, :2].all() and not by_l2[:, 2:].any()


def test_block_global_ranks_blocks_across_layers_without_normalising():
    masks = block_masks({"small": torch.full((4, 4), 0.1), "large": torch.full((4, 4), 1.0)}, 0.5, block=(2, 2))
    assert not masks["small"].any() and masks["large"].all()


def test_block_shape_not_divisible_names_the_layer():
    with pytest.raises(ConfigError, match=r"'enc\.q'.*\(6, 8\).*\(4, 4\)"):
        block_masks({"enc.q": torch.rand(6, 8)}, 0.5, block=(4, 4))


def test_block_masks_are_monotone():
    torch.manual_seed(1)
    s = torch.rand(8, 8)
    first = block_masks({"w": s}, 0.25, block=(2, 2), scope="layer")
    # dropped blocks now score highest: they must stay dropped
    s2 = s + 10 * (~first["w"]).float()
    second = block_masks({"w": s2}, 0.5, block=(2, 2), scope="layer", previous=first)
    assert not (second["w"] & ~first["w"]).any()
    assert int((~second["w"]).sum()) == 32


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8)])
def test_nm_keeps_exactly_n_of_every_m_along_the_input_dimension(n, m):
    torch.manual_seed(0)
    s = torch.randn(6, 4 * m)
    mask = nm_masks({"w": s}, 1 - n / m, n=n, m=m)["w"]
    groups = mask.reshape(6, 4, m)
    assert (groups.sum(-1) == n).all()
    # the kept ones are the top-n of their group
    sg = s.reshape(6, 4, m)
    assert (
        sg.masked_fill(~groups, float("inf")).min(-1).values >= sg.masked_fill(groups, -float("inf")).max(-1).values
    ).all()


def test_nm_gradual_sparsity_passes_through_exact_patterns_monotonically():
    torch.manual_seed(2)
    s = torch.rand(4, 8)
    m34 = nm_masks({"w": s}, 0.25, n=2, m=4)["w"]
    assert (m34.reshape(4, 2, 4).sum(-1) == 3).all()
    m24 = nm_masks({"w": s.flip(-1)}, 0.5, n=2, m=4, previous={"w": m34})["w"]
    assert (m24.reshape(4, 2, 4).sum(-1) == 2).all()
    assert not (m24 & ~m34).any()


def test_nm_errors():
    with pytest.raises(ConfigError, match=r"'fc'.*6 input columns.*m=4"):
        nm_masks({"fc": torch.rand(3, 6)}, 0.5, n=2, m=4)
    with pytest.raises(ConfigError, match="at most 2 of every 4"):
        nm_masks({"fc": torch.rand(3, 8)}, 0.75, n=2, m=4)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_embedding_rows_are_dropped_whole(scope):
    torch.manual_seed(0)
    scores = {"users": torch.rand(20, 8), "items": torch.rand(30, 8)}
    masks = embedding_row_masks(scores, 0.4, scope=scope)
    rows = 0
    for name, m in masks.items():
        assert (m.all(1) | ~m.any(1)).all(), name
        rows += m.shape[0]
        if scope == "layer":
            assert int((~m.any(1)).sum()) == round(0.4 * m.shape[0])
    assert sum(int((~m.any(1)).sum()) for m in masks.values()) == round(0.4 * rows)
    # the dropped rows are the lowest-summed ones of their table
    s, m = scores["users"].sum(1), masks["users"].any(1)
    if scope == "layer":
        assert s[m].min() >= s[~m].max()


def test_granular_masks_unstructured_is_masks_from_scores_and_structured_names_are_redirected():
    torch.manual_seed(3)
    scores = {"a": torch.rand(5, 7), "b": torch.rand(3, 3)}
    ref = masks_from_scores(scores, 0.4, "global")
    got = granular_masks(scores, 0.4, granularity="unstructured")
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ConfigError, match="StructuredPruningConfig"):
        granular_masks(scores, 0.4, granularity="head")
    with pytest.raises(ConfigError, match="granularity must be one of"):
        granular_masks(scores, 0.4, granularity="diagonal")
