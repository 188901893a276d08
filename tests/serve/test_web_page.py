"""Browser tests of the web page (serve/static) against the live Ray Serve app, in real headless Chromium.

The page is driven like a person would: pick/drop files, move sliders, download, record from a (fake)
microphone. Every check reads what the page shows *and* compares it with what the API returned, so a
page that silently ignores a control fails. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import re
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from tests.serve.conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium (/usr/bin/chromium) is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, Request, expect, sync_playwright  # noqa: E402

pytestmark = pytest.mark.browser

ENDPOINT = "/analyze_files/multi_model"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROWS = "#results-table tbody tr[data-file]"
SR = 22050
# Chromium does not expose multipart bodies holding files to the automation protocol, so the test spies on
# what the page hands to fetch(): form fields as text, files by name/size/type (the Blob kept for reading).
FETCH_SPY = """
window.__sent = [];
const record = (url, body) => {
  const entry = {url: String(url), fields: {}, files: []};
  for (const [k, v] of body.entries()) {
    if (v instanceof Blob) entry.files.push({field: k, name: v.name, size: v.size, type: v.type, blob: v});
    else entry.fields[k] = v;
  }
  window.__sent.push(entry);
};
const realFetch = window.fetch;
window.fetch = function (input, init) {
  if (init && init.body instanceof FormData) record(input, init.body);
  return realFetch.apply(this, arguments);
};
const realOpen = XMLHttpRequest.prototype.open;
XMLHttpRequest.prototype.open = function (method, url) {
  this.__url = url;
  return realOpen.apply(this, arguments);
};
const realSend = XMLHttpRequest.prototype.send;
XMLHttpRequest.prototype.send = function (body) {
  if (body instanceof FormData) record(this.__url, body);
  return realSend.apply(this, arguments);
};
"""


# ----------------------------------------------------------------------------- audio fixtures


def _tone(seconds: float, sr: int, freq: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = sum(amp / k * np.sin(2 * np.pi * freq * k * t) for k in (1, 2, 3))  # a few harmonics
    fade = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.02)  # no clicks at the ends
    return (wave * fade).astype(np.float32)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tone (3 s), a noise burst (2.5 s), a text file named .wav, and the fake microphone's WAV."""
    d = tmp_path_factory.mktemp("web-audio")
    rng = np.random.default_rng(7)
    noise = np.zeros(int(2.5 * SR), np.float32)
    noise[int(0.5 * SR) : int(2.0 * SR)] = 0.25 * rng.standard_normal(int(1.5 * SR)).astype(np.float32)
    files = {
        "tone": d / "tone-a440.wav",
        "noise": d / "noise-burst.wav",
        "bad": d / "not-audio.wav",
        "mic": d / "fake-mic.wav",
    }
    sf.write(files["tone"], _tone(3.0, SR, 440.0), SR, subtype="PCM_16")
    sf.write(files["noise"], noise, SR, subtype="FLOAT")
    files["bad"].write_text("this is plain text, not audio\n" * 20)
    sf.write(files["mic"], _tone(4.0, 48000, 330.0, amp=0.5), 48000, subtype="PCM_16")
    return files


# ----------------------------------------------------------------------------- browser fixtures


@pytest.fixture(scope="module")
def browser(audio: dict[str, Path]) -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                *CHROMIUM_ARGS,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={audio['mic']}",
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def models(serve_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(serve_url.rstrip("/") + "/models", timeout=30) as r:
        return json.load(r)


def _open_page(browser: Browser, url: str, **context_args: Any) -> tuple[Page, list[str]]:
    ctx = browser.new_context(accept_downloads=True, **context_args)
    ctx.grant_permissions(["microphone"], origin=url)
    ctx.add_init_script(FETCH_SPY)
    page = ctx.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on(
        "console",
        lambda m: (
            errors.append(f"console.error: {m.text}")
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    # Offline-ready: nothing but the app's own origin (no CDN, fonts or analytics).
    page.on(
        "request",
        lambda r: (
            errors.append(f"external request: {r.url}")
            if not r.url.startswith((url + "/", "data:", "blob:"))
            else None
        ),
    )
    page.goto(url + "/")
    expect(page.locator("[data-testid^=weight-slider-]").first).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("data-state", "info")
    return page, errors


@pytest.fixture
def page(browser: Browser, serve_url: str) -> Iterator[Page]:
    url = serve_url.rstrip("/")
    page, errors = _open_page(browser, url, viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()
    assert not errors, f"the page logged errors: {errors}"


@pytest.fixture
def local_page(browser: Browser, local_url: str) -> Iterator[Page]:
    """The page on the in-process app under uvicorn (no Ray): for what the page does with an answer."""
    page, errors = _open_page(browser, local_url, viewport={"width": 1280, "height": 900})
    yield page
    page.context.close()
    assert not errors, f"the page logged errors: {errors}"


@contextlib.contextmanager
def uvicorn_url(app: Any) -> Iterator[str]:
    """Serve ``app`` on a free 127.0.0.1 port in a thread (for apps a test configures itself)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, name="uvicorn-test-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ----------------------------------------------------------------------------- helpers

VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)


def viridis(p: float) -> np.ndarray:
    """The page's heat-map colour of score ``p`` (5 viridis stops, linear in between)."""
    x = min(1.0, max(0.0, p)) * (len(VIRIDIS) - 1)
    i = min(len(VIRIDIS) - 2, int(x))
    return np.round(VIRIDIS[i] + (VIRIDIS[i + 1] - VIRIDIS[i]) * (x - i))


def _is_analyze(r: Any) -> bool:
    req = r if isinstance(r, Request) else r.request
    return req.method == "POST" and ENDPOINT in req.url


def upload(page: Page, paths: list[Path]) -> dict[str, Any]:
    """Pick files with the file input; return the API's JSON once the table shows every file."""
    with page.expect_response(_is_analyze) as info:
        page.set_input_files("#file-input", [str(p) for p in paths])
    data = info.value.json()
    expect(page.locator(ROWS)).to_have_count(len(paths))
    expect(page.locator("#status")).not_to_have_attribute("data-state", "busy")
    return data


def shown_scores(page: Page) -> dict[str, dict[str, float]]:
    """{file: {code: score}} as the table shows it (data-score), for rows that have scores."""
    return page.eval_on_selector_all(
        "#results-table tbody tr.result-row",
        """rows => Object.fromEntries(rows.map(r => [r.dataset.file, Object.fromEntries(
              [...r.querySelectorAll('td.score')]
                  .map(td => [td.dataset.label, Number(td.dataset.score)]))]))""",
    )


def shown_texts(page: Page) -> list[str]:
    return page.eval_on_selector_all("#results-table td.score .val", "els => els.map(e => e.textContent)")


def shown_instruments(page: Page) -> dict[str, list[str]]:
    return page.eval_on_selector_all(
        "#results-table tbody tr.result-row",
        "rows => Object.fromEntries(rows.map(r => [r.dataset.file, "
        "[...r.querySelectorAll('.instruments .chip[data-code]')].map(c => c.dataset.code)]))",
    )


def sent_count(page: Page) -> int:
    return page.evaluate("window.__sent.length")


def query(page: Page, action: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run ``action``; return (what the page sent: url, fields, files) and the API's JSON answer."""
    n = sent_count(page)
    with page.expect_response(_is_analyze) as info:
        action()
    sent = page.evaluate(
        "n => window.__sent.slice(n).map(({url, fields, files}) => ({url, fields,"
        " files: files.map(({field, name, size, type}) => ({field, name, size, type}))}))",
        n,
    )
    assert len(sent) == 1, f"one action, one request: {sent}"
    return sent[0], info.value.json()


def members_of(page: Page) -> list[str]:
    return page.eval_on_selector_all(
        "[data-testid^=weight-slider-]", "els => els.map(e => e.dataset.testid.replace('weight-slider-', ''))"
    )


def assert_table_matches(page: Page, data: dict[str, Any]) -> None:
    """The table's scores and instruments are the API's, file by file."""
    scores, inst = shown_scores(page), shown_instruments(page)
    ok = [r for r in data["results"] if "error" not in r]
    assert sorted(scores) == sorted(r["file"] for r in ok)
    for r in ok:
        assert scores[r["file"]] == pytest.approx(r["scores"], abs=1e-6)
        assert inst[r["file"]] == r["instruments"]


# ----------------------------------------------------------------------------- tests


def test_controls_come_from_models_and_are_labelled(page: Page, models: dict[str, Any]) -> None:
    members = [m["name"] if isinstance(m, dict) else m for m in models["members"]]
    assert sorted(members_of(page)) == sorted(members)
    weights = models.get("weights") or {m: 1.0 for m in members}
    total = sum(weights.get(m, 0.0) for m in members)
    for m in members:  # shown normalised, as a percentage
        pct = page.get_by_test_id(f"weight-pct-{m}").inner_text()
        assert pct == f"{round(100 * weights.get(m, 0.0) / total)} %"
        expect(page.get_by_label(m, exact=True)).to_have_attribute("type", "range")
    codes = [lab["code"] if isinstance(lab, dict) else lab for lab in models["labels"]]
    assert (
        page.eval_on_selector_all(
            "#results-table thead th.label-col[data-label]", "els => els.map(e => e.dataset.label)"
        )
        == codes
    )
    # Accessible names for every control; status is a live region.
    expect(page.get_by_label("One threshold for every instrument")).to_have_attribute("id", "threshold")
    expect(page.get_by_label("Use the tuned per-instrument thresholds")).to_be_checked()
    expect(page.get_by_role("button", name="Start recording")).to_have_attribute("id", "record-btn")
    expect(page.locator("#status")).to_have_attribute("role", "status")
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")
    unlabelled = page.eval_on_selector_all(
        "input, button, select, textarea",
        "els => els.filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')"
        " && !(e.textContent || '').trim()).map(e => e.id || e.outerHTML.slice(0, 80))",
    )
    assert unlabelled == []
    expect(page.locator("#download-csv")).to_be_disabled()  # nothing to download yet
    expect(page.locator("#download-json")).to_be_disabled()


def test_the_page_names_at_most_the_spec_cap_when_it_rethresholds(page: Page, models: dict[str, Any]) -> None:
    """fusion.js's namedLabels is ml.metrics.decide: over the threshold, then the top scores, label order."""
    cap = models.get("max_instruments")
    note = page.get_by_test_id("cap-note")
    if cap is None:
        expect(note).to_be_hidden()
    else:
        expect(note).to_contain_text(f"At most {cap} instrument")
    named = page.evaluate(
        """async () => {
          const { namedLabels } = await import("/static/js/fusion.js");
          const labels = ["a", "b", "c", "d"];
          const scores = { a: 0.5, b: 0.9, c: 0.7, d: 0.2 };
          const th = { a: 0.4, b: 0.4, c: 0.8, d: 0.4 };
          const tie = { a: 0.6, b: 0.6, c: 0.6, d: 0.1 };
          return [namedLabels(labels, scores, th, null), namedLabels(labels, scores, th, 1),
                  namedLabels(labels, scores, th, 5), namedLabels(labels, tie, th, 2)];
        }"""
    )
    assert named == [["a", "b"], ["b"], ["a", "b"], ["a", "b"]]


def test_upload_two_files_shows_a_row_each(
    page: Page, audio: dict[str, Path], models: dict[str, Any], artifacts_dir: Path
) -> None:
    data = upload(page, [audio["tone"], audio["noise"]])
    assert [r["file"] for r in data["results"]] == ["tone-a440.wav", "noise-burst.wav"]
    rows = page.locator(ROWS)
    expect(rows.nth(0)).to_have_attribute("data-file", "tone-a440.wav")
    expect(rows.nth(1)).to_have_attribute("data-file", "noise-burst.wav")
    expect(page.locator("#results-table tbody tr.result-row")).to_have_count(2)
    assert_table_matches(page, data)
    # Instruments appear as readable names, not just codes.
    names = {lab["code"]: lab.get("name") or lab["code"] for lab in models["labels"]}
    chips = page.eval_on_selector_all(
        "#results-table .instruments .chip[data-code]", "els => els.map(e => [e.dataset.code, e.textContent])"
    )
    assert all(text == names[code] for code, text in chips), chips
    expect(page.locator("#status")).to_have_attribute("data-state", "ok")
    expect(page.locator("#status")).to_contain_text("Analysed 2 files")
    expect(page.locator("#file-summary")).to_contain_text("2 files")
    expect(page.locator("#download-csv")).to_be_enabled()
    page.screenshot(path=str(artifacts_dir / "web-page-desktop.png"), full_page=True)


def test_record_from_fake_microphone(page: Page) -> None:
    btn = page.locator("#record-btn")
    btn.click()
    expect(btn).to_have_attribute("aria-pressed", "true")
    expect(btn).to_contain_text("Stop")
    expect(page.locator("#status")).to_contain_text("Recording")
    page.wait_for_timeout(1500)
    sent, data = query(page, btn.click)
    expect(btn).to_have_attribute("aria-pressed", "false")
    expect(btn).to_contain_text("Start recording")

    # The upload is a 16-bit PCM mono WAV named recording-<time>.wav, with sound in it.
    (f,) = sent["files"]
    assert f["field"] == "files" and re.fullmatch(r"recording-[\w.:-]+\.wav", f["name"]), f
    body = base64.b64decode(
        page.evaluate("""async () => {
        const b = new Uint8Array(await window.__sent.at(-1).files[0].blob.arrayBuffer());
        let s = '';
        for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
        return btoa(s); }""")
    )
    assert body[:4] == b"RIFF" and body[8:16] == b"WAVEfmt " and len(body) == f["size"]
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[20:36])
    assert (fmt, channels, bits) == (1, 1, 16)
    pcm, sr = sf.read(io.BytesIO(body), dtype="float32")
    assert sr == rate and 0.8 < len(pcm) / rate < 5.0, len(pcm) / rate
    assert np.sqrt(np.mean(pcm**2)) > 0.01, "the fake microphone's tone should be audible in the take"

    row = page.locator(f"{ROWS}[data-file^='recording-']")
    expect(row).to_have_count(1)
    expect(row).to_have_class(re.compile("result-row"))
    assert (row.get_attribute("data-file") or "").endswith(".wav")
    assert "error" not in data["results"][0], data["results"][0]
    assert_table_matches(page, data)


def test_timeline_heat_map_is_drawn(page: Page, audio: dict[str, Path]) -> None:
    data = upload(page, [audio["tone"], audio["noise"]])
    for i, r in enumerate(data["results"]):
        assert r["segments"], "the API should return time segments"
        canvas = page.get_by_test_id(f"timeline-{i}")
        expect(canvas).to_be_visible()
        stats = canvas.evaluate("""c => {
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let painted = 0; const colours = new Set();
            for (let k = 0; k < d.length; k += 4) {
                if (d[k + 3] > 0) { painted++; colours.add((d[k] << 16) | (d[k + 1] << 8) | d[k + 2]); }
            }
            return {w: c.width, h: c.height, painted, colours: colours.size,
                    drawn: Number(c.dataset.drawn), ticks: Number(c.dataset.ticks),
                    duration: Number(c.dataset.duration), label: c.getAttribute('aria-label')};
        }""")
        assert stats["w"] > 200 and stats["h"] > 100
        assert stats["painted"] > 0.3 * stats["w"] * stats["h"], stats
        assert stats["colours"] > 8, stats  # a heat map, labels and an axis; not a flat fill
        assert stats["drawn"] == len(r["segments"])
        # Each cell's colour encodes that window's score of that instrument (viridis, as the legend).
        cells = canvas.evaluate(
            """(c, segs) => {
            const p = JSON.parse(c.dataset.plot), k = c.width / p.cssWidth, ctx = c.getContext('2d');
            const out = [];
            segs.forEach((s, i) => {
                const t1 = i + 1 < segs.length ? segs[i + 1].start_s : s.end_s;
                const x = p.left + ((s.start_s + t1) / 2 / p.duration) * p.width;
                p.codes.forEach((code, row) => {
                    const y = p.top + (row + 0.5) * p.rowH - 0.5;
                    const px = ctx.getImageData(Math.round(x * k), Math.round(y * k), 1, 1).data;
                    out.push([s.scores[code], [...px]]);
                });
            });
            return out;
        }""",
            r["segments"],
        )
        assert len(cells) == len(r["segments"]) * len(data["labels"])
        for score, rgba in cells:
            assert rgba[3] == 255 and np.abs(np.array(rgba[:3]) - viridis(score)).max() <= 3, (score, rgba)
        assert stats["ticks"] >= 2  # a time axis with at least two ticks
        assert stats["duration"] == pytest.approx(r["duration_s"], abs=0.6)
        assert r["file"] in stats["label"]
    expect(page.locator("#timelines canvas")).to_have_count(2)


def test_non_audio_file_gets_an_error_row(page: Page, audio: dict[str, Path]) -> None:
    data = upload(page, [audio["tone"], audio["bad"]])
    err = next(r for r in data["results"] if r["file"] == "not-audio.wav")
    assert err.get("error"), err
    row = page.locator(f"{ROWS}[data-file='not-audio.wav']")
    expect(row).to_have_class(re.compile("error-row"))
    expect(row).to_contain_text("Rejected")
    code, _, reason = err["error"].partition(": ")  # the API's "<code>: <reason>"
    assert row.locator(".error-text").inner_text().lower() == reason.strip().lower()
    expect(row).to_have_attribute("data-error-code", code)
    expect(page.locator(f"{ROWS}[data-file='tone-a440.wav']")).to_have_class(re.compile("result-row"))
    expect(page.locator("#status")).to_have_attribute("data-state", "warn")
    expect(page.locator("#status")).to_contain_text("not-audio.wav")
    expect(page.locator("#timelines canvas")).to_have_count(1)  # no timeline for the rejected file
    expect(page.get_by_test_id("timeline-0")).to_be_visible()


def test_drop_files_on_drop_zone(page: Page, audio: dict[str, Path]) -> None:
    payload = base64.b64encode(audio["tone"].read_bytes()).decode()
    with page.expect_response(_is_analyze) as info:
        page.evaluate(
            """b64 => {
                const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                const dt = new DataTransfer();
                dt.items.add(new File([bytes], 'dropped.wav', {type: 'audio/wav'}));
                const zone = document.querySelector('#drop-zone');
                const fire = type => zone.dispatchEvent(
                    new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
                fire('dragenter');
                window.__dragging = zone.classList.contains('dragging');
                fire('dragover');
                fire('drop');
            }""",
            payload,
        )
    assert page.evaluate("window.__dragging") is True
    expect(page.locator("#drop-zone")).not_to_have_class(re.compile("dragging"))
    expect(page.locator(f"{ROWS}[data-file='dropped.wav']")).to_have_class(re.compile("result-row"))
    assert_table_matches(page, info.value.json())


def test_phone_viewport_has_no_horizontal_overflow(
    browser: Browser, serve_url: str, audio: dict[str, Path], artifacts_dir: Path
) -> None:
    page, errors = _open_page(
        browser,
        serve_url.rstrip("/"),
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        upload(page, [audio["tone"], audio["noise"], audio["bad"]])
        page.wait_for_timeout(200)  # timelines redraw on resize
        m = page.evaluate("""() => ({
            doc: document.documentElement.scrollWidth, body: document.body.scrollWidth, vw: window.innerWidth,
            widest: Math.max(...[...document.querySelectorAll(
                'header, main, footer, .panel, #timelines canvas')]
                .map(e => e.getBoundingClientRect().right)),
            wrap: (w => ({scroll: w.scrollWidth, client: w.clientWidth}))(
                document.querySelector('.table-wrap')),
        })""")
        assert m["doc"] <= m["vw"] and m["body"] <= m["vw"], m
        assert m["widest"] <= m["vw"] + 0.5, m
        # The wide table scrolls inside its own container instead of the page.
        assert m["wrap"]["client"] <= m["vw"]
        page.screenshot(path=str(artifacts_dir / "web-page-phone.png"), full_page=True)
        box = page.get_by_test_id("timeline-0").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
    finally:
        page.context.close()
    assert not errors, errors


def test_api_key_prompt_when_the_server_requires_one(browser: Browser, serve_url: str) -> None:
    """A server with serve.api_key answers 401: the page asks for the key and sends it from then on.

    The serving fixture runs without a key, so the 401 is simulated for requests lacking the header.
    """
    url = serve_url.rstrip("/")
    ctx = browser.new_context()
    seen: list[str | None] = []

    def guard(route: Any) -> None:
        key = route.request.headers.get("x-api-key")
        seen.append(key)
        if key != "s3cret":
            route.fulfill(
                status=401,
                content_type="application/json",
                body=json.dumps({"detail": "missing or invalid X-API-Key header"}),
            )
        else:
            route.continue_()

    ctx.route(re.compile(r".*/(models|analyze_files/.*)(\?.*)?$"), guard)
    page = ctx.new_page()
    try:
        page.goto(url + "/")
        expect(page.locator("#status")).to_have_attribute("data-state", "error")
        expect(page.locator("#status")).to_contain_text("API key")
        page.get_by_label("This server needs an API key").fill("s3cret")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("[data-testid^=weight-slider-]").first).to_be_visible()
        expect(page.locator("#api-key-form")).to_be_hidden()
        assert seen[0] is None and seen[-1] == "s3cret"
    finally:
        ctx.close()


# ----------------------------------------------------------------------------- re-weighing in the browser


def analyze_requests(page: Page) -> list[Request]:
    """Start recording every request the page makes to the analysis endpoints."""
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if "/analyze_files/" in r.url else None)
    return seen


def server_answer(url: str, paths: list[Path], weights: dict[str, float], **data: str) -> dict[str, Any]:
    """What the API answers for these files and weights (a fresh request from the test, not the page)."""
    files = [("files", (p.name, p.read_bytes(), "audio/wav")) for p in paths]
    r = httpx.post(url + ENDPOINT, files=files, data={"weights": json.dumps(weights), **data}, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def shown_view(page: Page) -> dict[str, Any]:
    """The page's current view, after the re-weighing a moved control schedules for the next frame."""
    page.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    return dict(page.evaluate("JSON.parse(JSON.stringify(window.mpic.state.view))"))


def test_weight_slider_reweighs_in_the_browser_without_a_request(
    local_page: Page, local_url: str, audio: dict[str, Path]
) -> None:
    page, paths = local_page, [audio["tone"], audio["noise"]]
    first = upload(page, paths)
    assert first["windows"]["members"] == members_of(page)  # every member's window scores came back
    sent = page.evaluate("window.__sent.map(e => ({url: e.url, n: e.files.length, fields: e.fields}))")
    assert len(sent) == 1 and "windows=true" in sent[0]["url"] and "threshold" not in sent[0]["fields"]
    assert_table_matches(page, first)
    members = members_of(page)
    requests = analyze_requests(page)
    n_sent = sent_count(page)
    for pcts in ({members[0]: 30, members[1]: 70}, {members[0]: 0, members[1]: 100}, {members[0]: 85}):
        for m, pct in pcts.items():
            page.get_by_test_id(f"weight-slider-{m}").fill(str(pct))
        page.wait_for_timeout(300)  # longer than any debounce the page might have
        assert requests == [] and sent_count(page) == n_sent, "a slider change must send nothing"
        weights = {m: float(page.get_by_test_id(f"weight-slider-{m}").input_value()) for m in members}
        want = server_answer(local_url, paths, weights)
        view = shown_view(page)
        assert view["weights"] == pytest.approx(want["weights"], abs=1e-6)
        for mine, theirs in zip(view["results"], want["results"], strict=True):
            assert mine["scores"] == pytest.approx(theirs["scores"], abs=1e-4)
            assert mine["instruments"] == theirs["instruments"]
            assert len(mine["segments"]) == len(theirs["segments"])
            for a, b in zip(mine["segments"], theirs["segments"], strict=True):
                assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
                assert (a["start_s"], a["end_s"]) == pytest.approx((b["start_s"], b["end_s"]), abs=1e-3)
        shown = shown_scores(page)
        for r in want["results"]:
            assert shown[r["file"]] == pytest.approx(r["scores"], abs=1e-4)
        assert shown_instruments(page) == {r["file"]: r["instruments"] for r in want["results"]}
        expect(page.get_by_test_id("answered-by")).to_contain_text("re-weighed in this browser")
    # The global threshold is applied here too: chips are the labels whose shown score reaches it, at most
    # the spec's max_instruments of them (the highest scores).
    with urllib.request.urlopen(local_url + "/models", timeout=30) as resp:
        cap = json.load(resp).get("max_instruments") or 0
    for thr in (0.01, 0.99):
        page.fill("#threshold", str(thr))
        page.wait_for_function(
            """([thr, cap]) => [...document.querySelectorAll('#results-table tbody tr.result-row')]
               .every(r => {
                 const tds = [...r.querySelectorAll('td.score')];
                 const score = (td) => Number(td.dataset.score);
                 const pass = r.dataset.status === 'ok' ? tds.filter((td) => score(td) >= thr) : [];
                 const hits = tds.filter((td) => td.classList.contains('hit'));
                 const lowestHit = Math.min(...hits.map(score));
                 return hits.length === (cap ? Math.min(cap, pass.length) : pass.length)
                   && hits.every((td) => pass.includes(td))
                   && pass.every((td) => hits.includes(td) || score(td) <= lowestHit);
               })""",
            arg=[thr, cap],
        )
        expect(page.locator("#results-table thead tr.thresholds-row th.label-col").first).to_have_text(
            f"≥ {thr:.2f}"
        )
    page.check("#threshold-tuned")
    page.click("#reset-weights")
    page.wait_for_timeout(300)
    assert requests == [] and sent_count(page) == n_sent
    assert_table_matches(page, first)  # tuned weights and thresholds: the first answer exactly


def test_all_weights_zero_marks_results_stale_and_not_downloadable(
    local_page: Page, audio: dict[str, Path]
) -> None:
    page = local_page
    upload(page, [audio["tone"]])
    requests = analyze_requests(page)
    expect(page.locator("#download-csv")).to_be_enabled()
    for m in members_of(page):
        page.get_by_test_id(f"weight-slider-{m}").fill("0")
    expect(page.get_by_test_id("stale-note")).to_be_visible()
    expect(page.get_by_test_id("stale-note")).to_contain_text("Out of date")
    expect(page.locator("#results-table")).to_have_class(re.compile("stale"))
    expect(page.locator("#timelines")).to_have_class(re.compile("stale"))
    expect(page.locator("#download-csv")).to_be_disabled()
    expect(page.locator("#download-json")).to_be_disabled()
    expect(page.locator("#status")).to_have_attribute("data-state", "warn")
    page.get_by_test_id(f"weight-slider-{members_of(page)[0]}").fill("40")
    expect(page.get_by_test_id("stale-note")).to_be_hidden()
    expect(page.locator("#results-table")).not_to_have_class(re.compile("stale"))
    expect(page.locator("#download-csv")).to_be_enabled()
    assert requests == []


def test_failed_reanalysis_clears_the_old_results(local_page: Page, audio: dict[str, Path]) -> None:
    page = local_page
    upload(page, [audio["tone"]])
    page.route(
        re.compile(r".*/analyze_files/.*"),
        lambda route: route.fulfill(
            status=503,
            content_type="application/json",
            headers={"Retry-After": "5"},
            body=json.dumps({"detail": "member 'res_bpm' is unavailable: overloaded"}),
        ),
    )
    page.set_input_files("#file-input", [str(audio["noise"])])
    expect(page.locator("#status")).to_have_attribute("data-state", "error")
    expect(page.locator("#status")).to_contain_text("overloaded")
    expect(page.locator(ROWS)).to_have_count(0)
    expect(page.locator("#results-table tbody")).to_contain_text("the last analysis failed")
    expect(page.locator("#timelines canvas")).to_have_count(0)
    expect(page.locator("#download-csv")).to_be_disabled()
    expect(page.locator("#download-json")).to_be_disabled()


def test_downloads_record_weights_thresholds_and_version(local_page: Page, audio: dict[str, Path]) -> None:
    page = local_page
    data = upload(page, [audio["tone"], audio["noise"]])
    members = members_of(page)
    page.get_by_test_id(f"weight-slider-{members[0]}").fill("25")
    page.fill("#threshold", "0.3")
    requests = analyze_requests(page)
    view = shown_view(page)
    with page.expect_download() as dl_info:
        page.click("#download-csv")
    dl = dl_info.value
    assert dl.suggested_filename == "wav-files-instruments-predictions.csv"
    rows = list(csv.DictReader(io.StringIO(Path(dl.path()).read_text())))
    assert [r["file"] for r in rows] == [r["file"] for r in data["results"]]
    ens = data["ensemble"]
    for row, r in zip(rows, view["results"], strict=True):
        assert row["ensemble"] == ens["name"]
        assert row["registered_model"] == (ens["registered_model"] or "")
        assert row["version"] == ("" if ens["version"] is None else str(ens["version"]))
        assert row["aggregation"] == data["aggregation"]
        weights = dict(kv.split("=") for kv in row["weights"].split(";"))
        assert {m: float(w) for m, w in weights.items()} == pytest.approx(view["weights"], abs=1e-4)
        assert float(weights[members[0]]) == pytest.approx(0.25 / 1.25 if len(members) == 2 else 0, abs=0.2)
        thresholds = dict(kv.split("=") for kv in row["thresholds"].split(";"))
        assert set(thresholds) == set(data["labels"]) and all(float(t) == 0.3 for t in thresholds.values())
        assert {c: float(row[c]) for c in data["labels"]} == pytest.approx(r["scores"], abs=1e-4)
        assert (row["instruments"].split(";") if row["instruments"] else []) == r["instruments"]
    expect(page.locator("#status")).to_contain_text("Downloaded wav-files-instruments-predictions.csv")

    with page.expect_download() as dl_info:
        page.click("#download-json")
    doc = json.loads(Path(dl_info.value.path()).read_text())
    assert doc["ensemble"] == ens and doc["aggregation"] == data["aggregation"]
    assert doc["weights"] == pytest.approx(view["weights"])
    assert doc["thresholds"] == {c: 0.3 for c in data["labels"]}
    assert [r["scores"] for r in doc["results"]] == [r["scores"] for r in view["results"]]
    assert requests == [], "downloads are written by the page from what it shows: nothing is uploaded"


# ----------------------------------------------------------------------------- accessibility


def test_tab_order_and_focus_ring(local_page: Page, audio: dict[str, Path]) -> None:
    page = local_page
    upload(page, [audio["tone"]])
    page.locator("body").focus()
    page.evaluate("document.activeElement.blur()")
    order: list[str] = []
    for _ in range(40):
        page.keyboard.press("Tab")
        order.append(page.evaluate("(e => e.id || e.dataset.testid || e.tagName)(document.activeElement)"))
        if order[-1] == "timeline-0":
            break
    assert "file-input" not in order, order  # the hidden input takes no tab stop
    assert "pick-btn" in order and order.index("pick-btn") < order.index("record-btn"), order
    assert order[-1] == "timeline-0", f"the heat map must be reachable by keyboard: {order}"
    # Keyboard focus (Tab) on the choose button shows a visible ring.
    page.evaluate("document.activeElement.blur()")
    while page.evaluate("document.activeElement.id") != "pick-btn":
        page.keyboard.press("Tab")
    style = page.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return {style: s.outlineStyle, width: parseFloat(s.outlineWidth), visible:"
        " document.activeElement.matches(':focus-visible')}; })()"
    )
    assert style["visible"] and style["style"] != "none" and style["width"] >= 2, style


def test_heat_map_keyboard_values_and_threshold_marks(local_page: Page, audio: dict[str, Path]) -> None:
    page = local_page
    data = upload(page, [audio["tone"]])
    r = data["results"][0]
    scores = sorted(s["scores"][c] for s in r["segments"] for c in data["labels"])
    thr = round(scores[len(scores) // 2], 2)  # about half the cells reach it
    page.fill("#threshold", str(thr))
    canvas = page.get_by_test_id("timeline-0")
    page.wait_for_function("() => document.querySelector('#timelines canvas').dataset.marks !== undefined")
    marks = canvas.evaluate(
        """(c, segs) => {
        const p = JSON.parse(c.dataset.plot), k = c.width / p.cssWidth, ctx = c.getContext('2d');
        const out = [];
        segs.forEach((s, i) => {
            const t1 = i + 1 < segs.length ? segs[i + 1].start_s : s.end_s;
            const x = p.left + ((s.start_s + t1) / 2 / p.duration) * p.width;
            p.codes.forEach((code, row) => {
                const y = p.top + (row + 1) * p.rowH - 2.5;
                const px = ctx.getImageData(Math.round(x * k), Math.round(y * k), 1, 1).data;
                out.push([s.scores[code], px[0] > 250 && px[1] > 250 && px[2] > 250]);
            });
        });
        return out;
    }""",
        r["segments"],
    )
    marked = [white for _, white in marks]
    assert any(marked) and not all(marked), "some windows reach the threshold, some do not"
    for score, white in marks:
        if abs(score - thr) > 1e-3:  # rounding of the shown score aside
            assert white == (score >= thr), (score, thr)
    # Keyboard: focus the heat map, move with the arrow keys, read the value (live region and tooltip).
    canvas.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    seg, code = r["segments"][1] if len(r["segments"]) > 1 else r["segments"][0], data["labels"][1]
    live = page.get_by_test_id("timeline-live")
    expect(live).to_contain_text(f"score {seg['scores'][code]:.3f}")
    expect(live).to_contain_text(f"{seg['start_s']:.1f}–{seg['end_s']:.1f} s")
    expect(live).to_contain_text("reaches" if seg["scores"][code] >= thr else "below")
    expect(page.locator("#timeline-tip")).to_be_visible()
    assert canvas.get_attribute("data-cursor") == ("1,1" if len(r["segments"]) > 1 else "1,0")
    page.keyboard.press("End")
    expect(live).to_contain_text(f"{r['segments'][-1]['start_s']:.1f}–")
    assert canvas.get_attribute("tabindex") == "0"


def test_page_names_the_ensemble_that_answered(local_page: Page, audio: dict[str, Path]) -> None:
    data = upload(local_page, [audio["tone"]])
    shown = local_page.get_by_test_id("answered-by")
    expect(shown).to_contain_text(f"ensemble {data['ensemble']['name']}")
    expect(shown).to_contain_text("not registered" if data["ensemble"]["version"] is None else "v")


# ----------------------------------------------------------------------------- limits and progress


class SlowBackend:
    """Wraps a backend and delays every score call (a long analysis, to watch the progress)."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self.inner, self.delay_s, self.members = inner, delay_s, list(inner.members)

    def sample_rate(self, member: str) -> int:
        return int(self.inner.sample_rate(member))

    async def score(self, member: str, song: Any) -> Any:
        import asyncio

        await asyncio.sleep(self.delay_s)
        return await self.inner.score(member, song)


@pytest.fixture(scope="module")
def small_slow_url(api_cfg: Any, local_backend: Any) -> Iterator[str]:
    """An app that accepts at most 1.5 MB per request and takes 1.5 s per member call."""
    from ml.config import Config, deep_merge
    from serve.api import create_api

    cfg = Config.model_validate(
        deep_merge(api_cfg.snapshot(), {"serve": {"limits": {"max_upload_bytes": 1_500_000}}})
    )
    with uvicorn_url(create_api(cfg, SlowBackend(local_backend, 1.5))) as url:
        yield url


def test_size_limit_message_suggests_flac_or_mp3(
    browser: Browser, small_slow_url: str, tmp_path: Path
) -> None:
    page, errors = _open_page(browser, small_slow_url)
    try:
        big = tmp_path / "five-seconds-stereo.wav"  # 5 s of 44.1 kHz stereo 16-bit: 0.9 MB each
        sf.write(big, np.zeros((5 * 44100, 2), np.float32) + 0.1, 44100, subtype="PCM_16")
        other = tmp_path / "copy.wav"
        other.write_bytes(big.read_bytes())
        requests = analyze_requests(page)
        page.set_input_files("#file-input", [str(big), str(other)])
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "error")
        for words in ("too large", "1.4 MB", "FLAC", "MP3"):
            expect(status).to_contain_text(words)
        assert requests == []
    finally:
        page.context.close()
    assert not errors, errors


def test_progress_while_uploading_and_analysing(
    browser: Browser, small_slow_url: str, tmp_path: Path
) -> None:
    page, errors = _open_page(browser, small_slow_url)
    try:
        wav = tmp_path / "long.wav"
        sf.write(wav, _tone(8.0, 44100, 220.0), 44100, subtype="PCM_16")  # 0.7 MB
        page.evaluate("""() => {
            window.__phases = [];
            const p = document.querySelector('#progress');
            new MutationObserver(() => {
                const ph = p.dataset.phase || '';
                if (window.__phases.at(-1) !== ph) window.__phases.push(ph);
            }).observe(p, {attributes: true, attributeFilter: ['data-phase']});
        }""")
        page.set_input_files("#file-input", [str(wav)])
        progress = page.get_by_test_id("progress")
        expect(progress).to_be_visible()
        expect(progress).to_contain_text("analysing", timeout=10_000)
        expect(page.locator("#progress-bar")).to_be_visible()
        expect(page.locator(ROWS)).to_have_count(1, timeout=60_000)
        expect(progress).to_be_hidden()
        phases = page.evaluate("window.__phases")
        assert phases[:1] == ["upload"] and "analyse" in phases and phases[-1] == "", phases
    finally:
        page.context.close()
    assert not errors, errors


# ----------------------------------------------------------------------------- API docs offline


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_render_without_internet(browser: Browser, local_url: str, path: str) -> None:
    ctx = browser.new_context()
    blocked: list[str] = []

    def only_local(route: Any) -> None:
        if route.request.url.startswith(local_url + "/"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    ctx.route("**/*", only_local)
    page = ctx.new_page()
    try:
        page.goto(local_url + path)
        if path == "/docs":
            ops = page.locator(".swagger-ui .opblock")
            expect(ops.first).to_be_visible(timeout=30_000)
            assert ops.count() >= 4
            expect(page.locator(".swagger-ui")).to_contain_text("/analyze_files/multi_model")
        else:
            ops = page.locator("[data-section-id^='operation/']")
            expect(ops.first).to_be_attached(timeout=30_000)
            assert ops.count() >= 4
            expect(page.locator("h2", has_text="Analyse files with the fused ensemble")).to_be_visible()
            expect(page.locator("body")).to_contain_text("member_thresholds")  # the typed schema
        assert not [u for u in blocked if not u.startswith("data:")], blocked
    finally:
        ctx.close()
