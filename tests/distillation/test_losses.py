"""Distillation losses against values worked out by hand (plain ``math``, no torch.nn.functional)."""

from __future__ import annotations

import math

import pytest
import torch

from hf_sparse.distillation.losses import attention_loss, combine_losses, embedding_loss, hidden_state_loss, kd_loss
from hf_sparse.errors import ConfigError


def _softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    """KL(p || q) = sum p * (log p - log q), with 0 * log 0 = 0."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _kd_by_hand(student_row, teacher_row, temperature):
    p_s = _softmax([x / temperature for x in student_row])
    p_t = _softmax([x / temperature for x in teacher_row])
    return temperature**2 * _kl(p_t, p_s)


# ---------------------------------------------------------------------------------------------------------- kd_loss
def test_kd_loss_two_classes_temperature_two():
    student = [[1.0, 3.0], [0.0, -1.0]]
    teacher = [[2.0, 0.0], [0.5, 0.5]]
    # Example 0 written out: s/T = (0.5, 1.5), t/T = (1, 0).
    z_s, z_t = math.exp(0.5) + math.exp(1.5), math.e + 1.0
    log_ps = [0.5 - math.log(z_s), 1.5 - math.log(z_s)]
    log_pt = [1.0 - math.log(z_t), 0.0 - math.log(z_t)]
    first = 4.0 * sum(math.exp(lt) * (lt - ls) for lt, ls in zip(log_pt, log_ps))
    assert first == pytest.approx(_kd_by_hand(student[0], teacher[0], 2.0), rel=1e-12)
    expected = (first + _kd_by_hand(student[1], teacher[1], 2.0)) / 2
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature=2.0)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_temperature_one_has_no_scale_factor():
    expected = _kl(_softmax([0.0, 1.0, 2.0]), _softmax([2.0, 1.0, 0.0]))
    got = kd_loss(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 2.0]]), temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("mask", [[[1, 1, 0]], [[0, 1, 1]]], ids=["right-padding", "left-padding"])
def test_kd_loss_per_token_ignores_padding(mask):
    valid_s = [[1.0, 2.0], [0.0, 0.5]]
    valid_t = [[2.0, 1.0], [1.0, -1.0]]
    pad_s, pad_t = [100.0, -100.0], [-100.0, 100.0]  # would dominate the mean if counted
    rows_s, rows_t = list(valid_s), list(valid_t)
    pad_at = mask[0].index(0)
    rows_s.insert(pad_at, pad_s)
    rows_t.insert(pad_at, pad_t)
    expected = sum(_kd_by_hand(s, t, 3.0) for s, t in zip(valid_s, valid_t)) / 2
    got = kd_loss(torch.tensor([rows_s]), torch.tensor([rows_t]), temperature=3.0, mask=torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    unmasked = kd_loss(torch.tensor([rows_s]), torch.tensor([rows_t]), temperature=3.0)
    assert unmasked.item() > 100 * expected


def test_kd_loss_identical_logits_is_zero():
    logits = torch.tensor([[[0.3, -1.2, 2.0], [5.0, 5.0, 0.0]]])
    assert kd_loss(logits, logits.clone(), temperature=4.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_kd_loss_rejects_non_positive_temperature(temperature):
    with pytest.raises(ConfigError, match="temperature"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=temperature)


def test_kd_loss_rejects_shape_mismatch():
    with pytest.raises(ConfigError):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# -------------------------------------------------------------------------------------- hidden states / embeddings
STUDENT_H = [[[1.0, 2.0], [3.0, 4.0], [50.0, -50.0]]]
TEACHER_H = [[[0.0, 0.0], [1.0, 1.0], [-50.0, 50.0]]]
MASK_H = [[1, 1, 0]]


@pytest.mark.parametrize("fn", [hidden_state_loss, embedding_loss])
def test_mse_is_mean_over_width_then_masked_mean_over_tokens(fn):
    # token 0: (1 + 4) / 2 = 2.5; token 1: (4 + 9) / 2 = 6.5; token 2 is padding.
    got = fn(torch.tensor(STUDENT_H), torch.tensor(TEACHER_H), torch.tensor(MASK_H))
    assert got.item() == pytest.approx((2.5 + 6.5) / 2, rel=1e-6)
    only_first = fn(torch.tensor(STUDENT_H), torch.tensor(TEACHER_H), torch.tensor([[1, 0, 0]]))
    assert only_first.item() == pytest.approx(2.5, rel=1e-6)


@pytest.mark.parametrize("fn", [hidden_state_loss, embedding_loss])
def test_cosine_is_one_minus_cos(fn):
    student = [[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]]
    teacher = [[[1.0, 1.0], [0.0, -3.0], [-1.0, -1.0]]]
    # 1 - 1/sqrt(2) for token 0, 1 - (-1) = 2 for token 1; token 2 (padding, would be 2) is ignored.
    expected = ((1 - 1 / math.sqrt(2)) + 2.0) / 2
    got = fn(torch.tensor(student), torch.tensor(teacher), torch.tensor(MASK_H), kind="cosine")
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_hidden_state_projection_maps_student_width_to_teacher_width():
    projection = torch.nn.Linear(2, 3)
    with torch.no_grad():
        projection.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        projection.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    # student (1, 2) -> (1, 2, 4); (0, 1) -> (0, 1, 2)
    student = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]])
    teacher = torch.tensor([[[1.0, 2.0, 5.0], [3.0, 1.0, 2.0]]])
    expected = ((0 + 0 + 1) / 3 + (9 + 0 + 0) / 3) / 2
    got = hidden_state_loss(student, teacher, projection=projection)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert embedding_loss(student, teacher, projection=projection).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ConfigError):
        hidden_state_loss(student, teacher)  # widths 2 and 3 without a projection


def test_hidden_state_unknown_kind():
    with pytest.raises(ConfigError, match="kind"):
        hidden_state_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), kind="l1")


# -------------------------------------------------------------------------------------------------- attention maps
# (1, 1, 2, 2): one head, two queries, two keys.
ATT_S = [[[[0.5, 0.5], [0.1, 0.9]]]]
ATT_T = [[[[0.75, 0.25], [0.5, 0.5]]]]


def test_attention_kl_by_hand():
    row0 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    row1 = 0.5 * math.log(0.5 / 0.1) + 0.5 * math.log(0.5 / 0.9)
    got = attention_loss(torch.tensor(ATT_S), torch.tensor(ATT_T), kind="kl")
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    masked = attention_loss(torch.tensor(ATT_S), torch.tensor(ATT_T), mask=torch.tensor([[1, 0]]), kind="kl")
    assert masked.item() == pytest.approx(row0, rel=1e-6)


def test_attention_mse_by_hand():
    row0 = (0.25**2 + 0.25**2) / 2
    row1 = (0.4**2 + 0.4**2) / 2
    got = attention_loss(torch.tensor(ATT_S), torch.tensor(ATT_T), kind="mse")
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    masked = attention_loss(torch.tensor(ATT_S), torch.tensor(ATT_T), mask=torch.tensor([[0, 1]]), kind="mse")
    assert masked.item() == pytest.approx(row1, rel=1e-6)


def test_attention_kl_zero_teacher_probability_contributes_nothing():
    student = torch.tensor([[[[0.5, 0.5]]]])
    teacher = torch.tensor([[[[1.0, 0.0]]]])
    assert attention_loss(student, teacher).item() == pytest.approx(math.log(2), rel=1e-6)


def test_attention_averages_heads_over_heads():
    # Same head count: mean over heads of per-head KL. Head 0 matches, head 1 row 0 differs.
    student = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]]])
    teacher = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]], [[0.8, 0.2], [0.5, 0.5]]]])
    head1_row0 = _kl([0.8, 0.2], [0.5, 0.5])
    expected = (0.0 + head1_row0 / 2) / 2  # heads averaged, then the two queries
    assert attention_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_attention_different_head_counts_average_heads_first():
    # Student heads (1, 0) and (0, 1) on query 0 average to (0.5, 0.5); on query 1 both are (0.2, 0.8).
    student = torch.tensor([[[[1.0, 0.0], [0.2, 0.8]], [[0.0, 1.0], [0.2, 0.8]]]])
    teacher = torch.tensor([[[[0.7, 0.3], [0.4, 0.6]]]])
    mse_row0 = (0.2**2 + 0.2**2) / 2
    mse_row1 = (0.2**2 + 0.2**2) / 2
    got = attention_loss(student, teacher, kind="mse")
    assert got.item() == pytest.approx((mse_row0 + mse_row1) / 2, rel=1e-6)
    kl = (_kl([0.7, 0.3], [0.5, 0.5]) + _kl([0.4, 0.6], [0.2, 0.8])) / 2
    assert attention_loss(student, teacher, kind="kl").item() == pytest.approx(kl, rel=1e-6)


@pytest.mark.parametrize(
    "student_shape, teacher_shape",
    [((1, 2, 2), (1, 2, 2)), ((1, 1, 2, 2), (1, 1, 3, 3)), ((2, 1, 2, 2), (1, 1, 2, 2))],
    ids=["rank-3", "length-mismatch", "batch-mismatch"],
)
def test_attention_rejects_bad_shapes(student_shape, teacher_shape):
    with pytest.raises(ConfigError):
        attention_loss(torch.full(student_shape, 0.5), torch.full(teacher_shape, 0.5))


def test_attention_unknown_kind():
    with pytest.raises(ConfigError, match="kind"):
        attention_loss(torch.tensor(ATT_S), torch.tensor(ATT_T), kind="js")


# -------------------------------------------------------------------------------------------------- combine_losses
def test_combine_losses_weighting():
    task, kd = torch.tensor(2.0), torch.tensor(4.0)
    assert float(combine_losses(task, kd, alpha=0.25)) == pytest.approx(0.75 * 2 + 0.25 * 4)
    extra = {"hidden": (0.5, torch.tensor(3.0)), "attention": (2.0, torch.tensor(0.25))}
    assert float(combine_losses(task, kd, 0.25, extra)) == pytest.approx(2.5 + 1.5 + 0.5)
    assert float(combine_losses(None, kd, 0.25)) == pytest.approx(4.0)  # no labels: KD counts fully
    assert float(combine_losses(None, kd, 0.25, extra)) == pytest.approx(4.0 + 2.0)
    assert float(combine_losses(task, None, 0.25)) == pytest.approx(2.0)
    assert float(combine_losses(None, None, 0.25, extra)) == pytest.approx(2.0)


@pytest.mark.parametrize("extra", [None, {}])
def test_combine_losses_nothing_to_combine(extra):
    with pytest.raises(ConfigError):
        combine_losses(None, None, 0.5, extra)


# ------------------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_the_student_only():
    cases = [
        (kd_loss, torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0, 0.0]])),
        (hidden_state_loss, torch.tensor(STUDENT_H), torch.tensor(TEACHER_H)),
        (attention_loss, torch.tensor(ATT_S), torch.tensor(ATT_T)),
    ]
    for fn, student, teacher in cases:
        student.requires_grad_(True)
        fn(student, teacher).backward()
        assert student.grad is not None and student.grad.abs().sum() > 0, fn.__name__
        assert teacher.grad is None, fn.__name__


def test_kd_loss_gradient_by_hand():
    # d/ds [T^2 KL(p_t || p_s)] = T * (p_s - p_t), divided by the batch size.
    student = torch.tensor([[1.0, 3.0], [0.0, -1.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 0.0], [0.5, 0.5]])
    kd_loss(student, teacher, temperature=2.0).backward()
    expected = []
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_s, p_t = _softmax([x / 2 for x in s_row]), _softmax([x / 2 for x in t_row])
        expected.append([2.0 * (a - b) / 2 for a, b in zip(p_s, p_t)])
    torch.testing.assert_close(student.grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_kd_loss_gradient_is_zero_at_identical_logits():
    student = torch.tensor([[[0.3, -1.2, 2.0], [5.0, 5.0, 0.0]]], requires_grad=True)
    kd_loss(student, student.detach().clone(), temperature=2.0).backward()
    torch.testing.assert_close(student.grad, torch.zeros_like(student), rtol=0, atol=1e-6)
