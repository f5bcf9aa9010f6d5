import pytest

from hf_sparse import ConfigError, PruningConfig, cubic_sparsity, sparsity_at


def test_cubic_schedule_values():
    kw = dict(initial=0.0, final=0.8, start_step=10, end_step=110, update_every=1)
    assert cubic_sparsity(0, **kw) == 0.0
    assert cubic_sparsity(9, **kw) == 0.0
    assert cubic_sparsity(10, **kw) == 0.0
    # s = 0.8 + (0 - 0.8) * (1 - 50/100)^3 = 0.8 - 0.8 * 0.125 = 0.7
    assert cubic_sparsity(60, **kw) == pytest.approx(0.7)
    # s = 0.8 - 0.8 * (1 - 0.25)^3 = 0.8 - 0.8 * 0.421875 = 0.4625
    assert cubic_sparsity(35, **kw) == pytest.approx(0.4625)
    assert cubic_sparsity(110, **kw) == 0.8
    assert cubic_sparsity(10_000, **kw) == 0.8


def test_cubic_schedule_with_initial_sparsity_and_monotone():
    kw = dict(initial=0.2, final=0.9, start_step=0, end_step=100, update_every=1)
    assert cubic_sparsity(0, **kw) == pytest.approx(0.2)
    values = [cubic_sparsity(t, **kw) for t in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[-1] == 0.9


def test_update_every_holds_the_value_between_updates():
    kw = dict(initial=0.0, final=0.8, start_step=0, end_step=100, update_every=25)
    assert cubic_sparsity(24, **kw) == 0.0
    assert cubic_sparsity(25, **kw) == cubic_sparsity(49, **kw) == pytest.approx(0.8 - 0.8 * 0.75**3)
    assert cubic_sparsity(50, **kw) == pytest.approx(0.7)


def test_start_equal_end_is_one_shot():
    assert cubic_sparsity(4, initial=0.0, final=0.5, start_step=5, end_step=5) == 0.0
    assert cubic_sparsity(5, initial=0.0, final=0.5, start_step=5, end_step=5) == 0.5


def test_sparsity_at_dispatches_on_schedule():
    cubic = PruningConfig(sparsity=0.8, start_step=10, end_step=110, update_every=1)
    assert sparsity_at(cubic, 60) == pytest.approx(0.7)
    oneshot = PruningConfig(sparsity=0.8, schedule="oneshot", start_step=3)
    assert [sparsity_at(oneshot, t) for t in (0, 2, 3, 50)] == [0.0, 0.0, 0.8, 0.8]


def test_bad_schedule_arguments():
    with pytest.raises(ConfigError, match="update_every"):
        cubic_sparsity(1, initial=0, final=0.5, start_step=0, end_step=10, update_every=0)
    with pytest.raises(ConfigError, match="end_step"):
        cubic_sparsity(1, initial=0, final=0.5, start_step=10, end_step=5)


def test_iterative_schedule_reaches_each_stage_at_its_step():
    from hf_sparse.pruning import iterative_sparsity, iterative_stage_steps

    assert iterative_stage_steps(start_step=2, end_step=11, stages=4) == [2, 5, 8, 11]
    cfg = PruningConfig(sparsity=0.8, schedule="iterative", stages=4, start_step=2, end_step=11)
    got = [sparsity_at(cfg, t) for t in range(14)]
    assert got == pytest.approx([0, 0, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.8, 0.8, 0.8])
    kw = dict(initial=0.2, final=0.8, start_step=0, end_step=10)
    assert iterative_sparsity(0, stages=3, **kw) == pytest.approx(0.4)
    assert iterative_sparsity(5, stages=3, **kw) == pytest.approx(0.6)
    assert iterative_sparsity(10, stages=3, **kw) == pytest.approx(0.8)
    assert iterative_sparsity(3, stages=1, **kw) == pytest.approx(0.8)  # one stage: one-shot at start_step
    with pytest.raises(ConfigError, match="stages"):
        iterative_stage_steps(start_step=0, end_step=1, stages=0)


def test_rigl_schedule_is_constant_sparsity_with_cosine_decayed_updates():
    from hf_sparse.pruning import is_rigl_update, rigl_regrow_fraction

    cfg = PruningConfig(sparsity=0.7, schedule="rigl", start_step=2, end_step=12, update_every=5, regrow_fraction=0.4)
    assert [sparsity_at(cfg, t) for t in (0, 1, 2, 3, 50)] == pytest.approx([0, 0, 0.7, 0.7, 0.7])
    assert [t for t in range(20) if is_rigl_update(cfg, t)] == [7]
    kw = dict(fraction=0.4, start_step=2, end_step=12)
    assert rigl_regrow_fraction(7, **kw) == pytest.approx(0.2)  # cos(pi/2) = 0: half the fraction
    assert rigl_regrow_fraction(3, **kw) > rigl_regrow_fraction(7, **kw) > rigl_regrow_fraction(11, **kw) > 0
    assert rigl_regrow_fraction(2, **kw) == rigl_regrow_fraction(12, **kw) == 0.0
