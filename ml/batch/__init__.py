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

One module per concern, all re-exported here (import from ``ml.batch``):

- :mod:`ml.batch.sources`: :func:`discover`, :func:`discover_sources` (URIs too), :func:`read_source`;
- :mod:`ml.batch.outputs`: the resumable CSV / JSON / Parquet outputs (:func:`open_output`);
- :mod:`ml.batch.predict`: :func:`tag`, the streaming loop of `mpic predict`;
- :mod:`ml.batch.ray_data`: the Ray Data job's stages (:func:`decode_batch`, :class:`BatchScorer`).
"""

from __future__ import annotations

from ml.batch.outputs import (
    FORMATS,
    CsvOutput,
    JsonOutput,
    OutputError,
    ParquetOutput,
    ResultsOutput,
    open_output,
    output_format,
    stamp_text,
)
from ml.batch.predict import TagReport, tag
from ml.batch.ray_data import DECODED_COLUMNS, BatchScorer, decode_batch, rows_schema, rows_table
from ml.batch.sources import (
    BatchError,
    discover,
    discover_sources,
    file_key,
    is_uri,
    read_source,
)

__all__ = [
    "DECODED_COLUMNS",
    "FORMATS",
    "BatchError",
    "BatchScorer",
    "CsvOutput",
    "JsonOutput",
    "OutputError",
    "ParquetOutput",
    "ResultsOutput",
    "TagReport",
    "decode_batch",
    "discover",
    "discover_sources",
    "file_key",
    "is_uri",
    "open_output",
    "output_format",
    "read_source",
    "rows_schema",
    "rows_table",
    "stamp_text",
    "tag",
]
