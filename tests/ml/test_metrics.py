"""Tests for ml.metrics: scikit-learn is the oracle, hypothesis checks invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn import metrics as skm

from ml import metrics

SEEDS = list(range(12))


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random multilabel data with the edge cases forced in: an empty class and an empty row."""
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(6, 80)), int(rng.integers(3, 9))
    y = (rng.random((n, c)) < rng.uniform(0.1, 0.6)).astype(int)
    # Coarse rounding creates ties, which exercise the tie handling of LRAP and AP.
    scores = np.round(rng.random((n, c)), int(rng.integers(1, 4)))
    pred = (rng.random((n, c)) < rng.uniform(0.1, 0.6)).astype(int)
    y[2, :] = 1  # row with every label but class 0 (all-label rows: test_lrap_degenerate_rows)
    y[:, 0] = 0  # class without positives
    y[1, :] = 0  # row without labels
    pred[:, 1] = 0  # class never predicted
    return y, scores, pred


@pytest.mark.parametrize("seed", SEEDS)
def test_threshold_metrics_match_sklearn(seed: int) -> None:
    y, _, pred = _random_case(seed)
    assert metrics.micro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert metrics.macro_f1(y, pred) == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    ours = metrics.per_class_prf(y, pred)
    ref = skm.precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b)
    assert ours[3].dtype == np.int64
    assert metrics.hamming_score(y, pred) == pytest.approx(1.0 - skm.hamming_loss(y, pred))


@pytest.mark.parametrize("seed", SEEDS)
def test_lrap_matches_sklearn(seed: int) -> None:
    y, scores, _ = _random_case(seed)
    assert metrics.lrap(y, scores) == pytest.approx(skm.label_ranking_average_precision_score(y, scores))


def test_lrap_chunking_matches_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force several row chunks so the chunk loop itself is covered.
    monkeypatch.setattr(metrics, "_LRAP_CHUNK_ELEMS", 50)
    y, scores, _ = _random_case(3)
    assert metrics.lrap(y, scores) == pytest.approx(skm.label_ranking_average_precision_score(y, scores))


def test_lrap_degenerate_rows_score_one() -> None:
    y = np.array([[0, 0, 0], [1, 1, 1]])
    s = np.array([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1]])
    assert metrics.lrap(y, s) == 1.0
    assert skm.label_ranking_average_precision_score(y, s) == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_map_matches_sklearn_on_classes_with_positives(seed: int) -> None:
    y, scores, _ = _random_case(seed)
    mask = y.sum(axis=0) > 0
    assert not mask[0]
    ref = skm.average_precision_score(y[:, mask], scores[:, mask], average="macro")
    assert metrics.mean_average_precision(y, scores) == pytest.approx(ref)


def test_map_single_class_and_no_positive() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    s = np.array([[0.9, 0.2], [0.8, 0.1], [0.4, 0.3], [0.4, 0.9]])
    assert metrics.mean_average_precision(y, s) == pytest.approx(
        skm.average_precision_score(y[:, 0], s[:, 0])
    )
    assert metrics.mean_average_precision(np.zeros((3, 2)), np.full((3, 2), 0.5)) == 0.0


def test_cardinality() -> None:
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]])
    assert metrics.cardinality(y) == pytest.approx(6 / 4)
    assert metrics.cardinality(np.zeros((0, 3))) == 0.0


def test_zero_division_edge_cases() -> None:
    y = np.zeros((4, 3), dtype=int)
    pred = np.zeros((4, 3), dtype=int)
    assert metrics.micro_f1(y, pred) == 0.0
    assert metrics.macro_f1(y, pred) == 0.0
    p, r, f, s = metrics.per_class_prf(y, pred)
    assert not (p.any() or r.any() or f.any() or s.any())
    assert metrics.hamming_score(y, pred) == 1.0


def test_evaluate_report_is_json_and_consistent() -> None:
    y, scores, _ = _random_case(5)
    c = y.shape[1]
    labels = [f"c{i}" for i in range(c)]
    thresholds = np.linspace(0.3, 0.7, c)
    report = metrics.evaluate(y, scores, thresholds, labels)
    json.dumps(report, allow_nan=False)  # strict JSON: no numpy scalars, no NaN
    pred = (scores >= thresholds).astype(int)
    assert set(report) == {
        "micro_f1",
        "macro_f1",
        "lrap",
        "map",
        "hamming",
        "cardinality_true",
        "cardinality_pred",
        "per_class",
    }
    assert report["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro", zero_division=0))
    assert report["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert report["lrap"] == pytest.approx(skm.label_ranking_average_precision_score(y, scores))
    assert report["hamming"] == pytest.approx(1 - skm.hamming_loss(y, pred))
    assert report["cardinality_true"] == pytest.approx(y.sum() / y.shape[0])
    assert report["cardinality_pred"] == pytest.approx(pred.sum() / y.shape[0])
    assert list(report["per_class"]) == labels
    assert report["per_class"]["c0"]["support"] == 0
    assert isinstance(report["per_class"]["c1"]["support"], int)
    # A scalar threshold behaves like the same value repeated per class.
    assert metrics.evaluate(y, scores, 0.5, labels) == metrics.evaluate(y, scores, np.full(c, 0.5), labels)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.micro_f1(np.ones((2, 3)), np.ones((3, 2))), "same shape"),
        (lambda: metrics.micro_f1(np.ones(3), np.ones(3)), "2-D"),
        (lambda: metrics.macro_f1(np.full((2, 2), 2), np.ones((2, 2))), "only 0 and 1"),
        (lambda: metrics.lrap(np.ones((2, 2)), np.full((2, 2), 1.5)), r"\[0, 1\]"),
        (lambda: metrics.lrap(np.ones((2, 2)), np.full((2, 2), np.nan)), "finite"),
        (lambda: metrics.evaluate(np.ones((2, 2)), np.ones((2, 2)), 0.5, ["a"]), "2 entries"),
        (lambda: metrics.evaluate(np.ones((2, 2)), np.ones((2, 2)), 0.5, ["a", "a"]), "unique"),
        (lambda: metrics.evaluate(np.ones((2, 2)), np.ones((2, 2)), [0.5] * 3, ["a", "b"]), "thresholds"),
        (lambda: metrics.evaluate(np.ones((2, 2)), np.ones((2, 2)), 1.5, ["a", "b"]), "thresholds"),
        (lambda: metrics.hamming_score(np.ones((0, 2)), np.ones((0, 2))), "at least one row"),
    ],
)
def test_validation_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


_indicator = st.integers(1, 12).flatmap(
    lambda n: st.integers(2, 6).flatmap(lambda c: hnp.arrays(np.int8, (n, c), elements=st.integers(0, 1)))
)


@settings(max_examples=60, deadline=None)
@given(y=_indicator, data=st.data())
def test_property_f1_bounds_and_perfect_prediction(y: np.ndarray, data: st.DataObject) -> None:
    pred = data.draw(hnp.arrays(np.int8, y.shape, elements=st.integers(0, 1)))
    for fn in (metrics.micro_f1, metrics.macro_f1, metrics.hamming_score):
        assert 0.0 <= fn(y, pred) <= 1.0
    _, _, f1, _ = metrics.per_class_prf(y, pred)
    assert np.all((f1 >= 0) & (f1 <= 1))
    assert metrics.hamming_score(y, y) == 1.0
    if y.any():
        assert metrics.micro_f1(y, y) == pytest.approx(1.0)
    if y.any(axis=0).all():
        assert metrics.macro_f1(y, y) == pytest.approx(1.0)
    # Scores equal to the labels rank every positive first.
    assert metrics.lrap(y, y.astype(float)) == pytest.approx(1.0)
    if y.any():
        assert metrics.mean_average_precision(y, y.astype(float)) == pytest.approx(1.0)


@settings(max_examples=60, deadline=None)
@given(y=_indicator, data=st.data())
def test_property_ranking_metrics_in_unit_interval(y: np.ndarray, data: st.DataObject) -> None:
    scores = data.draw(hnp.arrays(np.float64, y.shape, elements=st.floats(0, 1)))
    assert 0.0 <= metrics.lrap(y, scores) <= 1.0
    assert 0.0 <= metrics.mean_average_precision(y, scores) <= 1.0


def test_decide_keeps_the_highest_scores_of_the_labels_over_their_thresholds():
    s = np.array([[0.9, 0.6, 0.7, 0.2], [0.5, 0.5, 0.5, 0.1], [0.1, 0.2, 0.3, 0.1]])
    th = np.array([0.5, 0.5, 0.8, 0.5])
    passing = metrics.binarize(s, th)
    np.testing.assert_array_equal(metrics.decide(s, th), passing)
    np.testing.assert_array_equal(metrics.decide(s, th, 4), passing)
    # row 0: 0.9 and 0.6 pass (0.7 is under its 0.8); a cap of 1 keeps the 0.9
    np.testing.assert_array_equal(metrics.decide(s, th, 1)[0], [True, False, False, False])
    # row 1: a three-way tie over the thresholds of labels 0 and 1: label order decides
    np.testing.assert_array_equal(metrics.decide(s, th, 1)[1], [True, False, False, False])
    np.testing.assert_array_equal(metrics.decide(s, th, 2)[1], [True, True, False, False])
    # a cap never names a label under its threshold (row 2 names nothing)
    assert not metrics.decide(s, th, 2)[2].any()
    assert (metrics.decide(s, th, 1) <= passing).all()
    with pytest.raises(ValueError, match="max_labels"):
        metrics.decide(s, th, 0)


def test_evaluate_with_a_cap_counts_only_the_named_labels():
    y = np.array([[1, 0, 0], [0, 1, 1]])
    s = np.array([[0.9, 0.8, 0.7], [0.2, 0.9, 0.8]])
    free = metrics.evaluate(y, s, 0.5, ["a", "b", "c"])
    capped = metrics.evaluate(y, s, 0.5, ["a", "b", "c"], max_labels=1)
    assert free["cardinality_pred"] == pytest.approx(2.5)
    assert capped["cardinality_pred"] == pytest.approx(1.0)
    assert capped["per_class"]["c"]["recall"] == 0.0  # the 0.8 of row 2 is dropped by the cap
    assert capped["lrap"] == free["lrap"]  # rankings do not depend on the decision
