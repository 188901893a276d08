"""Constants, errors and the job record shared by the synthesiser's modules."""

from __future__ import annotations

from dataclasses import dataclass

TEST_DIR = "IRMAS-TestingData"
META_NAME = "synth_meta.json"
STEMS_DIR = "_stems"
TRAIN_CLIP_S = 3.0
MIN_STEM_DBFS = -45.0  # a labelled stem quieter than this in the written mix is treated as silence
MIN_LEAD_MARGIN_DB = 3.0  # predominant stem over the accompaniment, per training clip
MIN_ACTIVE_FRACTION = 0.6  # share of 46-ms frames in which the predominant stem sounds, per training clip
MAX_BELOW_LOUDEST_DB = 20.0  # a test instrument this far under the loudest labelled one counts as inaudible
MAX_ATTEMPTS = 12


TRAIN, TEST, MIX = 0, 1, 2  # item kinds (the first element of an item's seed spawn key)


class SynthError(RuntimeError):
    """Rendering failed (missing library, or no audible result after the bounded number of re-draws)."""


class _Retry(Exception):
    """This draw produced an inaudible labelled stem; draw again."""


@dataclass(frozen=True)
class _Job:
    kind: int  # TRAIN, TEST or MIX
    index: int
    seed: int
    out_dir: str
    sample_rate: int
    library: str  # every stem of an item comes from this library
    programs: tuple[tuple[str, tuple[int, ...]], ...]  # label -> programs (all labels)
    labels: tuple[str, ...]
    save_stems: bool
    label: str = ""  # training: the predominant label
    n_clips: int = 0  # training and mixes: clips cut from this recording
    prefix: int = 0  # training: per-label recording number
    recording: int = 0  # training: global recording id
    name: str = ""  # test: file name stem; mixes: the recording's name stem
    # test and mixes: the share composed from a corpus piece, the parsed-pieces cache file the worker reads
    # (ml.data.scores; not the pieces themselves, which would be pickled into every job) and the tempo range
    score_share: float = 0.0
    score_cache: str = ""
    score_tempo: tuple[float, float] = (60.0, 120.0)


def _r(x: float, nd: int = 3) -> float:
    return round(float(x), nd)
