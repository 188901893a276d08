"""Real compositions: public-domain scores of the music21 corpus turned into beat-time note lists.

The synthesiser (:mod:`ml.data.synth`) composes multi-instrument items either from a drawn song or,
for a configured share, from an excerpt of a corpus piece: :func:`load_pieces` parses the chosen
collections once into :class:`ScorePiece` note lists (cached as one JSON file), :func:`draw_excerpt`
cuts a window at a drawn tempo and :func:`assign_labels` gives the score's parts instrument labels
whose playable range holds them.

music21 is imported lazily inside the functions that parse: it takes about a second to import and
is not needed when the cache is warm (workers only read the JSON).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.config.loading import DEFAULT_CACHE_DIR
from ml.config.schema import ScoresConfig
from ml.data.synth.compose import Note
from ml.data.synth.styles import (
    _POLYPHONIC_FAMILIES,
    DEFAULT_GM_PROGRAMS,
    DEFAULT_RANGES,
    GENERIC_RANGE,
    _family,
)

log = logging.getLogger(__name__)

VELOCITY = 80  # corpus scores rarely carry usable dynamics; the performance draw varies the levels
SCORE_SUFFIXES = frozenset({".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi"})
"""Files parsed as scores (a collection's ``.rntxt`` Roman-numeral analyses hold no parts)."""
MIN_IN_RANGE = 0.95  # share of a part's notes that must lie in a label's range after the octave shift
OCTAVE_SHIFTS = (0, -1, 1, -2, 2)  # tried in this order: the smallest transposition wins
_SHIFT_WEIGHT = {0: 1.0, 1: 0.35, 2: 0.1}  # a part is mostly played at pitch, sometimes an octave off
_CACHE_FORMAT = 1


class UnknownCollectionError(ValueError):
    """A configured corpus collection does not exist; the message lists the valid names."""


@dataclass(frozen=True)
class ScorePiece:
    """One corpus piece as note lists, one per part (voice or instrument).

    Attributes:
        name: ``<collection>/<file path inside the collection>``.
        beats_per_bar: Bar length of the first time signature in quarter notes (4 when none).
        parts: Notes per part, ``(start beat, duration, MIDI pitch, velocity)`` in quarter-note beats,
            sorted; ties merged, chords as simultaneous notes.
        key: Name of the first key (signature) in the score, e.g. ``"F major"``; empty when none.
    """

    name: str
    beats_per_bar: int
    parts: tuple[tuple[Note, ...], ...]
    key: str = ""

    @property
    def beats(self) -> float:
        """Length in quarter-note beats: the end of the last note."""
        return max((s + d for part in self.parts for s, d, _, _ in part), default=0.0)

    @property
    def pulse(self) -> float:
        """The felt beat in quarter notes: 2 (a half note) when most notes are half notes or longer.

        Renaissance polyphony (Palestrina, Monteverdi's madrigals) is transcribed in half and whole
        notes with the half note as the beat; counting quarters there would make it twice too slow.
        """
        durations = sorted(d for part in self.parts for _, d, _, _ in part)
        return 2.0 if durations and durations[len(durations) // 2] >= 2.0 else 1.0


@dataclass(frozen=True)
class ScoreExcerpt:
    """Where an excerpt comes from and how fast it is played; the timeline of its notes.

    It answers what the synthesiser asks of a drawn song (``seconds``, ``genre``, ``tempo``,
    ``beats_per_bar``, ``key_name``), so the same part, mixing and metadata code serves both.
    """

    piece: str
    start_beat: float
    tempo: float  # quarter notes per minute
    beats_per_bar: int
    key: str = ""
    genre: str = "cla"  # every collection here is classical or early music

    def seconds(self, beat: float) -> float:
        """Time of ``beat`` (counted from the excerpt's start) in seconds; one tempo throughout."""
        return beat * 60.0 / self.tempo

    def key_name(self) -> str:
        """The piece's key as written in the score."""
        return self.key

    def composition(self) -> dict[str, Any]:
        """The record of this composition for sidecars and the manifest."""
        return {"source": "music21", "piece": self.piece, "start_beat": self.start_beat, "tempo": self.tempo}


_DEFAULTS = ScoresConfig()


@dataclass(frozen=True)
class ScoreOptions:
    """Which items :func:`ml.data.synth.synthesize` composes from corpus pieces, and from which.

    Attributes:
        test_share: Share of test excerpts composed from a corpus piece (0..1).
        mix_share: Share of multi-instrument training mixes composed from a corpus piece (0..1).
        collections: music21 corpus collections (composer folders), see :func:`collection_names`.
        max_pieces: Pieces taken per collection (spread over it, see :func:`collection_paths`).
        tempo: Range of drawn tempi in beats per minute (the beat is a quarter, or a half note in
            pieces written mostly in half notes, see :attr:`ScorePiece.pulse`).
        cache_dir: Folder of the parsed-pieces cache.
    """

    # the defaults are config.yml's (``synth.scores``), written once in ml.config.schema.ScoresConfig
    test_share: float = _DEFAULTS.test_share
    mix_share: float = _DEFAULTS.mix_share
    collections: tuple[str, ...] = tuple(_DEFAULTS.collections)
    max_pieces: int = _DEFAULTS.max_pieces
    tempo: tuple[float, float] = _DEFAULTS.tempo
    cache_dir: Path = Path(DEFAULT_CACHE_DIR) / "scores"


def _corpus_dir() -> Path:
    # find_spec locates the package without executing it (importing music21 takes about a second)
    spec = importlib.util.find_spec("music21")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("music21 is not installed (pip install 'music21>=9.1')")
    return Path(next(iter(spec.submodule_search_locations))) / "corpus"


def collection_names() -> list[str]:
    """Names of the music21 corpus collections that hold at least one score file.

    Returns:
        Sorted folder names under music21's corpus (e.g. ``bach``, ``palestrina``).
    """
    root = _corpus_dir()
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(("_", ".")) and any(_score_files(d))
    )


def _score_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix.lower() in SCORE_SUFFIXES and p.is_file()]


def check_collections(collections: Sequence[str]) -> None:
    """Raise if a collection name is not in the corpus.

    Raises:
        UnknownCollectionError: Naming the first unknown collection and every valid one.
    """
    if not collections:
        raise UnknownCollectionError(
            "no score collection given; valid names: " + ", ".join(collection_names())
        )
    valid = collection_names()
    for name in collections:
        if name not in valid:
            raise UnknownCollectionError(
                f"unknown score collection {name!r}; valid names: {', '.join(valid)}"
            )


def collection_paths(collection: str, max_pieces: int) -> list[Path]:
    """The score files of a collection that :func:`load_pieces` parses, in a fixed order.

    Paths are sorted; when there are more than ``max_pieces``, every k-th one is taken (evenly spread)
    so a small ``max_pieces`` still samples the whole collection rather than its alphabetical head.

    Raises:
        UnknownCollectionError: If ``collection`` does not exist.
    """
    check_collections([collection])
    paths = sorted(_score_files(_corpus_dir() / collection))
    if len(paths) <= max_pieces:
        return paths
    return [paths[i * len(paths) // max_pieces] for i in range(max_pieces)]


def _music21_version() -> str:
    return importlib.metadata.version("music21")


def cache_path(collections: Sequence[str], max_pieces: int, cache_dir: Path | str) -> Path:
    """The cache file of a selection; its name hashes the collections, ``max_pieces`` and music21 version."""
    key = json.dumps([_CACHE_FORMAT, list(collections), max_pieces, _music21_version()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / f"music21_pieces_{digest}.json"


def _cache_key(collections: Sequence[str], max_pieces: int) -> dict[str, Any]:
    return {
        "format": _CACHE_FORMAT,
        "collections": list(collections),
        "max_pieces": max_pieces,
        "music21": _music21_version(),
    }


def _piece_to_json(p: ScorePiece) -> dict[str, Any]:
    return {
        "name": p.name,
        "beats_per_bar": p.beats_per_bar,
        "key": p.key,
        "parts": [list(x) for x in p.parts],
    }


def _piece_from_json(d: Mapping[str, Any]) -> ScorePiece:
    parts = tuple(
        tuple((float(s), float(dur), int(pitch), int(vel)) for s, dur, pitch, vel in part)
        for part in d["parts"]
    )
    piece = ScorePiece(str(d["name"]), int(d["beats_per_bar"]), parts, str(d.get("key", "")))
    if len(parts) < 2 or any(not part for part in parts) or piece.beats_per_bar < 1:
        raise ValueError(f"cached piece {piece.name!r} is malformed")
    return piece


def read_cache(
    path: Path | str, collections: Sequence[str] | None = None, max_pieces: int | None = None
) -> list[ScorePiece]:
    """Read a pieces cache written by :func:`load_pieces`.

    Args:
        path: The cache file.
        collections: When given with ``max_pieces``, the selection the file must have been written for.
        max_pieces: See ``collections``.

    Returns:
        The pieces in the cached order.

    Raises:
        ValueError: If the file is not such a cache, is malformed, or was written for another selection
            or music21 version.
        OSError: If it cannot be read.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("key"), dict)
        or not isinstance(data.get("pieces"), list)
    ):
        raise ValueError(f"{path} is not a music21 pieces cache")
    key = data["key"]
    if key.get("format") != _CACHE_FORMAT or key.get("music21") != _music21_version():
        raise ValueError(f"{path} was written by another format or music21 version")
    if collections is not None and max_pieces is not None and key != _cache_key(collections, max_pieces):
        raise ValueError(f"{path} holds another selection of pieces: {key}")
    return [_piece_from_json(d) for d in data["pieces"]]


def _note_list(part: Any) -> tuple[Note, ...]:
    from music21 import chord, note

    notes: list[Note] = []
    for el in part.flatten().notes:
        dur = float(el.quarterLength)
        if dur <= 0:  # grace notes take no time in the score; they would only add clicks
            continue
        start = round(float(el.offset), 6)
        if isinstance(el, chord.Chord):
            pitches = [int(p.midi) for p in el.pitches]
        elif isinstance(el, note.Note):
            pitches = [int(el.pitch.midi)]
        else:  # unpitched percussion
            continue
        notes.extend((start, round(dur, 6), p, VELOCITY) for p in pitches if 0 <= p <= 127)
    return tuple(sorted(notes))


def _parse_piece(path: Path, name: str) -> ScorePiece | None:
    """One score as a :class:`ScorePiece`; None when it has fewer than two parts with notes."""
    from music21 import corpus, key, meter, stream

    # forceSource: no pickle in music21's scratch folder (the caller caches the note lists itself)
    parsed = corpus.parse(str(path), forceSource=True)
    if isinstance(parsed, stream.Opus):  # an ABC file may hold several tunes: the first one
        parsed = parsed.scores[0] if parsed.scores else None
    if not isinstance(parsed, stream.Score):
        return None
    # a tied chain becomes one note (a re-struck key would sound different); in place: a copy of the score
    # is most of the cost of stripping ties, and the parsed score is ours
    parsed.stripTies(inPlace=True)
    score = parsed
    parts = tuple(p for p in (_note_list(part) for part in score.parts) if p)
    if len(parts) < 2:
        return None
    ts = score.recurse().getElementsByClass(meter.TimeSignature).first()
    beats_per_bar = max(1, round(float(ts.barDuration.quarterLength))) if ts is not None else 4
    ks = score.recurse().getElementsByClass(key.KeySignature).first()
    key_name = "" if ks is None else str(ks.name if isinstance(ks, key.Key) else ks.asKey().name)
    return ScorePiece(name, beats_per_bar, parts, key_name)


def _try_parse(item: tuple[Path, str]) -> ScorePiece | None:
    path, name = item
    try:
        return _parse_piece(path, name)
    except Exception as exc:  # music21 raises many types on odd files: skip them
        log.debug("cannot parse %s: %s", name, exc)
        return None


def load_pieces(
    collections: Sequence[str], max_pieces: int, cache_dir: Path | str, workers: int = 1
) -> list[ScorePiece]:
    """Parse the selected corpus pieces once; later calls read the cache.

    The cache is one JSON file under ``cache_dir`` (:func:`cache_path`); a file that does not read back
    as this selection's cache (corrupt, foreign, another music21 version) is parsed again and replaced.
    Scores that fail to parse, or have fewer than two parts with notes, are skipped (the count is logged).

    Args:
        collections: Corpus collections, in the order their pieces are listed.
        max_pieces: Pieces per collection (see :func:`collection_paths`).
        cache_dir: Folder of the cache file (created).
        workers: Processes that parse (a long quartet movement takes a minute or more to parse; a
            chorale a fifth of a second). The result does not depend on it.

    Returns:
        The pieces, collection by collection, in :func:`collection_paths` order.

    Raises:
        UnknownCollectionError: If a collection does not exist.
        ValueError: If ``max_pieces < 1``.
    """
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    check_collections(collections)
    path = cache_path(collections, max_pieces, cache_dir)
    if path.exists():
        try:
            return read_cache(path, collections, max_pieces)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            log.warning("re-parsing the score corpus: unusable cache %s (%s)", path, exc)
    corpus_dir = _corpus_dir()
    items = [
        (p, p.relative_to(corpus_dir).as_posix())
        for c in collections
        for p in collection_paths(c, max_pieces)
    ]
    log.info("parsing %d scores of %s (once; cached in %s)", len(items), ", ".join(collections), path)
    if workers > 1 and len(items) > 1:
        # spawn: safe when the caller has threads; map keeps the order, so the pieces do not depend on it
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx) as pool:
            parsed = list(pool.map(_try_parse, items))
    else:
        parsed = [_try_parse(x) for x in items]
    pieces = [p for p in parsed if p is not None]
    skipped = len(parsed) - len(pieces)
    if skipped:
        log.warning(
            "score corpus: skipped %d of %d files (unparsable or < 2 parts)", skipped, skipped + len(pieces)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    payload = {
        "key": _cache_key(collections, max_pieces),
        "skipped": skipped,
        "pieces": [_piece_to_json(p) for p in pieces],
    }
    tmp.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the whole new one
    return pieces


def draw_excerpt(
    rng: np.random.Generator, piece: ScorePiece, seconds: float, tempo_range: tuple[float, float]
) -> tuple[ScoreExcerpt, list[list[Note]]]:
    """Cut ``seconds`` of ``piece`` at a drawn tempo.

    The tempo is drawn uniformly in ``tempo_range`` (beats per minute, 0.1 resolution; the beat is the
    piece's :attr:`~ScorePiece.pulse`, so the excerpt's quarter-note tempo is twice the drawn one in
    half-note music) and the start on a whole quarter so the window fits. A piece shorter than the
    window is looped (repeated from its first bar after its last, whole bars) rather than skipped, so
    every piece can serve every length. Notes sounding across a window edge are cut at it.

    Args:
        rng: The item's generator.
        piece: The piece.
        seconds: Length of the window.
        tempo_range: ``(lowest, highest)`` tempo.

    Returns:
        The excerpt (piece, start beat, tempo) and, per part of the piece, its notes in the window with
        beats counted from the window's start (a part may be empty).
    """
    tempo = float(np.round(rng.uniform(*tempo_range), 1)) * piece.pulse
    need = seconds * tempo / 60.0
    length = piece.beats
    if length < need:
        bar = piece.beats_per_bar
        period = math.ceil(length / bar - 1e-9) * bar
        reps = math.ceil(need / period) + 1
        parts = [
            [(s + r * period, d, p, v) for r in range(reps) for s, d, p, v in part] for part in piece.parts
        ]
        length = reps * period
    else:
        parts = [list(part) for part in piece.parts]
    start = float(rng.integers(0, max(0, math.floor(length - need)) + 1))
    end = start + need
    out: list[list[Note]] = []
    for part in parts:
        window: list[Note] = []
        for s, d, p, v in part:
            a, b = max(s, start), min(s + d, end)
            if b - a > 1e-6:
                window.append((round(a - start, 6), round(b - a, 6), p, v))
        out.append(window)
    key = piece.key
    return ScoreExcerpt(piece.name, start, tempo, piece.beats_per_bar, key), out


def _fit(notes: Sequence[Note], lo: int, hi: int) -> tuple[int, list[Note]] | None:
    """The smallest whole-octave shift that puts >= 95 % of ``notes`` in ``[lo, hi]``, and the kept notes."""
    for k in OCTAVE_SHIFTS:
        shifted = [(s, d, p + 12 * k, v) for s, d, p, v in notes]
        kept = [n for n in shifted if lo <= n[2] <= hi]
        if kept and len(kept) >= MIN_IN_RANGE * len(shifted):
            return k, kept
    return None


def assign_labels(
    rng: np.random.Generator,
    parts_notes: Sequence[Sequence[Note]],
    labels: Sequence[str],
    n: int,
    *,
    programs: Mapping[str, Sequence[int]] | None = None,
    ranges: Mapping[str, tuple[int, int]] | None = None,
) -> list[tuple[str, list[Note]]]:
    """Give up to ``n`` parts distinct labels whose playable range holds them.

    Parts are visited in a drawn order; each takes a label not yet used whose range holds the part after
    the smallest whole-octave transposition (-2..+2) that puts >= 95 % of its notes in range (the rest
    are dropped). Among fitting labels, those played at pitch are preferred (weights 1, 0.35, 0.1 for
    0, 1, 2 octaves). A part no free label fits is skipped. A label of a polyphonic family (piano,
    organ, guitars) takes, half of the time, a neighbouring part too (e.g. tenor and bass in one hand),
    when both fit the same transposition.

    Args:
        rng: The item's generator.
        parts_notes: Notes per part (empty parts are skipped).
        labels: Label codes to choose from.
        n: Most parts to label.
        programs: Label -> GM programs, to tell polyphonic labels (default :data:`DEFAULT_GM_PROGRAMS`).
        ranges: Label -> playable MIDI range (default :data:`DEFAULT_RANGES`, else the generic range).

    Returns:
        ``(label, notes)`` per labelled part (notes transposed and filtered), in the order drawn.
    """
    progs = programs if programs is not None else DEFAULT_GM_PROGRAMS
    rngs = ranges if ranges is not None else DEFAULT_RANGES

    def range_of(code: str) -> tuple[int, int]:
        return rngs.get(code, GENERIC_RANGE)

    def polyphonic(code: str) -> bool:
        return any(_family(p) in _POLYPHONIC_FAMILIES for p in progs.get(code, ()))

    free = list(labels)
    taken: set[int] = set()
    out: list[tuple[str, list[Note]]] = []
    for i in (int(x) for x in rng.permutation(len(parts_notes))):
        if len(out) >= n or not free:
            break
        if i in taken or not parts_notes[i]:
            continue
        fits = {c: f for c in free if (f := _fit(parts_notes[i], *range_of(c))) is not None}
        if not fits:
            continue
        codes = list(fits)
        weights = [_SHIFT_WEIGHT[abs(fits[c][0])] for c in codes]
        w = np.asarray(weights) / sum(weights)
        code = codes[int(rng.choice(len(codes), p=w))]
        notes = fits[code][1]
        taken.add(i)
        if polyphonic(code) and rng.random() < 0.5:
            for j in (i + 1, i - 1):
                if 0 <= j < len(parts_notes) and j not in taken and parts_notes[j]:
                    merged = _fit([*parts_notes[i], *parts_notes[j]], *range_of(code))
                    if merged is not None and merged[0] == fits[code][0]:
                        notes = merged[1]
                        taken.add(j)
                        break
        free.remove(code)
        out.append((code, sorted(notes)))
    return out
