"""Batch tagging: the audio files under folders → one results table, streamed and resumable.

What `mpic predict DIR… --output results.csv|.json|.parquet` runs (the CLI stays a thin caller):

- :func:`discover` expands files and folders (recursively, by :data:`ml.audio.AUDIO_EXTENSIONS`) into a
  sorted, de-duplicated list of paths; nothing is decoded yet.
- :func:`open_output` opens the results file: a new one, or an existing one whose rows are kept and whose
  files are skipped (``holds``). A file it cannot read as mpic results of the same labels (corrupt,
  foreign, another ensemble version) is refused with :class:`OutputError` and never overwritten.
- :func:`tag` streams the files through the ONE analysis pipeline (:func:`ml.service.analyze_stream`,
  ``chunk`` files at a time: decode → score → fuse) and hands each chunk's results to a sink (the output's
  ``write``) before reading the next files, so memory stays bounded and an interrupted run loses at
  most the chunk in flight.

Every row names the ensemble that produced it: CSV and Parquet have ``ensemble`` (registered name, else
the ensemble's name) and ``version`` columns, JSON rows carry the full stamp (:meth:`ml.service.Fusion.
stamp`). Rows are matched to files by absolute path (:func:`file_key`), so a resumed run may name the
folder relatively or absolutely.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.audio import AUDIO_EXTENSIONS
from ml.config import Config
from ml.inference import FileResult
from ml.results import csv_cell_text, result_dict, results_to_csv

FORMATS = {".csv": "csv", ".json": "json", ".parquet": "parquet"}
"""Output formats by file extension."""

_JSON_TAIL = "\n]}\n"  # how every JSON output written here ends: rows are appended in front of it


class BatchError(ValueError):
    """Inputs or an output that a batch run cannot use; the message says what to do."""


class OutputError(BatchError):
    """An existing output file that cannot be resumed: corrupt, not mpic results, or of other settings."""


def file_key(name: str | Path) -> str:
    """What identifies a file across runs: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(os.fspath(name)))


def _hidden(rel: Path) -> bool:
    # dot folders (.git, .Trash) and AppleDouble "._x.wav" files are not music
    return any(part.startswith(".") for part in rel.parts)


def discover(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the audio files to tag, in a stable order, each once.

    A folder contributes every file below it (recursively; hidden files and folders skipped) whose
    extension is in :data:`~ml.audio.AUDIO_EXTENSIONS`, sorted by path. A file named explicitly is taken
    whatever its extension (decoding will say if it is not audio).

    Raises:
        FileNotFoundError: An input does not exist.
        BatchError: The inputs hold no audio file at all.
    """
    files: list[Path] = []
    seen: set[str] = set()
    names = [str(x) for x in inputs]
    for raw in names:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.suffix.lower() in AUDIO_EXTENSIONS and not _hidden(q.relative_to(p)) and q.is_file()
            )
        elif p.exists():
            found = [p]
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        for q in found:
            key = file_key(q)
            if key not in seen:
                seen.add(key)
                files.append(q)
    if not files:
        exts = ", ".join(sorted(AUDIO_EXTENSIONS))
        raise BatchError(f"no audio files under {', '.join(names)} (looked for {exts})")
    return files


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


@dataclass
class TagReport:
    """What a batch run did."""

    files: int = 0  # analysed in this run
    failed: int = 0  # of which gave an error row
    audio_s: float = 0.0
    wall_s: float = 0.0

    @property
    def audio_s_per_s(self) -> float:
        """Throughput in seconds of audio per second."""
        return self.audio_s / max(self.wall_s, 1e-9)


def tag(
    cfg: Config,
    backend: Any,
    settings: Any,
    files: Sequence[str | Path],
    sink: Callable[[list[FileResult]], None],
    *,
    chunk: int = 16,
    progress: bool = False,
) -> TagReport:
    """Analyse ``files`` with ``settings`` (a :class:`ml.service.RunSettings`), ``chunk`` at a time.

    Each chunk's results go to ``sink`` (e.g. :meth:`ResultsOutput.write`) before the next files are read.
    ``progress`` shows a tqdm bar on stderr.
    """
    from tqdm import tqdm

    from ml.service import analyze_stream

    report = TagReport()
    t0 = time.perf_counter()
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for part in analyze_stream(
            cfg,
            backend,
            ((str(f), Path(f)) for f in files),
            weights=settings.weights,
            thresholds=settings.thresholds,
            aggregation=settings.aggregation,
            chunk=chunk,
        ):
            sink(part)
            report.files += len(part)
            report.failed += sum(r.error is not None for r in part)
            report.audio_s += sum(r.duration_s or 0.0 for r in part if r.error is None)
            bar.update(len(part))
    finally:
        bar.close()
        report.wall_s = time.perf_counter() - t0
    return report


# ---- the Ray Data tagging job's stages (python -m ray_jobs.tag): plain functions and a callable class ----
#
# Ray Data calls these on its workers; nothing here imports Ray. A decode task turns a batch of file names
# into decoded audio (columns of :data:`DECODED_COLUMNS`), a scoring actor (:class:`BatchScorer`, one
# ensemble loaded per actor) turns that into result rows (:func:`rows_table`). Both halves are those of
# :func:`ml.service.analyze` (:func:`ml.service.decode_upload`, :func:`ml.service.score_decoded`), so the
# job's scores are `mpic predict`'s.

DECODED_COLUMNS = (
    "file",
    "wave",
    "sample_rate",
    "source_rate",
    "channels",
    "format",
    "subtype",
    "silent",
    "error",
)
"""What a decode task hands to the scoring actors, per file (``wave``: float32 samples as bytes)."""


def is_uri(name: str) -> bool:
    """Whether ``name`` is a URI with a scheme (``s3://``, ``gs://``, ``file://``), not a local path."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.isidentifier()


def discover_sources(inputs: Iterable[str | Path]) -> list[str]:
    """:func:`discover` for local paths and URIs alike: absolute paths and URIs, in a stable order, each once.

    A URI (any filesystem pyarrow knows: ``s3://``, ``gs://``, ``file://``, …) is listed like a local folder
    (recursively, by audio extension, hidden entries skipped) or taken as one file. Local paths become
    absolute so that workers on other nodes (with the same shared mount) and `ray job submit` drivers
    (whose working directory is a temporary copy) find them.

    Raises:
        FileNotFoundError: An input does not exist.
        BatchError: The inputs hold no audio file at all.
    """
    names = [str(x) for x in inputs]
    out: list[str] = []
    seen: set[str] = set()
    local = [n for n in names if not is_uri(n)]
    found_local = iter(discover(local)) if local else iter(())
    for name in names:
        if not is_uri(name):
            continue
        for uri in _list_uri(name):
            if uri not in seen:
                seen.add(uri)
                out.append(uri)
    for p in found_local:
        key = file_key(p)
        if key not in seen:
            seen.add(key)
            out.append(key)
    if not out:
        raise BatchError(f"no audio files under {', '.join(names)}")
    return out


def _list_uri(uri: str) -> list[str]:
    from pyarrow import fs as pafs

    scheme = uri.partition("://")[0]
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot open {uri}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or folder: {uri}")
    if info.type == pafs.FileType.File:
        return [uri]
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    base = root.rstrip("/") + "/"
    return sorted(
        f"{scheme}://{e.path}"
        for e in entries
        if e.type == pafs.FileType.File
        and Path(e.path).suffix.lower() in AUDIO_EXTENSIONS
        and not _hidden(Path(e.path[len(base) :] if e.path.startswith(base) else e.base_name))
    )


def read_source(name: str) -> bytes:
    """The bytes of a local file or a URI (see :func:`discover_sources`).

    Raises:
        OSError: It cannot be read.
    """
    if not is_uri(name):
        return Path(name).read_bytes()
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(name)
    except ValueError as e:
        raise OSError(str(e)) from None
    with filesystem.open_input_stream(path) as f:
        return bytes(f.read())


def decode_batch(batch: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """Read and decode a batch of files (column ``file``) with :func:`ml.service.decode_upload`.

    Returns the :data:`DECODED_COLUMNS`; a file that cannot be read or decoded has its ``error`` set (and
    an empty ``wave``), so it ends as an error row instead of failing the job.
    """
    import numpy as np

    from ml.service import decode_upload

    cols: dict[str, list[Any]] = {c: [] for c in DECODED_COLUMNS}
    for name in (str(f) for f in batch["file"]):
        try:
            d = decode_upload(cfg, name, read_source(name))
        except OSError as e:
            d = None
            err = f"unreadable: {e.strerror or e}"
        a = d.audio if d is not None else None
        cols["file"].append(name)
        cols["wave"].append(a.wave.astype(np.float32, copy=False).tobytes() if a is not None else b"")
        cols["sample_rate"].append(a.sample_rate if a is not None else 0)
        cols["source_rate"].append(a.source_rate if a is not None else 0)
        cols["channels"].append(a.channels if a is not None else 0)
        cols["format"].append(a.format if a is not None else "")
        cols["subtype"].append(a.subtype if a is not None else "")
        cols["silent"].append(bool(a.silent) if a is not None else False)
        cols["error"].append(None if a is not None else (d.error if d is not None else err))
    return {
        "file": np.array(cols["file"], dtype=object),
        "wave": np.array(cols["wave"], dtype=object),
        "sample_rate": np.array(cols["sample_rate"], dtype=np.int64),
        "source_rate": np.array(cols["source_rate"], dtype=np.int64),
        "channels": np.array(cols["channels"], dtype=np.int64),
        "format": np.array(cols["format"], dtype=object),
        "subtype": np.array(cols["subtype"], dtype=object),
        "silent": np.array(cols["silent"], dtype=bool),
        "error": np.array(cols["error"], dtype=object),
    }


def rows_schema(labels: Sequence[str], *, instruments_text: bool = False) -> Any:
    """The pyarrow schema of the job's rows: :class:`ParquetOutput`'s columns, scores at full precision.

    ``instruments_text`` makes ``instruments`` one ``;``-joined string (CSV cannot hold lists), as in
    :func:`ml.results.results_to_csv`.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.string()),
            ("duration_s", pa.float64()),
            ("instruments", pa.string() if instruments_text else pa.list_(pa.string())),
            *((c, pa.float64()) for c in labels),
            ("error", pa.string()),
            ("ensemble", pa.string()),
            ("version", pa.int64()),
        ]
    )


def rows_table(
    results: Sequence[FileResult],
    labels: Sequence[str],
    stamp: Mapping[str, Any],
    *,
    instruments_text: bool = False,
) -> Any:
    """One row per result (a ``pyarrow.Table`` of :func:`rows_schema`), naming the ensemble and version.

    Scores are the pipeline's own values (not rounded like the JSON/CSV answers); a failed file has only
    ``file``, ``error`` and the ensemble columns filled.
    """
    import pyarrow as pa

    ens, ver = _stamp_columns(stamp)
    rows = []
    for r in results:
        ok = r.error is None
        names = list(r.instruments) if ok else None
        rows.append(
            {
                "file": r.file,
                "duration_s": r.duration_s if ok else None,
                "instruments": (";".join(names) if instruments_text else names)
                if names is not None
                else None,
                **{c: (float(r.scores[c]) if ok else None) for c in labels},
                "error": r.error,
                "ensemble": ens,
                "version": ver,
            }
        )
    return pa.Table.from_pylist(rows, schema=rows_schema(labels, instruments_text=instruments_text))


class BatchScorer:
    """Scores decoded batches with the ensemble: the callable class of the job's actor pool.

    Each instance (one per actor) loads the members of ``spec`` once (:meth:`ml.service.LocalBackend.
    from_config`, as `mpic predict` does) on ``device`` (``cuda`` falls back to the CPU when no CUDA device
    is visible) and scores with the spec's fusion settings (:func:`ml.service.multi_model_settings`).

    Args:
        cfg: The configuration.
        spec_json: The ensemble spec (:meth:`ml.ensemble.EnsembleSpec.to_json`), resolved once by the
            driver so every actor uses the same version even if the alias moves during the job.
        device: ``cpu`` or ``cuda``.
        allow_untrained: Members without checkpoints get deterministic random weights (tests, demos).
        instruments_text: Write ``instruments`` as one string (CSV output).
    """

    def __init__(
        self,
        cfg: Config,
        spec_json: str,
        device: str = "cpu",
        allow_untrained: bool = False,
        instruments_text: bool = False,
    ) -> None:
        """Load the ensemble's members (see the class doc)."""
        import torch

        from ml.ensemble import EnsembleSpec
        from ml.service import LocalBackend, fusion_from_spec, multi_model_settings

        self.cfg = cfg
        spec = EnsembleSpec.from_json(spec_json)
        dev = device if device != "cuda" or torch.cuda.is_available() else "cpu"
        self.backend = LocalBackend.from_config(cfg, spec=spec, allow_untrained=allow_untrained, device=dev)
        self.fusion = fusion_from_spec(cfg, spec, self.backend.members)
        self.settings = multi_model_settings(cfg, self.fusion)
        self.instruments_text = instruments_text
        self.device = dev

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        """Score a batch of :data:`DECODED_COLUMNS` → a table of :func:`rows_table`."""
        decoded = [self._decoded(batch, i) for i in range(len(batch["file"]))]
        try:
            results = self._score(decoded)
        except Exception:
            # one file broke a member (or the batch did): score them one by one, so only it fails
            results = []
            for d in decoded:
                try:
                    results.extend(self._score([d]))
                except Exception as e:
                    results.append(FileResult(file=d.name, error=f"scoring failed: {type(e).__name__}: {e}"))
        return rows_table(
            results, self.cfg.label_codes, self.fusion.stamp(), instruments_text=self.instruments_text
        )

    def _score(self, decoded: Sequence[Any]) -> list[FileResult]:
        import asyncio

        from ml.service import score_decoded

        s = self.settings
        return asyncio.run(
            score_decoded(
                self.cfg,
                self.backend,
                decoded,
                weights=s.weights,
                thresholds=s.thresholds,
                aggregation=s.aggregation,
            )
        )

    def _decoded(self, batch: Mapping[str, Any], i: int) -> Any:
        import numpy as np

        from ml.audio import Audio
        from ml.service import Decoded, place_windows

        name = str(batch["file"][i])
        error = batch["error"][i]
        if error is not None and error == error:  # NaN: a null that went through pandas
            return Decoded(name, error=str(error))
        audio = Audio(
            wave=np.frombuffer(batch["wave"][i], dtype=np.float32).copy(),  # writable, like decode()
            sample_rate=int(batch["sample_rate"][i]),
            source_rate=int(batch["source_rate"][i]),
            channels=int(batch["channels"][i]),
            format=str(batch["format"][i]),
            subtype=str(batch["subtype"][i]),
            silent=bool(batch["silent"][i]),
        )
        return place_windows(self.cfg, name, audio)
