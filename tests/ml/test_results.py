"""CSV/JSON formatting of results and file-name sanitising (ml.results)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from ml.inference import FileResult, Segment
from ml.results import (
    RESULTS_BASENAME,
    payload_to_json,
    results_payload,
    results_to_csv,
    sanitize_filename,
    thresholds_dict,
)

LABELS = ["cel", "pia", "voi"]


def _ok(name: str = "a.wav") -> FileResult:
    return FileResult(
        file=name,
        duration_s=2.34567,
        scores={"cel": 0.1, "pia": 0.91234567, "voi": 0.55},
        instruments=["pia", "voi"],
        segments=[
            Segment(0.0, 1.0, {"cel": 0.1, "pia": 0.9, "voi": 0.5}),
            Segment(0.5, 1.5, {"cel": 0.2, "pia": 0.8, "voi": 0.6}),
        ],
    )


def test_basename() -> None:
    assert RESULTS_BASENAME == "wav-files-instruments-predictions"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("/abs/dir/song.wav", "song.wav"),
        ("C:\\Users\\me\\Music\\song.flac", "song.flac"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("a\x00b\x1fc\x7f.wav", "abc.wav"),
        ("line\nbreak\r.wav", "linebreak.wav"),
        ("evil\u202egnp.wav", "evilgnp.wav"),  # bidi override removed
        ("  spaced.wav  ", "spaced.wav"),
        ("..", "upload"),
        ("dir/", "upload"),
        ("", "upload"),
        (None, "upload"),
        ("chanson d'été.mp3", "chanson d'été.mp3"),
        ("e\u0301te\u0301.wav", "été.wav"),  # NFC
    ],
)
def test_sanitize_filename(raw: str | None, expected: str) -> None:
    assert sanitize_filename(raw) == expected


def test_sanitize_non_utf8() -> None:
    assert sanitize_filename(b"caf\xe9.wav") == "caf\ufffd.wav"
    assert sanitize_filename(b"../x/\xff\xfe.wav") == "\ufffd\ufffd.wav"
    # os.fsdecode of non-UTF-8 bytes smuggles them in as lone surrogates; they must not survive
    smuggled = b"caf\xe9.wav".decode("utf-8", errors="surrogateescape")
    out = sanitize_filename(smuggled)
    assert out == "caf\ufffd.wav"
    out.encode("utf-8")  # encodable, i.e. no surrogates left
    assert sanitize_filename("a\ud800b.wav").encode("utf-8")


def test_sanitize_truncates_keeping_extension() -> None:
    out = sanitize_filename("x" * 400 + ".wav")
    assert len(out) == 255 and out.endswith(".wav")
    assert len(sanitize_filename("y" * 400)) == 255


def test_thresholds_dict() -> None:
    assert thresholds_dict(LABELS, 0.3) == {"cel": 0.3, "pia": 0.3, "voi": 0.3}
    assert thresholds_dict(LABELS, [0.1, 0.2, 0.3]) == {"cel": 0.1, "pia": 0.2, "voi": 0.3}
    assert thresholds_dict(LABELS, {"cel": 0.1, "pia": 0.2, "voi": 0.3, "x": 1})["voi"] == 0.3
    with pytest.raises(ValueError, match="2 thresholds for 3 labels"):
        thresholds_dict(LABELS, [0.1, 0.2])
    with pytest.raises(ValueError, match="no threshold"):
        thresholds_dict(LABELS, {"cel": 0.1})


def test_results_payload_shape() -> None:
    bad = FileResult(file="bad.wav", error="undecodable: not audio")
    p = results_payload(LABELS, {"m1": 0.25, "m2": 0.75}, [0.5, 0.4, 0.3], [_ok(), bad], aggregation="mean")
    assert list(p) == ["labels", "weights", "thresholds", "aggregation", "results"]
    assert p["labels"] == LABELS
    assert p["weights"] == {"m1": 0.25, "m2": 0.75}
    assert p["thresholds"] == {"cel": 0.5, "pia": 0.4, "voi": 0.3}
    ok, err = p["results"]
    assert err == {"file": "bad.wav", "error": "undecodable: not audio"}
    assert ok["file"] == "a.wav" and ok["duration_s"] == 2.346
    assert ok["scores"] == {"cel": 0.1, "pia": 0.9123, "voi": 0.55}
    assert ok["instruments"] == ["pia", "voi"]
    assert ok["segments"][1] == {"start_s": 0.5, "end_s": 1.5, "scores": {"cel": 0.2, "pia": 0.8, "voi": 0.6}}
    assert "segments" not in results_payload(LABELS, {}, 0.5, [_ok()], segments=False)["results"][0]
    assert json.loads(payload_to_json(p)) == p


def test_payload_json_rejects_nan() -> None:
    p = results_payload(LABELS, {"m": 1.0}, 0.5, [{"file": "x", "scores": {"cel": float("nan")}}])
    with pytest.raises(ValueError):
        payload_to_json(p)


def test_results_to_csv() -> None:
    bad = FileResult(file="bad.wav", error="too_long: 700 s")
    text = results_to_csv(
        LABELS,
        [
            _ok(),
            bad,
            _ok("=HYPERLINK(1).wav").to_dict(),
            {"file": 's;c,q"uote.wav', "duration_s": 1.0, "scores": {}, "instruments": []},
        ],
    )
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["file", "duration_s", "instruments", "cel", "pia", "voi", "error"]
    assert rows[1] == ["a.wav", "2.346", "pia;voi", "0.1000", "0.9123", "0.5500", ""]
    assert rows[2] == ["bad.wav", "", "", "", "", "", "too_long: 700 s"]
    assert rows[3][0] == "'=HYPERLINK(1).wav"  # no formula injection into spreadsheets
    assert rows[4][:3] == ['s;c,q"uote.wav', "1.000", ""]  # quoting round-trips
    assert len(rows) == 5
    assert text.endswith("\n") and "\r" not in text


def test_csv_and_json_of_empty_results() -> None:
    assert results_to_csv(LABELS, []) == "file,duration_s,instruments,cel,pia,voi,error\n"
    assert results_payload(LABELS, {"m": 1}, 0.5, [])["results"] == []
