"""Label-stratified, group-aware cross-validation folds.

Every clip cut from one source recording (one ``group``) lands in the same fold, so a model never
validates on a recording it trained on. Within that constraint the folds are balanced per label with a
greedy pass in the spirit of iterative stratification (Sechidis et al., 2011): groups carrying the rarest
labels are placed first, each into the fold that most lacks its labels.
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ml.data.manifest import LABEL_SEP, ClipRecord, Manifest, ManifestError

FOLD_COLUMNS = ("path", "labels", "group", "fold")


def assign_folds(
    records: Iterable[ClipRecord], labels: Sequence[str], k: int = 5, seed: int = 0
) -> list[ClipRecord]:
    """Assign a fold in ``[0, k)`` to every training record.

    The result depends only on the set of records, ``labels``, ``k`` and ``seed`` (not on record order).
    Test records are returned unchanged with ``fold=None``.

    Args:
        records: Records; only ``split == "train"`` ones get a fold.
        labels: Label codes to stratify on (labels outside this list are ignored for balancing).
        k: Number of folds, at least 2.
        seed: Seed for the order of equally rare groups and for ties.

    Returns:
        The records in input order, with ``fold`` set.

    Raises:
        ValueError: If ``k < 2`` or there are fewer training groups than ``k``.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    records = list(records)
    train = [r for r in records if r.split == "train"]
    groups: dict[str, list[ClipRecord]] = defaultdict(list)
    for rec in train:
        groups[rec.group].append(rec)
    if len(groups) < k:
        raise ValueError(f"cannot make {k} folds from {len(groups)} recording group(s)")

    lab_index = {lab: i for i, lab in enumerate(labels)}
    n_lab = len(lab_index)
    names = sorted(groups)  # canonical order: result independent of input order
    # counts[g, l]: clips of group g carrying label l; sizes[g]: clips in group g.
    counts = np.zeros((len(names), n_lab), dtype=np.float64)
    sizes = np.zeros(len(names), dtype=np.float64)
    for gi, name in enumerate(names):
        for rec in groups[name]:
            sizes[gi] += 1
            for lab in rec.labels:
                if lab in lab_index:
                    counts[gi, lab_index[lab]] += 1
    totals = counts.sum(axis=0)
    target = totals / k  # wanted clips per label per fold
    target_size = sizes.sum() / k

    rng = np.random.default_rng(seed)
    shuffle_key = rng.permutation(len(names))
    # Rarity of a group = clip count of its rarest label; groups without labels go last.
    rarity = np.array(
        [totals[counts[gi] > 0].min() if (counts[gi] > 0).any() else np.inf for gi in range(len(names))]
    )
    order = sorted(range(len(names)), key=lambda gi: (rarity[gi], shuffle_key[gi]))

    fold_counts = np.zeros((k, n_lab), dtype=np.float64)
    fold_sizes = np.zeros(k, dtype=np.float64)
    tie_break = rng.permutation(k)  # seeded preference among otherwise equal folds
    assignment: dict[str, int] = {}
    for gi in order:
        has = counts[gi] > 0
        if has.any():
            # Need of each fold for this group's labels, normalised so every label weighs the same.
            need = ((target[has] - fold_counts[:, has]) / np.maximum(target[has], 1e-9)).sum(axis=1)
        else:
            need = np.zeros(k)
        size_need = target_size - fold_sizes
        best = max(range(k), key=lambda f: (round(float(need[f]), 9), float(size_need[f]), -tie_break[f]))
        assignment[names[gi]] = best
        fold_counts[best] += counts[gi]
        fold_sizes[best] += sizes[gi]

    return [
        replace(r, fold=assignment[r.group]) if r.split == "train" else replace(r, fold=None) for r in records
    ]


def assign_manifest_folds(manifest: Manifest, labels: Sequence[str], k: int = 5, seed: int = 0) -> Manifest:
    """:func:`assign_folds` over a manifest's records.

    Args:
        manifest: The manifest (test records keep ``fold=None``).
        labels: Label codes to stratify on.
        k: Number of folds.
        seed: Seed.

    Returns:
        A new manifest with folds set.
    """
    return manifest.with_records(assign_folds(manifest.records, labels, k=k, seed=seed))


def folds_table(manifest: Manifest | Iterable[ClipRecord]) -> list[dict[str, str]]:
    """Rows ``path, labels, group, fold`` for the records that have a fold.

    Args:
        manifest: A manifest or records.

    Returns:
        One dict per record with a fold, labels joined by ``;``, in record order.
    """
    return [
        {"path": r.path, "labels": LABEL_SEP.join(r.labels), "group": r.group, "fold": str(r.fold)}
        for r in manifest
        if r.fold is not None
    ]


def write_folds(manifest: Manifest | Iterable[ClipRecord], path: Path | str) -> int:
    """Write :func:`folds_table` as CSV (atomically).

    Args:
        manifest: A manifest or records.
        path: Destination CSV; parent directories are created.

    Returns:
        Number of rows written.
    """
    rows = folds_table(manifest)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FOLD_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return len(rows)


def read_folds(path: Path | str) -> dict[str, int]:
    """Read a folds CSV into ``path -> fold`` (feed it to :meth:`Manifest.with_folds`).

    Args:
        path: CSV with at least the columns ``path`` and ``fold``.

    Returns:
        The mapping.

    Raises:
        ManifestError: On a missing column, a bad fold value or a duplicate path (names file and line).
    """
    path = Path(path)
    out: dict[str, int] = {}
    try:
        fh = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read folds file: {exc.strerror or exc}") from exc
    with fh:
        reader = csv.DictReader(fh)
        missing = {"path", "fold"} - set(reader.fieldnames or ())
        if missing:
            raise ManifestError(f"{path}:1: missing column(s) {sorted(missing)}")
        for row in reader:
            line = reader.line_num
            try:
                fold = int(row["fold"])
            except (TypeError, ValueError):
                raise ManifestError(f"{path}:{line}: bad fold {row['fold']!r}") from None
            if fold < 0:
                raise ManifestError(f"{path}:{line}: fold must be >= 0, got {fold}")
            if row["path"] in out:
                raise ManifestError(f"{path}:{line}: duplicate path {row['path']!r}")
            out[row["path"]] = fold
    return out


def fold_label_counts(
    records: Iterable[ClipRecord], labels: Sequence[str], k: int, *, by: str = "clips"
) -> np.ndarray:
    """Per-fold label counts, for reports and balance checks.

    Args:
        records: Records with folds (others are skipped).
        labels: Label codes, one column each.
        k: Number of folds.
        by: ``"clips"`` counts clips, ``"groups"`` counts recording groups.

    Returns:
        int array ``[k, len(labels)]``.

    Raises:
        ValueError: On an unknown ``by`` or a fold index >= k.
    """
    if by not in ("clips", "groups"):
        raise ValueError(f"by must be 'clips' or 'groups', got {by!r}")
    index = {lab: i for i, lab in enumerate(labels)}
    out = np.zeros((k, len(labels)), dtype=np.int64)
    seen: set[tuple[str, str]] = set()
    for rec in records:
        if rec.fold is None:
            continue
        if rec.fold >= k:
            raise ValueError(f"{rec.path}: fold {rec.fold} >= k={k}")
        for lab in rec.labels:
            if lab not in index:
                continue
            if by == "groups":
                if (rec.group, lab) in seen:
                    continue
                seen.add((rec.group, lab))
            out[rec.fold, index[lab]] += 1
    return out
