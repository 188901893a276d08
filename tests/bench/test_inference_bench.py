"""The pure parts of bench/inference.py: songs, request bodies, throughput/ratio arithmetic, the report."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from bench import inference as bi


def test_song_is_deterministic_stereo_and_in_range() -> None:
    a = bi.song(2.5, seed=3)
    assert a.shape == (round(2.5 * bi.SONG_RATE), 2) and a.dtype == np.float32
    assert np.abs(a).max() <= 1.0 and np.abs(a).max() > 0.1
    assert np.array_equal(a, bi.song(2.5, seed=3))
    assert not np.array_equal(a, bi.song(2.5, seed=4))


def test_wav_bytes_are_16_bit_stereo_44k() -> None:
    data = bi.wav_bytes(bi.song(1.0))
    info = sf.info(io.BytesIO(data))
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (44100, 2, "PCM_16", 44100)


def test_multipart_body_has_one_files_part() -> None:
    body, ctype = bi.multipart("x.wav", b"RIFFdata")
    boundary = ctype.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and body.endswith(f"--{boundary}--\r\n".encode())
    assert b'name="files"; filename="x.wav"' in body and b"\r\n\r\nRIFFdata\r\n" in body


def test_throughput_and_ratio_arithmetic() -> None:
    assert bi.audio_seconds_per_s(64, 1.0, calls=10, wall_s=4.0) == pytest.approx(160.0)
    assert bi.audio_seconds_per_s(64, 0.5, calls=1, wall_s=0.0) == 0.0
    assert bi.ratio(80.0, 100.0) == pytest.approx(0.8)
    assert bi.ratio(1.0, 0.0) is None


def test_summarize_window_counts_only_requests_finished_inside() -> None:
    recs = [
        bi.Rec(0.0, 0.9, 200, 10.0),  # before the window
        bi.Rec(0.5, 1.5, 200, 10.0),
        bi.Rec(1.0, 2.0, 200, 10.0),
        bi.Rec(1.2, 2.5, 503, 10.0, "503: overloaded"),
        bi.Rec(2.0, 3.5, 200, 10.0),  # after
    ]
    s = bi.summarize_window(recs, 1.0, 3.0)
    assert (s["requests"], s["ok"], s["errors"]) == (3, 2, 1)
    assert s["throughput_audio_s_per_s"] == pytest.approx(10.0)  # 20 audio-s in 2 s
    assert s["error_statuses"] == {"503": 1}
    assert s["latency_s"]["p50"] == pytest.approx(1.0)


def _canned() -> dict:
    limit_row = {"audio_s_per_s": 100.0, "calls": 3}
    point = {
        "song_s": 10.0,
        "clients": 1,
        "throughput_audio_s_per_s": 50.0,
        "requests_per_s": 5.0,
        "latency_s": {"p50": 0.2, "p95": 0.3, "p99": 0.4},
        "errors": 0,
        "batching": {"a": {"songs_per_batch": 1.0, "device": "cpu"}},
        "cpu_cores": {"member_a": 1.2, "ingress": 0.3},
    }
    cpu = {
        "device": "cpu",
        "torch_threads": 2,
        "batch_size": 64,
        "windows_per_call": 64,
        "members": {"a": limit_row, "b": limit_row},
        "fused": {"audio_s_per_s": 20.0, "calls": 3},
        "predict_wav": {"song_s": 10.0, "audio_s_per_s": 40.0, "calls": 2},
    }
    cpu1 = {**cpu, "members": {}, "fused": {"audio_s_per_s": 50.0}}
    return {
        "ensemble": "default",
        "members": ["a", "b"],
        "folds": 2,
        "trained": False,
        "window_s": 1.0,
        "hop_s": 1.0,
        "plan": {"measure_s": 5.0},
        "quick": True,
        "machine": {"usable_cores": 2},
        "limit": {
            "torch_threads": 2,
            "cpu": cpu,
            "cpu_variants": {"sequential, 2 threads": cpu, "concurrent members, 1 thread each": cpu1},
            "best_cpu": "concurrent members, 1 thread each",
            "fused_cpu": 50.0,
            "gpu": None,
        },
        "product": {
            "serve": {
                "num_cpus": 0.5,
                "ingress_num_cpus": 0.5,
                "max_batch_size": 64,
                "batch_wait_timeout_s": 0.01,
                "autoscaling": {"min_replicas": 1},
            },
            "replicas": {"ingress": 1},
            "points": [point, {**point, "clients": 8, "throughput_audio_s_per_s": 45.0}],
        },
    }


def test_ratio_uses_the_best_point_and_the_fused_limit() -> None:
    r = bi.compute_ratio(_canned())
    assert (r["clients"], r["song_s"], r["limit_device"]) == (1, 10.0, "cpu")
    assert r["limit_how"] == "concurrent members, 1 thread each"
    assert r["ratio"] == pytest.approx(1.0)
    assert r["per_song_length"]["10"]["ratio"] == pytest.approx(1.0)


def test_markdown_report_from_a_canned_result() -> None:
    res = _canned()
    res["ratio"] = bi.compute_ratio(res)
    md = bi.render_markdown(res, figures={"Throughput": "img/bench/x.png"})
    assert md.startswith("## Inference")
    assert "**Ratio at saturation: 1.00**" in md
    assert "| **fused** | concurrent members, 1 thread each | cpu | 64 | **50.0** |" in md
    assert "| fused | sequential, 2 threads | cpu | 64 | 20.0 |" in md
    assert "| 10 | 8 | 45.0 |" in md
    assert "No GPU" in md and "random weights" in md and "only 2 cores" in md
    assert "![Throughput](img/bench/x.png)" in md
