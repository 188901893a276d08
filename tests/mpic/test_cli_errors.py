"""CLI mistakes end in one clear line and exit 2 (never a traceback); every option has help; --version."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from mpic import cli
from mpic.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
EQUAL = ["--version", "equal", "--untrained"]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh world: no data set, nothing trained, nothing registered; a song, a data set folder."""
    tmp = tmp_path_factory.mktemp("mistakes")
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    sf.write(tmp / "song.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
    (tmp / "has-data" / "IRMAS-TrainingData").mkdir(parents=True)
    (tmp / "no-excerpts").mkdir()
    (tmp / "no-excerpts" / "README.txt").write_text("nothing here")
    (tmp / "unlabelled").mkdir()
    sf.write(tmp / "unlabelled" / "a.wav", np.zeros(sr, np.float32), sr)
    (tmp / "empty").mkdir()
    (tmp / "foreign.csv").write_text("title,artist\nx,y\n")
    return tmp


def overrides(base: Path) -> list[str]:
    sets = [
        f"data.root={base / 'no-data'}",
        f"data.cache_dir={base / 'cache'}",
        f"mlflow.backend_store_uri=sqlite:///{base / 'mlflow.db'}",
        f"mlflow.artifacts_destination={base / 'artifacts'}",
    ]
    return [x for s in sets for x in ("--set", s)]


def run(args: list[str], base: Path, capsys: Any, profile: str = "smoke") -> tuple[int, str, str]:
    argv = [*args, "--config", str(ROOT / "config.yml"), "--profile", profile, *overrides(base)]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own mistakes
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# (command line with {tmp} for the test folder, words the one line must contain)
MISTAKES: list[tuple[list[str], list[str]]] = [
    (["train"], ["mpic train: no data set at", "run `mpic synth --profile smoke` first", "data.root"]),
    (["train", "--members", "nope"], ["mpic train: unknown members ['nope']; valid:", "res_genre"]),
    (["predict", "{tmp}/song.wav", "--weights", "{bad", *EQUAL], ["--weights is not valid JSON", "e.g."]),
    (
        ["predict", "{tmp}/song.wav", "--weights", '{"nope": 1}', *EQUAL],
        ["unknown members ['nope']; valid:", "res_bpm", "res_genre"],
    ),
    (["predict", "{tmp}/song.wav", "--model", "nope", *EQUAL], ["--model: unknown members ['nope']"]),
    (["evaluate", "--data", "/no/such/dir", *EQUAL], ["mpic evaluate: --data /no/such/dir: no such folder"]),
    (
        ["evaluate", "--data", "{tmp}/no-excerpts", *EQUAL],
        ["no testing excerpts under", "NAME.wav + NAME.txt"],
    ),
    (["evaluate", "--data", "{tmp}/unlabelled", *EQUAL], ["have no NAME.txt label file", "a.wav"]),
    (
        ["fuse"],
        ["mpic fuse: members", "no out-of-fold predictions", "run `mpic train --profile smoke` first"],
    ),
    (["serve", "--port", "99999"], ["mpic serve: argument --port: 99999 is not a port number (1-65535)"]),
    (["serve", "--detach"], ["mpic serve: --detach needs a running Ray cluster", "ray.address=auto"]),
    (["synth", "--out", "{tmp}/has-data"], ["already holds a data set", "--overwrite", "--out ANOTHER_DIR"]),
    (
        ["synth", "--out", "{tmp}/new-data", "--set", "synth.libraries=[timgm6mb, no_such_bank]"],
        ["mpic synth: unknown sample library 'no_such_bank'; valid names: timgm6mb, fluidr3_gm"],
    ),
    (
        ["synth", "--out", "{tmp}/new-data", "--set", "synth.scores.collections=[bach, nope]"],
        ["mpic synth: unknown score collection 'nope'; valid names: ", "bach", "palestrina"],
    ),
    (
        ["predict", "{tmp}/song.wav", "--set", "train.nope=1"],
        ["mpic predict: invalid configuration: train.nope: unknown key; valid keys: ['amp'"],
    ),
    (  # checked when the config is read, not minutes later when the job builds that member
        ["evaluate", "--protocol", "lolo", "--out", "{tmp}/lolo-x", "--set", "models.musicnn.freeze=middle"],
        ["mpic evaluate: invalid configuration: models.musicnn.freeze", "'front_end'"],
    ),
    (
        ["train", "--set", "members.res_genre.augment=[{name: gian, p: 0.5}]"],
        ["mpic train: members.res_genre.augment.0.name: unknown augmentation 'gian'; valid:", "genre_mix"],
    ),
    (["predict", "{tmp}/gone.wav", *EQUAL], ["mpic predict: no such file or folder:", "gone.wav"]),
    (["predict", "{tmp}/empty", *EQUAL], ["mpic predict: no audio files under", ".flac"]),
    (["predict", "{tmp}/song.wav"], ["mpic-smoke-ensemble-default", "run `mpic fuse --profile smoke` first"]),
    (["predict", "{tmp}/song.wav", "--output", "{tmp}/r.xlsx", *EQUAL], ["unknown format", "*.parquet"]),
    (
        ["predict", "{tmp}/song.wav", "--output", "{tmp}/foreign.csv", *EQUAL],
        ["is not an mpic results file", "left untouched", "another --output"],
    ),
    (["predict", "{tmp}/song.wav", "--output", "{tmp}/r.csv", "--format", "json"], ["contradicts --output"]),
    (
        ["evaluate", "--protocol", "lolo", "--data", "{tmp}/unlabelled", "--out", "{tmp}/lolo"],
        ["mpic evaluate:", "no IRMAS data found", "IRMAS-TrainingData"],
    ),
]


@pytest.mark.parametrize(("args", "words"), MISTAKES, ids=[" ".join(a[:2]) for a, _ in MISTAKES])
def test_mistake_gives_one_clear_line(args: list[str], words: list[str], base: Path, capsys: Any) -> None:
    code, out, err = run([a.replace("{tmp}", str(base)) for a in args], base, capsys)
    assert code == 2, err
    assert "Traceback" not in err and out == ""
    # MLflow may log (INFO) that it created its database on first use; everything else is our one line
    lines = [line for line in err.strip().splitlines() if " INFO mlflow." not in line]
    assert len(lines) == 1, err
    for w in words:
        assert w in lines[0], lines[0]
    assert not (base / "new-data").exists()  # a refused command writes nothing


def test_unknown_profile(base: Path, capsys: Any) -> None:
    code, _, err = run(["predict", str(base / "song.wav")], base, capsys, profile="nope")
    assert code == 2 and err.strip() == (
        "mpic predict: profile: unknown profile 'nope'; valid: ['demo', 'full', 'smoke']"
    )


def test_foreign_output_is_left_untouched(base: Path, capsys: Any) -> None:
    before = (base / "foreign.csv").read_bytes()
    run(["predict", str(base / "song.wav"), "--output", str(base / "foreign.csv"), *EQUAL], base, capsys)
    assert (base / "foreign.csv").read_bytes() == before


def test_bugs_keep_their_traceback_and_debug_shows_known_ones(
    base: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("a bug")

    parser = build_parser
    monkeypatch.setattr(
        cli, "build_parser", lambda: _with_command(parser(), "fuse", broken)
    )  # `mpic fuse` now hits a bug
    with pytest.raises(RuntimeError, match="a bug"):
        run(["fuse"], base, capsys)
    monkeypatch.undo()
    code, _, err = run(["--debug", "train"], base, capsys)
    assert code == 2 and "Traceback" in err and err.strip().endswith("--set data.root=DIR")


def _with_command(parser: argparse.ArgumentParser, name: str, fn: Any) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices[name].set_defaults(func=fn)
    return parser


def test_subprocess_mistake_has_no_traceback(base: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mpic", "predict", str(base / "gone.wav"), "--profile", "smoke"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"mpic predict: no such file or folder: {base / 'gone.wav'}"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = {"mpic": parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update({f"mpic {n}": p for n, p in action.choices.items()})
    return found


def test_every_option_has_help() -> None:
    missing = [
        f"{name} {action.option_strings or action.dest}"
        for name, p in _subparsers(build_parser()).items()
        for action in p._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []
    assert len(_subparsers(build_parser())) >= 9  # the walk really saw the subcommands


def test_version(capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"mpic {importlib.metadata.version('mpic')}"


def test_evaluate_plain_folder_of_wav_and_txt(base: Path, capsys: Any) -> None:
    """`evaluate --data` takes NAME.wav + NAME.txt pairs (labels one per line) without an IRMAS layout."""
    plain = base / "plain"
    plain.mkdir()
    sr = 16000
    t = np.arange(2 * sr) / sr
    for i, labels in enumerate([["cel"], ["gac", "voi"], ["pia"], ["vio", "cel"]]):
        sf.write(
            plain / f"excerpt{i}.wav", (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), sr
        )
        (plain / f"excerpt{i}.txt").write_text("".join(f"{c}\t\n" for c in labels))
    out = base / "report.json"
    code, stdout, err = run(
        ["evaluate", "--data", str(plain), *EQUAL, "--format", "json", "--output", str(out)], base, capsys
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report == json.loads(out.read_text())
    assert report["n_excerpts"] == 4 and set(report["members"]) == {"res_genre", "res_bpm"}
    assert report["ensemble"]["cardinality_true"] == pytest.approx(1.5)  # the .txt labels were read
