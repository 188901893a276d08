"""Decode-once audio cache: every clip of a manifest, mono float32 at one sample rate, memory-mapped.

Training epochs, validation and out-of-fold prediction read from here instead of decoding files again.
Clips are stored back to back in one 1-D array with an offsets table, so 3-s training clips and 5–20-s
test excerpts share one format. Tempo (BPM, for BPM mixing) is estimated once per clip and cached beside
the audio. The cache directory name is a hash of the clip list (paths, sizes, mtimes) and the rate, so a
changed data set never reads a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ml.audio import decode

CACHE_VERSION = 1


@dataclass(frozen=True)
class ClipStore:
    """Ragged store of decoded clips: clip ``i`` is ``data[offsets[i]:offsets[i + 1]]``."""

    data: np.ndarray  # (total_samples,) float32, usually a read-only memmap
    offsets: np.ndarray  # (N + 1,) int64
    tempo: np.ndarray  # (N,) float32 BPM, nan where unknown
    sample_rate: int
    paths: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def clip(self, i: int) -> np.ndarray:
        """The samples of clip ``i``."""
        return self.data[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Samples per clip, (N,)."""
        return np.diff(self.offsets)


def _fingerprint(paths: Sequence[Path], sample_rate: int, with_tempo: bool) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{sample_rate}:{with_tempo}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_store(
    paths: Sequence[str | Path],
    sample_rate: int,
    cache_dir: str | Path,
    *,
    with_tempo: bool = True,
    progress: bool = False,
) -> ClipStore:
    """Decode ``paths`` once at ``sample_rate`` into a cached store (reused when nothing changed).

    Args:
        paths: Absolute audio paths, in manifest order.
        sample_rate: The model rate the clips are resampled to.
        cache_dir: Root of the cache; the store lives in a hashed sub-folder.
        with_tempo: Estimate and cache each clip's tempo (needed by BPM mixing).
        progress: Show a progress bar while decoding.

    Returns:
        The memory-mapped store.
    """
    abs_paths = [Path(p) for p in paths]
    key = _fingerprint(abs_paths, sample_rate, with_tempo)
    folder = Path(cache_dir) / "audio" / f"sr{sample_rate}-{key}"
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        return _open_store(folder, sample_rate)
    waves: list[np.ndarray] = []
    for p in tqdm(abs_paths, desc=f"decode @{sample_rate} Hz", disable=not progress, unit="clip"):
        waves.append(decode(p, sample_rate, max_seconds=None).wave)
    offsets = np.zeros(len(waves) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(w) for w in waves])
    tempo = np.full(len(waves), np.nan, dtype=np.float32)
    if with_tempo:
        from ml.augment import estimate_tempo  # heavy-ish import only when needed

        for i, w in enumerate(waves):
            tempo[i] = estimate_tempo(w, sample_rate)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    data = np.lib.format.open_memmap(tmp / "data.npy", mode="w+", dtype=np.float32, shape=(int(offsets[-1]),))
    for w, a in zip(waves, offsets[:-1], strict=True):
        data[a : a + len(w)] = w
    data.flush()
    del data
    np.save(tmp / "offsets.npy", offsets)
    np.save(tmp / "tempo.npy", tempo)
    (tmp / "meta.json").write_text(
        json.dumps({"paths": [str(p) for p in abs_paths], "sample_rate": sample_rate})
    )
    try:
        tmp.rename(folder)  # atomic publish
    except OSError:  # a concurrent builder won the race: use its copy, drop ours
        shutil.rmtree(tmp, ignore_errors=True)
    if not meta_file.is_file():
        raise RuntimeError(f"cache folder {folder} could not be published")
    return _open_store(folder, sample_rate)


def _open_store(folder: Path, sample_rate: int) -> ClipStore:
    meta = json.loads((folder / "meta.json").read_text())
    return ClipStore(
        data=np.load(folder / "data.npy", mmap_mode="c"),  # copy-on-write: torch needs a writable view
        offsets=np.load(folder / "offsets.npy"),
        tempo=np.load(folder / "tempo.npy"),
        sample_rate=sample_rate,
        paths=tuple(meta["paths"]),
    )
