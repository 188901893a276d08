from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ml.data.folds import (
    assign_folds,
    assign_manifest_folds,
    fold_label_counts,
    folds_table,
    read_folds,
    write_folds,
)
from ml.data.manifest import ClipRecord, Manifest, ManifestError

LABELS = ["cel", "cla", "flu", "gac", "gel", "org", "pia", "sax", "tru", "vio", "voi"]


def _train(groups_per_label: dict[str, int], sizes: tuple[int, ...] = (3,)) -> list[ClipRecord]:
    """IRMAS-like training records: each group is one recording cut into 1-3 clips of one label."""
    recs = []
    for lab, n_groups in groups_per_label.items():
        for g in range(n_groups):
            size = sizes[g % len(sizes)]
            stem = f"{g:03d}__[{lab}][nod][cla]{g:04d}"
            for k in range(1, size + 1):
                recs.append(
                    ClipRecord(
                        path=f"IRMAS-TrainingData/{lab}/{stem}__{k}.wav",
                        split="train",
                        duration_s=3.0,
                        labels=(lab,),
                        genre="cla",
                        drums=False,
                        group=f"{lab}/{stem}",
                    )
                )
    return recs


def _unbalanced() -> dict[str, int]:
    # Label i has 5 + 3*i groups: rare and frequent labels, counts not divisible by k.
    return {lab: 5 + 3 * i for i, lab in enumerate(LABELS)}


def _group_folds(records: list[ClipRecord]) -> dict[str, set[int | None]]:
    out: dict[str, set[int | None]] = defaultdict(set)
    for r in records:
        out[r.group].add(r.fold)
    return out


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_groups_never_span_folds_and_labels_balanced(k: int) -> None:
    recs = _train(_unbalanced())
    out = assign_folds(recs, LABELS, k=k, seed=0)
    assert [r.path for r in out] == [r.path for r in recs]  # order preserved
    assert all(r.fold is not None and 0 <= r.fold < k for r in out)
    assert all(len(folds) == 1 for folds in _group_folds(out).values())
    per_fold = fold_label_counts(out, LABELS, k, by="groups")
    assert (per_fold.max(axis=0) - per_fold.min(axis=0) <= 1).all(), per_fold
    # all folds used and clip totals within one group (3 clips) of each other
    sizes = np.bincount([r.fold for r in out if r.fold is not None], minlength=k)
    assert sizes.min() > 0 and sizes.max() - sizes.min() <= 3


def test_variable_group_sizes_balance_clips() -> None:
    recs = _train(_unbalanced(), sizes=(3, 1, 2, 3, 3))
    out = assign_folds(recs, LABELS, k=5, seed=3)
    assert all(len(folds) == 1 for folds in _group_folds(out).values())
    clips = fold_label_counts(out, LABELS, 5, by="clips")
    assert (clips.max(axis=0) - clips.min(axis=0) <= 3).all(), clips  # within the largest group


def test_multilabel_groups_stay_together() -> None:
    rng = random.Random(0)
    recs = []
    for g in range(60):
        labs = tuple(sorted(rng.sample(LABELS, rng.randint(1, 3)), key=LABELS.index))
        for k in range(rng.randint(1, 3)):
            recs.append(ClipRecord(f"x/{g}_{k}.wav", "train", 3.0, labs, group=f"g{g}"))
    out = assign_folds(recs, LABELS, k=4, seed=1)
    assert all(len(folds) == 1 for folds in _group_folds(out).values())
    per_fold = fold_label_counts(out, LABELS, 4, by="groups")
    totals = per_fold.sum(axis=0)
    # every label with at least 4 groups appears in every fold
    assert (per_fold[:, totals >= 8] > 0).all(), per_fold


def test_deterministic_and_order_independent() -> None:
    recs = _train(_unbalanced(), sizes=(3, 2))
    a = assign_folds(recs, LABELS, k=5, seed=7)
    b = assign_folds(recs, LABELS, k=5, seed=7)
    shuffled = recs[:]
    random.Random(1).shuffle(shuffled)
    c = {r.path: r.fold for r in assign_folds(shuffled, LABELS, k=5, seed=7)}
    assert a == b
    assert {r.path: r.fold for r in a} == c
    d = assign_folds(recs, LABELS, k=5, seed=8)
    assert [r.fold for r in d] != [r.fold for r in a], "the seed must matter"


def test_test_records_get_no_fold() -> None:
    recs = _train({"cel": 3, "pia": 3})
    recs.append(ClipRecord("IRMAS-TestingData/x.wav", "test", 10.0, ("cel", "pia"), group="x", fold=4))
    out = assign_folds(recs, ["cel", "pia"], k=3)
    assert out[-1].fold is None and all(r.fold is not None for r in out[:-1])


def test_k_validation() -> None:
    recs = _train({"cel": 2, "pia": 2})  # 4 groups, 12 clips
    with pytest.raises(ValueError, match="k must be >= 2"):
        assign_folds(recs, ["cel", "pia"], k=1)
    with pytest.raises(ValueError, match="4 recording group"):
        assign_folds(recs, ["cel", "pia"], k=5)  # 12 clips but only 4 groups
    assert len({r.fold for r in assign_folds(recs, ["cel", "pia"], k=4)}) == 4


def test_folds_table_round_trip(tmp_path: Path) -> None:
    recs = _train({"cel": 4, "pia": 5})
    recs.append(ClipRecord("IRMAS-TestingData/x.wav", "test", 10.0, ("cel", "pia"), group="x"))
    manifest = assign_manifest_folds(Manifest(tmp_path, recs), ["cel", "pia"], k=3, seed=0)
    rows = folds_table(manifest)
    assert len(rows) == len(recs) - 1 and set(rows[0]) == {"path", "labels", "group", "fold"}
    path = tmp_path / "folds" / "folds.csv"
    assert write_folds(manifest, path) == len(rows)
    assert path.read_text().splitlines()[0] == "path,labels,group,fold"
    mapping = read_folds(path)
    cleared = manifest.with_folds(dict.fromkeys(mapping))
    assert all(r.fold is None for r in cleared)
    assert cleared.with_folds(mapping) == manifest


def test_read_folds_errors(tmp_path: Path) -> None:
    bad = tmp_path / "f.csv"
    bad.write_text("path,fold\na.wav,1\nb.wav,x\n")
    with pytest.raises(ManifestError, match=r"f\.csv:3: bad fold"):
        read_folds(bad)
    bad.write_text("path,labels\na.wav,cel\n")
    with pytest.raises(ManifestError, match="missing column"):
        read_folds(bad)
