"""Robust aggregators and Byzantine attacks, checked against hand-computed vectors."""

from __future__ import annotations

import numpy as np
import pytest

from clusters import PartyContext
from trainers.aggregators import (
    AggregatorError,
    CenteredClipping,
    GeometricMedian,
    Krum,
    Mean,
    Median,
    MultiKrum,
    TrimmedMean,
    build_aggregator,
    layer_distances,
)
from trainers.attacks import (
    ALIE,
    IPM,
    Adversary,
    LabelFlipping,
    Scaling,
    SignFlip,
    build_adversary,
    byzantine_parties,
)
from trainers.base import PartyData
from trainers.config import AggregatorConfig, AttackConfig
from trainers.ledger import Ledger

ONES = np.ones


def agg(aggregator, rows, counts=None, reference=None):
    rows = np.asarray(rows, dtype=np.float64)
    counts = np.ones(len(rows)) if counts is None else np.asarray(counts, dtype=np.float64)
    reference = np.zeros(rows.shape[1]) if reference is None else np.asarray(reference, float)
    return aggregator(rows, counts, reference)


def test_mean_is_sample_weighted():
    out = agg(Mean(), [[0, 0], [2, 4]], counts=[1, 3])
    np.testing.assert_allclose(out.vector, [1.5, 3.0])
    np.testing.assert_allclose(out.influence, [0.25, 0.75])


def test_median_odd_picks_the_middle_value_per_coordinate():
    out = agg(Median(), [[1, 5], [3, 1], [2, 9]])
    np.testing.assert_allclose(out.vector, [2, 5])
    # coordinate 0 comes from row 2, coordinate 1 from row 0
    np.testing.assert_allclose(out.influence, [0.5, 0.0, 0.5])


def test_median_even_averages_the_two_middle_values_and_breaks_ties_by_row():
    out = agg(Median(), [[1, 1], [1, 2], [3, 2], [4, 0]])
    np.testing.assert_allclose(out.vector, [2.0, 1.5])
    np.testing.assert_allclose(out.influence, [0.25, 0.5, 0.25, 0.0])


def test_trimmed_mean_cuts_floor_of_trim_times_n_at_each_end():
    out = agg(TrimmedMean(0.2), [[10], [1], [2], [3], [-50]])
    np.testing.assert_allclose(out.vector, [2.0])  # -50 and 10 are cut
    np.testing.assert_allclose(out.influence, [0, 1 / 3, 1 / 3, 1 / 3, 0])
    # trim 0.1 of 5 values cuts nothing (floor(0.5) = 0): the plain mean
    np.testing.assert_allclose(agg(TrimmedMean(0.1), [[10], [1], [2], [3], [-50]]).vector, [-6.8])
    with pytest.raises(AggregatorError, match="trim"):
        TrimmedMean(0.5)


def test_krum_picks_the_upload_with_the_closest_neighbours():
    rows = [[0], [1], [2], [10], [11]]
    k = Krum(f=1)
    # n - f - 2 = 2 nearest: scores 1+2, 1+1, 1+2, 1+8, 1+9
    np.testing.assert_allclose(k.scores(np.asarray(rows, float)), [3, 2, 3, 9, 10])
    out = agg(k, rows)
    np.testing.assert_allclose(out.vector, [1])
    np.testing.assert_allclose(out.influence, [0, 1, 0, 0, 0])


def test_krum_tie_goes_to_the_lower_row():
    out = agg(Krum(f=0), [[0], [1], [3], [4]])  # rows 1 and 2 both score 3
    np.testing.assert_allclose(out.vector, [1])


def test_krum_refuses_too_few_uploads():
    with pytest.raises(AggregatorError, match=r"n > 2f \+ 2 uploads, got n=4, f=1"):
        agg(Krum(f=1), [[0], [1], [2], [3]])
    # f from the attack fraction: ceil(0.3 * 10) = 3, and 10 > 8
    Krum(byzantine_fraction=0.3).check(10)
    with pytest.raises(AggregatorError):
        Krum(byzantine_fraction=0.3).check(8)  # f = 3, 8 <= 8


def test_multi_krum_averages_the_m_best():
    out = agg(MultiKrum(f=1, m=2), [[0], [1], [2], [10], [11]], counts=[1, 1, 1, 1, 1])
    np.testing.assert_allclose(out.vector, [0.5])  # rows 1 (score 2) and 0 (score 3, tie first)
    np.testing.assert_allclose(out.influence, [0.5, 0.5, 0, 0, 0])
    assert MultiKrum(f=1).chosen_m(5) == 4
    with pytest.raises(AggregatorError, match="m <= n"):
        MultiKrum(f=0, m=9).check(5)


def test_distances_sum_per_layer_norms():
    a, b = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    assert layer_distances(a, b)[0, 0] == pytest.approx(5.0)
    assert layer_distances(a, b, [(0, 1), (1, 2)])[0, 0] == pytest.approx(7.0)
    # Krum's choice depends on the layering: per-layer sums change which upload is central
    rows = np.array([[0.0, 0.0], [3.0, 4.0], [7.0, 0.0]])
    np.testing.assert_allclose(
        layer_distances(rows, rows, [(0, 1), (1, 2)]),
        [[0, 7, 7], [7, 0, 8], [7, 8, 0]],
    )


def test_geometric_median_of_three_points_on_a_line_is_the_middle_one():
    out = agg(GeometricMedian(iters=500, tol=1e-12), [[0.0], [1.0], [10.0]])
    assert out.vector[0] == pytest.approx(1.0, abs=1e-3)
    assert out.influence.sum() == pytest.approx(1.0)
    # an outlier barely moves it, unlike the mean
    far = agg(GeometricMedian(), [[0, 0], [1, 0], [0, 1], [1, 1], [1000, 1000]])
    assert np.linalg.norm(far.vector - 0.5) < 1.0


def test_centered_clipping_clips_each_offset_to_tau():
    out = agg(CenteredClipping(tau=1.0, iters=1), [[1, 0], [100, 0]], reference=[0, 0])
    np.testing.assert_allclose(out.vector, [1.0, 0.0])  # both offsets clipped to (1, 0)
    # influence follows the clipped weights: 1 for row 0, 1/100 for row 1
    np.testing.assert_allclose(out.influence, [100 / 101, 1 / 101])


def test_build_aggregator_knows_every_name_and_lists_them():
    for name in ("mean", "median", "trimmed_mean", "krum", "multi_krum"):
        assert build_aggregator(AggregatorConfig(name=name))
    with pytest.raises(KeyError, match="valid: centered_clipping, geometric_median, krum"):
        build_aggregator(AggregatorConfig(name="bulyan"))


# ------------------------------------------------------------------ attacks

RNG = np.random.default_rng(0)


def test_row_attacks_change_only_byzantine_rows():
    rows = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    byz = np.array([False, True, False])
    for name, expected in (
        ("sign_flip", [-3.0, -4.0]),
        ("zero", [0.0, 0.0]),
        ("one", [1.0, 1.0]),
    ):
        adv = build_adversary(AttackConfig(name=name, fraction=0.3), seed=0)
        out = adv(rows, byz, np.zeros(2), round_=0)
        np.testing.assert_array_equal(out[[0, 2]], rows[[0, 2]])
        np.testing.assert_array_equal(out[1], expected)


def test_scaling_stays_between_range_times_value_and_value():
    rows = np.full((1, 1000), 2.0)
    out = Scaling(0.5).corrupt(rows, np.array([True]), RNG)
    assert out.min() >= 1.0 and out.max() <= 2.0 and out.std() > 0.1


def test_update_target_corrupts_the_difference_from_the_global_model():
    reference = np.array([10.0, 10.0])
    rows = np.array([[11.0, 12.0]])
    out = Adversary(SignFlip(), target="update")(rows, np.array([True]), reference, 0)
    np.testing.assert_allclose(out, [[9.0, 8.0]])  # w + (-(w_k - w))


def test_attack_randomness_is_reproducible_per_round():
    adv = build_adversary(AttackConfig(name="gaussian", sigma=1.0), seed=3)
    rows, byz = np.zeros((2, 5)), np.array([True, False])
    np.testing.assert_array_equal(adv(rows, byz, rows[0], 1), adv(rows, byz, rows[0], 1))
    assert not np.array_equal(adv(rows, byz, rows[0], 1), adv(rows, byz, rows[0], 2))


def test_alie_sends_mean_minus_z_std_of_the_honest_uploads():
    assert ALIE.z_max(10, 3) == pytest.approx(0.5244, abs=1e-4)  # s = 3, Phi^-1(0.7)
    rows = np.array([[0.0], [2.0], [100.0]])
    out = ALIE(z=1.0).corrupt(rows, np.array([False, False, True]), RNG)
    np.testing.assert_allclose(out[2], [0.0])  # mean 1, std 1 of rows 0 and 1


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
    rows = np.array([[2.0, 4.0], [4.0, 8.0], [9.0, 9.0]])
    out = IPM(0.5).corrupt(rows, np.array([False, False, True]), RNG)
    np.testing.assert_allclose(out[2], [-1.5, -3.0])


def test_byzantine_set_is_fixed_by_the_seed():
    cfg = AttackConfig(name="sign_flip", fraction=0.3)
    a = byzantine_parties(range(100), cfg, seed=1)
    assert len(a) == 30 and a == byzantine_parties(range(100), cfg, seed=1)
    assert a != byzantine_parties(range(100), cfg, seed=2)
    assert byzantine_parties(range(100), AttackConfig(name="none", fraction=0.3), 1) == set()


def test_label_flipping_wraps_only_byzantine_parties():
    def labels(ctx, payload):
        return ctx.data.y.tolist()

    wrapped = LabelFlipping(labels, frozenset({1}), n_classes=10)
    data = PartyData(np.zeros((3, 2), np.float32), np.array([0, 3, 9]))
    assert wrapped(PartyContext(0, data, {}), None) == [0, 3, 9]
    assert wrapped(PartyContext(1, data, {}), None) == [9, 6, 0]


def test_ledger_counts_what_got_through():
    ledger = Ledger(range(4), frozenset({2, 3}))
    m = ledger.record([0, 2, 3], np.array([0.5, 0.5, 0.0]))
    assert m["byzantine_uploads"] == 2 and m["byzantine_through"] == 1
    assert m["byzantine_share"] == pytest.approx(0.5)
    assert m["participation_mean"] == pytest.approx(0.5)  # counts 1, 0, 1, 0
    assert m["participation_var"] == pytest.approx(0.25)
    assert [r["aggregated"] for r in ledger.table()] == [1, 0, 1, 0]
