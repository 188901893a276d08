"""Reader for the IRMAS directory layout (real data set and the synthetic one from :mod:`ml.data.synth`).

Layout::

    <root>/IRMAS-TrainingData/<code>/008__[cel][nod][cla]0058__1.wav   (prefix form, drums tag)
    <root>/IRMAS-TrainingData/<code>/[pia][cla]1308__3.wav             (short form, no drums tag)
    <root>/IRMAS-TestingData*/**/NAME.wav + NAME.txt                    (one label code per line)
    <root>/IRMAS-TrainingData-Mix/NAME__K.wav + NAME__K.txt            (synthetic multi-label training)

A ``NAME.json`` sidecar beside a rendered ``NAME.wav`` (written by :mod:`ml.data.synth`) gives the
sample library (recorded in the manifest), the group and per-frame activity; real recordings have none
(library ``""``).

In a training name the first bracket is the instrument, ``[dru]``/``[nod]`` the drums tag and the last
bracket before the recording id the genre (``cla`` is both the clarinet code and the classical genre, so
position decides). Clips ``__1``, ``__2``, ... of one name stem come from one recording and share a group;
likewise in the mix folder, where the group is ``mix/<name stem>`` (or the sidecar's ``group``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from ml.data.activity import read_sidecar
from ml.data.manifest import ClipRecord, Manifest, ManifestError

log = logging.getLogger(__name__)

TRAIN_DIR = "IRMAS-TrainingData"
MIX_DIR = "IRMAS-TrainingData-Mix"
TEST_DIR_PREFIX = "IRMAS-TestingData"
GENRES = ("cou_fol", "cla", "pop_roc", "lat_sou", "jaz_blu")
DRUM_TAGS = {"dru": True, "nod": False}
CACHE_VERSION = 2  # 2: records carry the library (from sidecars) and the mix folder is scanned

_TRAIN_NAME_RE = re.compile(
    r"^(?:(?P<prefix>\d+)__)?"
    r"\[(?P<instrument>[a-z][a-z0-9_]*)\]"
    r"(?:\[(?P<drums>dru|nod)\])?"
    r"\[(?P<genre>" + "|".join(GENRES) + r")\]"
    r"(?P<recording>\d+)"
    r"__(?P<clip>\d+)\.wav$"
)


class IrmasLayoutError(ValueError):
    """The data set root does not have the IRMAS layout, or (strict mode) some entries are malformed."""

    def __init__(self, message: str, rejected: Sequence[Rejected] = ()) -> None:
        super().__init__(message)
        self.rejected = list(rejected)


@dataclass(frozen=True)
class Rejected:
    """A file that was left out of the manifest.

    Attributes:
        path: POSIX path relative to the data set root.
        reason: Why it was left out.
    """

    path: str
    reason: str


@dataclass(frozen=True)
class TrainTags:
    """Tags parsed from an IRMAS training file name.

    Attributes:
        instrument: Instrument code of the first bracket.
        drums: True for ``[dru]``, False for ``[nod]``, None when the name has no drums tag.
        genre: Genre tag (one of :data:`GENRES`).
        recording: Recording id digits, as written (leading zeros kept).
        clip: Clip number after ``__``.
        prefix: Leading number of the prefix form (``008__...``), None for the short form.
    """

    instrument: str
    drums: bool | None
    genre: str
    recording: str
    clip: int
    prefix: str | None = None

    @property
    def stem(self) -> str:
        """The name without ``__<clip>.wav``: identifies the source recording inside its folder."""
        return format_train_name(self.instrument, self.genre, self.recording, 1, self.drums, self.prefix)[
            : -len("__1.wav")
        ]


def parse_train_name(name: str) -> TrainTags:
    """Parse an IRMAS training file name.

    Args:
        name: File name such as ``008__[cel][nod][cla]0058__1.wav`` or ``[pia][cla]1308__3.wav``.

    Returns:
        The parsed tags.

    Raises:
        ValueError: If the name does not follow either IRMAS naming form.
    """
    m = _TRAIN_NAME_RE.match(name)
    if m is None:
        raise ValueError(
            f"unparsable IRMAS training name {name!r}: expected '[NNN__][inst][dru|nod][genre]ID__K.wav' "
            f"with genre in {GENRES}"
        )
    drums_tag = m.group("drums")
    return TrainTags(
        instrument=m.group("instrument"),
        drums=None if drums_tag is None else DRUM_TAGS[drums_tag],
        genre=m.group("genre"),
        recording=m.group("recording"),
        clip=int(m.group("clip")),
        prefix=m.group("prefix"),
    )


def format_train_name(
    instrument: str,
    genre: str,
    recording: str | int,
    clip: int,
    drums: bool | None = None,
    prefix: str | int | None = None,
) -> str:
    """Build an IRMAS training file name (the inverse of :func:`parse_train_name`).

    Args:
        instrument: Instrument code.
        genre: Genre tag (one of :data:`GENRES`).
        recording: Recording id; an int is zero-padded to 4 digits.
        clip: Clip number (1-based).
        drums: Drums tag; None omits it (short form).
        prefix: Leading number; an int is zero-padded to 3 digits; None omits it.

    Returns:
        The file name.

    Raises:
        ValueError: On an unknown genre or a name that would not parse back.
    """
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}, expected one of {GENRES}")
    rec = f"{recording:04d}" if isinstance(recording, int) else recording
    pre = "" if prefix is None else (f"{prefix:03d}__" if isinstance(prefix, int) else f"{prefix}__")
    drum = "" if drums is None else ("[dru]" if drums else "[nod]")
    name = f"{pre}[{instrument}]{drum}[{genre}]{rec}__{clip}.wav"
    if _TRAIN_NAME_RE.match(name) is None:
        raise ValueError(f"cannot build a valid IRMAS name from {instrument=}, {recording=}, {clip=}")
    return name


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _skip(path: Path) -> bool:
    # Hidden files and macOS archive debris ("._x.wav", "__MACOSX/") are not audio of the data set.
    return path.name.startswith(".") or "__MACOSX" in path.parts


def _duration(path: Path) -> tuple[float | None, str | None]:
    """Duration in seconds, or None and a reason when the file is not readable audio."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError) as exc:  # sf.LibsndfileError is a RuntimeError
        return None, f"unreadable audio: {exc}"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "zero-length audio"
    return info.frames / info.samplerate, None


def _sidecar_library(wav: Path) -> tuple[str | None, str | None, str | None]:
    """(library, group, error) from the clip's sidecar; library ``""`` when there is no sidecar."""
    try:
        side = read_sidecar(wav)
    except (OSError, ValueError) as exc:
        return None, None, f"unreadable sidecar: {exc}"
    if side is None:
        return "", None, None
    library = side.get("library", "")
    group = side.get("group")
    if not isinstance(library, str) or (group is not None and not isinstance(group, str)):
        return None, None, "sidecar 'library'/'group' must be strings"
    return library, group, None


def _test_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(TEST_DIR_PREFIX))


def _scan_train(
    train_dir: Path, root: Path, known: set[str], records: list[ClipRecord], rejected: list[Rejected]
) -> None:
    for folder in sorted(p for p in train_dir.iterdir() if p.is_dir() and not _skip(p)):
        code = folder.name
        for wav in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav"):
            if _skip(wav):
                continue
            rel = _rel(wav, root)
            try:
                tags = parse_train_name(wav.name)
            except ValueError as exc:
                rejected.append(Rejected(rel, str(exc)))
                continue
            if code not in known:
                rejected.append(Rejected(rel, f"unknown label code {code!r} (folder name)"))
                continue
            if tags.instrument != code:
                rejected.append(
                    Rejected(rel, f"instrument tag [{tags.instrument}] disagrees with folder {code!r}")
                )
                continue
            duration, why = _duration(wav)
            if duration is None:
                rejected.append(Rejected(rel, why or "unreadable audio"))
                continue
            library, _, bad = _sidecar_library(wav)
            if library is None:
                rejected.append(Rejected(rel, bad or "bad sidecar"))
                continue
            records.append(
                ClipRecord(
                    path=rel,
                    split="train",
                    duration_s=duration,
                    labels=(code,),
                    genre=tags.genre,
                    drums=tags.drums,
                    group=f"{code}/{tags.stem}",
                    library=library,
                )
            )


def read_label_file(path: Path) -> list[str]:
    """Label codes of an IRMAS test ``.txt`` file: one per line, whitespace stripped, blanks ignored.

    Args:
        path: The ``.txt`` file.

    Returns:
        Codes in file order, duplicates removed.

    Raises:
        OSError: If the file cannot be read.
    """
    codes: list[str] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        code = line.strip()
        if code and code not in codes:
            codes.append(code)
    return codes


def _scan_test(
    test_dir: Path,
    root: Path,
    labels: Sequence[str],
    records: list[ClipRecord],
    rejected: list[Rejected],
    split: str = "test",
) -> None:
    """Scan ``NAME.wav`` + ``NAME.txt`` pairs (test folders; with ``split="train"`` the mix folder)."""
    order = {lab: i for i, lab in enumerate(labels)}
    for wav in sorted(p for p in test_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".wav"):
        if _skip(wav):
            continue
        rel = _rel(wav, root)
        txt = wav.with_suffix(".txt")
        if not txt.is_file():
            rejected.append(Rejected(rel, f"missing label file {txt.name!r}"))
            continue
        try:
            codes = read_label_file(txt)
        except OSError as exc:
            rejected.append(Rejected(rel, f"unreadable label file {txt.name!r}: {exc}"))
            continue
        if not codes:
            rejected.append(Rejected(rel, f"label file {txt.name!r} lists no labels"))
            continue
        unknown = [c for c in codes if c not in order]
        if unknown:
            rejected.append(Rejected(rel, f"unknown label code(s) {unknown} in {txt.name!r}"))
            continue
        duration, why = _duration(wav)
        if duration is None:
            rejected.append(Rejected(rel, why or "unreadable audio"))
            continue
        library, side_group, bad = _sidecar_library(wav)
        if library is None:
            rejected.append(Rejected(rel, bad or "bad sidecar"))
            continue
        # clips NAME__1, NAME__2, ... of one mix recording share a group (folds never split a song)
        mix_group = side_group or f"mix/{wav.stem.rsplit('__', 1)[0]}"
        group = mix_group if split == "train" else wav.stem
        records.append(
            ClipRecord(
                path=rel,
                split=split,
                duration_s=duration,
                labels=tuple(sorted(codes, key=order.__getitem__)),  # canonical label order
                group=group,
                library=library,
            )
        )


def scan_irmas(
    root: Path | str, labels: Sequence[str], *, strict: bool = False
) -> tuple[Manifest, list[Rejected]]:
    """Scan an IRMAS-layout data set into a manifest.

    Args:
        root: Directory holding ``IRMAS-TrainingData``, ``IRMAS-TrainingData-Mix`` and/or
            ``IRMAS-TestingData*`` folders.
        labels: Known label codes; test labels keep this order.
        strict: Raise instead of returning rejects.

    Returns:
        The manifest (records sorted by path) and the rejected files with reasons.

    Raises:
        IrmasLayoutError: If neither a training nor a testing folder exists, or ``strict`` and some
            entries were rejected.
    """
    root = Path(root)
    if not root.is_dir():
        raise IrmasLayoutError(f"{root}: data set root is not a directory")
    known = set(labels)
    train_dir = root / TRAIN_DIR
    mix_dir = root / MIX_DIR
    test_dirs = _test_dirs(root)
    if not train_dir.is_dir() and not mix_dir.is_dir() and not test_dirs:
        raise IrmasLayoutError(
            f"{root}: no IRMAS data found: expected a '{TRAIN_DIR}' folder and/or folders named "
            f"'{TEST_DIR_PREFIX}*' directly under the root"
        )
    records: list[ClipRecord] = []
    rejected: list[Rejected] = []
    if train_dir.is_dir():
        _scan_train(train_dir, root, known, records, rejected)
    if mix_dir.is_dir():
        _scan_test(mix_dir, root, labels, records, rejected, split="train")
    for test_dir in test_dirs:
        _scan_test(test_dir, root, labels, records, rejected)
    if strict and rejected:
        shown = "\n".join(f"  {r.path}: {r.reason}" for r in rejected[:20])
        more = f"\n  ... and {len(rejected) - 20} more" if len(rejected) > 20 else ""
        raise IrmasLayoutError(f"{root}: {len(rejected)} malformed entr(y/ies):\n{shown}{more}", rejected)
    records.sort(key=lambda r: r.path)
    return Manifest(root, records), rejected


def fingerprint(root: Path | str, labels: Sequence[str]) -> str:
    """Hash of every file's (relative path, size, mtime) under the IRMAS folders, plus the label set.

    Args:
        root: Data set root.
        labels: Label codes (part of the key: a different label set gives different rejects).

    Returns:
        A hex SHA-256 digest; it changes when any file is added, removed, resized or touched.
    """
    root = Path(root)
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "labels": list(labels)}).encode())
    # every file under the scanned folders counts, sidecars (.json) and label files (.txt) included
    dirs = [root / d for d in (TRAIN_DIR, MIX_DIR) if (root / d).is_dir()] + (
        _test_dirs(root) if root.is_dir() else []
    )
    entries = []
    for d in dirs:
        for p in d.rglob("*"):
            if p.is_file():
                st = p.stat()
                entries.append((_rel(p, root), st.st_size, st.st_mtime_ns))
    for rel, size, mtime in sorted(entries):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def _sidecar(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".json")


def build_manifest(
    root: Path | str,
    labels: Sequence[str],
    cache_path: Path | str | None = None,
    *,
    strict: bool = False,
) -> Manifest:
    """Scan the data set, reusing a cached manifest CSV when no file changed.

    The cache is ``cache_path`` (CSV) plus ``<cache_path>.json`` holding the fingerprint (see
    :func:`fingerprint`) and the rejects. Rejects are logged as warnings on every call.

    Args:
        root: Data set root.
        labels: Known label codes.
        cache_path: Where to cache the manifest; None scans every time.
        strict: Raise :class:`IrmasLayoutError` when entries are rejected.

    Returns:
        The manifest.

    Raises:
        IrmasLayoutError: As :func:`scan_irmas`.
    """
    root = Path(root)
    if cache_path is None:
        manifest, rejected = scan_irmas(root, labels, strict=strict)
        _log_rejects(rejected)
        return manifest
    cache_path = Path(cache_path)
    side = _sidecar(cache_path)
    fp = fingerprint(root, labels)
    cached = _load_cache(cache_path, side, fp, root)
    if cached is not None:
        manifest, rejected = cached
        if strict and rejected:
            raise IrmasLayoutError(f"{root}: {len(rejected)} malformed entr(y/ies) (cached)", rejected)
        _log_rejects(rejected)
        return manifest
    manifest, rejected = scan_irmas(root, labels, strict=strict)
    manifest.write(cache_path)
    tmp = side.with_name(f".{side.name}.{os.getpid()}.tmp")
    tmp.write_text(
        json.dumps(
            {
                "version": CACHE_VERSION,
                "fingerprint": fp,
                "records": len(manifest),
                "rejected": [{"path": r.path, "reason": r.reason} for r in rejected],
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    os.replace(tmp, side)
    _log_rejects(rejected)
    return manifest


def _load_cache(cache_path: Path, side: Path, fp: str, root: Path) -> tuple[Manifest, list[Rejected]] | None:
    if not cache_path.is_file() or not side.is_file():
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != fp:
            return None
        rejected = [Rejected(r["path"], r["reason"]) for r in meta.get("rejected", [])]
        manifest = Manifest.read(cache_path, root=root)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # ManifestError/JSONDecodeError are ValueErrors
        log.warning("ignoring unreadable manifest cache %s: %s", cache_path, exc)
        return None
    if len(manifest) != meta.get("records"):
        return None
    return manifest, rejected


def _log_rejects(rejected: Sequence[Rejected]) -> None:
    if not rejected:
        return
    log.warning("%d file(s) left out of the manifest", len(rejected))
    for r in rejected[:10]:
        log.warning("  %s: %s", r.path, r.reason)


__all__ = [
    "GENRES",
    "TEST_DIR_PREFIX",
    "TRAIN_DIR",
    "IrmasLayoutError",
    "ManifestError",
    "Rejected",
    "TrainTags",
    "build_manifest",
    "fingerprint",
    "format_train_name",
    "parse_train_name",
    "read_label_file",
    "scan_irmas",
]
