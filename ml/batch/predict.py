"""`mpic predict DIR…`'s loop: stream the files through the one analysis pipeline into a sink.

:func:`tag` hands each chunk's results (:func:`ml.service.analyze_stream`: decode → score → fuse) to a
sink (an output's ``write``) before reading the next files, so memory stays bounded and an interrupted run
loses at most the chunk in flight; :class:`TagReport` says what it did.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.config import Config
from ml.inference import FileResult


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
            settings=settings,
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
