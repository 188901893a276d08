"""Items: one training recording, training mix or test excerpt, rendered, checked and written.

An item draws everything from its own seed (see :func:`_run_job`), is re-drawn when a labelled stem
ends up inaudible, and writes its WAV files with ``.txt`` labels and ``.json`` sidecars (render
parameters and per-frame activity, :mod:`ml.data.activity`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

# a module import: ml.data.scores imports this package's tables, so names are looked up at call time
import ml.data.scores as scores
from ml.data.activity import activity_record, clip_labels
from ml.data.irmas import GENRES, MIX_DIR, TRAIN_DIR, format_train_name
from ml.data.synth.base import (
    MAX_ATTEMPTS,
    MAX_BELOW_LOUDEST_DB,
    MIN_ACTIVE_FRACTION,
    MIN_LEAD_MARGIN_DB,
    MIN_STEM_DBFS,
    MIX,
    STEMS_DIR,
    TEST,
    TEST_DIR,
    TRAIN,
    TRAIN_CLIP_S,
    SynthError,
    _Job,
    _Retry,
)
from ml.data.synth.compose import _bass, _comp, _draw_song, _melody, _pick, _Song, _window, _wpick
from ml.data.synth.mixing import (
    _active_fraction,
    _dbfs,
    _draw_room,
    _fade,
    _finish,
    _render_parts,
    _rms,
    _Room,
)
from ml.data.synth.parts import _accompaniment, _label_program, _lead_notes, _make_part, _Part, _part_info
from ml.data.synth.render import _process_renderer, _Renderer
from ml.data.synth.styles import _GENRE_BIAS, _POLYPHONIC_FAMILIES, _STYLES, _family, _range


def _write_wav(path: Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.ascontiguousarray(audio.T), sample_rate, subtype=subtype)


def _write_sidecar(wav: Path, data: Mapping[str, Any]) -> None:
    wav.with_suffix(".json").write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _save_stems(out_dir: Path, rel: str, buses: Mapping[str, np.ndarray], sample_rate: int) -> None:
    base = out_dir / STEMS_DIR / rel[: -len(".wav")]
    for name, audio in buses.items():
        # Float WAV keeps stems exact; libsndfile adds a PEAK chunk with a timestamp, so compare samples.
        _write_wav(base / f"{name}.wav", audio, sample_rate, subtype="FLOAT")


def _train_genre(rng: np.random.Generator, code: str) -> str:
    bias = _GENRE_BIAS.get(code, {})
    return str(_wpick(rng, GENRES, [bias.get(g, 1.0) for g in GENRES]))


def _composition(song: _Song | scores.ScoreExcerpt) -> dict[str, Any]:
    """Where the notes come from: a corpus piece (which, from where, how fast) or the song generator."""
    return song.composition() if isinstance(song, scores.ScoreExcerpt) else {"source": "generated"}


def _render_info(
    job: _Job,
    song: _Song | scores.ScoreExcerpt,
    room: _Room,
    finish: Mapping[str, Any],
    parts: Sequence[_Part],
) -> dict[str, Any]:
    """The sidecar's ``render`` object: everything drawn for the item, so a clip can be explained."""
    return {
        "seed": job.seed,
        "item": [job.kind, job.index],
        "sample_rate": job.sample_rate,
        "composition": _composition(song),
        "genre": song.genre,
        "tempo": song.tempo,
        "meter": song.beats_per_bar,
        "key": song.key_name(),
        "room": room.info,
        **finish,
        "parts": [_part_info(p) for p in parts],
    }


def _attempt_train(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    programs = dict(job.programs)
    sr = job.sample_rate
    clip_n = round(TRAIN_CLIP_S * sr)
    lead_in = float(rng.uniform(0.2, 1.0))
    n = round(lead_in * sr) + job.n_clips * clip_n
    genre = _train_genre(rng, job.label)
    song = _draw_song(rng, genre, n / sr)
    program = _label_program(rng, renderer, job.library, programs[job.label])
    velocity = int(rng.integers(70, 115))
    lead_notes = _lead_notes(rng, song, job.label, program, velocity)
    sustained = _family(program) not in _POLYPHONIC_FAMILIES
    lead = _make_part(
        rng,
        job,
        song,
        lead_notes,
        program,
        bus=job.label,
        role="lead",
        label=job.label,
        name=job.label,
        gain_db=0.0,
        pan=float(rng.uniform(-0.25, 0.25)),
        detune_cents=float(rng.uniform(-12, 12)),
        modulation=int(rng.integers(0, 50)) if sustained else 0,
    )
    labelled = {p for progs in programs.values() for p in progs}
    backing, drums = _accompaniment(
        rng, renderer, job, song, {_family(p) for p in programs[job.label]}, labelled, 0.35, "accompaniment"
    )
    buses = _render_parts(renderer, [lead, *backing], n)
    if job.label not in buses:
        raise _Retry("predominant part rendered silent")
    if "accompaniment" in buses:
        margin_db = float(rng.uniform(6, 12))  # predominant over accompaniment, whole recording
        acc = buses["accompaniment"]
        buses["accompaniment"] = acc * (
            _rms(buses[job.label]) * 10 ** (-margin_db / 20) / max(_rms(acc), 1e-12)
        )
    room = _draw_room(rng, genre, sr)
    buses, mix, finish = _finish(rng, buses, room, sr)

    files: list[dict[str, Any]] = []
    cuts: list[
        tuple[str, int, int, dict[str, Any]]
    ] = []  # (relative path, first sample, end sample, activity)
    start0 = round(lead_in * sr)
    group = ""
    for k in range(job.n_clips):
        s0, s1 = start0 + k * clip_n, start0 + (k + 1) * clip_n
        lead_db = _dbfs(buses[job.label][:, s0:s1])
        acc_db = _dbfs(buses["accompaniment"][:, s0:s1]) if "accompaniment" in buses else -240.0
        active = _active_fraction(buses[job.label][:, s0:s1], MIN_STEM_DBFS - 5)
        if lead_db < MIN_STEM_DBFS:
            raise _Retry(f"clip {k + 1}: predominant stem at {lead_db:.1f} dBFS")
        if lead_db - acc_db < MIN_LEAD_MARGIN_DB:
            raise _Retry(f"clip {k + 1}: predominant only {lead_db - acc_db:.1f} dB over accompaniment")
        if active < MIN_ACTIVE_FRACTION:
            raise _Retry(f"clip {k + 1}: predominant sounds in only {active:.0%} of the clip")
        name = format_train_name(job.label, genre, job.recording, k + 1, drums=drums, prefix=job.prefix)
        group = f"{job.label}/{name.rsplit('__', 1)[0]}"  # same rule as the IRMAS reader
        rel = f"{TRAIN_DIR}/{job.label}/{name}"
        activity = activity_record({job.label: buses[job.label][:, s0:s1]}, mix[:, s0:s1], sr)
        cuts.append((rel, s0, s1, activity))
        files.append(
            {
                "path": rel,
                "split": "train",
                "labels": [job.label],
                "start_s": round(s0 / sr, 6),
                "stem_dbfs": {bus: round(_dbfs(x[:, s0:s1]), 2) for bus, x in buses.items()},
                "lead_active": round(active, 3),
            }
        )
    out_dir = Path(job.out_dir)
    render = _render_info(job, song, room, finish, [lead, *backing])
    for (rel, s0, s1, activity), info in zip(cuts, files, strict=True):
        _write_wav(out_dir / rel, mix[:, s0:s1], sr)
        _write_sidecar(
            out_dir / rel,
            {
                "library": job.library,
                "labels": [job.label],
                "group": group,
                "start_s": info["start_s"],
                "render": render,
                "activity": activity,
            },
        )
        if job.save_stems:
            _save_stems(out_dir, rel, {b: x[:, s0:s1] for b, x in buses.items()}, sr)
    return {
        "kind": "train",
        "group": group,
        "label": job.label,
        "library": job.library,
        "genre": genre,
        "drums": drums,
        "tempo": song.tempo,
        "meter": song.beats_per_bar,
        "key": song.key_name(),
        "room": room.info,
        "parts": [_part_info(p) for p in (lead, *backing)],
        "files": files,
    }


def _test_roles(
    rng: np.random.Generator, codes: Sequence[str], programs: Mapping[str, int]
) -> dict[str, str]:
    roles: dict[str, str] = {}
    for i, code in enumerate(codes):
        if i == 0:
            roles[code] = "lead"
        elif _family(programs[code]) in _POLYPHONIC_FAMILIES and "comp" not in roles.values():
            roles[code] = "comp"
        elif _family(programs[code]) in _POLYPHONIC_FAMILIES:
            roles[code] = "arp"
        elif _range(code)[0] <= 40 and "bassline" not in roles.values() and rng.random() < 0.5:
            roles[code] = "bassline"
        else:
            roles[code] = str(_pick(rng, ("counter", "pad")))
    return roles


@dataclass
class _Multi:
    """A rendered multi-instrument recording (test excerpt or training mix) before it is written."""

    codes: list[str]
    parts: list[_Part]
    final: dict[str, np.ndarray]
    mix: np.ndarray
    levels: dict[str, float]
    dropped: dict[str, str]
    song: _Song | scores.ScoreExcerpt
    room: _Room
    finish: dict[str, Any]
    drums: bool


def _compose_multi(
    rng: np.random.Generator,
    renderer: _Renderer,
    job: _Job,
    seconds: float,
    counts: tuple[tuple[int, ...], tuple[float, ...]],
) -> _Multi:
    """Compose, render and mix 1-4 labelled instruments plus unlabelled backing (one song, one library).

    A share of the items (``job.score_share``, drawn from the item's generator) is an excerpt of a
    corpus piece instead (:func:`_compose_score`). Labelled stems that end up inaudible in the mix (see
    :data:`MIN_STEM_DBFS`, :data:`MAX_BELOW_LOUDEST_DB`) are removed from the mix, not only from the labels.
    """
    # no draw at share 0, so data sets rendered before corpus items existed come out unchanged
    if job.score_share > 0 and rng.random() < job.score_share:
        return _compose_score(rng, renderer, job, seconds, counts)
    programs = dict(job.programs)
    sr = job.sample_rate
    n = round(seconds * sr)
    n_inst = min(len(job.labels), int(_wpick(rng, *counts)))
    codes = [job.labels[i] for i in rng.choice(len(job.labels), size=n_inst, replace=False)]
    genre = str(_pick(rng, GENRES))
    song = _draw_song(rng, genre, seconds)
    chosen = {c: _label_program(rng, renderer, job.library, programs[c]) for c in codes}
    roles = _test_roles(rng, codes, chosen)
    parts: list[_Part] = []
    for code in codes:
        lo, hi = _range(code)
        prog, role = chosen[code], roles[code]
        velocity = int(rng.integers(65, 112))
        if role == "lead":
            notes = _lead_notes(rng, song, code, prog, velocity)
        elif role in ("comp", "arp"):
            window = _window(rng, max(lo, 45), min(hi, 80), (12, 16))
            comp_style = str(_pick(rng, _STYLES[genre].comp_styles)) if role == "comp" else "arp"
            notes = _comp(rng, song, window, comp_style, velocity - 8)
        elif role == "bassline":
            notes = _bass(rng, song, (lo, min(hi, lo + 21)), _STYLES[genre].bass_style, velocity)
        elif role == "pad":
            notes = _comp(rng, song, _window(rng, lo, hi, (8, 12)), "sustain", velocity - 10)
        else:  # counter-melody: sparser, in its own register
            notes = _melody(
                rng,
                song,
                _window(rng, lo, hi, (10, 16)),
                density="low",
                rest_prob=0.15,
                velocity=velocity - 6,
                legato=0.95,
            )
        sustained = _family(prog) not in _POLYPHONIC_FAMILIES
        parts.append(
            _make_part(
                rng,
                job,
                song,
                notes,
                prog,
                bus=code,
                role=role,
                label=code,
                name=code,
                gain_db=0.0 if role == "lead" else float(rng.uniform(-6, 0)),
                pan=float(rng.uniform(-0.6, 0.6)),
                detune_cents=float(rng.uniform(-12, 12)),
                modulation=int(rng.integers(0, 50)) if sustained else 0,
            )
        )
    # Audible unlabelled backing must not sound like any label: ban every labelled program family.
    labelled = {p for progs in programs.values() for p in progs}
    banned = {_family(p) for p in labelled}
    has_comp = any(r in ("comp", "arp") for r in roles.values())
    has_bass = "bassline" in roles.values()
    backing, drums = _accompaniment(
        rng,
        renderer,
        job,
        song,
        banned,
        labelled,
        1.0,
        "backing",
        want_chords=not has_comp and rng.random() < 0.5,
        want_bass=not has_bass and rng.random() < 0.8,
    )
    return _mix_multi(rng, renderer, job, song, codes, parts, backing, drums, n)


def _mix_multi(
    rng: np.random.Generator,
    renderer: _Renderer,
    job: _Job,
    song: _Song | scores.ScoreExcerpt,
    codes: list[str],
    parts: list[_Part],
    backing: list[_Part],
    drums: bool,
    n: int,
) -> _Multi:
    """Render the parts of a multi-instrument item and mix them.

    The backing goes under the labelled parts, then room and noise are added, and labelled stems that
    stay inaudible are dropped.
    """
    sr = job.sample_rate
    buses = _render_parts(renderer, [*parts, *backing], n)
    present = [c for c in codes if c in buses]
    if "backing" in buses and present:
        ref = float(np.mean([_rms(buses[c]) for c in present]))
        margin_db = float(rng.uniform(6, 14))
        buses["backing"] = buses["backing"] * (
            ref * 10 ** (-margin_db / 20) / max(_rms(buses["backing"]), 1e-12)
        )
    room = _draw_room(rng, song.genre, sr)
    dropped: dict[str, str] = {c: "rendered silent" for c in codes if c not in buses}
    noise_rng_state = rng.bit_generator.state  # the same noise draw for every re-mix below
    for _ in range(len(codes) + 1):
        if not any(c in buses for c in codes):  # every labelled part rendered silent or was dropped
            raise _Retry("no labelled instrument audible")
        rng.bit_generator.state = noise_rng_state
        final, mix, finish = _finish(rng, buses, room, sr)
        final, mix = {k: _fade(v, sr) for k, v in final.items()}, _fade(mix, sr)  # no clicks at the cuts
        levels = {c: _dbfs(final[c]) for c in codes if c in final}
        if not levels:
            raise _Retry("no labelled instrument audible")
        loudest = max(levels.values())
        bad = {
            c: f"{db:.1f} dBFS"
            for c, db in levels.items()
            if db < MIN_STEM_DBFS
            or db < loudest - MAX_BELOW_LOUDEST_DB
            or _active_fraction(final[c], MIN_STEM_DBFS - 5) < 0.3
        }
        if not bad:
            break
        for c, why in bad.items():  # remove the inaudible stem from the mix, not only from the labels
            dropped[c] = why
            del buses[c]
    else:
        raise _Retry("labelled stems stayed inaudible")
    return _Multi(codes, [*parts, *backing], final, mix, levels, dropped, song, room, finish, drums)


@lru_cache(maxsize=2)
def _score_pieces(cache: str) -> list[scores.ScorePiece]:
    """The parsed corpus pieces, read once per worker process (the parent wrote the cache)."""
    return scores.read_cache(cache)


def _compose_score(
    rng: np.random.Generator,
    renderer: _Renderer,
    job: _Job,
    seconds: float,
    counts: tuple[tuple[int, ...], tuple[float, ...]],
) -> _Multi:
    """Like :func:`_compose_multi`, but the labelled parts are the voices of a corpus excerpt.

    A drawn piece is cut at a drawn tempo (:func:`ml.data.scores.draw_excerpt`) and up to the drawn
    number of its parts get labels whose range holds them (:func:`ml.data.scores.assign_labels`). They
    are played, placed and mixed like generated parts; there is no unlabelled backing (the score's own
    voices accompany) and no drums (the collections are classical and early music).
    """
    pieces = _score_pieces(job.score_cache)
    piece = pieces[int(rng.integers(len(pieces)))]
    excerpt, voices = scores.draw_excerpt(rng, piece, seconds, job.score_tempo)
    n_inst = min(len(job.labels), int(_wpick(rng, *counts)))
    programs = dict(job.programs)
    assigned = scores.assign_labels(rng, voices, job.labels, n_inst, programs=programs)
    if not assigned:
        raise _Retry(f"{piece.name}: no label's range holds a part of the excerpt")
    parts: list[_Part] = []
    for i, (code, notes) in enumerate(assigned):
        prog = _label_program(rng, renderer, job.library, programs[code])
        # score velocities are flat: give each part its own dynamic and a little per-note variation
        velocity = int(rng.integers(65, 112))
        played = [(s, d, p, int(np.clip(velocity + rng.normal(0, 5), 20, 127))) for s, d, p, _ in notes]
        sustained = _family(prog) not in _POLYPHONIC_FAMILIES
        parts.append(
            _make_part(
                rng,
                job,
                excerpt,
                played,
                prog,
                bus=code,
                role="score_lead" if i == 0 else "score_part",
                label=code,
                name=code,
                gain_db=0.0 if i == 0 else float(rng.uniform(-6, 0)),
                pan=float(rng.uniform(-0.6, 0.6)),
                detune_cents=float(rng.uniform(-12, 12)),
                modulation=int(rng.integers(0, 50)) if sustained else 0,
            )
        )
    codes = [c for c, _ in assigned]
    return _mix_multi(rng, renderer, job, excerpt, codes, parts, [], False, round(seconds * job.sample_rate))


def _multi_meta(kind: str, group: str, job: _Job, m: _Multi, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": kind,
        "group": group,
        "library": job.library,
        "genre": m.song.genre,
        "drums": m.drums,
        "tempo": m.song.tempo,
        "meter": m.song.beats_per_bar,
        "key": m.song.key_name(),
        "room": m.room.info,
        "composition": _composition(m.song),
        "parts": [_part_info(p) for p in m.parts],
        "dropped": m.dropped,
        "files": files,
    }


def _attempt_test(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    sr = job.sample_rate
    seconds = float(np.round(rng.uniform(5.0, 20.0), 2))
    m = _compose_multi(rng, renderer, job, seconds, ((1, 2, 3, 4), (0.25, 0.35, 0.25, 0.15)))
    labels = [c for c in job.labels if c in m.levels]  # canonical label order
    rel = f"{TEST_DIR}/{job.name}.wav"
    out_dir = Path(job.out_dir)
    _write_wav(out_dir / rel, m.mix, sr)
    (out_dir / TEST_DIR / f"{job.name}.txt").write_text("".join(f"{c}\n" for c in labels), encoding="utf-8")
    _write_sidecar(
        out_dir / rel,
        {
            "library": job.library,
            "labels": labels,
            "group": job.name,
            "render": _render_info(job, m.song, m.room, m.finish, m.parts),
            "activity": activity_record({c: m.final[c] for c in labels}, m.mix, sr),
        },
    )
    if job.save_stems:
        _save_stems(out_dir, rel, m.final, sr)
    files = [
        {
            "path": rel,
            "split": "test",
            "labels": labels,
            "duration_s": seconds,
            "stem_dbfs": {bus: round(_dbfs(x), 2) for bus, x in m.final.items()},
        }
    ]
    return _multi_meta("test", job.name, job, m, files)


def _attempt_mix(rng: np.random.Generator, renderer: _Renderer, job: _Job) -> dict[str, Any]:
    """A multi-instrument training recording cut into 3-s clips labelled by per-frame activity."""
    sr = job.sample_rate
    clip_n = round(TRAIN_CLIP_S * sr)
    lead_in = float(rng.uniform(0.2, 1.0))
    start0 = round(lead_in * sr)
    seconds = (start0 + job.n_clips * clip_n) / sr
    m = _compose_multi(rng, renderer, job, seconds, ((2, 3, 4), (0.45, 0.35, 0.2)))
    present = [c for c in job.labels if c in m.levels]
    group = f"mix/{job.name}"
    cuts = []
    for k in range(job.n_clips):
        s0, s1 = start0 + k * clip_n, start0 + (k + 1) * clip_n
        activity = activity_record({c: m.final[c][:, s0:s1] for c in present}, m.mix[:, s0:s1], sr)
        labels = clip_labels(activity["labels"], job.labels)
        if not labels:
            raise _Retry(f"mix clip {k + 1}: no labelled instrument active in 30 % of the frames")
        cuts.append((f"{MIX_DIR}/{job.name}__{k + 1}.wav", s0, s1, activity, labels))
    out_dir = Path(job.out_dir)
    render = _render_info(job, m.song, m.room, m.finish, m.parts)
    files = []
    for rel, s0, s1, activity, labels in cuts:
        _write_wav(out_dir / rel, m.mix[:, s0:s1], sr)
        (out_dir / rel).with_suffix(".txt").write_text("".join(f"{c}\n" for c in labels), encoding="utf-8")
        _write_sidecar(
            out_dir / rel,
            {
                "library": job.library,
                "labels": labels,
                "group": group,
                "start_s": round(s0 / sr, 6),
                "render": render,
                "activity": activity,
            },
        )
        if job.save_stems:
            _save_stems(out_dir, rel, {b: x[:, s0:s1] for b, x in m.final.items()}, sr)
        files.append(
            {
                "path": rel,
                "split": "train",
                "labels": labels,
                "start_s": round(s0 / sr, 6),
                "stem_dbfs": {bus: round(_dbfs(x[:, s0:s1]), 2) for bus, x in m.final.items()},
            }
        )
    return _multi_meta("mix", group, job, m, files)


_ATTEMPTS = {TRAIN: _attempt_train, TEST: _attempt_test, MIX: _attempt_mix}


def _run_job(job: _Job, renderer: _Renderer) -> dict[str, Any]:
    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(job.kind, job.index)))
    reasons: list[str] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            meta = _ATTEMPTS[job.kind](rng, renderer, job)
        except _Retry as exc:
            reasons.append(str(exc))
            continue
        meta["attempts"] = attempt
        if reasons:
            meta["redraw_reasons"] = reasons
        return meta
    what = {
        TRAIN: f"training recording {job.recording} ({job.label})",
        TEST: f"test excerpt {job.name}",
        MIX: f"training mix {job.name}",
    }[job.kind]
    raise SynthError(f"{what} ({job.library}): no audible result after {MAX_ATTEMPTS} draws: {reasons}")


def _pool_job(job: _Job) -> dict[str, Any]:
    return _run_job(job, _process_renderer(job.sample_rate))
