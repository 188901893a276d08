"""The bad-input corpus: generated here (no binary fixtures), each case knows what each endpoint must say.

A :class:`Case` is one request. *File* cases upload one or more problem files next to a known good file
(``good.wav``): the request must succeed (200), the problem file must come back under its sanitised name with
``"<code>: <reason>"`` (or with results, for unusual but valid audio) and the good file must still get its
results. *Request* cases break the request itself (limits, missing or mistyped fields, bad parameters) and
must get the right 4xx with a JSON ``detail``. Limits come from the config the app was built with.

Requests are encoded here byte for byte (:func:`multipart`), so file names that a client library would
escape or refuse (raw non-UTF-8 bytes, control characters) reach the server as an attacker would send them.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf

from ml.config import Config

SINGLE = "/analyze_files/single_model"
MULTI = "/analyze_files/multi_model"
ENDPOINTS = {"single": SINGLE, "multi": MULTI}
BOUNDARY = "mpic-corpus-boundary-7d1e"
GOOD_NAME = "good.wav"
MB = 1 << 20


# ---- audio -------------------------------------------------------------------------------------------


def tone(seconds: float, sr: int, channels: int = 1, amp: float = 0.2, freq: float = 440.0) -> np.ndarray:
    """A (S,) or (S, C) float32 sine, a different pitch per channel."""
    t = np.arange(round(seconds * sr)) / sr
    chans = [amp * np.sin(2 * np.pi * freq * (1 + 0.25 * c) * t) for c in range(channels)]
    wave = np.stack(chans, axis=1) if channels > 1 else chans[0]
    return wave.astype(np.float32)


def encode(wave: np.ndarray, sr: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    """``wave`` written by libsndfile in memory."""
    buf = io.BytesIO()
    sf.write(buf, wave, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def good_wav() -> bytes:
    """The well-formed companion of every file case (1.2 s, 22.05 kHz, 16-bit)."""
    return encode(tone(1.2, 22050), 22050, "WAV", "PCM_16")


def _flac_claiming(seconds: float, sr: int = 96000, channels: int = 8) -> bytes:
    """A real 0.2-s FLAC whose STREAMINFO claims ``seconds``: the decoder must not trust the header."""
    data = bytearray(encode(np.zeros((int(0.2 * sr), channels), np.float32), sr, "FLAC"))
    total, off = int(seconds * sr), 8 + 13  # 36-bit total-samples field after "fLaC" + block header
    data[off] = (data[off] & 0xF0) | ((total >> 32) & 0x0F)
    data[off + 1 : off + 5] = struct.pack(">I", total & 0xFFFFFFFF)
    return bytes(data)


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(data)
    out[offset : offset + len(value)] = value
    return bytes(out)


# ---- requests -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One multipart ``files`` part; ``name`` as ``bytes`` goes into the header raw (e.g. not UTF-8), None
    sends the part without a ``filename`` (a text field, as far as the server can tell)."""

    name: str | bytes | None
    data: bytes
    content_type: str = "application/octet-stream"


def _quote(name: str | bytes | None) -> bytes:
    if name is None:
        return b""
    raw = name if isinstance(name, bytes) else name.encode("utf-8")
    # what browsers do: the three bytes that would end the header or the quoted string are percent-encoded
    return raw.replace(b"\r", b"%0D").replace(b"\n", b"%0A").replace(b'"', b"%22")


def multipart(
    uploads: Sequence[Upload], fields: Mapping[str, str] | None = None, boundary: str = BOUNDARY
) -> bytes:
    """A ``multipart/form-data`` body of text ``fields`` and ``files`` parts, byte for byte."""
    b = boundary.encode()
    out = bytearray()
    for k, v in (fields or {}).items():
        out += b"--" + b + b"\r\n"
        out += f'Content-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
    for u in uploads:
        out += b"--" + b + b"\r\n"
        out += b'Content-Disposition: form-data; name="files"'
        out += b"\r\n" if u.name is None else b'; filename="' + _quote(u.name) + b'"\r\n'
        out += f"Content-Type: {u.content_type}\r\n\r\n".encode() + u.data + b"\r\n"
    out += b"--" + b + b"--\r\n"
    return bytes(out)


@dataclass(frozen=True)
class Expect:
    """What one endpoint must answer.

    ``status`` 200 with ``code`` set: the first upload is reported as ``"<code>: …"``; 200 without: it is
    analysed (``silent`` checked when given). Other statuses: a JSON ``detail`` containing ``detail``.
    """

    status: int = 200
    code: str | None = None
    silent: bool | None = None
    detail: str | None = None


OK = Expect()


@dataclass(frozen=True)
class Case:
    """One request of the corpus and the answer expected from each endpoint it applies to."""

    id: str
    what: str
    uploads: tuple[Upload, ...] = ()
    fields: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Expect] = field(default_factory=dict)  # endpoint ("single"/"multi") → answer
    with_good: bool = True  # a good file rides along (file cases)
    names: tuple[str, ...] = ()  # expected sanitised names of `uploads`, in order (default: as sent)
    body: bytes | None = None  # a raw body instead of multipart(uploads, fields)
    content_type: str | None = None
    heavy: bool = False  # tens of MB: in-process only

    @property
    def kind(self) -> str:
        """``file`` (the request is fine, a file is not) or ``request`` (the request itself is refused)."""
        return "file" if all(e.status == 200 for e in self.expect.values()) else "request"

    def request(self) -> dict[str, Any]:
        """Keyword arguments for ``client.post(url, **kw)``."""
        if self.body is not None:
            headers = {"content-type": self.content_type} if self.content_type else {}
            return {"content": self.body, "headers": headers, "params": dict(self.params)}
        uploads = (
            [*self.uploads, Upload(GOOD_NAME, good_wav(), "audio/wav")] if self.with_good else self.uploads
        )
        return {
            "content": multipart(uploads, self.fields),
            "headers": {"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
            "params": dict(self.params),
        }

    def expected_names(self) -> list[str]:
        """Sanitised names the results must carry, in upload order (the good file last)."""
        names = list(self.names) or [u.name if isinstance(u.name, str) else "?" for u in self.uploads]
        return [*names, GOOD_NAME] if self.with_good else names


def _both(e: Expect) -> dict[str, Expect]:
    return {"single": e, "multi": e}


def _file(id: str, what: str, name: str, data: bytes, e: Expect, **kw: Any) -> Case:
    return Case(id, what, uploads=(Upload(name, data),), expect=_both(e), **kw)


# ---- the corpus ----------------------------------------------------------------------------------------


def build_corpus(cfg: Config, served: Sequence[str]) -> list[Case]:
    """Every case, for an app built from ``cfg`` serving the members ``served``."""
    lim = cfg.serve.limits
    max_s = min(cfg.audio.max_seconds, lim.max_seconds)
    cases: list[Case] = []
    add = cases.append

    def err(code: str) -> Expect:
        return Expect(code=code)

    # non-audio bytes with audio names
    add(
        _file(
            "text-as-wav", "plain text named .wav", "notes.wav", b"just some text\n" * 64, err("undecodable")
        )
    )
    add(
        _file(
            "png-as-mp3",
            "a PNG named .mp3",
            "cover.mp3",
            b"\x89PNG\r\n\x1a\n" + bytes(400),
            err("undecodable"),
        )
    )
    add(_file("pdf-as-flac", "a PDF named .flac", "doc.flac", b"%PDF-1.7\n" + b"x" * 400, err("undecodable")))
    add(_file("html-as-ogg", "HTML named .ogg", "page.ogg", b"<!doctype html><p>hi" * 30, err("undecodable")))
    rnd = np.random.default_rng(7).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    add(_file("random-bytes", "8 kB of random bytes named .wav", "noise.wav", rnd, err("undecodable")))
    add(_file("zero-bytes", "an empty file", "empty.wav", b"", err("empty")))

    # truncated and corrupt headers, every container
    clip = tone(0.6, 22050)
    full = {
        "wav": encode(clip, 22050, "WAV", "PCM_16"),
        "flac": encode(clip, 22050, "FLAC"),
        "ogg": encode(clip, 22050, "OGG", "VORBIS"),
        "mp3": encode(clip, 22050, "MP3"),
        "aiff": encode(clip, 22050, "AIFF", "PCM_16"),
        "au": encode(clip, 22050, "AU", "PCM_16"),
        "caf": encode(clip, 22050, "CAF", "PCM_16"),
    }
    for ext, data in full.items():
        add(
            _file(
                f"{ext}-cut-header",
                f"{ext.upper()} cut inside its header (12 bytes)",
                f"cut.{ext}",
                data[:12],
                err("undecodable"),
            )
        )
    add(_file("wav-header-only", "a WAV header without samples", "hdr.wav", full["wav"][:44], err("empty")))
    add(
        _file(
            "wav-zero-channels",
            "WAV fmt chunk with 0 channels",
            "zc.wav",
            _patched(full["wav"], 22, b"\0\0"),
            err("undecodable"),
        )
    )
    add(
        _file(
            "wav-zero-rate",
            "WAV fmt chunk with a 0 Hz rate",
            "zr.wav",
            _patched(full["wav"], 24, bytes(4)),
            err("undecodable"),
        )
    )
    add(
        _file(
            "wav-bad-format-tag",
            "WAV fmt chunk with an unknown format tag",
            "tag.wav",
            _patched(full["wav"], 20, struct.pack("<H", 0x55)),
            err("undecodable"),
        )
    )
    add(
        _file(
            "flac-corrupt",
            "FLAC with its STREAMINFO overwritten",
            "bad.flac",
            _patched(full["flac"], 8, b"\xff" * 30),
            err("undecodable"),
        )
    )
    add(
        _file(
            "flac-cut-frames",
            "FLAC cut in the middle of its frames",
            "half.flac",
            full["flac"][: len(full["flac"]) // 2],
            err("undecodable"),
        )
    )
    add(
        _file(
            "ogg-cut-pages",
            "Ogg/Vorbis cut after its first pages",
            "cut2.ogg",
            full["ogg"][:200],
            err("undecodable"),
        )
    )
    add(
        _file(
            "flac-lying-length",
            f"FLAC claiming {max_s - 1:g} s at 96 kHz x 8 channels, holding 0.2 s",
            "liar.flac",
            _flac_claiming(max_s - 1),
            err("undecodable"),
        )
    )
    add(
        _file(
            "wav-cut-data",
            "WAV cut in its samples: the part that is there is analysed",
            "partial.wav",
            full["wav"][: len(full["wav"]) // 2],
            OK,
        )
    )

    # odd content
    add(
        _file(
            "one-sample",
            "a single sample",
            "one.wav",
            encode(clip[:1], 22050, "WAV", "PCM_16"),
            err("too_short"),
        )
    )
    add(
        _file(
            "silence",
            "digital silence",
            "silence.wav",
            encode(np.zeros(13230, np.float32), 22050, "WAV"),
            Expect(silent=True),
        )
    )
    add(
        _file(
            "near-silence",
            "a tone at -80 dBFS",
            "quiet.wav",
            encode(clip * 1e-4, 22050, "WAV", "PCM_24"),
            Expect(silent=True),
        )
    )
    nan = clip.copy()
    nan[100] = np.nan
    add(
        _file(
            "nan-float",
            "a 32-bit float WAV with a NaN",
            "nan.wav",
            encode(nan, 22050, "WAV", "FLOAT"),
            err("invalid_samples"),
        )
    )
    inf = clip.astype(np.float64)
    inf[5] = np.inf
    add(
        _file(
            "inf-double",
            "a 64-bit float WAV with +inf",
            "inf.wav",
            encode(inf, 22050, "WAV", "DOUBLE"),
            err("invalid_samples"),
        )
    )
    add(
        _file(
            "float-over-full-scale",
            "float samples at 3x full scale (clipped, analysed)",
            "loud.wav",
            encode(clip * 15, 22050, "WAV", "FLOAT"),
            OK,
        )
    )
    long_s = math.floor(max_s) + 1
    add(
        _file(
            "too-long",
            f"{long_s} s (limit {max_s:g} s), 8-bit 8 kHz",
            "long.wav",
            encode(np.zeros(long_s * 8000, np.float32), 8000, "WAV", "PCM_U8"),
            err("too_long"),
        )
    )

    # bit depths, rates and channel counts that must all work
    for sub, sr, ch in [
        ("PCM_U8", 8000, 1),
        ("PCM_16", 11025, 2),
        ("PCM_24", 16000, 3),
        ("PCM_32", 22050, 4),
        ("FLOAT", 44100, 5),
        ("DOUBLE", 48000, 6),
        ("PCM_16", 96000, 7),
        ("PCM_24", 192000, 8),
        ("FLOAT", 192000, 1),
        ("PCM_U8", 44100, 8),
        ("PCM_16", 44101, 2),  # odd rates: a naive resampler needs a 16-GB kernel for 44101 → 22050 Hz
        ("PCM_16", 7919, 1),
    ]:
        add(
            _file(
                f"wav-{sub.lower()}-{sr}-{ch}ch",
                f"WAV {sub} {sr} Hz {ch} ch",
                f"{sub.lower()}_{sr}_{ch}.wav",
                encode(tone(0.5, sr, ch), sr, "WAV", sub),
                OK,
            )
        )
    for fmt, sub, sr, ch in [
        ("FLAC", "PCM_24", 96000, 2),
        ("OGG", "VORBIS", 44100, 2),
        ("MP3", "MPEG_LAYER_III", 44100, 1),
        ("AIFF", "PCM_16", 22050, 1),
    ]:
        ext = {"OGG": "ogg", "MP3": "mp3", "FLAC": "flac", "AIFF": "aiff"}[fmt]
        add(
            _file(
                f"{ext}-{sr}-{ch}ch",
                f"{fmt} {sub} {sr} Hz {ch} ch",
                f"ok.{ext}",
                encode(tone(0.6, sr, ch), sr, fmt, sub),
                OK,
            )
        )

    # file names: never used as paths, echoed back sanitised
    wav = encode(clip, 22050, "WAV", "PCM_16")
    for id_, name, shown in [
        ("name-traversal", "../../etc/passwd.wav", "passwd.wav"),
        ("name-absolute", "/etc/shadow.wav", "shadow.wav"),
        ("name-windows", "C:\\Windows\\System32\\evil.wav", "evil.wav"),
        ("name-dotdot", "..", "upload"),
        ("name-controls", "a\x01b\x1b[31mc.wav", "ab[31mc.wav"),
        ("name-bidi", "\u202evaw.exe", "vaw.exe"),
        ("name-crlf-quote", 'x\r\n"y.wav', "x%0D%0A%22y.wav"),
        ("name-long", "n" * 1000 + ".wav", "n" * 251 + ".wav"),
    ]:
        add(
            Case(
                id_,
                f"file name {name[:40]!r}",
                uploads=(Upload(name, wav),),
                expect=_both(OK),
                names=(shown,),
            )
        )
    add(
        Case(
            "name-not-utf8",
            "file name with raw Latin-1 and 0xFF bytes (not UTF-8: the parser reads them as Latin-1)",
            uploads=(Upload(b"caf\xe9\xff.wav", wav),),
            expect=_both(OK),
            names=("caf\xe9\xff.wav",),
        )
    )
    add(
        Case(
            "name-unicode",
            "a UTF-8 file name outside ASCII",
            uploads=(Upload("Ünïcødé 音楽 🎻.wav", wav),),
            expect=_both(OK),
        )
    )
    add(
        Case(
            "name-empty",
            "a file part with an empty file name",
            uploads=(Upload("", wav),),
            expect=_both(OK),
            names=("upload",),
        )
    )
    add(
        Case(
            "duplicate-names",
            "two files with the same name, one bad: both answered, in order",
            uploads=(Upload("same.wav", wav), Upload("same.wav", b"not audio" * 40)),
            expect={k: Expect() for k in ENDPOINTS},
            names=("same.wav", "same.wav"),
        )
    )

    # the request itself is refused
    tiny = encode(tone(0.1, 8000), 8000, "WAV", "PCM_16")
    add(
        Case(
            "too-many-files",
            f"{lim.max_files + 1} files (limit {lim.max_files})",
            uploads=tuple(Upload(f"{i}.wav", tiny) for i in range(lim.max_files + 1)),
            with_good=False,
            expect=_both(Expect(413, detail=f"limit of {lim.max_files}")),
        )
    )
    add(
        Case(
            "over-size-limit",
            f"one file of max_upload_bytes + 1 ({lim.max_upload_bytes + 1} bytes)",
            uploads=(Upload("huge.wav", bytes(lim.max_upload_bytes + 1)),),
            with_good=False,
            expect=_both(Expect(413, detail="huge.wav")),
            heavy=True,
        )
    )
    add(
        Case(
            "declared-over-limit",
            "a body declaring far more than the limit",
            uploads=(Upload("big.wav", bytes(lim.max_upload_bytes + 2 * MB)),),
            with_good=False,
            expect=_both(Expect(413, detail="exceeds the limit")),
            heavy=True,
        )
    )
    add(
        Case(
            "no-files-field",
            "a form without `files`",
            fields={"threshold": "0.5"},
            with_good=False,
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "files-as-text",
            "`files` sent as a text field",
            fields={"files": "song.wav"},
            with_good=False,
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "part-without-filename",
            "the audio as a `files` part without a file name (its bytes must not be echoed)",
            uploads=(Upload(None, wav),),
            with_good=False,
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "json-body",
            "a JSON body instead of a form",
            body=json.dumps({"files": ["a.wav"]}).encode(),
            content_type="application/json",
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "text-body",
            "text/plain body",
            body=b"hello",
            content_type="text/plain",
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "no-content-type",
            "bytes without a content type",
            body=wav,
            content_type=None,
            expect=_both(Expect(422, detail="files")),
        )
    )
    add(
        Case(
            "multipart-no-boundary",
            "multipart without a boundary",
            body=multipart([Upload("a.wav", wav)]),
            content_type="multipart/form-data",
            expect=_both(Expect(400, detail="boundary")),
        )
    )
    add(
        Case(
            "multipart-garbage",
            "multipart content type over a non-multipart body",
            body=b"garbage" * 10,
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            expect=_both(Expect(400, detail="multipart")),
        )
    )
    add(
        Case(
            "unknown-model",
            "a model that is not served (single: `model`; multi: a weight for it)",
            uploads=(Upload("a.wav", wav),),
            with_good=False,
            fields={"model": "nope", "weights": '{"nope": 1}'},
            expect={"single": Expect(404, detail="nope"), "multi": Expect(422, detail="nope")},
        )
    )
    path = str(cfg.runs_dir / served[0] / "fold0" / "model.pt")
    add(
        Case(
            "model-as-path",
            "a checkpoint path where a model name belongs",
            uploads=(Upload("a.wav", wav),),
            with_good=False,
            fields={"model": path, "weights": json.dumps({path: 1})},
            expect={"single": Expect(404, detail="unknown model"), "multi": Expect(422, detail="unknown")},
        )
    )
    for id_, weights, why in [
        ("weights-negative", {served[0]: -1, served[-1]: 1}, ">= 0"),
        ("weights-all-zero", dict.fromkeys(served, 0), "positive weight"),
        ("weights-string", {served[0]: "1"}, "number"),
        ("weights-bool", {served[0]: True}, "number"),
    ]:
        add(
            Case(
                id_,
                f"weights {weights}",
                uploads=(Upload("a.wav", wav),),
                with_good=False,
                fields={"weights": json.dumps(weights)},
                expect={"multi": Expect(422, detail=why)},
            )
        )
    for id_, text, why in [
        ("weights-nan", f'{{"{served[0]}": NaN}}', "finite"),
        ("weights-inf", f'{{"{served[0]}": -Infinity}}', "finite"),
        ("weights-not-json", f"{served[0]}=1", "not valid JSON"),
        ("weights-array", "[1, 2]", "JSON object"),
    ]:
        add(
            Case(
                id_,
                f"weights {text!r}",
                uploads=(Upload("a.wav", wav),),
                with_good=False,
                fields={"weights": text},
                expect={"multi": Expect(422, detail=why)},
            )
        )
    for bad in ("nan", "-1", "1.5", "abc"):
        add(
            Case(
                f"threshold-{bad}",
                f"threshold={bad}",
                uploads=(Upload("a.wav", wav),),
                with_good=False,
                fields={"threshold": bad},
                expect=_both(Expect(422, detail="threshold")),
            )
        )
    add(
        Case(
            "format-xml",
            "format=xml",
            uploads=(Upload("a.wav", wav),),
            with_good=False,
            params={"format": "xml"},
            expect=_both(Expect(422, detail="format")),
        )
    )
    return cases


# ---- checking an answer --------------------------------------------------------------------------------


def check(
    case: Case,
    endpoint: str,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    json_of: Callable[[bytes], Any] = json.loads,
) -> list[str]:
    """Problems with one answer (empty when it is right)."""
    exp = case.expect[endpoint]
    problems: list[str] = []
    if status != exp.status:
        problems.append(f"status {status}, expected {exp.status}: {body[:300]!r}")
        return problems
    if not str(headers.get("content-type", "")).startswith("application/json"):
        problems.append(f"content-type {headers.get('content-type')!r} is not JSON")
        return problems
    doc = json_of(body)
    if status != 200:
        detail = doc.get("detail") if isinstance(doc, dict) else None
        if not detail:
            problems.append(f"no detail in {doc!r}")
        elif exp.detail and exp.detail not in json.dumps(detail):
            problems.append(f"detail {detail!r} does not mention {exp.detail!r}")
        if len(body) > 4096:
            problems.append(f"error body of {len(body)} bytes echoes the request")
        return problems
    results = doc.get("results", [])
    names = case.expected_names()
    if [r.get("file") for r in results] != names:
        problems.append(f"files {[r.get('file') for r in results]}, expected {names}")
        return problems
    first = results[0]
    if exp.code is not None:
        if set(first) != {"file", "error"} or not str(first["error"]).startswith(f"{exp.code}: "):
            problems.append(f"{first!r} is not a '{exp.code}: …' error")
        elif len(str(first["error"])) <= len(exp.code) + 4:
            problems.append(f"{first!r} gives no reason")
    else:
        if "scores" not in first:
            problems.append(f"{first!r} was not analysed")
        elif exp.silent is not None and first.get("silent") is not exp.silent:
            problems.append(f"silent={first.get('silent')}, expected {exp.silent}")
    if case.id == "duplicate-names" and "error" not in results[1]:
        problems.append(f"the second same.wav (not audio) was analysed: {results[1]!r}")
    if case.with_good and "scores" not in results[-1]:
        problems.append(f"the good file beside it got no result: {results[-1]!r}")
    return problems
