"""Formatting of per-file results as the JSON document and CSV table shared by the HTTP API and the CLI.

The JSON shape (``results_payload``)::

    {"labels": [code, ...], "weights": {member: w}, "thresholds": {code: t},
     "results": [{"file": name, "duration_s": x, "scores": {code: p}, "instruments": [code, ...],
                  "silent": false, "segments": [{"start_s": a, "end_s": b, "scores": {code: p}}]},
                 {"file": name, "error": "why"}]}

Every answer also names the ensemble that produced it: ``"ensemble": {"name", "registered_model",
"version", "source"}`` and, for a single-model run, ``"model"`` (added by
:func:`ml.service.results_document`).

The CSV (``results_to_csv``) has one row per file: ``file, duration_s, instruments`` (codes joined by
``;``), one score column per label code, ``error`` and, given the ensemble stamp, ``ensemble`` (its
registered name) and ``version``. The formatters print names as given (the CLI
keeps paths); the HTTP API passes every uploaded name through :func:`sanitize_filename` first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ml.inference import FileResult

RESULTS_BASENAME = "wav-files-instruments-predictions"
"""Base name of the downloadable results (``.csv`` / ``.json``)."""

DEFAULT_FILENAME = "upload"
MAX_FILENAME_CHARS = 255
# Unicode categories removed from names: controls, format characters (bidi overrides can make
# "evil\u202egnp.wav" display as "evilvaw.png"), unpaired surrogates, line/paragraph separators.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Cells starting with these are run as formulas by spreadsheet programs (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

ResultLike = FileResult | Mapping[str, Any]


def sanitize_filename(name: str | bytes | None, *, default: str = DEFAULT_FILENAME) -> str:
    r"""A display-safe base name for an uploaded or given file name.

    Directories are stripped (``/`` and ``\`` both count, so ``../../etc/passwd`` → ``passwd`` and
    ``C:\x\a.wav`` → ``a.wav``), bytes that are not UTF-8 become U+FFFD, control/format characters
    are removed, the result is NFC-normalised and cut to 255 characters (keeping the extension). A name
    that ends up empty, ``.`` or ``..`` becomes ``default``. The result is for echoing back only: it is
    never used as a path.
    """
    if name is None:
        return default
    if isinstance(name, bytes | bytearray):
        text = bytes(name).decode("utf-8", errors="replace")
    else:
        text = _repair_surrogates(str(name))
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _DROP_CATEGORIES)
    text = unicodedata.normalize("NFC", text).strip()
    if text in {"", ".", ".."}:
        return default
    if len(text) > MAX_FILENAME_CHARS:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 16 and stem:
            text = stem[: MAX_FILENAME_CHARS - len(ext) - 1] + "." + ext
        else:
            text = text[:MAX_FILENAME_CHARS]
    return text


def _repair_surrogates(text: str) -> str:
    """Turn surrogate-escaped bytes (``os.fsdecode`` of non-UTF-8 names) into U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", errors="surrogatepass")
    return raw.decode("utf-8", errors="replace")


def result_dict(result: ResultLike, *, segments: bool = True) -> dict[str, Any]:
    """The JSON form of one result (a :class:`~ml.inference.FileResult` or an already built dict)."""
    if isinstance(result, FileResult):
        return result.to_dict(segments=segments)
    out = dict(result)
    if not segments:
        out.pop("segments", None)
    return out


def thresholds_dict(
    labels: Sequence[str], thresholds: Sequence[float] | Mapping[str, float] | float
) -> dict[str, float]:
    """Per-class thresholds as ``{code: t}`` from a sequence (label order), a mapping or one float."""
    if isinstance(thresholds, Mapping):
        missing = [c for c in labels if c not in thresholds]
        if missing:
            raise ValueError(f"no threshold for labels {missing}")
        return {c: float(thresholds[c]) for c in labels}
    if isinstance(thresholds, int | float):
        return {c: float(thresholds) for c in labels}
    values = [float(t) for t in thresholds]
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} thresholds for {len(labels)} labels")
    return dict(zip(labels, values, strict=True))


def results_payload(
    labels: Sequence[str],
    weights: Mapping[str, float],
    thresholds: Sequence[float] | Mapping[str, float] | float,
    results: Iterable[ResultLike],
    *,
    segments: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON document of a prediction run (see the module docstring); ``extra`` keys are added as is."""
    payload: dict[str, Any] = {
        "labels": list(labels),
        "weights": {m: float(w) for m, w in weights.items()},
        "thresholds": thresholds_dict(labels, thresholds),
    }
    payload.update(extra)
    payload["results"] = [result_dict(r, segments=segments) for r in results]
    return payload


def payload_to_json(payload: Mapping[str, Any]) -> str:
    """Serialise a payload strictly (NaN/inf would not be valid JSON for browsers)."""
    return json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_cell_text(cell: str) -> str:
    """The text a CSV cell written by :func:`results_to_csv` stands for (undoes the formula guard)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA_START) else cell


def _number(value: Any, digits: int) -> str:
    if value is None:
        return ""
    x = float(value)
    return "" if not math.isfinite(x) else f"{x:.{digits}f}"


def results_to_csv(
    labels: Sequence[str],
    results: Iterable[ResultLike],
    *,
    ensemble: Mapping[str, Any] | None = None,
    header: bool = True,
) -> str:
    """One row per file: file, duration_s, instruments (``;``-joined), a score column per label, error.

    With ``ensemble`` (the stamp of :func:`ml.ensemble.stamp`) every row also names the ensemble
    (registered name, else the ensemble's) and version. A failed file has only ``file`` and ``error``
    (and the ensemble) filled. Text cells that a spreadsheet would run as a formula (leading ``=``, ``+``,
    ``-``, ``@``) are prefixed with ``'``. ``header=False`` leaves the header row out (appending rows to
    an existing table, as :mod:`ml.batch` does).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    tail: list[str] = []
    if ensemble is not None:
        version = ensemble.get("version")
        tail = [
            _cell(str(ensemble.get("registered_model") or ensemble.get("name") or "")),
            "" if version is None else str(version),
        ]
    if header:
        stamp_cols = ["ensemble", "version"] if tail else []
        writer.writerow(["file", "duration_s", "instruments", *labels, "error", *stamp_cols])
    for r in results:
        d = result_dict(r, segments=False)
        name = _cell(str(d.get("file", "")))
        if d.get("error") is not None:
            writer.writerow([name, "", "", *([""] * len(labels)), _cell(str(d["error"])), *tail])
            continue
        scores = d.get("scores") or {}
        writer.writerow(
            [
                name,
                _number(d.get("duration_s"), 3),
                ";".join(d.get("instruments") or []),
                *(_number(scores.get(c), 4) for c in labels),
                "",
                *tail,
            ]
        )
    return buf.getvalue()
