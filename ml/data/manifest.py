"""The clip manifest: one row per audio file of an IRMAS-layout data set.

A manifest is the single list the rest of the pipeline iterates over (training folds, evaluation, tempo
analysis). It is stored as CSV with a fixed header so it can be inspected and diffed by hand:

``path,split,duration_s,labels,genre,drums,group,tempo,fold,library``

(manifests written before ``library`` existed read with ``library=""``). ``labels`` are label codes
joined by ``;``; ``drums`` is ``1``/``0``; an empty cell means ``None``.
Paths are POSIX paths relative to the data set root, so a manifest stays valid when the root moves.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

SPLITS = ("train", "test")
CSV_COLUMNS = ("path", "split", "duration_s", "labels", "genre", "drums", "group", "tempo", "fold", "library")
OPTIONAL_COLUMNS = ("library",)  # may be absent in manifests written before they existed
LABEL_SEP = ";"


class ManifestError(ValueError):
    """A manifest file or record is malformed; the message names the file, the line and the reason."""


@dataclass(frozen=True)
class ClipRecord:
    """One audio file of the data set.

    Attributes:
        path: POSIX path relative to the data set root.
        split: ``"train"`` or ``"test"``.
        duration_s: Length of the audio in seconds.
        labels: Label codes of the instruments in the clip (one for IRMAS training clips).
        genre: IRMAS genre tag (``cou_fol``, ``cla``, ``pop_roc``, ``lat_sou``, ``jaz_blu``) or None.
        drums: Whether the clip has drums (IRMAS ``dru``/``nod`` tag), None when unknown.
        group: Source-recording id; all clips cut from one recording share it (fold leakage guard).
        tempo: Tempo in BPM, filled by the tempo analysis; None until then.
        fold: Cross-validation fold index, None when not assigned (always None for test clips).
        library: Sample library that rendered the clip (:mod:`ml.data.libraries`), ``""`` for real
            recordings; its family comes from the registry (:func:`ml.data.libraries.library_family`).
    """

    path: str
    split: str
    duration_s: float
    labels: tuple[str, ...]
    genre: str | None = None
    drums: bool | None = None
    group: str = ""
    tempo: float | None = None
    fold: int | None = None
    library: str = ""

    def __post_init__(self) -> None:
        problems = _record_problems(self)
        if problems:
            raise ManifestError(f"invalid record {self.path!r}: {'; '.join(problems)}")


def _record_problems(rec: ClipRecord) -> list[str]:
    problems: list[str] = []
    if not rec.path:
        problems.append("empty path")
    elif PurePosixPath(rec.path).is_absolute() or "\\" in rec.path or ".." in PurePosixPath(rec.path).parts:
        problems.append(f"path must be relative POSIX inside the root, got {rec.path!r}")
    if rec.split not in SPLITS:
        problems.append(f"split must be one of {SPLITS}, got {rec.split!r}")
    if not (math.isfinite(rec.duration_s) and rec.duration_s >= 0):
        problems.append(f"duration_s must be a finite number >= 0, got {rec.duration_s!r}")
    if not isinstance(rec.labels, tuple):
        problems.append("labels must be a tuple")
    else:
        for lab in rec.labels:
            if not lab or LABEL_SEP in lab or lab != lab.strip():
                problems.append(f"bad label code {lab!r}")
        if len(set(rec.labels)) != len(rec.labels):
            problems.append(f"duplicate labels {rec.labels}")
    if not rec.group:
        problems.append("empty group")
    if rec.tempo is not None and not (math.isfinite(rec.tempo) and rec.tempo > 0):
        problems.append(f"tempo must be a positive number, got {rec.tempo!r}")
    if rec.fold is not None and rec.fold < 0:
        problems.append(f"fold must be >= 0, got {rec.fold!r}")
    if rec.library != rec.library.strip():
        problems.append(f"bad library name {rec.library!r}")
    return problems


def _fmt_opt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)  # repr round-trips floats exactly
    return str(value)


def _record_to_row(rec: ClipRecord) -> list[str]:
    return [
        rec.path,
        rec.split,
        repr(float(rec.duration_s)),
        LABEL_SEP.join(rec.labels),
        _fmt_opt(rec.genre),
        _fmt_opt(rec.drums),
        rec.group,
        _fmt_opt(rec.tempo),
        _fmt_opt(rec.fold),
        rec.library,
    ]


def _parse_float(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"column {column!r}: not a number: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"column {column!r}: not finite: {text!r}")
    return value


def _parse_bool(text: str, column: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered == "":
        return None
    if lowered in ("1", "true", "yes"):
        return True
    if lowered in ("0", "false", "no"):
        return False
    raise ValueError(f"column {column!r}: expected 1/0, got {text!r}")


def _row_to_record(row: Mapping[str, str]) -> ClipRecord:
    labels_text = row["labels"].strip()
    labels = tuple(lab.strip() for lab in labels_text.split(LABEL_SEP)) if labels_text else ()
    fold_text = row["fold"].strip()
    try:
        fold = int(fold_text) if fold_text else None
    except ValueError:
        raise ValueError(f"column 'fold': not an integer: {fold_text!r}") from None
    tempo_text = row["tempo"].strip()
    return ClipRecord(
        path=row["path"],
        split=row["split"].strip(),
        duration_s=_parse_float(row["duration_s"], "duration_s"),
        labels=labels,
        genre=row["genre"].strip() or None,
        drums=_parse_bool(row["drums"], "drums"),
        group=row["group"],
        tempo=_parse_float(tempo_text, "tempo") if tempo_text else None,
        fold=fold,
        library=row.get("library", "").strip(),
    )


class Manifest:
    """An ordered list of :class:`ClipRecord` plus the data set root the paths are relative to.

    Args:
        root: Data set root; ``abspath`` joins record paths onto it.
        records: The records; paths must be unique.

    Raises:
        ManifestError: On duplicate paths.
    """

    def __init__(self, root: Path | str, records: Iterable[ClipRecord]) -> None:
        self.root = Path(root)
        self.records: list[ClipRecord] = list(records)
        seen: set[str] = set()
        for rec in self.records:
            if rec.path in seen:
                raise ManifestError(f"duplicate path in manifest: {rec.path!r}")
            seen.add(rec.path)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ClipRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> ClipRecord:
        return self.records[index]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return self.root == other.root and self.records == other.records

    __hash__ = None  # type: ignore[assignment]  # mutable container: unhashable like a list

    def __repr__(self) -> str:
        return f"Manifest(root={str(self.root)!r}, records={len(self.records)})"

    # ------------------------------------------------------------------ queries
    def abspath(self, rec: ClipRecord) -> Path:
        """Absolute (root-joined) path of a record's audio file.

        Args:
            rec: A record of this manifest.

        Returns:
            ``root / rec.path``.
        """
        return self.root / PurePosixPath(rec.path)

    def filter(
        self,
        split: str | None = None,
        *,
        fold: int | None = None,
        exclude_fold: int | None = None,
        predicate: Callable[[ClipRecord], bool] | None = None,
    ) -> Manifest:
        """Select records; all given conditions must hold.

        Args:
            split: Keep only this split (``"train"``/``"test"``).
            fold: Keep only records of this fold (validation fold).
            exclude_fold: Drop records of this fold (training folds); records without a fold are kept.
            predicate: Extra condition on a record.

        Returns:
            A new manifest with the same root.

        Raises:
            ValueError: If ``split`` is not a known split.
        """
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        out = []
        for rec in self.records:
            if split is not None and rec.split != split:
                continue
            if fold is not None and rec.fold != fold:
                continue
            if exclude_fold is not None and rec.fold == exclude_fold:
                continue
            if predicate is not None and not predicate(rec):
                continue
            out.append(rec)
        return Manifest(self.root, out)

    def libraries_present(self) -> list[str]:
        """Sorted sample-library names of the records (``""`` stands for real recordings)."""
        return sorted({rec.library for rec in self.records})

    def labels_present(self) -> list[str]:
        """Sorted label codes that occur in at least one record."""
        return sorted({lab for rec in self.records for lab in rec.labels})

    def label_matrix(self, labels: Sequence[str], *, strict: bool = True) -> np.ndarray:
        """Multi-hot targets in the order of ``labels``.

        Args:
            labels: Label codes, one column each.
            strict: Raise if a record carries a label that is not in ``labels``; when False such labels
                are ignored (e.g. training on a subset of the classes).

        Returns:
            float32 array of shape ``[len(self), len(labels)]`` with 1.0 where the clip has the label.

        Raises:
            ValueError: On duplicate ``labels`` or, with ``strict``, an unknown label in a record.
        """
        index = {lab: i for i, lab in enumerate(labels)}
        if len(index) != len(labels):
            raise ValueError(f"duplicate label codes in {list(labels)}")
        out = np.zeros((len(self.records), len(labels)), dtype=np.float32)
        for row, rec in enumerate(self.records):
            for lab in rec.labels:
                col = index.get(lab)
                if col is None:
                    if strict:
                        raise ValueError(f"{rec.path}: label {lab!r} is not in {list(labels)}")
                    continue
                out[row, col] = 1.0
        return out

    # ------------------------------------------------------------------ derived manifests
    def with_records(self, records: Iterable[ClipRecord]) -> Manifest:
        """A manifest with the same root and the given records."""
        return Manifest(self.root, records)

    def with_folds(self, mapping: Mapping[str, int | None]) -> Manifest:
        """Set folds from a ``path -> fold`` mapping; records not in the mapping keep their fold.

        Args:
            mapping: Fold index (or None to clear) per record path.

        Returns:
            A new manifest.

        Raises:
            ManifestError: If the mapping names a path that is not in the manifest.
        """
        return self._with_field("fold", mapping)

    def with_tempi(self, mapping: Mapping[str, float | None]) -> Manifest:
        """Set tempi (BPM) from a ``path -> tempo`` mapping; other records keep theirs.

        Args:
            mapping: Tempo in BPM (or None) per record path.

        Returns:
            A new manifest.

        Raises:
            ManifestError: If the mapping names a path that is not in the manifest.
        """
        return self._with_field("tempo", mapping)

    def _with_field(self, name: str, mapping: Mapping[str, Any]) -> Manifest:
        """A new manifest with field ``name`` set per record path; unknown paths are an error."""
        known = {rec.path for rec in self.records}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ManifestError(f"{name} mapping names {len(unknown)} unknown path(s), e.g. {unknown[:3]}")
        records = [
            replace(rec, **{name: mapping[rec.path]}) if rec.path in mapping else rec for rec in self.records
        ]
        return Manifest(self.root, records)

    # ------------------------------------------------------------------ I/O
    def write(self, path: Path | str) -> None:
        """Write the manifest as CSV (atomically: a temporary file is renamed over ``path``).

        Args:
            path: Destination file; parent directories are created.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            for rec in self.records:
                writer.writerow(_record_to_row(rec))
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path | str, root: Path | str | None = None) -> Manifest:
        """Read a manifest CSV written by :meth:`write`.

        Args:
            path: The CSV file.
            root: Data set root the record paths are relative to; defaults to the CSV's directory.

        Returns:
            The manifest.

        Raises:
            ManifestError: If the file is missing, has a wrong header, a malformed row or duplicate paths;
                the message names the file and line.
        """
        path = Path(path)
        try:
            fh = path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise ManifestError(f"{path}: cannot read manifest: {exc.strerror or exc}") from exc
        records: list[ClipRecord] = []
        seen: dict[str, int] = {}
        with fh:
            reader = csv.reader(fh)
            try:
                header = next(reader)
            except StopIteration:
                raise ManifestError(
                    f"{path}:1: empty file, expected header {','.join(CSV_COLUMNS)}"
                ) from None
            except csv.Error as exc:
                raise ManifestError(f"{path}:1: {exc}") from exc
            columns = tuple(h.strip() for h in header)
            # Older manifests lack the optional trailing columns; they read with the fields' defaults.
            accepted = [CSV_COLUMNS[: len(CSV_COLUMNS) - k] for k in range(len(OPTIONAL_COLUMNS) + 1)]
            if columns not in accepted:
                raise ManifestError(
                    f"{path}:1: bad header {','.join(header)!r}, expected {','.join(CSV_COLUMNS)!r}"
                )
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    raise ManifestError(f"{path}:{reader.line_num}: {exc}") from exc
                line = reader.line_num
                if not row or all(not cell.strip() for cell in row):
                    continue  # tolerate blank lines (hand edits)
                if len(row) != len(columns):
                    raise ManifestError(f"{path}:{line}: expected {len(columns)} columns, got {len(row)}")
                try:
                    rec = _row_to_record(dict(zip(columns, row, strict=True)))
                except ValueError as exc:  # ManifestError is a ValueError too
                    raise ManifestError(f"{path}:{line}: {exc}") from exc
                if rec.path in seen:
                    raise ManifestError(
                        f"{path}:{line}: duplicate path {rec.path!r} (first on line {seen[rec.path]})"
                    )
                seen[rec.path] = line
                records.append(rec)
        return cls(path.parent if root is None else root, records)
