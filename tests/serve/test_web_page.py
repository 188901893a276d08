"""Browser tests of the web page (serve/static) against the live Ray Serve app, in real headless Chromium.

The page is driven like a person would: pick/drop files, move sliders, download, record from a (fake)
microphone. Every check reads what the page shows *and* compares it with what the API returned, so a
page that silently ignores a control fails. Screenshots go to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import struct
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

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
const realFetch = window.fetch;
window.fetch = function (input, init) {
  if (init && init.body instanceof FormData) {
    const entry = {url: String(input), fields: {}, files: []};
    for (const [k, v] of init.body.entries()) {
      if (v instanceof Blob) entry.files.push({field: k, name: v.name, size: v.size, type: v.type, blob: v});
      else entry.fields[k] = v;
    }
    window.__sent.push(entry);
  }
  return realFetch.apply(this, arguments);
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


def test_weight_slider_changes_scores(page: Page, audio: dict[str, Path]) -> None:
    before = upload(page, [audio["tone"], audio["noise"]])
    members = members_of(page)
    assert len(members) >= 2, "the smoke ensemble should have two members"
    dropped, kept = members[0], members[1:]
    old_scores, old_texts = shown_scores(page), shown_texts(page)

    sent, after = query(page, lambda: page.get_by_test_id(f"weight-slider-{dropped}").fill("0"))
    weights = json.loads(sent["fields"]["weights"])
    assert weights[dropped] == 0 and all(weights[m] > 0 for m in kept)
    assert [f["name"] for f in sent["files"]] == ["tone-a440.wav", "noise-burst.wav"]  # the same files again
    assert after["weights"].get(dropped, 0) == 0  # the API lists the members it called
    expect(page.get_by_test_id(f"weight-pct-{dropped}")).to_have_text("0 %")
    expect(page.locator(f".weight-row[data-member='{dropped}']")).to_have_class(re.compile("dropped"))
    expect(page.locator("#status")).to_have_attribute("data-state", "ok")
    assert_table_matches(page, after)  # the table shows the new answer
    change = max(
        abs(a["scores"][c] - b["scores"][c])
        for a, b in zip(before["results"], after["results"], strict=True)
        for c in a["scores"]
    )
    if change < 0.0015:  # below what 3 shown decimals are sure to reveal
        pytest.xfail(
            f"the served members score (nearly) identically (max change {change:.4f}), so dropping "
            f"{dropped!r} cannot visibly change the fused scores (untrained members with one seed?)"
        )
    page.wait_for_function(
        "old => JSON.stringify([...document.querySelectorAll("
        "'#results-table td.score .val')].map(e => e.textContent)) !== old",
        arg=json.dumps(old_texts),
    )
    assert shown_scores(page) != old_scores, "dropping a member must change the shown scores"
    assert shown_texts(page) != old_texts, "the shown (rounded) scores must change too"

    # Every member at 0 %: the page explains instead of sending a request the API would refuse.
    sent_requests: list[Request] = []
    page.on("request", lambda r: sent_requests.append(r) if _is_analyze(r) else None)
    n = sent_count(page)
    for m in kept:
        page.get_by_test_id(f"weight-slider-{m}").fill("0")
    expect(page.locator("#status")).to_have_attribute("data-state", "warn")
    expect(page.locator("#status")).to_contain_text("at least one model")
    page.wait_for_timeout(400)  # longer than the debounce
    assert sent_requests == [] and sent_count(page) == n
    _, reset = query(page, lambda: page.click("#reset-weights"))
    assert_table_matches(page, reset)
    assert_table_matches(page, before)  # tuned weights again: the first answer's scores


def test_threshold_changes_instruments(page: Page, audio: dict[str, Path]) -> None:
    upload(page, [audio["tone"], audio["noise"]])
    seen: dict[float, dict[str, list[str]]] = {}
    for thr in (0.01, 0.99):
        sent, data = query(page, lambda t=thr: page.fill("#threshold", str(t)))
        assert float(sent["fields"]["threshold"]) == pytest.approx(thr)
        assert all(t == pytest.approx(thr) for t in data["thresholds"].values())
        expect(page.locator("#threshold-value")).to_have_text(f"{thr:.2f}")
        expect(page.locator("#threshold-tuned")).not_to_be_checked()
        expect(page.locator("#results-table thead tr.thresholds-row th.label-col").first).to_have_text(
            f"≥ {thr:.2f}"
        )
        page.wait_for_function(
            "thr => [...document.querySelectorAll('#results-table tbody tr.result-row')].every(r =>"
            " [...r.querySelectorAll('td.score')].every(td => td.classList.contains('hit') ==="
            " (r.dataset.status === 'ok' && Number(td.dataset.score) >= thr)))",
            arg=thr,
        )
        assert_table_matches(page, data)
        seen[thr] = shown_instruments(page)
        for r in data["results"]:  # chips are exactly the labels whose score reaches the threshold
            expected = [] if r.get("silent") else [c for c in data["labels"] if r["scores"][c] >= thr]
            assert seen[thr][r["file"]] == expected
    assert seen[0.01] != seen[0.99], "moving the threshold must change the reported instruments"
    assert all(set(seen[0.99][f]) <= set(seen[0.01][f]) for f in seen[0.01])

    # Back to the spec's tuned per-class thresholds: the request carries no threshold.
    sent, data = query(page, lambda: page.check("#threshold-tuned"))
    assert "threshold" not in sent["fields"]
    assert_table_matches(page, data)


def test_downloads_csv_and_json(page: Page, audio: dict[str, Path]) -> None:
    data = upload(page, [audio["tone"], audio["noise"]])
    files = [r["file"] for r in data["results"]]

    with page.expect_download() as dl_info, page.expect_request(_is_analyze) as req_info:
        page.click("#download-csv")
    assert "format=csv" in req_info.value.url
    dl = dl_info.value
    assert page.evaluate("window.__sent.at(-1).files.map(f => f.name)") == files
    assert dl.suggested_filename == "wav-files-instruments-predictions.csv"
    rows = list(csv.reader(io.StringIO(Path(dl.path()).read_text())))
    header, body = rows[0], [r for r in rows[1:] if any(c.strip() for c in r)]
    assert header[0].strip().lower() == "file"
    assert len(body) == 2
    assert [r[0] for r in body] == files
    expect(page.locator("#status")).to_contain_text("Downloaded wav-files-instruments-predictions.csv")

    with page.expect_download() as dl_info:
        page.click("#download-json")
    dl = dl_info.value
    assert dl.suggested_filename == "wav-files-instruments-predictions.json"
    doc = json.loads(Path(dl.path()).read_text())
    assert len(doc["results"]) == 2
    assert [r["file"] for r in doc["results"]] == files
    assert all(set(r["scores"]) == set(data["labels"]) for r in doc["results"])


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
