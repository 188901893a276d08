"""Tests for ml.fusion: aggregation, weighted fusion, thresholds and the reference searches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ml import fusion, metrics

# ----------------------------------------------------------------------------- aggregation

WINDOWS = np.array(
    [
        [0.2, 0.4, 0.0],
        [0.6, 0.2, 0.0],
        [0.4, 0.9, 0.0],
    ]
)


def test_aggregate_hand_computed() -> None:
    np.testing.assert_allclose(fusion.aggregate(WINDOWS, "mean"), [0.4, 0.5, 0.0])
    np.testing.assert_allclose(fusion.aggregate(WINDOWS, "max"), [0.6, 0.9, 0.0])
    # s2: per-class sums (1.2, 1.5, 0.0) divided by their max 1.5.
    np.testing.assert_allclose(fusion.aggregate(WINDOWS, "s2"), [0.8, 1.0, 0.0])


def test_aggregate_s2_all_zero_stays_zero() -> None:
    np.testing.assert_array_equal(fusion.aggregate(np.zeros((2, 3)), "s2"), np.zeros(3))


def test_aggregate_batch_variable_lengths_matches_single() -> None:
    rng = np.random.default_rng(0)
    windows = [rng.random((w, 4)) for w in (1, 5, 2, 7)]
    for method in fusion.AGGREGATIONS:
        batch = fusion.aggregate_batch(windows, method)
        assert batch.shape == (4, 4)
        for i, w in enumerate(windows):
            np.testing.assert_allclose(batch[i], fusion.aggregate(w, method))
    np.testing.assert_allclose(fusion.aggregate_batch(windows, "mean")[1], windows[1].mean(axis=0))
    s2 = fusion.aggregate_batch(windows, "s2")
    np.testing.assert_allclose(s2.max(axis=1), 1.0)


def test_aggregate_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="valid names: max, mean, s2"):
        fusion.aggregate(WINDOWS, "median")


@pytest.mark.parametrize(
    "windows",
    [[], [np.zeros((0, 3))], [np.zeros((2, 3)), np.zeros((2, 4))], [np.full((1, 2), 1.5)]],
)
def test_aggregate_batch_rejects_bad_input(windows: list[np.ndarray]) -> None:
    with pytest.raises(ValueError):
        fusion.aggregate_batch(windows, "mean")


def test_aggregations_registry_is_read_only() -> None:
    with pytest.raises(TypeError):
        fusion.AGGREGATIONS["x"] = fusion.AGGREGATIONS["mean"]  # type: ignore[index]


# ----------------------------------------------------------------------------- fuse


def test_fuse_normalises_weights() -> None:
    a, b = np.full((2, 3), 0.2), np.full((2, 3), 0.8)
    stack = np.stack([a, b])
    np.testing.assert_allclose(fusion.fuse(stack, [1.0, 3.0]), 0.25 * a + 0.75 * b)
    np.testing.assert_allclose(fusion.fuse(stack, [2.0, 6.0]), fusion.fuse(stack, [0.25, 0.75]))


def test_fuse_zero_weight_drops_member() -> None:
    rng = np.random.default_rng(1)
    stack = rng.random((3, 5, 4))
    np.testing.assert_allclose(fusion.fuse(stack, [0.0, 2.0, 0.0]), stack[1])
    np.testing.assert_allclose(fusion.fuse(stack, [1.0, 1.0, 0.0]), stack[:2].mean(axis=0))


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([0.0, 0.0], "all be zero"),
        ([-0.1, 1.0], "non-negative"),
        ([1.0], "shape"),
        ([np.nan, 1.0], "finite"),
    ],
)
def test_fuse_invalid_weights(weights: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fusion.fuse(np.full((2, 3, 4), 0.5), weights)


def test_fuse_rejects_bad_scores() -> None:
    with pytest.raises(ValueError, match="shape"):
        fusion.fuse(np.full((3, 4), 0.5), [1.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fusion.fuse(np.full((1, 3, 4), 2.0), [1.0])


def test_equal_weights() -> None:
    assert fusion.equal_weights(["a", "b", "c", "d"]) == {"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}
    with pytest.raises(ValueError):
        fusion.equal_weights([])
    with pytest.raises(ValueError):
        fusion.equal_weights(["a", "a"])


# ----------------------------------------------------------------------------- thresholds


def _separable(seed: int, n: int = 200, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per class, positives score in (0.6, 0.9) and negatives in (0.1, 0.4): perfectly separable."""
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < 0.3
    scores = np.where(y, rng.uniform(0.6, 0.9, (n, c)), rng.uniform(0.1, 0.4, (n, c)))
    return y, scores


@pytest.mark.parametrize("objective", ["macro_f1", "micro_f1", "lrap"])
def test_fit_thresholds_separable_gives_perfect_f1(objective: str) -> None:
    y, scores = _separable(0)
    thr = fusion.fit_thresholds(y, scores, objective)
    assert thr.shape == (5,)
    pred = scores >= thr
    assert metrics.macro_f1(y, pred) == 1.0
    assert metrics.micro_f1(y, pred) == 1.0
    # The threshold sits in the gap between the classes (midpoint of the closest pair).
    for c in range(5):
        assert scores[~y[:, c], c].max() < thr[c] <= scores[y[:, c], c].min()


def test_fit_thresholds_class_without_positives_gets_half() -> None:
    y, scores = _separable(1)
    y[:, 2] = False
    for objective in ("macro_f1", "micro_f1"):
        thr = fusion.fit_thresholds(y, scores, objective)
        assert thr[2] == 0.5
    all_neg = fusion.fit_thresholds(np.zeros((4, 3)), np.full((4, 3), 0.7), "micro_f1")
    np.testing.assert_array_equal(all_neg, 0.5)


def test_fit_thresholds_respects_clip_range() -> None:
    rng = np.random.default_rng(2)
    y = rng.random((300, 4)) < 0.5
    scores = rng.random((300, 4))
    thr = fusion.fit_thresholds(y, scores)
    assert np.all((thr >= 0.05) & (thr <= 0.95))


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(2, 40),
    c=st.integers(2, 4),
)
def test_fit_thresholds_macro_is_exact_optimum(data: st.DataObject, n: int, c: int) -> None:
    """Per-class F1 at the fitted threshold equals brute force over every clipped threshold."""
    y = data.draw(hnp.arrays(np.bool_, (n, c)))
    scores = data.draw(
        hnp.arrays(np.float64, (n, c), elements=st.sampled_from([0.0, 0.03, 0.1, 0.3, 0.5, 0.51, 0.8, 1.0]))
    )
    thr = fusion.fit_thresholds(y, scores)
    _, _, f1, _ = metrics.per_class_prf(y, scores >= thr)
    for k in range(c):
        # Every realisable prediction set for a threshold in [0.05, 0.95].
        cands = np.concatenate([[0.05, 0.95], scores[(scores[:, k] >= 0.05) & (scores[:, k] <= 0.95), k]])
        best = max(metrics.per_class_prf(y[:, [k]], scores[:, [k]] >= t)[2][0] for t in cands)
        assert f1[k] == pytest.approx(best)


@pytest.mark.parametrize("seed", range(4))
def test_fit_thresholds_micro_improves_on_macro_start(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random((400, 6)) < rng.uniform(0.05, 0.5, 6)
    scores = np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, y.shape), 0, 1)
    macro_thr = fusion.fit_thresholds(y, scores, "macro_f1")
    micro_thr = fusion.fit_thresholds(y, scores, "micro_f1")
    # On these imbalanced classes the pooled optimum differs from the per-class one, both ways.
    assert metrics.micro_f1(y, scores >= micro_thr) > metrics.micro_f1(y, scores >= macro_thr)
    assert metrics.macro_f1(y, scores >= macro_thr) > metrics.macro_f1(y, scores >= micro_thr)
    # Coordinate-wise local optimum: no single-class change to any realisable threshold helps.
    best = metrics.micro_f1(y, scores >= micro_thr)
    for c in range(y.shape[1]):
        col = scores[:, c]
        for t in np.concatenate([[0.05, 0.95], col[(col >= 0.05) & (col <= 0.95)]]):
            trial = micro_thr.copy()
            trial[c] = t
            assert metrics.micro_f1(y, scores >= trial) <= best + 1e-12


def test_fit_thresholds_user_grid() -> None:
    y, scores = _separable(3)
    thr = fusion.fit_thresholds(y, scores, grid=[0.2, 0.5, 0.95])
    np.testing.assert_array_equal(thr, 0.5)
    with pytest.raises(ValueError, match="grid"):
        fusion.fit_thresholds(y, scores, grid=[1.5])
    with pytest.raises(ValueError, match="valid names"):
        fusion.fit_thresholds(y, scores, "accuracy")


# ----------------------------------------------------------------------------- objectives


def test_objective_names_and_errors() -> None:
    y, scores = _separable(4)
    assert fusion.objective("macro_f1", y, scores, 0.5) == 1.0
    assert fusion.objective("micro_f1", y, scores, 0.5) == 1.0
    assert fusion.objective("lrap", y, scores) == pytest.approx(metrics.lrap(y, scores))
    assert fusion.objective("lrap", y, scores, 0.99) == fusion.objective("lrap", y, scores)
    with pytest.raises(ValueError, match="valid names: macro_f1, micro_f1, lrap"):
        fusion.objective("auc", y, scores, 0.5)
    with pytest.raises(ValueError, match="needs thresholds"):
        fusion.objective("macro_f1", y, scores)


# ----------------------------------------------------------------------------- searches


def _signal_and_noise(seed: int, n: int = 1500, c: int = 8) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random((n, c)) < 0.25
    signal = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.15, (n, c)), 0, 1)  # informative but noisy
    noise = rng.random((n, c))  # independent of y
    return {"signal": signal, "noise": noise}, y


@pytest.mark.parametrize("objective", ["macro_f1", "micro_f1", "lrap"])
@pytest.mark.parametrize("search", ["coordinate", "random"])
def test_search_ignores_noise_member(search: str, objective: str) -> None:
    members, y = _signal_and_noise(7)
    if search == "coordinate":
        res = fusion.coordinate_search(members, y, objective=objective, steps=10, rounds=3)
    else:
        res = fusion.random_search(members, y, n=60, seed=3, objective=objective)
    assert res.weights["noise"] < 0.1
    assert sum(res.weights.values()) == pytest.approx(1.0)
    assert res.objective == objective
    alone = fusion.evaluate_fusion(members, y, {"signal": 1.0, "noise": 0.0}, objective=objective)
    equal = fusion.evaluate_fusion(members, y, fusion.equal_weights(list(members)), objective=objective)
    assert res.value >= alone - 1e-12
    assert res.value >= equal - 1e-12
    assert equal < alone  # the noise really hurts, so the check above is meaningful
    # The reported value is reproducible from the reported weights and thresholds.
    again = fusion.evaluate_fusion(members, y, res.weights, thresholds=res.thresholds, objective=objective)
    assert again == pytest.approx(res.value)


def test_searches_are_deterministic_and_serialisable() -> None:
    members, y = _signal_and_noise(8, n=400)
    a = fusion.random_search(members, y, n=20, seed=11, aggregation="s2")
    b = fusion.random_search(members, y, n=20, seed=11, aggregation="s2")
    assert a == b
    assert a.aggregation == "s2"
    assert fusion.coordinate_search(members, y, steps=5) == fusion.coordinate_search(members, y, steps=5)
    json.dumps(a.to_dict(), allow_nan=False)
    assert len(a.thresholds) == y.shape[1]


def test_search_three_members_picks_the_informative_ones() -> None:
    members, y = _signal_and_noise(9)
    rng = np.random.default_rng(10)
    # A second informative member with independent errors: blending it should help.
    members["signal2"] = np.clip(0.35 + 0.3 * y + rng.normal(0, 0.15, y.shape), 0, 1)
    res = fusion.coordinate_search(members, y, steps=10, rounds=4)
    assert res.weights["noise"] < 0.1
    assert res.weights["signal"] > 0.2 and res.weights["signal2"] > 0.2
    single = max(fusion.evaluate_fusion(members, y, {**dict.fromkeys(members, 0.0), m: 1.0}) for m in members)
    assert res.value > single


def test_evaluate_fusion_weights_forms_and_errors() -> None:
    members, y = _signal_and_noise(12, n=300)
    by_name = fusion.evaluate_fusion(members, y, {"signal": 3.0, "noise": 1.0})
    by_seq = fusion.evaluate_fusion(members, y, [0.75, 0.25])
    assert by_name == by_seq
    with pytest.raises(ValueError, match="missing"):
        fusion.evaluate_fusion(members, y, {"signal": 1.0})
    with pytest.raises(ValueError, match="unknown"):
        fusion.evaluate_fusion(members, y, {"signal": 1.0, "noise": 0.0, "x": 1.0})
    with pytest.raises(ValueError, match="expected"):
        fusion.evaluate_fusion({"a": np.full((3, 2), 0.5)}, y, [1.0])
    with pytest.raises(ValueError, match="valid names"):
        fusion.evaluate_fusion(members, y, [1.0, 1.0], objective="nope")


def test_sample_simplex() -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([fusion.sample_simplex(rng, 4) for _ in range(500)])
    assert draws.shape == (500, 4)
    assert np.all(draws >= 0)
    np.testing.assert_allclose(draws.sum(axis=1), 1.0)
    np.testing.assert_allclose(draws.mean(axis=0), 0.25, atol=0.03)  # Dirichlet(1) is symmetric
    with pytest.raises(ValueError):
        fusion.sample_simplex(rng, 0)
