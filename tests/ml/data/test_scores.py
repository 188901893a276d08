"""Corpus scores: parsing and caching, excerpts, label assignment, and items rendered from them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.config import ConfigError, load_config
from ml.data import scores
from ml.data.scores import (
    ScoreOptions,
    ScorePiece,
    UnknownCollectionError,
    assign_labels,
    cache_path,
    collection_paths,
    draw_excerpt,
    load_pieces,
)
from ml.data.synth import DEFAULT_GM_PROGRAMS, DEFAULT_RANGES, synthesize

ROOT = Path(__file__).resolve().parents[3]
MAX_PIECES = 3  # three four-part Bach chorales: about a second to parse
LABELS = ["cel", "cla", "flu", "pia", "vio", "voi"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scores_cache")


@pytest.fixture(scope="module")
def pieces(cache_dir: Path) -> list[ScorePiece]:
    return load_pieces(["bach"], MAX_PIECES, cache_dir)


def test_pieces_parse_into_parts(pieces: list[ScorePiece]) -> None:
    names = [p.name for p in pieces]
    expected = [f"bach/{p.name}" for p in collection_paths("bach", MAX_PIECES)]
    assert names == expected  # every chosen chorale parses; order is the sorted, spread selection
    for piece in pieces:
        assert len(piece.parts) >= 4 and piece.beats_per_bar == 4 and piece.beats > 16
        for part in piece.parts:
            assert part and list(part) == sorted(part)
            for s, d, pitch, vel in part:
                assert s >= 0 and d > 0 and 20 <= pitch <= 100 and vel == scores.VELOCITY


def test_selection_spreads_over_the_collection() -> None:
    every = collection_paths("bach", 10_000)
    chosen = collection_paths("bach", MAX_PIECES)
    assert chosen == [every[i * len(every) // MAX_PIECES] for i in range(MAX_PIECES)]
    assert chosen[-1] != every[MAX_PIECES - 1]  # not just the alphabetical head
    assert all(p.suffix != ".rntxt" for p in every)  # analyses are not scores


def test_second_load_reads_the_cache(
    pieces: list[ScorePiece], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = cache_path(["bach"], MAX_PIECES, cache_dir)
    assert path.is_file() and list(cache_dir.iterdir()) == [path]

    def no_parse(*args: Any) -> None:
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(scores, "_parse_piece", no_parse)
    assert load_pieces(["bach"], MAX_PIECES, cache_dir) == pieces


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"key": {"format": 1}, "pieces": []}), json.dumps([1, 2]), ""],
    ids=["corrupt", "foreign-key", "not-a-cache", "empty"],
)
def test_unusable_cache_is_parsed_again(
    pieces: list[ScorePiece], tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = cache_path(["bach"], MAX_PIECES, tmp_path)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="ml.data.scores"):
        again = load_pieces(["bach"], MAX_PIECES, tmp_path)
    assert again == pieces and "unusable cache" in caplog.text
    assert scores.read_cache(path, ["bach"], MAX_PIECES) == pieces  # rewritten


def test_parallel_parse_gives_the_same_pieces(pieces: list[ScorePiece], tmp_path: Path) -> None:
    assert load_pieces(["bach"], MAX_PIECES, tmp_path, workers=2) == pieces


def test_cache_of_another_selection_is_not_trusted(pieces: list[ScorePiece], cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="another selection"):
        scores.read_cache(cache_path(["bach"], MAX_PIECES, cache_dir), ["bach"], MAX_PIECES + 1)
    assert cache_path(["bach"], 2, cache_dir) != cache_path(["bach"], MAX_PIECES, cache_dir)


def test_unknown_collection_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownCollectionError, match=r"unknown score collection 'nope'; valid names: .*bach"):
        load_pieces(["bach", "nope"], 2, tmp_path)
    assert not any(tmp_path.iterdir())
    assert issubclass(UnknownCollectionError, ValueError)


def test_excerpt_is_deterministic_and_inside_the_window(pieces: list[ScorePiece]) -> None:
    for seed in range(20):
        piece = pieces[seed % len(pieces)]
        seconds = 3.0 + seed
        a = draw_excerpt(np.random.default_rng(seed), piece, seconds, (60.0, 120.0))
        b = draw_excerpt(np.random.default_rng(seed), piece, seconds, (60.0, 120.0))
        assert a == b
        excerpt, parts = a
        assert 60 <= excerpt.tempo <= 120 and excerpt.piece == piece.name
        assert len(parts) == len(piece.parts)
        need = seconds * excerpt.tempo / 60
        assert excerpt.start_beat == int(excerpt.start_beat)
        assert any(parts)
        for part in parts:
            for s, d, _, _ in part:
                assert s >= 0 and d > 0 and s + d <= need + 1e-6
        assert excerpt.seconds(need) == pytest.approx(seconds)
    assert draw_excerpt(np.random.default_rng(1), pieces[0], 8.0, (60, 120)) != draw_excerpt(
        np.random.default_rng(2), pieces[0], 8.0, (60, 120)
    )


def test_short_piece_loops() -> None:
    alternating = tuple((float(b), 1.0, 48 + 2 * (b % 2), 80) for b in range(4))
    piece = ScorePiece("x/y", 4, (((0.0, 4.0, 60, 80),), alternating))
    excerpt, parts = draw_excerpt(np.random.default_rng(0), piece, 10.0, (60.0, 60.0))  # 10 beats > 4
    assert 0 <= excerpt.start_beat <= 16 - 10  # within four repeats of the one-bar piece
    assert sum(d for _, d, _, _ in parts[0]) == pytest.approx(10.0)  # the one-bar note every bar
    assert [p for _, _, p, _ in parts[1]][:3] in ([48, 50, 48], [50, 48, 50])


def test_half_note_music_is_counted_in_half_notes(pieces: list[ScorePiece]) -> None:
    assert {p.pulse for p in pieces} == {1.0}  # chorales: quarter-note beat
    slow = ScorePiece("x/y", 4, tuple(tuple((2.0 * i, 2.0, 60 + k, 80) for i in range(8)) for k in (0, 7)))
    assert slow.pulse == 2.0
    excerpt, _ = draw_excerpt(np.random.default_rng(0), slow, 4.0, (60.0, 120.0))
    assert 120 <= excerpt.tempo <= 240  # quarters per minute; the half-note beat is in the range


def test_assigned_labels_are_distinct_and_in_range(pieces: list[ScorePiece]) -> None:
    counts: dict[int, int] = {}
    for seed in range(30):
        rng = np.random.default_rng(seed)
        _, parts = draw_excerpt(rng, pieces[seed % len(pieces)], 8.0, (60.0, 120.0))
        n = 1 + seed % 4
        assigned = assign_labels(rng, parts, LABELS, n)
        codes = [c for c, _ in assigned]
        assert len(set(codes)) == len(codes) <= n and set(codes) <= set(LABELS)
        counts[len(codes)] = counts.get(len(codes), 0) + 1
        for code, notes in assigned:
            lo, hi = DEFAULT_RANGES[code]
            assert notes and all(lo <= p <= hi for _, _, p, _ in notes)
    assert counts.get(4, 0) > 0  # four-part chorales can fill four labels


def test_assignment_transposes_by_octaves_and_skips_unplayable_parts() -> None:
    low = [(float(i), 1.0, 30 + i % 3, 80) for i in range(20)]  # MIDI 30-32
    assert assign_labels(np.random.default_rng(0), [low], ["flu"], 1) == []  # 3 octaves below the flute
    up = [(s, d, p + 12, v) for s, d, p, v in low]
    assert assign_labels(np.random.default_rng(0), [low], ["cel"], 1) == [("cel", up)]
    # fits the cello at pitch and an octave up: the smallest shift wins
    assert assign_labels(np.random.default_rng(0), [up], ["cel"], 1) == [("cel", up)]
    # 1 of 20 notes out of range may be dropped (95 %), 2 may not
    one_off = [*up[:19], (19.0, 1.0, 100, 80)]
    assert assign_labels(np.random.default_rng(0), [one_off], ["cel"], 1) == [("cel", up[:19])]
    two_off = [*up[:18], (18.0, 1.0, 100, 80), (19.0, 1.0, 101, 80)]  # out at every shift
    assert assign_labels(np.random.default_rng(0), [two_off], ["cel"], 1) == []


def test_polyphonic_label_may_take_two_parts() -> None:
    tenor = [(float(i), 1.0, 55 + i % 5, 80) for i in range(16)]
    bass = [(float(i), 1.0, 43 + i % 5, 80) for i in range(16)]
    sizes = set()
    for seed in range(20):
        out = assign_labels(np.random.default_rng(seed), [tenor, bass], ["pia", "flu"], 2)
        for code, notes in out:
            if code == "pia":
                sizes.add(len(notes))
    assert sizes == {16, 32}  # one part, or tenor and bass together


def test_config_section_is_strict() -> None:
    cfg = load_config(ROOT / "config.yml")
    assert cfg.synth.scores.test_share == 0.0 and cfg.synth.scores.mix_share == 0.0
    assert "bach" in cfg.synth.scores.collections and cfg.synth.scores.tempo == (60.0, 120.0)
    with pytest.raises(ConfigError, match=r"synth\.scores\.nope"):
        load_config(ROOT / "config.yml", overrides=["synth.scores.nope=1"])
    with pytest.raises(ConfigError, match=r"synth\.scores\.mix_share"):
        load_config(ROOT / "config.yml", overrides=["synth.scores.mix_share=1.5"])
    with pytest.raises(ConfigError, match=r"synth\.scores\.tempo"):
        load_config(ROOT / "config.yml", overrides=["synth.scores.tempo=[120, 60]"])


def _render(out: Path, cache_dir: Path, workers: int) -> dict[str, Any]:
    synthesize(
        out,
        labels=LABELS,
        programs=DEFAULT_GM_PROGRAMS,
        train_clips=0,
        train_mixes=2,
        test_excerpts=3,
        seed=5,
        libraries=["timgm6mb"],
        sample_rate=16000,
        clips_per_recording=2,
        workers=workers,
        progress=False,
        scores=ScoreOptions(
            test_share=1.0, mix_share=1.0, collections=("bach",), max_pieces=MAX_PIECES, cache_dir=cache_dir
        ),
    )
    meta: dict[str, Any] = json.loads((out / "synth_meta.json").read_text())
    return meta


def test_items_composed_from_scores(tmp_path: Path, cache_dir: Path, pieces: list[ScorePiece]) -> None:
    meta = _render(tmp_path / "a", cache_dir, workers=2)
    names = {p.name for p in pieces}
    files = meta["files"]
    assert meta["counts"]["test_files"] == 3 and meta["counts"]["mix_files"] == 2
    assert meta["scores"] == {
        "test_share": 1.0,
        "mix_share": 1.0,
        "collections": ["bach"],
        "max_pieces": MAX_PIECES,
        "tempo": [60.0, 120.0],
    }
    for f in files:
        comp = f["composition"]
        assert comp["source"] == "music21" and comp["piece"] in names and 60 <= comp["tempo"] <= 120
        assigned = {p["label"] for p in f["parts"]}
        assert all(p["label"] is not None and not p["is_drum"] for p in f["parts"])  # no backing, no drums
        wav = tmp_path / "a" / f["path"]
        labels = wav.with_suffix(".txt").read_text().split()
        assert labels and set(labels) <= assigned and labels == f["labels"]
        sidecar = json.loads(wav.with_suffix(".json").read_text())
        assert sidecar["render"]["composition"] == comp and sidecar["render"]["genre"] == "cla"
    # the same seed renders the same bytes, whatever the worker count
    again = _render(tmp_path / "b", cache_dir, workers=1)
    assert [f["composition"] for f in again["files"]] == [f["composition"] for f in files]
    for f in files:
        assert (tmp_path / "a" / f["path"]).read_bytes() == (tmp_path / "b" / f["path"]).read_bytes()


def test_share_zero_keeps_generated_songs(tmp_path: Path, cache_dir: Path) -> None:
    synthesize(
        tmp_path,
        labels=LABELS,
        programs=DEFAULT_GM_PROGRAMS,
        train_clips=0,
        test_excerpts=1,
        seed=5,
        libraries=["timgm6mb"],
        sample_rate=16000,
        workers=1,
        progress=False,
        scores=ScoreOptions(collections=("bach",), max_pieces=MAX_PIECES, cache_dir=tmp_path / "never"),
    )
    (f,) = json.loads((tmp_path / "synth_meta.json").read_text())["files"]
    assert f["composition"] == {"source": "generated"}
    assert not (tmp_path / "never").exists()  # nothing parsed when no item can use a piece


def test_item_whose_labelled_parts_all_render_silent_is_drawn_again() -> None:
    """No audible labelled part (e.g. an excerpt of rests) → a redraw, never a crash in the mixer."""
    from types import SimpleNamespace

    import pretty_midi

    from ml.data.synth.base import _Retry
    from ml.data.synth.items import _mix_multi
    from ml.data.synth.parts import _Part

    silent = _Part("vio", "score_lead", "vio", pretty_midi.Instrument(program=40), "timgm6mb", 0.0, 0.0)
    renderer = SimpleNamespace(sample_rate=8000)  # a part without notes is skipped before rendering
    job, song = SimpleNamespace(sample_rate=8000), SimpleNamespace(genre="cla")
    with pytest.raises(_Retry, match="no labelled instrument audible"):
        _mix_multi(np.random.default_rng(0), renderer, job, song, ["vio"], [silent], [], False, 8000)  # type: ignore[arg-type]
