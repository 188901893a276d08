"""Search-free math of score-level late fusion for the multi-label ensemble.

Pipeline and shapes:

1. each member produces window scores ``(W_i, C)`` per excerpt ``i``; :func:`aggregate` /
   :func:`aggregate_batch` reduce them to one ``(C,)`` vector per excerpt (``'mean'``, ``'max'``
   or ``'s2'``), giving an ``(N, C)`` matrix per member;
2. :func:`fuse` takes the stacked member matrices ``S: (M, N, C)`` and returns their weighted
   mean ``(N, C)``;
3. :func:`fit_thresholds` turns fused scores into per-class decision thresholds ``(C,)``,
   fitted on out-of-fold *training* predictions (never on test data);
4. :func:`objective` scores the result.

:func:`evaluate_fusion` chains 2-4 and is the body of a hyper-parameter trial (the Ray Tune search
lives elsewhere). :func:`coordinate_search` and :func:`random_search` are deterministic numpy
reference searches. A label is predicted when ``score >= threshold``, as in :mod:`ml.metrics`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ml import metrics

__all__ = [
    "AGGREGATIONS",
    "OBJECTIVES",
    "FusionResult",
    "aggregate",
    "aggregate_batch",
    "coordinate_search",
    "equal_weights",
    "evaluate_fusion",
    "fit_thresholds",
    "fuse",
    "objective",
    "random_search",
    "sample_simplex",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.intp]

#: Default clipping range of fitted thresholds: keeps a class from being always/never predicted
#: just because the out-of-fold optimum sits at an extreme score.
THRESHOLD_RANGE: tuple[float, float] = (0.05, 0.95)
#: Threshold used for classes without any positive in the fitting data.
FALLBACK_THRESHOLD = 0.5
_TIE_TOL = 1e-12


# --------------------------------------------------------------------------------------------
# window aggregation
# --------------------------------------------------------------------------------------------


def _agg_mean(flat: FloatArray, starts: IntArray, lengths: IntArray) -> FloatArray:
    # reduceat sums each contiguous segment of rows: (N, C).
    sums: FloatArray = np.add.reduceat(flat, starts, axis=0)
    return sums / lengths[:, None]


def _agg_max(flat: FloatArray, starts: IntArray, lengths: IntArray) -> FloatArray:
    del lengths
    out: FloatArray = np.maximum.reduceat(flat, starts, axis=0)
    return out


def _agg_s2(flat: FloatArray, starts: IntArray, lengths: IntArray) -> FloatArray:
    del lengths
    sums: FloatArray = np.add.reduceat(flat, starts, axis=0)  # (N, C)
    peak = sums.max(axis=1, keepdims=True)  # (N, 1): the top class of each excerpt
    # An excerpt whose windows are all zero stays all zero instead of dividing by 0.
    out = np.zeros_like(sums)
    np.divide(sums, peak, out=out, where=peak > 0)
    return out


#: Registry of window-aggregation methods (read-only): name -> batched implementation.
#: ``'s2'`` is the "sum ÷ max" normalisation: per-class sum over windows, then the vector is
#: divided by its maximum so the top class scores exactly 1.
AGGREGATIONS: Mapping[str, Callable[[FloatArray, IntArray, IntArray], FloatArray]] = MappingProxyType(
    {"mean": _agg_mean, "max": _agg_max, "s2": _agg_s2}
)


def _check_aggregation(method: str) -> Callable[[FloatArray, IntArray, IntArray], FloatArray]:
    try:
        return AGGREGATIONS[method]
    except KeyError:
        raise ValueError(
            f"unknown aggregation {method!r}; valid names: {', '.join(sorted(AGGREGATIONS))}"
        ) from None


def aggregate_batch(windows: Sequence[ArrayLike], method: str) -> FloatArray:
    """Aggregate the window scores of many excerpts at once.

    Args:
        windows: ``N`` arrays of shape ``(W_i, C)`` (``W_i >= 1`` may differ, ``C`` may not),
            scores in [0, 1].
        method: a key of :data:`AGGREGATIONS`.

    Returns:
        ``(N, C)`` aggregated scores, in [0, 1].

    Raises:
        ValueError: on an unknown method, an empty list/excerpt, mismatched ``C`` or bad values.

    """
    fn = _check_aggregation(method)
    if len(windows) == 0:
        raise ValueError("windows must contain at least one excerpt")
    arrays = [np.asarray(w, dtype=np.float64) for w in windows]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"windows[{i}] must have shape (W >= 1, C >= 1); got {a.shape}")
    n_classes = arrays[0].shape[1]
    if any(a.shape[1] != n_classes for a in arrays):
        raise ValueError("all excerpts must have the same number of classes C")
    flat = np.concatenate(arrays, axis=0)  # (sum W_i, C)
    if not np.all(np.isfinite(flat)) or flat.min() < 0.0 or flat.max() > 1.0:
        raise ValueError("window scores must be finite and lie in [0, 1]")
    lengths = np.fromiter((a.shape[0] for a in arrays), dtype=np.intp, count=len(arrays))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.intp)
    return fn(flat, starts, lengths)


def aggregate(window_scores: ArrayLike, method: str) -> FloatArray:
    """Aggregate one excerpt's window scores ``(W, C)`` into a ``(C,)`` vector.

    Args:
        window_scores: ``(W, C)`` scores in [0, 1], ``W >= 1``.
        method: a key of :data:`AGGREGATIONS` (``'mean'``, ``'max'`` or ``'s2'``).

    Returns:
        ``(C,)`` aggregated scores.

    Raises:
        ValueError: on an unknown method or a malformed input.

    """
    return aggregate_batch([window_scores], method)[0]


# --------------------------------------------------------------------------------------------
# weighted fusion
# --------------------------------------------------------------------------------------------


def _normalise_weights(weights: ArrayLike, n_members: int) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,):
        raise ValueError(f"weights must have shape ({n_members},) (one per member); got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights must not all be zero")
    return w / total


def _as_member_stack(scores: ArrayLike) -> FloatArray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or 0 in s.shape:
        raise ValueError(f"member scores must have shape (M, N, C) with M, N, C >= 1; got {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0.0 or s.max() > 1.0:
        raise ValueError("member scores must be finite and lie in [0, 1]")
    return s


def _fuse_unchecked(stack: FloatArray, w: FloatArray) -> FloatArray:
    active = np.flatnonzero(w > 0)
    # (M',) . (M', N, C) -> (N, C); zero-weight members are skipped entirely, not multiplied by 0.
    out: FloatArray = np.tensordot(w[active], stack[active], axes=1)
    # Guard against 1 + ulp after the weighted sum so downstream [0, 1] checks hold.
    return np.clip(out, 0.0, 1.0)


def fuse(scores: ArrayLike, weights: ArrayLike) -> FloatArray:
    """Weighted mean of member scores.

    Args:
        scores: ``(M, N, C)`` per-excerpt scores of ``M`` members, in [0, 1].
        weights: ``(M,)`` non-negative weights, not all zero; normalised to sum to 1 here.

    Returns:
        ``(N, C)`` fused scores. Members with weight 0 contribute nothing.

    Raises:
        ValueError: if the shapes disagree or the weights are negative, non-finite or all zero.

    """
    stack = _as_member_stack(scores)
    return _fuse_unchecked(stack, _normalise_weights(weights, stack.shape[0]))


def equal_weights(members: Sequence[str]) -> dict[str, float]:
    """Return ``{member: 1/M}`` for the given member names (the unsearched baseline)."""
    if len(members) == 0:
        raise ValueError("members must not be empty")
    if len(set(members)) != len(members):
        raise ValueError("member names must be unique")
    return {m: 1.0 / len(members) for m in members}


# --------------------------------------------------------------------------------------------
# objectives and thresholds
# --------------------------------------------------------------------------------------------

#: Objective names accepted by :func:`objective` (and the searches).
OBJECTIVES: tuple[str, ...] = ("macro_f1", "micro_f1", "lrap")


def _check_objective(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid names: {', '.join(OBJECTIVES)}")


def _objective_value(
    name: str, y_true: BoolArray, scores: FloatArray, thresholds: float | ArrayLike | None
) -> float:
    _check_objective(name)
    if name == "lrap":
        return metrics.lrap(y_true, scores)
    if thresholds is None:
        raise ValueError(f"objective {name!r} needs thresholds")
    pred = metrics.binarize(scores, thresholds)
    return metrics.macro_f1(y_true, pred) if name == "macro_f1" else metrics.micro_f1(y_true, pred)


def objective(
    name: str, y_true: ArrayLike, scores: ArrayLike, thresholds: float | ArrayLike | None = None
) -> float:
    """Evaluate a named objective (higher is better).

    Args:
        name: one of :data:`OBJECTIVES`: ``'macro_f1'``, ``'micro_f1'`` or ``'lrap'``.
        y_true: ``(N, C)`` ground-truth indicator matrix.
        scores: ``(N, C)`` scores in [0, 1].
        thresholds: scalar or ``(C,)`` thresholds; required for the F1 objectives, ignored by
            ``'lrap'``.

    Returns:
        The objective value.

    Raises:
        ValueError: on an unknown name (the message lists the valid ones), missing thresholds or
            malformed inputs.

    """
    y, s = _check_labels_scores(y_true, scores)
    return _objective_value(name, y, s, thresholds)


def _check_labels_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[BoolArray, FloatArray]:
    y = metrics.as_indicator(y_true, "y_true")
    s = metrics.as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores must have the same shape; got {y.shape} and {s.shape}")
    if 0 in y.shape:
        raise ValueError(f"y_true must have at least one row and one column; got shape {y.shape}")
    return y, s


def _threshold_candidates(
    y: BoolArray, s: FloatArray, grid: FloatArray | None, lo: float, hi: float
) -> tuple[FloatArray, FloatArray, FloatArray, BoolArray]:
    """Enumerate candidate thresholds per class with their confusion counts.

    Returns ``(thr, tp, n_pred, valid)``, each ``(K, C)``: candidate ``k`` of class ``c`` is
    ``thr[k, c]`` and predicting ``s[:, c] >= thr[k, c]`` yields ``tp[k, c]`` true positives out
    of ``n_pred[k, c]`` predictions. ``valid`` masks candidates that are not usable.
    """
    n, n_classes = s.shape
    order = np.argsort(s, axis=0, kind="stable")  # ascending per column
    s_sorted = np.take_along_axis(s, order, axis=0)
    y_sorted = np.take_along_axis(y, order, axis=0)
    # cum_pos[k, c]: positives among the k lowest scores of class c, shape (N + 1, C).
    cum_pos = np.zeros((n + 1, n_classes), dtype=np.float64)
    np.cumsum(y_sorted, axis=0, out=cum_pos[1:])
    n_pos = cum_pos[-1]

    if grid is None:
        # Cut between sorted rows k-1 and k (k = 1..N-1): the threshold is the midpoint of the two
        # scores, so every candidate sits in the middle of a gap of the observed scores. Cuts
        # inside a run of tied scores cannot be realised and are masked out.
        below, above = s_sorted[:-1], s_sorted[1:]  # (N - 1, C)
        mid = 0.5 * (below + above)
        mid = np.where(mid > below, mid, above)  # adjacent floats: keep 'below' under the cut
        interior_valid = (below < above) & (mid >= lo) & (mid <= hi)
        k_interior = np.broadcast_to(np.arange(1, n)[:, None], mid.shape)
        # The clip bounds themselves are always candidates (they cover cuts clipped away).
        bounds = np.array([lo, hi])
        k_bounds = np.stack([np.count_nonzero(s < b, axis=0) for b in bounds])  # (2, C)
        thr = np.concatenate([mid, np.broadcast_to(bounds[:, None], (2, n_classes))])
        k = np.concatenate([k_interior, k_bounds])
        valid = np.concatenate([interior_valid, np.ones((2, n_classes), dtype=bool)])
    else:
        # User grid shared by all classes: k = number of scores strictly below each threshold.
        k = np.stack(
            [np.searchsorted(s_sorted[:, c], grid, side="left") for c in range(n_classes)], axis=1
        )  # (G, C)
        thr = np.broadcast_to(grid[:, None], k.shape).astype(np.float64)
        valid = np.ones(k.shape, dtype=bool)
    tp = n_pos[None, :] - np.take_along_axis(cum_pos, k, axis=0)
    n_pred = (n - k).astype(np.float64)
    return thr, tp, n_pred, valid


def _pick(values: FloatArray, thr: FloatArray, valid: BoolArray) -> IntArray:
    """Per column, the index of the best valid value; ties go to the threshold closest to 0.5."""
    v = np.where(valid, values, -np.inf)
    best = v.max(axis=0)
    tied = valid & (v >= best - _TIE_TOL)
    dist = np.where(tied, np.abs(thr - FALLBACK_THRESHOLD), np.inf)
    out: IntArray = np.argmin(dist, axis=0)
    return out


def fit_thresholds(
    y_true: ArrayLike,
    scores: ArrayLike,
    objective: str = "macro_f1",
    grid: ArrayLike | None = None,
    *,
    clip: tuple[float, float] = THRESHOLD_RANGE,
    max_rounds: int = 10,
) -> FloatArray:
    """Fit per-class decision thresholds on (out-of-fold training) predictions.

    Candidates: by default every midpoint between consecutive distinct scores of a class that
    lies inside ``clip``, plus the two clip bounds, so the search is exact over all achievable
    predictions within the clip range at ``O(N log N)`` per class. With ``grid`` the same
    candidate set (no clipping applied) is used for every class.

    * ``'macro_f1'`` (and ``'lrap'``, which ignores thresholds but still needs them at inference
      time): each class independently maximises its own F1.
    * ``'micro_f1'``: coordinate ascent over classes on the pooled micro-F1, starting from the
      per-class optimum and accepting only strict improvements (deterministic, monotone).

    Ties are broken towards the threshold closest to 0.5. Classes without any positive get
    :data:`FALLBACK_THRESHOLD` (0.5) and are left there.

    Args:
        y_true: ``(N, C)`` ground-truth indicator matrix.
        scores: ``(N, C)`` scores in [0, 1].
        objective: one of :data:`OBJECTIVES`.
        grid: optional 1-D candidate thresholds in [0, 1] shared by all classes.
        clip: ``(lo, hi)`` range of default candidates, ``0 <= lo <= hi <= 1``.
        max_rounds: maximum coordinate-ascent sweeps for ``'micro_f1'``.

    Returns:
        ``(C,)`` float64 thresholds.

    Raises:
        ValueError: on an unknown objective, a bad grid/clip or malformed inputs.

    """
    _check_objective(objective)
    y, s = _check_labels_scores(y_true, scores)
    lo, hi = (float(x) for x in clip)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"clip must satisfy 0 <= lo <= hi <= 1; got {clip}")
    g: FloatArray | None = None
    if grid is not None:
        g = np.unique(np.asarray(grid, dtype=np.float64))  # sorted, deduplicated
        if g.ndim != 1 or g.size == 0 or not np.all(np.isfinite(g)) or g[0] < 0.0 or g[-1] > 1.0:
            raise ValueError("grid must be a non-empty 1-D array of finite values in [0, 1]")
    if max_rounds < 0:
        raise ValueError("max_rounds must be >= 0")

    thr, tp, n_pred, valid = _threshold_candidates(y, s, g, lo, hi)
    n_pos = np.count_nonzero(y, axis=0).astype(np.float64)
    has_pos = n_pos > 0
    # Per-class F1 of every candidate: (K, C); 2TP + FP + FN == n_pred + n_pos.
    f1 = metrics.safe_div(2.0 * tp, n_pred + n_pos[None, :])
    cols = np.arange(s.shape[1])
    choice = _pick(f1, thr, valid)

    if objective == "micro_f1" and has_pos.any():
        total_pos = float(n_pos.sum())
        for _ in range(max_rounds):
            changed = False
            for c in np.flatnonzero(has_pos):
                tp_all = float(tp[choice, cols].sum())
                pred_all = float(n_pred[choice, cols].sum())
                tp_rest, pred_rest = tp_all - tp[choice[c], c], pred_all - n_pred[choice[c], c]
                current = 2.0 * tp_all / (pred_all + total_pos)
                # Micro-F1 for every candidate of class c with the other classes fixed: (K,).
                cand = 2.0 * (tp_rest + tp[:, c]) / (pred_rest + n_pred[:, c] + total_pos)
                k = int(_pick(cand[:, None], thr[:, c : c + 1], valid[:, c : c + 1])[0])
                if cand[k] > current + _TIE_TOL:
                    choice[c] = k
                    changed = True
            if not changed:
                break

    out = thr[choice, cols].astype(np.float64)
    out[~has_pos] = FALLBACK_THRESHOLD
    return out


# --------------------------------------------------------------------------------------------
# trial body and reference searches
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FusionResult:
    """Outcome of a fusion search.

    Attributes:
        weights: member name -> normalised weight (sums to 1).
        aggregation: name of the window aggregation the member scores were built with.
        thresholds: per-class thresholds fitted for the fused scores.
        objective: objective name.
        value: objective value reached on the search data.

    """

    weights: dict[str, float]
    aggregation: str
    thresholds: list[float]
    objective: str
    value: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy."""
        return dataclasses.asdict(self)


def _stack_members(
    member_scores: Mapping[str, ArrayLike], y_true: ArrayLike
) -> tuple[list[str], FloatArray, BoolArray]:
    """Validate once and stack to ``(names, S: (M, N, C), y: (N, C))``."""
    names = list(member_scores)
    if not names:
        raise ValueError("member_scores must not be empty")
    y = metrics.as_indicator(y_true, "y_true")
    arrays = [np.asarray(member_scores[m], dtype=np.float64) for m in names]
    for m, a in zip(names, arrays, strict=True):
        if a.shape != y.shape:
            raise ValueError(f"scores of member {m!r} have shape {a.shape}; expected {y.shape} (as y_true)")
    return names, _as_member_stack(np.stack(arrays)), y


def _weight_vector(names: Sequence[str], weights: Mapping[str, float] | ArrayLike) -> FloatArray:
    if isinstance(weights, Mapping):
        missing = [m for m in names if m not in weights]
        extra = [k for k in weights if k not in names]
        if missing or extra:
            raise ValueError(f"weights keys must match the members; missing {missing}, unknown {extra}")
        weights = [float(weights[m]) for m in names]
    return _normalise_weights(weights, len(names))


def _score(stack: FloatArray, y: BoolArray, w: FloatArray, objective: str) -> tuple[float, FloatArray]:
    """Fuse with normalised ``w``, fit thresholds on the same data, return (value, thresholds)."""
    fused = _fuse_unchecked(stack, w)
    thr = fit_thresholds(y, fused, objective)
    return _objective_value(objective, y, fused, thr), thr


def evaluate_fusion(
    member_scores: Mapping[str, ArrayLike],
    y_true: ArrayLike,
    weights: Mapping[str, float] | ArrayLike,
    thresholds: float | ArrayLike | None = None,
    objective: str = "macro_f1",
) -> float:
    """Trial body of the fusion search: fuse, fit thresholds if needed, return the objective.

    By design ``member_scores`` / ``y_true`` are out-of-fold *training* predictions; when
    ``thresholds`` is None they are fitted on this same data (never on test data).

    Args:
        member_scores: member name -> ``(N, C)`` per-excerpt scores (already aggregated).
        y_true: ``(N, C)`` ground-truth indicator matrix.
        weights: member name -> weight (keys must match the members), or a sequence in the
            iteration order of ``member_scores``; non-negative, not all zero, normalised here.
        thresholds: optional scalar / ``(C,)`` thresholds; fitted with ``objective`` if None.
        objective: one of :data:`OBJECTIVES`.

    Returns:
        The objective value (higher is better).

    """
    _check_objective(objective)
    names, stack, y = _stack_members(member_scores, y_true)
    w = _weight_vector(names, weights)
    if thresholds is None:
        return _score(stack, y, w, objective)[0]
    return _objective_value(objective, y, _fuse_unchecked(stack, w), thresholds)


def sample_simplex(rng: np.random.Generator, n_members: int) -> FloatArray:
    """Draw weights uniformly from the probability simplex (Dirichlet(1, ..., 1)), shape ``(M,)``."""
    if n_members < 1:
        raise ValueError("n_members must be >= 1")
    out: FloatArray = rng.dirichlet(np.ones(n_members))
    return out


def _result(
    names: Sequence[str], w: FloatArray, thr: FloatArray, aggregation: str, objective: str, value: float
) -> FusionResult:
    return FusionResult(
        weights={m: float(x) for m, x in zip(names, w, strict=True)},
        aggregation=aggregation,
        thresholds=[float(t) for t in thr],
        objective=objective,
        value=float(value),
    )


def _set_coordinate(w: FloatArray, i: int, value: float) -> FloatArray:
    """Move member ``i`` to ``value`` on the simplex, rescaling the others proportionally."""
    out = w.copy()
    others = np.arange(w.size) != i
    rest = w[others].sum()
    if rest > 0:
        out[others] = w[others] / rest * (1.0 - value)
    else:  # all mass was on member i: spread the remainder evenly
        out[others] = (1.0 - value) / max(1, w.size - 1)
    out[i] = value
    return out


def coordinate_search(
    member_scores: Mapping[str, ArrayLike],
    y_true: ArrayLike,
    objective: str = "macro_f1",
    steps: int = 10,
    rounds: int = 5,
    aggregation: str = "mean",
) -> FusionResult:
    """Deterministic coordinate ascent over simplex weights.

    Starts from equal weights. In each round every member ``i`` in turn is set to each grid
    value ``0, 1/steps, ..., 1`` (the other weights rescaled to keep their ratios), thresholds
    are refitted for every candidate, and the best candidate is kept if it strictly improves the
    objective. Stops after ``rounds`` sweeps or a sweep without change. Because equal weights and
    (through value 1) every single member are evaluated, the result is never worse than either.

    Args:
        member_scores: member name -> ``(N, C)`` out-of-fold scores.
        y_true: ``(N, C)`` ground-truth indicator matrix.
        objective: one of :data:`OBJECTIVES`.
        steps: grid resolution per coordinate (>= 1).
        rounds: maximum number of sweeps over the members (>= 1).
        aggregation: recorded in the result (the caller aggregated the windows).

    Returns:
        The best :class:`FusionResult` found.

    """
    _check_objective(objective)
    _check_aggregation(aggregation)
    if steps < 1 or rounds < 1:
        raise ValueError("steps and rounds must be >= 1")
    names, stack, y = _stack_members(member_scores, y_true)
    n_members = len(names)
    w = np.full(n_members, 1.0 / n_members)
    best, thr = _score(stack, y, w, objective)
    grid = np.linspace(0.0, 1.0, steps + 1)
    seen: dict[tuple[float, ...], tuple[float, FloatArray]] = {}
    for _ in range(rounds if n_members > 1 else 0):
        changed = False
        for i in range(n_members):
            cand_best: tuple[float, FloatArray, FloatArray] | None = None
            for v in grid:
                cand = _set_coordinate(w, i, float(v))
                key = tuple(np.round(cand, 12))
                if key not in seen:
                    seen[key] = _score(stack, y, cand, objective)
                val, cthr = seen[key]
                if cand_best is None or val > cand_best[0]:
                    cand_best = (val, cand, cthr)
            if cand_best is not None and cand_best[0] > best + _TIE_TOL:
                best, w, thr = cand_best
                changed = True
        if not changed:
            break
    return _result(names, w, thr, aggregation, objective, best)


def random_search(
    member_scores: Mapping[str, ArrayLike],
    y_true: ArrayLike,
    n: int = 200,
    seed: int = 0,
    objective: str = "macro_f1",
    aggregation: str = "mean",
) -> FusionResult:
    """Plain-numpy reference random search over simplex weights.

    Evaluates equal weights, every single member (one-hot weights) and then ``n`` Dirichlet(1)
    samples drawn from ``numpy.random.default_rng(seed)``; thresholds are refitted for each
    candidate. The first candidate with the highest objective wins, so the result is never worse
    than the equal-weight blend or any single member and is reproducible for a given seed.

    Args:
        member_scores: member name -> ``(N, C)`` out-of-fold scores.
        y_true: ``(N, C)`` ground-truth indicator matrix.
        n: number of random samples (>= 0).
        seed: RNG seed.
        objective: one of :data:`OBJECTIVES`.
        aggregation: recorded in the result.

    Returns:
        The best :class:`FusionResult` found.

    """
    _check_objective(objective)
    _check_aggregation(aggregation)
    if n < 0:
        raise ValueError("n must be >= 0")
    names, stack, y = _stack_members(member_scores, y_true)
    n_members = len(names)
    rng = np.random.default_rng(seed)
    fixed = [np.full(n_members, 1.0 / n_members), *np.eye(n_members)]
    best: tuple[float, FloatArray, FloatArray] | None = None
    for j in range(len(fixed) + n):
        w = fixed[j] if j < len(fixed) else sample_simplex(rng, n_members)
        val, thr = _score(stack, y, w, objective)
        if best is None or val > best[0] + _TIE_TOL:
            best = (val, w, thr)
    assert best is not None  # the loop runs at least once (equal weights)
    return _result(names, best[1], best[2], aggregation, objective, best[0])
