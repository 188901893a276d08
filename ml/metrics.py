"""Multi-label classification metrics in pure, vectorised numpy.

Conventions shared by every function:

* ``y_true`` and ``y_pred`` are ``(N, C)`` indicator matrices with values in ``{0, 1}``
  (bool, int or float dtype are all accepted);
* ``scores`` is an ``(N, C)`` matrix of finite per-class scores in ``[0, 1]``;
* a prediction is positive when ``score >= threshold``.

Degenerate cases follow scikit-learn so that it can be used as a test oracle (it is *not*
imported here): every ratio whose denominator is zero is defined as ``0`` (``zero_division=0``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "as_indicator",
    "as_scores",
    "binarize",
    "cardinality",
    "decide",
    "evaluate",
    "hamming_score",
    "lrap",
    "macro_f1",
    "mean_average_precision",
    "micro_f1",
    "per_class_prf",
    "safe_div",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

# Upper bound on the number of booleans materialised at once by ``lrap`` (rows x C x C).
_LRAP_CHUNK_ELEMS = 1 << 24


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def as_indicator(y: ArrayLike, name: str) -> BoolArray:
    """Return ``y`` as a 2-D boolean matrix, raising if it is not a ``{0, 1}`` indicator."""
    arr = np.asarray(y)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C); got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric or bool; got dtype {arr.dtype}")
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name} must contain only 0 and 1")
    return arr.astype(bool)


def as_scores(scores: ArrayLike, name: str = "scores") -> FloatArray:
    """Return ``scores`` as a 2-D float64 matrix, raising unless every value is finite and in [0, 1]."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C); got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite (found NaN or inf)")
    if out.size and (out.min() < 0.0 or out.max() > 1.0):
        raise ValueError(f"{name} must lie in [0, 1]; got range [{out.min():.6g}, {out.max():.6g}]")
    return out


def _check_same_shape(a: NDArray[Any], b: NDArray[Any], names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape; got {a.shape} and {b.shape}")


def _check_nonempty(a: NDArray[Any], name: str) -> None:
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must have at least one row and one column; got shape {a.shape}")


def safe_div(num: FloatArray, den: FloatArray) -> FloatArray:
    """Elementwise ``num / den`` with 0 where ``den == 0`` (scikit-learn's ``zero_division=0``)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def binarize(scores: ArrayLike, thresholds: ArrayLike) -> BoolArray:
    """Turn scores into hard predictions with ``score >= threshold``.

    Args:
        scores: ``(N, C)`` scores in [0, 1].
        thresholds: a scalar, or a ``(C,)`` vector of per-class thresholds, each in [0, 1].

    Returns:
        ``(N, C)`` boolean prediction matrix.

    Raises:
        ValueError: on a bad shape or a threshold outside [0, 1] / not finite.

    """
    s = as_scores(scores)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(s.shape[1], float(t))
    if t.shape != (s.shape[1],):
        raise ValueError(f"thresholds must be a scalar or shape ({s.shape[1]},); got shape {t.shape}")
    if not np.all(np.isfinite(t)) or t.min(initial=0.0) < 0.0 or t.max(initial=0.0) > 1.0:
        raise ValueError("thresholds must be finite and lie in [0, 1]")
    # (N, C) >= (C,) broadcasts the per-class threshold over rows.
    return s >= t


def decide(scores: ArrayLike, thresholds: ArrayLike, max_labels: int | None = None) -> BoolArray:
    """The labels named per row: ``score >= threshold``, then at most ``max_labels`` of them.

    Of the labels that pass their thresholds, a row keeps the ``max_labels`` with the highest scores
    (ties broken by label order); ``None`` keeps them all (:func:`binarize`).

    Args:
        scores: ``(N, C)`` scores in [0, 1].
        thresholds: a scalar, or a ``(C,)`` vector of per-class thresholds, each in [0, 1].
        max_labels: the most labels named per row (>= 1), or ``None``.

    Returns:
        ``(N, C)`` boolean prediction matrix.

    Raises:
        ValueError: as :func:`binarize`, or ``max_labels`` < 1.
    """
    pred = binarize(scores, thresholds)
    if max_labels is None or max_labels >= pred.shape[1]:
        return pred
    if max_labels < 1:
        raise ValueError(f"max_labels must be >= 1 or None; got {max_labels}")
    s = as_scores(scores)
    # rank passing labels by score (failing ones last); a stable sort keeps label order among ties
    order = np.argsort(-np.where(pred, s, -1.0), axis=1, kind="stable")
    keep = np.zeros_like(pred)
    np.put_along_axis(keep, order[:, :max_labels], True, axis=1)
    return pred & keep


# --------------------------------------------------------------------------------------------
# threshold-based metrics
# --------------------------------------------------------------------------------------------


def _confusion(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-class ``(tp, predicted positives, true positives)`` counts, each ``(C,)``."""
    t = as_indicator(y_true, "y_true")
    p = as_indicator(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true and y_pred")
    tp = np.count_nonzero(t & p, axis=0).astype(np.float64)
    n_pred = np.count_nonzero(p, axis=0).astype(np.float64)
    n_true = np.count_nonzero(t, axis=0).astype(np.float64)
    return tp, n_pred, n_true


def per_class_prf(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, NDArray[np.int64]]:
    """Per-class precision, recall, F1 and support.

    Matches ``sklearn.metrics.precision_recall_fscore_support(average=None, zero_division=0)``:
    precision is 0 for a class never predicted, recall is 0 for a class with no true positives,
    and F1 = 2·TP / (2·TP + FP + FN) is 0 when that denominator is 0 (no true and no predicted
    positives).

    Args:
        y_true: ``(N, C)`` ground-truth indicator matrix.
        y_pred: ``(N, C)`` predicted indicator matrix.

    Returns:
        ``(precision, recall, f1, support)``, each of shape ``(C,)``; support is the number of
        true positives per class (int64).

    """
    tp, n_pred, n_true = _confusion(y_true, y_pred)
    precision = safe_div(tp, n_pred)
    recall = safe_div(tp, n_true)
    # 2TP + FP + FN == n_pred + n_true.
    f1 = safe_div(2.0 * tp, n_pred + n_true)
    return precision, recall, f1, n_true.astype(np.int64)


def micro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Micro-averaged F1 (counts pooled over all classes); 0 when nothing is true or predicted."""
    tp, n_pred, n_true = _confusion(y_true, y_pred)
    den = float(n_pred.sum() + n_true.sum())
    return 2.0 * float(tp.sum()) / den if den > 0 else 0.0


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean of the per-class F1 over *all* C classes.

    A class with neither true nor predicted positives scores F1 = 0 and still counts in the
    mean, exactly like ``sklearn.metrics.f1_score(average='macro', zero_division=0)``.
    """
    _, _, f1, _ = per_class_prf(y_true, y_pred)
    return float(f1.mean()) if f1.size else 0.0


def hamming_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """``1 - hamming_loss``: the fraction of (row, class) cells predicted correctly."""
    t = as_indicator(y_true, "y_true")
    p = as_indicator(y_pred, "y_pred")
    _check_same_shape(t, p, "y_true and y_pred")
    _check_nonempty(t, "y_true")
    return 1.0 - float(np.count_nonzero(t != p)) / t.size


def cardinality(y: ArrayLike) -> float:
    """Mean number of positive labels per row (0.0 for an empty matrix)."""
    arr = as_indicator(y, "y")
    if arr.shape[0] == 0:
        return 0.0
    return float(np.count_nonzero(arr)) / arr.shape[0]


# --------------------------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------------------------


def lrap(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Label ranking average precision (matches ``sklearn.metrics.label_ranking_average_precision_score``).

    For each row and each relevant label ``r``: ``rank = #{labels with score >= score_r}`` and
    ``L = #{relevant labels with score >= score_r}``; the row score is the mean of ``L / rank``
    over relevant labels. Ties therefore count pessimistically (max rank). Rows with no relevant
    label or with every label relevant score 1, as in scikit-learn.

    Args:
        y_true: ``(N, C)`` ground-truth indicator matrix.
        scores: ``(N, C)`` scores in [0, 1].

    Returns:
        The mean row score.

    """
    t = as_indicator(y_true, "y_true")
    s = as_scores(scores)
    _check_same_shape(t, s, "y_true and scores")
    _check_nonempty(t, "y_true")
    n, c = t.shape
    n_rel = np.count_nonzero(t, axis=1)
    row_scores = np.ones(n, dtype=np.float64)
    todo = np.flatnonzero((n_rel > 0) & (n_rel < c))
    chunk = max(1, _LRAP_CHUNK_ELEMS // (c * c))
    for start in range(0, todo.size, chunk):
        rows = todo[start : start + chunk]
        sr, yr = s[rows], t[rows]
        # ge[i, j, k] = score[i, k] >= score[i, j]: (R, C, C); summing over k gives the max-rank.
        ge = sr[:, None, :] >= sr[:, :, None]
        rank = np.count_nonzero(ge, axis=2)  # >= 1 always, since k == j is counted
        # Same count restricted to relevant k (mask broadcast over j): (R, C).
        n_above_rel = np.count_nonzero(ge & yr[:, None, :], axis=2)
        prec = n_above_rel / rank
        row_scores[rows] = np.where(yr, prec, 0.0).sum(axis=1) / n_rel[rows]
    return float(row_scores.mean())


def _average_precision_columns(y_true: BoolArray, scores: FloatArray) -> FloatArray:
    """Step-wise average precision of each column, as ``sklearn.metrics.average_precision_score``.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over distinct score thresholds in decreasing order.
    Equivalently every positive contributes ``precision at the end of its tie group / n_pos``,
    which is what is computed here for all columns at once. Columns without positives give 0.
    """
    n, _ = scores.shape
    # Stable descending sort of each column: (N, C) index matrix.
    order = np.argsort(-scores, axis=0, kind="stable")
    s_sorted = np.take_along_axis(scores, order, axis=0)
    y_sorted = np.take_along_axis(y_true, order, axis=0).astype(np.float64)
    tp = np.cumsum(y_sorted, axis=0)  # (N, C): positives among the top i+1
    # Position i closes a tie group when the next score differs (or it is the last row).
    is_last = np.ones_like(s_sorted, dtype=bool)
    is_last[:-1] = s_sorted[:-1] != s_sorted[1:]
    idx = np.broadcast_to(np.arange(n)[:, None], s_sorted.shape)
    end = np.where(is_last, idx, n)
    # end[i] := first group end at or after i (reverse running minimum along rows).
    end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
    prec_at_end = np.take_along_axis(tp, end, axis=0) / (end + 1.0)
    n_pos = y_sorted.sum(axis=0)
    return safe_div((y_sorted * prec_at_end).sum(axis=0), n_pos)


def mean_average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Macro-averaged average precision over the classes that have at least one positive.

    Equals ``sklearn.metrics.average_precision_score(y_true[:, m], scores[:, m], average='macro')``
    with ``m`` the mask of classes with a positive. Classes without positives are skipped because
    their AP is undefined; if no class has a positive the result is defined as 0.0.

    Args:
        y_true: ``(N, C)`` ground-truth indicator matrix.
        scores: ``(N, C)`` scores in [0, 1].

    Returns:
        The mean AP over classes with positives.

    """
    t = as_indicator(y_true, "y_true")
    s = as_scores(scores)
    _check_same_shape(t, s, "y_true and scores")
    _check_nonempty(t, "y_true")
    has_pos = t.any(axis=0)
    if not has_pos.any():
        return 0.0
    ap = _average_precision_columns(t[:, has_pos], s[:, has_pos])
    return float(ap.mean())


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def evaluate(
    y_true: ArrayLike,
    scores: ArrayLike,
    thresholds: float | ArrayLike,
    labels: Sequence[str],
    max_labels: int | None = None,
) -> dict[str, Any]:
    """Compute the full evaluation report for one set of scores.

    Args:
        y_true: ``(N, C)`` ground-truth indicator matrix.
        scores: ``(N, C)`` scores in [0, 1].
        thresholds: scalar or ``(C,)`` per-class thresholds; a label is predicted when
            ``score >= threshold``.
        labels: ``C`` class codes, used as keys of ``per_class``.
        max_labels: at most this many labels named per row (:func:`decide`); ``None``: no cap.

    Returns:
        A JSON-serialisable dict with plain Python floats/ints: ``micro_f1``, ``macro_f1``,
        ``lrap``, ``map``, ``hamming``, ``cardinality_true``, ``cardinality_pred`` and
        ``per_class: {code: {precision, recall, f1, support}}``.

    Raises:
        ValueError: on inconsistent shapes, values out of range, or duplicate/mis-sized labels.

    """
    t = as_indicator(y_true, "y_true")
    s = as_scores(scores)
    _check_same_shape(t, s, "y_true and scores")
    _check_nonempty(t, "y_true")
    codes = [str(x) for x in labels]
    if len(codes) != t.shape[1]:
        raise ValueError(f"labels must have {t.shape[1]} entries (one per class); got {len(codes)}")
    if len(set(codes)) != len(codes):
        raise ValueError("labels must be unique")
    pred = decide(s, thresholds, max_labels)
    precision, recall, f1, support = per_class_prf(t, pred)
    return {
        "micro_f1": micro_f1(t, pred),
        "macro_f1": float(f1.mean()),
        "lrap": lrap(t, s),
        "map": mean_average_precision(t, s),
        "hamming": hamming_score(t, pred),
        "cardinality_true": cardinality(t),
        "cardinality_pred": cardinality(pred),
        "per_class": {
            code: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, code in enumerate(codes)
        },
    }
