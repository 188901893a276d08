"""The results file of a batch run (CSV, JSON or Parquet): created new, or resumed with its rows kept.

:func:`open_output` opens the file: a new one, or an existing one whose rows are kept and whose files are
skipped (:meth:`ResultsOutput.holds`). A file it cannot read as mpic results of the same labels (corrupt,
foreign, another ensemble version) is refused with :class:`OutputError` and never overwritten. Every row
names the ensemble that produced it (``ensemble`` and ``version`` columns, or the JSON stamp).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ml.batch.sources import BatchError, file_key
from ml.inference import FileResult
from ml.results import csv_cell_text, result_dict, results_to_csv

FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}
"""Output formats by file extension."""


_JSON_TAIL = "\n]}\n"  # how every JSON output written here ends: rows are appended in front of it


class OutputError(BatchError):
    """An existing output file that cannot be resumed: corrupt, not mpic results, or of other settings."""


def output_format(path: str | Path) -> str:
    """``csv``, ``json`` or ``parquet`` from the output's extension.

    Raises:
        BatchError: Another extension, or ``.parquet`` without pyarrow installed.
    """
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise BatchError(f"--output {path}: unknown format; name it *.csv, *.json or *.parquet")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  (installed with ray; the check gives a clear message if not)
        except ImportError:
            raise BatchError(
                f"--output {path}: writing Parquet needs pyarrow, which is not installed "
                "(pip install pyarrow), or use *.csv / *.json"
            ) from None
    return fmt


def stamp_text(ensemble: str, version: Any) -> str:
    """``name version N`` or ``name (unregistered)`` for messages."""
    return f"{ensemble} version {version}" if version not in (None, "") else f"{ensemble} (unregistered)"


def _stamp_columns(stamp: Mapping[str, Any]) -> tuple[str, int | None]:
    """The (ensemble, version) a CSV or Parquet row records: what :func:`results_to_csv` writes."""
    version = stamp.get("version")
    return str(stamp.get("registered_model") or stamp.get("name") or ""), (
        None if version is None else int(version)
    )


class ResultsOutput(ABC):
    """A results file being written; rows already in it are kept and their files skipped.

    Args:
        path: The file (created with its parent folders if missing).
        labels: Label codes, in the config's order (the score columns).
        header: The run's :func:`ml.service.results_document` without ``results``: labels, weights,
            thresholds, aggregation, ``ensemble`` (the stamp) and ``model``.

    Raises:
        OutputError: ``path`` exists and is not a resumable results file of these labels and ensemble.
    """

    def __init__(self, path: str | Path, labels: Sequence[str], header: Mapping[str, Any]) -> None:
        """Open ``path`` and read what it holds (see the class doc)."""
        self.path = Path(path)
        self.labels = list(labels)
        self.header = {k: v for k, v in header.items() if k != "results"}
        self.stamp: dict[str, Any] = dict(self.header.get("ensemble") or {})
        self.done: set[str] = set()
        self.rows = 0  # rows in the file, earlier and new
        self.notes: list[str] = []  # things the user should know (a cut-off last row dropped, …)
        if self.path.is_dir():
            raise OutputError(f"{self.path} is a folder; --output needs a file name")
        if self.path.exists() and self.path.stat().st_size > 0:
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create()
        self.existing = self.rows

    def holds(self, file: str | Path) -> bool:
        """Whether the output already has a row for ``file``."""
        return file_key(file) in self.done

    def write(self, results: Sequence[FileResult]) -> None:
        """Append rows for ``results`` (durably, before returning, unless the format buffers)."""
        if results:
            self._append(results)
            self.rows += len(results)
            self.done.update(file_key(r.file) for r in results)

    def close(self) -> None:  # noqa: B027  (a hook: only buffering formats have work to do)
        """Finish the file (formats that buffer write it now)."""

    def _mismatch(self, theirs: str) -> OutputError:
        ours = stamp_text(*_stamp_columns(self.stamp))
        return OutputError(
            f"{self.path} holds results of {theirs}, this run uses {ours}: continue it with the same "
            "--version (and weights/thresholds), or write to another --output"
        )

    def _foreign(self, why: str) -> OutputError:
        return OutputError(
            f"{self.path} is not an mpic results file this run can continue ({why}); it was left "
            "untouched: choose another --output"
        )

    @abstractmethod
    def _create(self) -> None: ...

    @abstractmethod
    def _resume(self) -> None: ...

    @abstractmethod
    def _append(self, results: Sequence[FileResult]) -> None: ...


def _durable_write(f: Any) -> None:
    f.flush()
    os.fsync(f.fileno())


class CsvOutput(ResultsOutput):
    """The table of :func:`ml.results.results_to_csv`, one row per file; rows are appended."""

    def _columns(self) -> list[str]:
        return next(csv.reader(io.StringIO(results_to_csv(self.labels, [], ensemble=self.stamp))))

    def _create(self) -> None:
        with self.path.open("w", encoding="utf-8", newline="") as f:
            f.write(results_to_csv(self.labels, [], ensemble=self.stamp))
            _durable_write(f)

    def _resume(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise self._foreign(f"unreadable as UTF-8 text: {e}") from None
        complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
        try:
            rows = list(csv.reader(io.StringIO(complete)))
        except csv.Error as e:
            raise self._foreign(f"malformed CSV: {e}") from None
        columns = self._columns()
        if not rows or rows[0] != columns:
            got = ",".join(rows[0])[:120] if rows else text[:60]
            raise self._foreign(f"its header is {got!r}, expected {','.join(columns)!r}")
        i_file, i_ens, i_ver = 0, columns.index("ensemble"), columns.index("version")
        ours = _stamp_columns(self.stamp)
        for n, row in enumerate(rows[1:], start=2):
            if len(row) != len(columns):
                raise self._foreign(f"line {n} has {len(row)} fields, expected {len(columns)}")
            version = row[i_ver]
            theirs = (csv_cell_text(row[i_ens]), int(version) if version.isdigit() else None)
            if theirs != ours:
                raise self._mismatch(stamp_text(*theirs))
            self.done.add(file_key(csv_cell_text(row[i_file])))
        self.rows = len(rows) - 1
        if complete != text:  # an interrupted write left half a row: drop it, its file is redone
            with self.path.open("r+", encoding="utf-8", newline="") as f:
                f.truncate(len(complete.encode("utf-8")))
            self.notes.append(f"{self.path}: dropped an incomplete last row (an interrupted run)")

    def _append(self, results: Sequence[FileResult]) -> None:
        rows = results_to_csv(self.labels, results, ensemble=self.stamp, header=False)
        with self.path.open("a", encoding="utf-8", newline="") as f:
            f.write(rows)
            _durable_write(f)


class JsonOutput(ResultsOutput):
    """The :func:`ml.service.results_document` of the run, every row carrying the ensemble stamp.

    Written as ``{header…, "results": [`` one row per line ``]}`` so rows are appended in place (the
    closing ``]}`` is rewritten) and the file is valid JSON after every chunk.
    """

    # settings a resumed run must share with the file: rows of one document are comparable
    SAME = ("labels", "weights", "thresholds", "aggregation", "ensemble", "model")

    def _prefix(self) -> str:
        head = json.dumps(self.header, ensure_ascii=False, allow_nan=False)
        return head[:-1] + ', "results": ['

    def _row(self, r: FileResult | Mapping[str, Any]) -> str:
        d = result_dict(r)
        d.setdefault("ensemble", self.stamp)
        return json.dumps(d, ensure_ascii=False, allow_nan=False)

    def _create(self) -> None:
        self._write_all([])

    def _write_all(self, rows: Sequence[Mapping[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = ",".join("\n" + self._row(r) for r in rows)
        with tmp.open("w", encoding="utf-8") as f:
            f.write(self._prefix() + body + _JSON_TAIL)
            _durable_write(f)
        os.replace(tmp, self.path)

    def _resume(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
            doc = json.loads(text)
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise self._foreign(f"not readable as JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            raise self._foreign('no "results" list')
        rows = doc["results"]
        if not all(isinstance(r, dict) and isinstance(r.get("file"), str) for r in rows):
            raise self._foreign('a "results" entry without a "file" name')
        if doc.get("labels") != self.labels:
            raise self._foreign(f"labels {doc.get('labels')} differ from this run's {self.labels}")
        differ = [k for k in self.SAME if doc.get(k) != self.header.get(k)]
        if differ:
            ens = doc.get("ensemble") or {}
            theirs = stamp_text(*_stamp_columns(ens)) if isinstance(ens, dict) else repr(ens)
            raise OutputError(
                f"{self.path} was written with other settings ({', '.join(differ)} differ; its ensemble: "
                f"{theirs}): continue it with the same --version, weights and thresholds, or write to "
                "another --output"
            )
        self.done.update(file_key(r["file"]) for r in rows)
        self.rows = len(rows)
        if list(doc)[-1] != "results" or not text.endswith(_JSON_TAIL):
            # e.g. `mpic predict --format json > out.json`: the same document, laid out for appending
            self._write_all(rows)
            self.notes.append(f"{self.path}: rewritten (all {len(rows)} rows kept) so rows can be appended")

    def _append(self, results: Sequence[FileResult]) -> None:
        body = ",".join("\n" + self._row(r) for r in results)
        with self.path.open("r+", encoding="utf-8") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(end - len(_JSON_TAIL))
            f.truncate()
            f.write(("," if self.rows else "") + body + _JSON_TAIL)
            _durable_write(f)


class ParquetOutput(ResultsOutput):
    """A typed table (scores as float64, ``instruments`` as a list of codes), rewritten atomically.

    Parquet cannot be appended to in place, so new rows are buffered and the whole table is written to a
    temporary file that replaces the output at most every ``flush_s`` seconds and on :meth:`close` (also
    after an interrupt): an earlier file is never left half-written.
    """

    flush_s = 30.0

    def _schema(self) -> Any:
        import pyarrow as pa

        return pa.schema(
            [
                ("file", pa.string()),
                ("duration_s", pa.float64()),
                ("instruments", pa.list_(pa.string())),
                *((c, pa.float64()) for c in self.labels),
                ("error", pa.string()),
                ("ensemble", pa.string()),
                ("version", pa.int64()),
            ]
        )

    def _create(self) -> None:
        import pyarrow as pa

        self.table = pa.Table.from_pylist([], schema=self._schema())
        self.pending: list[dict[str, Any]] = []
        self.flushed = time.monotonic()
        self._flush()

    def _resume(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(self.path)
        except (OSError, pa.ArrowException) as e:
            raise self._foreign(f"not readable as Parquet: {e}") from None
        schema = self._schema()
        if table.schema.names != schema.names:
            raise self._foreign(f"its columns are {table.schema.names}, expected {schema.names}")
        try:
            table = table.cast(schema)
        except (pa.ArrowException, ValueError) as e:
            raise self._foreign(f"column types differ: {e}") from None
        ours = _stamp_columns(self.stamp)
        for ens, ver in {
            (e, v)
            for e, v in zip(
                table.column("ensemble").to_pylist(), table.column("version").to_pylist(), strict=True
            )
        }:
            if (ens, ver) != ours:
                raise self._mismatch(stamp_text(ens, ver))
        self.table = table
        self.pending = []
        self.flushed = time.monotonic()
        self.done.update(file_key(f) for f in table.column("file").to_pylist())
        self.rows = table.num_rows

    def _append(self, results: Sequence[FileResult]) -> None:
        ens, ver = _stamp_columns(self.stamp)
        for r in results:
            d = result_dict(r, segments=False)
            scores = d.get("scores") or {}
            self.pending.append(
                {
                    "file": d["file"],
                    "duration_s": d.get("duration_s"),
                    "instruments": d.get("instruments") if d.get("error") is None else None,
                    **{c: scores.get(c) for c in self.labels},
                    "error": d.get("error"),
                    "ensemble": ens,
                    "version": ver,
                }
            )
        if time.monotonic() - self.flushed >= self.flush_s:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.pending:
            new = pa.Table.from_pylist(self.pending, schema=self._schema())
            self.table = pa.concat_tables([self.table, new])
            self.pending = []
        tmp = self.path.with_name(self.path.name + ".tmp")
        pq.write_table(self.table, tmp)
        os.replace(tmp, self.path)
        self.flushed = time.monotonic()

    def close(self) -> None:
        """Write the buffered rows."""
        if self.pending:
            self._flush()


def open_output(path: str | Path, labels: Sequence[str], header: Mapping[str, Any]) -> ResultsOutput:
    """The :class:`ResultsOutput` for ``path``'s format (see :func:`output_format`).

    Raises:
        BatchError: An unknown extension, or Parquet without pyarrow.
        OutputError: An existing file that cannot be continued (it is left untouched).
    """
    kinds: dict[str, type[ResultsOutput]] = {"csv": CsvOutput, "json": JsonOutput, "parquet": ParquetOutput}
    kind = kinds[output_format(path)]
    return kind(path, labels, header)
