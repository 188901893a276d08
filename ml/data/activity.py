"""Per-frame instrument activity of rendered clips, and per-window targets derived from it.

The synthesiser knows every stem of a clip, so it writes, in the clip's ``NAME.json`` sidecar::

    "activity": {"hop_s": 0.1, "rel_db": 25.0, "floor_dbfs": -60.0,
                 "labels": {"cel": [0, 1, 1, ...], "pia": [1, 1, 0, ...]}}

A 100-ms frame of a labelled stem is *active* when the stem's frame RMS is at most :data:`REL_DB` below
the mix's frame RMS (it is not buried under the others) and above :data:`FLOOR_DBFS` (it is not a reverb
tail or a near-silent gap). 25 dB matches what a listener (and a model at 16-bit) can still pick out of
a dense mix; -60 dBFS is well above 16-bit dither and far below any played note after our peak
normalisation (-6 to -0.5 dBFS peak). A clip is labelled with the instruments active in at least
:data:`CLIP_MIN_FRACTION` of its frames.

:func:`load_activity` reads a sidecar back into a ``(C, frames)`` matrix and :func:`window_targets`
turns it into the multi-hot target of one crop, so a training crop where a stem rests gets no label
for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

HOP_S = 0.1
REL_DB = 25.0
FLOOR_DBFS = -60.0
CLIP_MIN_FRACTION = 0.3


def frame_rms(x: np.ndarray, sample_rate: int, hop_s: float = HOP_S) -> np.ndarray:
    """RMS of consecutive non-overlapping frames of ``hop_s`` seconds (channels pooled).

    Args:
        x: Audio ``[channels, n]`` or ``[n]``.
        sample_rate: Sample rate in Hz.
        hop_s: Frame length in seconds.

    Returns:
        float64 array of ``ceil(n / hop)`` frame RMS values (the last frame may be shorter).
    """
    x2 = np.atleast_2d(np.asarray(x, dtype=np.float64))
    hop = max(1, round(hop_s * sample_rate))
    n = x2.shape[1]
    frames = max(1, math.ceil(n / hop))
    pad = frames * hop - n
    sq = np.pad(np.square(x2), ((0, 0), (0, pad))).reshape(x2.shape[0], frames, hop)
    counts = np.full(frames, float(hop))
    counts[-1] = hop - pad if hop - pad > 0 else hop
    return np.sqrt(sq.sum(axis=(0, 2)) / (counts * x2.shape[0]))


def stem_activity(
    stem: np.ndarray,
    mix: np.ndarray,
    sample_rate: int,
    *,
    hop_s: float = HOP_S,
    rel_db: float = REL_DB,
    floor_dbfs: float = FLOOR_DBFS,
) -> np.ndarray:
    """0/1 activity per frame of one stem inside its mix (see the module docstring for the rule).

    Args:
        stem: The stem as it sounds in the written mix ``[channels, n]``.
        mix: The written mix ``[channels, n]``.
        sample_rate: Sample rate in Hz.
        hop_s: Frame length in seconds.
        rel_db: Largest distance below the mix's frame level that still counts as active.
        floor_dbfs: Absolute floor of an active frame.

    Returns:
        uint8 array of per-frame activity.
    """
    s = frame_rms(stem, sample_rate, hop_s)
    m = frame_rms(mix, sample_rate, hop_s)
    active = (s >= m * 10 ** (-rel_db / 20)) & (s >= 10 ** (floor_dbfs / 20))
    return active.astype(np.uint8)


def activity_record(
    stems: Mapping[str, np.ndarray], mix: np.ndarray, sample_rate: int, *, hop_s: float = HOP_S
) -> dict[str, Any]:
    """The sidecar ``activity`` object for labelled stems of a clip.

    Args:
        stems: Label code -> that label's stem as it sounds in the mix.
        mix: The written mix.
        sample_rate: Sample rate in Hz.
        hop_s: Frame length in seconds.

    Returns:
        ``{"hop_s", "rel_db", "floor_dbfs", "labels": {code: [0/1, ...]}}``.
    """
    return {
        "hop_s": hop_s,
        "rel_db": REL_DB,
        "floor_dbfs": FLOOR_DBFS,
        "labels": {
            code: [int(v) for v in stem_activity(x, mix, sample_rate, hop_s=hop_s)]
            for code, x in stems.items()
        },
    }


def clip_labels(
    activity: Mapping[str, Sequence[int]], order: Sequence[str], min_fraction: float = CLIP_MIN_FRACTION
) -> list[str]:
    """Codes active in at least ``min_fraction`` of the frames, in ``order``.

    Args:
        activity: Code -> per-frame 0/1.
        order: Canonical label order; codes outside it are ignored.
        min_fraction: Smallest active share of the frames.

    Returns:
        The clip-level labels.
    """
    return [c for c in order if c in activity and len(activity[c]) and np.mean(activity[c]) >= min_fraction]


def sidecar_path(wav_path: Path | str) -> Path:
    """The ``NAME.json`` sidecar beside ``NAME.wav``."""
    return Path(wav_path).with_suffix(".json")


def read_sidecar(wav_path: Path | str) -> dict[str, Any] | None:
    """The sidecar of a rendered clip, or None when there is none (real recordings).

    Args:
        wav_path: The audio file.

    Returns:
        The parsed JSON object, or None.

    Raises:
        ValueError: If the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(wav_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed sidecar: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: sidecar must hold a JSON object")
    return data


def load_activity(wav_path: Path | str, label_codes: Sequence[str]) -> np.ndarray | None:
    """Per-frame activity of a clip from its sidecar.

    Args:
        wav_path: The audio file (its ``.json`` sidecar is read).
        label_codes: Row order; codes missing from the sidecar get all-zero rows.

    Returns:
        float32 ``(C, frames)`` of 0/1 at the sidecar's ``hop_s``, or None when the clip has no sidecar
        or the sidecar has no activity.

    Raises:
        ValueError: On a malformed sidecar (rows of different lengths, values other than 0/1).
    """
    side = read_sidecar(wav_path)
    if side is None or not isinstance(side.get("activity"), dict):
        return None
    rows: dict[str, Any] = side["activity"].get("labels", {})
    lengths = {len(v) for v in rows.values()}
    if len(lengths) > 1:
        raise ValueError(f"{sidecar_path(wav_path)}: activity rows differ in length: {sorted(lengths)}")
    frames = lengths.pop() if lengths else 0
    out = np.zeros((len(label_codes), frames), dtype=np.float32)
    for i, code in enumerate(label_codes):
        if code in rows:
            row = np.asarray(rows[code], dtype=np.float32)
            if not np.all((row == 0) | (row == 1)):
                raise ValueError(f"{sidecar_path(wav_path)}: activity of {code!r} must be 0/1")
            out[i] = row
    return out


def activity_hop_s(wav_path: Path | str) -> float | None:
    """The frame hop of a clip's activity, or None without one."""
    side = read_sidecar(wav_path)
    act = side.get("activity") if side else None
    return float(act["hop_s"]) if isinstance(act, dict) and "hop_s" in act else None


def window_targets(
    activity: np.ndarray, hop_s: float, start_s: float, dur_s: float, min_fraction: float = 0.5
) -> np.ndarray:
    """Multi-hot target of a window: labels active in at least ``min_fraction`` of its frames.

    Frames are weighted by how much of them the window covers, so a window that starts mid-frame is
    handled exactly; frames beyond the end of the activity count as inactive.

    Args:
        activity: ``(C, frames)`` 0/1 from :func:`load_activity`.
        hop_s: Frame length in seconds.
        start_s: Window start in seconds.
        dur_s: Window length in seconds (> 0).
        min_fraction: Smallest active share of the window (0 < min_fraction <= 1).

    Returns:
        float32 ``(C,)`` multi-hot.

    Raises:
        ValueError: On a non-positive duration or hop, or ``min_fraction`` outside (0, 1].
    """
    if dur_s <= 0 or hop_s <= 0:
        raise ValueError(f"dur_s and hop_s must be > 0, got {dur_s=}, {hop_s=}")
    if not 0 < min_fraction <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    act = np.asarray(activity, dtype=np.float64)
    frames = act.shape[1]
    edges = np.arange(frames + 1) * hop_s
    end_s = start_s + dur_s
    cover = np.clip(np.minimum(edges[1:], end_s) - np.maximum(edges[:-1], start_s), 0.0, None)
    share = (act @ cover) / dur_s
    return (share >= min_fraction - 1e-9).astype(np.float32)


__all__ = [
    "CLIP_MIN_FRACTION",
    "FLOOR_DBFS",
    "HOP_S",
    "REL_DB",
    "activity_hop_s",
    "activity_record",
    "clip_labels",
    "frame_rms",
    "load_activity",
    "read_sidecar",
    "sidecar_path",
    "stem_activity",
    "window_targets",
]
