"""Fuzzing: the API from its own OpenAPI schema (schemathesis) and the decoder (hypothesis).

* Every operation of ``/openapi.json`` of the in-process app gets schema-driven valid and invalid requests
  (random file bytes, weights, thresholds, formats, model names, …): zero 5xx.
* :func:`ml.audio.decode` gets random bytes and mutated real files of every container (header bytes
  overwritten, truncated, spliced): only :class:`ml.audio.AudioError` may escape, and decoding plus
  resampling to the member rates stays fast and small whatever a header claims.

Examples are bounded (``settings`` below) and derandomised, so the suite stays fast and repeatable; raise
``MPIC_FUZZ_EXAMPLES`` for a longer hunt.
"""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml.audio import AudioError, decode, resample
from tests.reliability.conftest import REPORT_DIR, report
from tests.reliability.corpus import encode, tone

EXAMPLES = int(os.environ.get("MPIC_FUZZ_EXAMPLES", "0")) or None
FUZZ = settings(
    max_examples=EXAMPLES or 50,
    deadline=None,
    derandomize=EXAMPLES is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)


def record(sheet: str, key: str, value: Any) -> None:
    """Add one entry to a figure sheet shared by several tests."""
    path = REPORT_DIR / f"{sheet}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    report(sheet, data)


# ---- the API, from its OpenAPI schema ------------------------------------------------------------------


OPERATIONS = [
    ("POST", "/analyze_files/single_model"),
    ("POST", "/analyze_files/multi_model"),
    ("GET", "/models"),
    ("GET", "/healthz"),
]


def test_every_operation_is_fuzzed(local_app: FastAPI) -> None:
    doc = local_app.openapi()["paths"]
    assert sorted((m.upper(), p) for p, ops in doc.items() for m in ops) == sorted(OPERATIONS)


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_api_never_answers_5xx(local_app: FastAPI, method: str, path: str, mode: str) -> None:
    """Schema-conforming (positive) and schema-violating (negative) requests; run in-process over ASGI."""
    if mode == "negative" and method == "GET":
        pytest.skip("no parameters: nothing to violate")
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_asgi("/openapi.json", local_app)
    operation = schema[path][method]
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    @FUZZ
    def fuzz(case: Any) -> None:
        response = case.call()
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=[not_a_server_error])
        assert response.status_code < 500, response.text[:500]

    fuzz()
    assert seen and max(seen) < 500, seen
    record("fuzz-api", f"{method} {path} {mode}", {"examples": sum(seen.values()), "statuses": seen})


# ---- the decoder ---------------------------------------------------------------------------------------


SEEDS = {
    "wav16": encode(tone(0.2, 22050), 22050, "WAV", "PCM_16"),
    "wav-float-stereo": encode(tone(0.2, 44100, 2), 44100, "WAV", "FLOAT"),
    "wav-u8-8ch": encode(tone(0.1, 8000, 8), 8000, "WAV", "PCM_U8"),
    "flac": encode(tone(0.2, 22050), 22050, "FLAC"),
    "ogg": encode(tone(0.3, 22050), 22050, "OGG", "VORBIS"),
    "mp3": encode(tone(0.3, 22050), 22050, "MP3"),
    "aiff": encode(tone(0.2, 22050), 22050, "AIFF", "PCM_24"),
    "au": encode(tone(0.2, 16000), 16000, "AU", "PCM_16"),
    "caf": encode(tone(0.2, 16000), 16000, "CAF", "PCM_16"),
    "w64": encode(tone(0.2, 16000), 16000, "W64", "PCM_16"),
}
MEMBER_RATES = (22050, 16000)


def decode_like_the_service(data: bytes) -> str:
    """What the API does with an upload: decode at the source rate, resample to every member rate."""
    try:
        audio = decode(data, None, max_seconds=600, min_seconds=0.05)
    except AudioError as e:
        return e.code
    assert np.isfinite(audio.wave).all() and audio.wave.dtype == np.float32
    assert audio.sample_rate > 0 and audio.channels > 0
    for rate in MEMBER_RATES:
        out = resample(audio.wave, audio.sample_rate, rate)
        assert abs(len(out) - audio.duration_s * rate) <= 2 + 1e-4 * len(out)
    return "ok"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    head = min(len(data), 128)
    for _ in range(draw(st.integers(1, 8))):
        how = draw(st.sampled_from(["byte", "word", "truncate", "splice", "zero"]))
        pos = draw(st.integers(0, head - 1))
        if how == "byte":
            data[pos] = draw(st.integers(0, 255))
        elif how == "word":  # a 32-bit field (sizes, rates, counts) set to an extreme
            value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 44101, 192001, 1 << 24]))
            data[pos : pos + 4] = value.to_bytes(4, draw(st.sampled_from(["little", "big"])))
        elif how == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif how == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            data[pos : pos + draw(st.integers(1, 64))] = b""
        head = min(len(data), 128)
        if not data:
            break
    return bytes(data)


class Budget:
    """Time and peak memory of what runs inside the ``with`` block."""

    def __enter__(self) -> Budget:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def test_decode_random_bytes() -> None:
    outcomes: dict[str, int] = {}

    @given(st.binary(max_size=4096))
    @settings(FUZZ, max_examples=(EXAMPLES or 200))
    def fuzz(data: bytes) -> None:
        with Budget() as b:
            got = decode_like_the_service(data)
        outcomes[got] = outcomes.get(got, 0) + 1
        assert b.seconds < 5

    fuzz()
    record("fuzz-decoder", "random bytes", outcomes)


# libsndfile sometimes seeks before the start of a mangled file; soundfile's callback then raises inside cffi,
# which reports it as "unraisable", and libsndfile gets an error back, as it should.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_decode_mutated_headers() -> None:
    outcomes: dict[str, int] = {}

    @given(mutated())
    @settings(FUZZ, max_examples=(EXAMPLES or 200))
    def fuzz(data: bytes) -> None:
        with Budget() as b:
            got = decode_like_the_service(data)
        outcomes[got] = outcomes.get(got, 0) + 1
        assert b.seconds < 5

    fuzz()
    assert len(outcomes) >= 3, outcomes  # the mutations reach past the first check
    record("fuzz-decoder", "mutated files", outcomes)


@pytest.mark.parametrize("rate", [44101, 192001, 22051, 7919, 3, 1_000_003])
def test_odd_sample_rates_stay_cheap(rate: int) -> None:
    """A header may claim any rate: resampling from it must not build a giant kernel (this took 16 GB)."""
    wav = bytearray(SEEDS["wav16"])
    wav[24:28] = rate.to_bytes(4, "little")
    wav[28:32] = (rate * 2).to_bytes(4, "little")
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Budget() as b:
        decode_like_the_service(bytes(wav))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    assert b.seconds < 5 and grown_mb < 500, (b.seconds, grown_mb)
