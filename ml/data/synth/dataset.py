"""The data set: plan the items, render them (in worker processes), write the manifest.

:func:`synthesize` is the entry point; :func:`synthesize_config` maps the ``synth:`` config section
onto it.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

# a module import: ml.data.scores imports this package's tables, so names are looked up at call time
import ml.data.scores as score_corpus
from ml.data.activity import HOP_S
from ml.data.irmas import MIX_DIR, TRAIN_DIR
from ml.data.libraries import get_library, resolve_library
from ml.data.synth.base import (
    META_NAME,
    MIN_STEM_DBFS,
    MIX,
    STEMS_DIR,
    TEST,
    TEST_DIR,
    TRAIN,
    SynthError,
    _Job,
)
from ml.data.synth.items import _pool_job, _run_job
from ml.data.synth.render import _library_of, _Renderer
from ml.data.synth.styles import resolve_programs


@dataclass(frozen=True)
class SynthReport:
    """Result of :func:`synthesize`.

    Attributes:
        train_files: Training clips written.
        test_files: Test excerpts written (``.wav`` files; each has a ``.txt`` beside it).
        mix_files: Multi-instrument training clips written.
        seconds: Wall-clock time of the run.
        out_dir: The output directory.
    """

    train_files: int
    test_files: int
    seconds: float
    out_dir: Path = field(default_factory=Path)
    mix_files: int = 0


def _split_even(total: int, n: int, rotate: int = 0) -> list[int]:
    """``total`` in ``n`` near-equal parts; the remainder goes to parts ``rotate``, ``rotate + 1``, ..."""
    counts = [total // n] * n
    for j in range(total % n):
        counts[(rotate + j) % n] += 1
    return counts


def plan_train(
    labels: Sequence[str], train_clips: int, clips_per_recording: int, libraries: Sequence[str] = ("",)
) -> list[tuple[str, str, int]]:
    """Split ``train_clips`` into recordings: labels round-robin, clips of a label spread over libraries.

    Args:
        labels: Label codes; label ``i`` gets ``train_clips // L`` clips, plus one if ``i < train_clips % L``.
        train_clips: Total number of clips.
        clips_per_recording: Clips cut from one recording (the last one of a label and library may have
            fewer).
        libraries: Library names; a label's clips are split evenly over them (the remainder rotates with
            the label index, so every library also gets about the same total).

    Returns:
        ``(label, library, n_clips)`` per recording, interleaved over labels.

    Raises:
        ValueError: On a negative count, ``clips_per_recording < 1`` or no library.
    """
    if train_clips < 0 or clips_per_recording < 1:
        raise ValueError("train_clips must be >= 0 and clips_per_recording >= 1")
    if not libraries:
        raise ValueError("at least one library is needed")
    n_lab = len(labels)
    per_label = _split_even(train_clips, n_lab) if n_lab else []
    queues: list[list[tuple[str, str, int]]] = []
    for i, code in enumerate(labels):
        recs: list[tuple[str, str, int]] = []
        per_lib = _split_even(per_label[i], len(libraries), rotate=i)
        # interleave libraries inside a label, so a small run still touches every library
        while any(per_lib):
            for j, lib in enumerate(libraries):
                if per_lib[j]:
                    take = min(clips_per_recording, per_lib[j])
                    recs.append((code, lib, take))
                    per_lib[j] -= take
        queues.append(recs)
    plan: list[tuple[str, str, int]] = []
    while any(queues):
        for q in queues:
            if q:
                plan.append(q.pop(0))
    return plan


def plan_mixes(train_mixes: int, clips_per_recording: int, libraries: Sequence[str]) -> list[tuple[str, int]]:
    """Split ``train_mixes`` multi-instrument clips into recordings spread evenly over libraries.

    Args:
        train_mixes: Total number of mix clips.
        clips_per_recording: Clips cut from one recording.
        libraries: Library names.

    Returns:
        ``(library, n_clips)`` per recording, interleaved over libraries.

    Raises:
        ValueError: On a negative count, ``clips_per_recording < 1`` or no library.
    """
    if train_mixes < 0 or clips_per_recording < 1:
        raise ValueError("train_mixes must be >= 0 and clips_per_recording >= 1")
    if not libraries:
        raise ValueError("at least one library is needed")
    remaining = _split_even(train_mixes, len(libraries))
    plan: list[tuple[str, int]] = []
    while any(remaining):
        for j, lib in enumerate(libraries):
            if remaining[j]:
                take = min(clips_per_recording, remaining[j])
                plan.append((lib, take))
                remaining[j] -= take
    return plan


def synthesize(
    out_dir: Path | str,
    *,
    labels: Sequence[str],
    programs: Mapping[str, Sequence[int]],
    train_clips: int,
    test_excerpts: int,
    seed: int,
    libraries: Sequence[str] | None = None,
    soundfonts: Sequence[Path | str] | None = None,
    train_mixes: int = 0,
    sample_rate: int = 44100,
    clips_per_recording: int = 3,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    save_stems: bool = False,
    scores: score_corpus.ScoreOptions | None = None,
) -> SynthReport:
    """Render a synthetic data set in the IRMAS layout, from several sample libraries.

    Writes ``IRMAS-TrainingData/<code>/NNN__[code][dru|nod][genre]RRRR__k.wav`` (3.0-s clips, one
    predominant instrument), ``IRMAS-TrainingData-Mix/mix_<library>_RRRR__k.wav`` + ``.txt`` (3.0-s
    clips, 2-4 labelled instruments, labels = instruments active in >= 30 % of the 100-ms frames),
    ``IRMAS-TestingData/synth_<library>_NNNN.wav`` + ``.txt`` (5-20 s, 1-4 labelled instruments) and
    ``synth_meta.json`` (seed, libraries, counts, per-file parts and stem levels). Every ``.wav`` has a
    ``.json`` sidecar: ``library``, ``labels``, ``group``, ``render`` (everything drawn) and ``activity``
    (see :mod:`ml.data.activity`). Every item (recording or excerpt) comes from one library.

    Args:
        out_dir: Output directory (created).
        labels: Label codes to render.
        programs: Label code -> GM programs (0-based) that render it; must cover ``labels``
            (see :func:`resolve_programs`).
        train_clips: Total number of single-predominant training clips, spread round-robin over
            ``labels`` and, per label, evenly over the libraries.
        test_excerpts: Test excerpts *per library*.
        seed: Master seed; the output is a function of the seed and arguments, not of ``workers``.
        libraries: Registry names (:mod:`ml.data.libraries`).
        soundfonts: Deprecated spelling of ``libraries`` (names, or paths of registered libraries' files).
        train_mixes: Total number of multi-instrument training clips, spread evenly over the libraries.
        sample_rate: Output sample rate in Hz.
        clips_per_recording: Consecutive 3-s clips cut from one generated recording (one group).
        workers: Processes; default ``os.cpu_count()``; 1 renders in this process. Workers are started
            with ``spawn``, so a calling script needs the usual ``if __name__ == "__main__":`` guard.
        progress: Show a tqdm progress bar.
        overwrite: Replace an earlier synthetic data set in ``out_dir`` (only the folders this function
            writes are removed); otherwise an existing one raises ``FileExistsError``.
        save_stems: Also write each mixing bus per file under ``_stems/`` (float WAV), for checks.
        scores: Which test excerpts and training mixes are composed from music21 corpus pieces instead
            of generated songs (:mod:`ml.data.scores`); None: none. The pieces are parsed (or read from
            their cache) here, before any worker starts.

    Returns:
        Counts and wall-clock seconds.

    Raises:
        ValueError: On bad arguments (unknown label programs, library or score collection, counts,
            sample rate, shares).
        FileExistsError: If ``out_dir`` holds a data set and ``overwrite`` is False.
        FileNotFoundError: If a sample library is not installed (the message names its Debian package).
        SynthError: If rendering fails or an item stays inaudible after :data:`MAX_ATTEMPTS` draws.
    """
    t0 = time.perf_counter()
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    missing = [c for c in labels if not programs.get(c)]
    if missing:
        raise ValueError(f"no GM programs for label(s) {missing}; use resolve_programs() for defaults")
    progs = resolve_programs(labels, programs)
    if train_clips < 0 or test_excerpts < 0 or train_mixes < 0:
        raise ValueError("train_clips, train_mixes and test_excerpts must be >= 0")
    if sample_rate < 8000:
        raise ValueError(f"sample_rate must be >= 8000 Hz, got {sample_rate}")
    if libraries is not None and soundfonts is not None:
        raise ValueError("give libraries or soundfonts (deprecated), not both")
    names = [_library_of(x) for x in (libraries if libraries is not None else soundfonts or [])]
    if not names:
        raise ValueError("at least one sample library is needed (see ml.data.libraries.library_names())")
    if len(set(names)) != len(names):
        raise ValueError(f"libraries must be unique, got {names}")
    for name in names:
        resolve_library(name)
    if scores is not None:
        if not (0 <= scores.test_share <= 1 and 0 <= scores.mix_share <= 1):
            raise ValueError(f"score shares must be in [0, 1], got {scores.test_share}, {scores.mix_share}")
        if not 0 < scores.tempo[0] <= scores.tempo[1]:
            raise ValueError(f"score tempo must be 0 < lowest <= highest, got {list(scores.tempo)}")
        score_corpus.check_collections(scores.collections)  # before anything is written

    out = Path(out_dir)
    ours = [out / TRAIN_DIR, out / MIX_DIR, out / TEST_DIR, out / META_NAME, out / STEMS_DIR]
    existing = [p for p in ours if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds a data set ({existing[0].name}); pass overwrite=True")
    for p in existing:
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    base = _Job(
        kind=TRAIN,
        index=0,
        seed=seed,
        out_dir=str(out),
        sample_rate=sample_rate,
        library=names[0],
        programs=tuple(progs.items()),
        labels=tuple(labels),
        save_stems=save_stems,
    )
    mix_base, test_base = base, base
    if scores is not None and (scores.test_share * test_excerpts or scores.mix_share * train_mixes):
        parsers = workers if workers is not None else (os.cpu_count() or 1)
        if not score_corpus.load_pieces(scores.collections, scores.max_pieces, scores.cache_dir, parsers):
            raise SynthError(f"no usable piece in the score collections {list(scores.collections)}")
        cache = str(score_corpus.cache_path(scores.collections, scores.max_pieces, scores.cache_dir))
        mix_base = replace(base, score_share=scores.mix_share, score_cache=cache, score_tempo=scores.tempo)
        test_base = replace(mix_base, score_share=scores.test_share)
    jobs: list[_Job] = []
    per_label: dict[str, int] = {}
    for i, (code, lib, n_clips) in enumerate(plan_train(labels, train_clips, clips_per_recording, names)):
        per_label[code] = per_label.get(code, 0) + 1
        jobs.append(
            replace(
                base,
                index=i,
                label=code,
                library=lib,
                n_clips=n_clips,
                prefix=per_label[code],
                recording=i + 1,
            )
        )
    for i, (lib, n_clips) in enumerate(plan_mixes(train_mixes, clips_per_recording, names)):
        jobs.append(
            replace(mix_base, kind=MIX, index=i, library=lib, n_clips=n_clips, name=f"mix_{lib}_{i + 1:04d}")
        )
    for li, lib in enumerate(names):
        jobs += [
            replace(
                test_base,
                kind=TEST,
                index=li * test_excerpts + j,
                library=lib,
                name=f"synth_{lib}_{j + 1:04d}",
            )
            for j in range(test_excerpts)
        ]

    n_workers = min(workers if workers is not None else (os.cpu_count() or 1), max(len(jobs), 1))
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    results: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="synth", unit="item", disable=not progress) as bar:
        if n_workers == 1:
            renderer = _Renderer(sample_rate)
            try:
                for job in jobs:
                    results.append(_run_job(job, renderer))
                    bar.update()
            finally:
                renderer.close()
        else:
            # spawn: safe even when the caller has threads (torch, Ray); workers import only numpy/fluidsynth.
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=n_workers, mp_context=ctx) as pool:
                futures = [pool.submit(_pool_job, job) for job in jobs]
                try:
                    for fut in cf.as_completed(futures):
                        results.append(fut.result())
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    files = sorted((dict(f, **_item_fields(r)) for r in results for f in r["files"]), key=lambda f: f["path"])
    train_files = [f for f in files if f["split"] == "train" and f["kind"] == "train"]
    mix_files = [f for f in files if f["kind"] == "mix"]
    test_files = [f for f in files if f["split"] == "test"]
    meta = {
        "generator": "ml.data.synth",
        "seed": seed,
        "sample_rate": sample_rate,
        "labels": labels,
        "programs": {c: list(p) for c, p in progs.items()},
        "libraries": names,
        "soundfonts": [next((p.name for p in get_library(n).paths()), n) for n in names],
        "clips_per_recording": clips_per_recording,
        "min_stem_dbfs": MIN_STEM_DBFS,
        "activity_hop_s": HOP_S,
        # which items are real compositions (null: none); the cache folder says where, not what: left out
        "scores": None
        if scores is None
        else {k: v for k, v in asdict(scores).items() if k != "cache_dir"},
        "counts": {
            "train_files": len(train_files),
            "mix_files": len(mix_files),
            "test_files": len(test_files),
            "train_recordings": sum(1 for j in jobs if j.kind == TRAIN),
            "mix_recordings": sum(1 for j in jobs if j.kind == MIX),
            "train_per_label": {c: sum(1 for f in train_files if f["labels"] == [c]) for c in labels},
            "mix_per_label": {c: sum(1 for f in mix_files if c in f["labels"]) for c in labels},
            "test_per_label": {c: sum(1 for f in test_files if c in f["labels"]) for c in labels},
            "per_library": {
                n: {
                    "train_files": sum(1 for f in train_files if f["library"] == n),
                    "mix_files": sum(1 for f in mix_files if f["library"] == n),
                    "test_files": sum(1 for f in test_files if f["library"] == n),
                }
                for n in names
            },
        },
        "files": files,
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return SynthReport(len(train_files), len(test_files), time.perf_counter() - t0, out, len(mix_files))


def _item_fields(item: Mapping[str, Any]) -> dict[str, Any]:
    keys = (
        "kind",
        "group",
        "library",
        "genre",
        "drums",
        "tempo",
        "meter",
        "key",
        "room",
        "composition",
        "parts",
        "attempts",
        "dropped",
    )
    return {k: item[k] for k in keys if k in item}


def synthesize_config(cfg: Any, out_dir: Path | str, **overrides: Any) -> SynthReport:
    """:func:`synthesize` with every argument from ``cfg.synth`` (a :class:`~ml.config.Config`).

    The one mapping from the ``synth:`` section to a rendering, shared by ``mpic synth``, the benchmarks and
    the test fixtures; keyword ``overrides`` (e.g. ``workers``, ``progress``, ``test_excerpts``) win.
    """
    s = cfg.synth
    args: dict[str, Any] = {
        "labels": cfg.label_codes,
        "programs": resolve_programs(cfg.label_codes, s.programs),
        "train_clips": s.train_clips,
        "test_excerpts": s.test_excerpts,
        "seed": s.seed,
        "libraries": s.libraries,
        "train_mixes": s.train_mixes,
        "sample_rate": s.sample_rate,
        "clips_per_recording": s.clips_per_recording,
        "workers": s.workers,
        "scores": score_corpus.ScoreOptions(
            test_share=s.scores.test_share,
            mix_share=s.scores.mix_share,
            collections=tuple(s.scores.collections),
            max_pieces=s.scores.max_pieces,
            tempo=s.scores.tempo,
            cache_dir=Path(cfg.data.cache_dir)
            / "scores",  # shared by profiles: the file name keys the selection
        ),
    }
    return synthesize(out_dir, **(args | overrides))
