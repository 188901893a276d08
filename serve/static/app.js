/* mpic web page: upload or record audio, tune the ensemble, see and download predictions.
 *
 * Talks to the same-origin API:
 *   GET  /models                        members, weights, thresholds, labels, spec info
 *   POST /analyze_files/multi_model     multipart `files`, form `weights` (JSON), form `threshold`,
 *                                       query `format=csv|json` for a download
 * No external scripts, fonts or assets: works offline.
 */
(() => {
  "use strict";

  const ENDPOINT = "/analyze_files/multi_model";
  const DOWNLOAD_NAME = "wav-files-instruments-predictions";
  // Perceptually uniform "viridis" stops for the heat maps (also used by the CSS legend).
  const PALETTE = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

  const $ = (sel) => document.querySelector(sel);
  const el = {
    modelInfo: $("#model-info"),
    dropZone: $("#drop-zone"),
    fileInput: $("#file-input"),
    pickBtn: $("#pick-btn"),
    recordBtn: $("#record-btn"),
    recordTime: $("#record-time"),
    recordLevel: $("#record-level"),
    fileSummary: $("#file-summary"),
    weights: $("#weights"),
    resetWeights: $("#reset-weights"),
    thresholdTuned: $("#threshold-tuned"),
    threshold: $("#threshold"),
    thresholdValue: $("#threshold-value"),
    thresholdFieldset: document.querySelector(".threshold-fieldset"),
    status: $("#status"),
    table: $("#results-table"),
    timelines: $("#timelines"),
    tip: $("#timeline-tip"),
    downloadCsv: $("#download-csv"),
    downloadJson: $("#download-json"),
    keyForm: $("#api-key-form"),
    progress: $("#progress"),
    progressBar: $("#progress-bar"),
    progressText: $("#progress-text"),
    staleNote: $("#stale-note"),
    answeredBy: $("#answered-by"),
    live: $("#timeline-live"),
    keyInput: $("#api-key"),
  };

  const state = {
    labels: [], // [{code, name}]
    labelName: {}, // code -> readable name
    members: [], // [{name, arch, front_end, description, sample_rate}]
    specWeights: {}, // member -> weight (normalised to sum 1)
    weights: {}, // member -> weight currently chosen
    specThresholds: {}, // code -> threshold
    limits: {}, // optional: max_files, max_upload_bytes, max_seconds
    thresholdMode: "tuned", // "tuned" (spec per-class) | "global"
    threshold: 0.5,
    files: [], // the last files sent (analysed again only when new files come)
    server: null, // the last answer, with every member's window scores (windows=true)
    view: null, // what the page shows: the answer re-weighed and re-thresholded for the controls
    stale: "", // why the shown results are out of date ("" when current)
    seq: 0,
    controller: null,
    frame: 0,
    cursors: {}, // file -> heat-map keyboard cursor {row, col}, kept across re-weighing
    progressTimer: null,
    ready: false,
    revealResults: false,
    apiKey: sessionStorage.getItem("mpic-api-key") || "",
  };

  // ---------------------------------------------------------------- helpers

  function setStatus(text, kind = "info") {
    el.status.dataset.state = kind;
    el.status.textContent = text;
  }

  function fmtBytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function fmtTime(s, step = 1) {
    if (!Number.isFinite(s)) return "–";
    const decimals = step < 1 ? 1 : 0;
    if (s < 60) return `${s.toFixed(decimals)} s`;
    const m = Math.floor(s / 60);
    const sec = s - m * 60;
    return `${m}:${sec.toFixed(decimals).padStart(decimals ? 4 : 2, "0")}`;
  }

  function labelHue(code) {
    const i = state.labels.findIndex((l) => l.code === code);
    const n = Math.max(state.labels.length, 1);
    return Math.round(((i < 0 ? 0 : i) * 360) / n + 210) % 360;
  }

  function chip(code, extraClass = "") {
    const c = document.createElement("span");
    c.className = `chip ${extraClass}`.trim();
    c.dataset.code = code;
    c.style.setProperty("--h", labelHue(code));
    c.textContent = state.labelName[code] || code;
    c.title = code;
    return c;
  }

  function colorFor(p) {
    const x = Math.min(1, Math.max(0, Number(p) || 0)) * (PALETTE.length - 1);
    const i = Math.min(PALETTE.length - 2, Math.floor(x));
    const f = x - i;
    const a = PALETTE[i];
    const b = PALETTE[i + 1];
    return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
  }

  /** Turn a FastAPI/pydantic error body into one readable sentence. */
  function detailMessage(body, fallback) {
    const d = body && body.detail !== undefined ? body.detail : body;
    if (!d) return fallback;
    if (typeof d === "string") return d;
    if (Array.isArray(d)) {
      return d.map((e) => {
        if (typeof e === "string") return e;
        const loc = Array.isArray(e.loc) ? e.loc.filter((x) => x !== "body" && x !== "query").join(".") : "";
        return loc ? `${loc}: ${e.msg}` : e.msg || JSON.stringify(e);
      }).join("; ");
    }
    if (typeof d === "object" && d.message) return d.message;
    return JSON.stringify(d);
  }

  async function httpError(resp) {
    let body = null;
    try {
      body = await resp.clone().json();
    } catch (_) {
      try {
        body = { detail: (await resp.text()).slice(0, 300) };
      } catch (__) { /* ignore */ }
    }
    const base = resp.status === 413 ? "Upload too large" : `Request failed (HTTP ${resp.status})`;
    const msg = detailMessage(body, "");
    return new Error(msg ? `${base}: ${msg}` : base);
  }

  /** The API's per-file error "<code>: <reason>" → {code, reason} (reason capitalised for display). */
  function fileError(raw) {
    const text = String(raw || "could not be analysed").trim();
    const m = /^([a-z][a-z0-9_]*):\s*(.+)$/s.exec(text);
    const code = m ? m[1] : "";
    const reason = m ? m[2] : text;
    return { code, reason: reason.charAt(0).toUpperCase() + reason.slice(1) };
  }

  /** fetch() with the API key header (when the server asked for one); a 401 reveals the key form. */
  async function apiFetch(url, opts = {}) {
    const headers = new Headers(opts.headers || {});
    if (state.apiKey) headers.set("X-API-Key", state.apiKey);
    const resp = await fetch(url, { ...opts, headers });
    if (resp.status === 401) throw keyRefused();
    return resp;
  }

  // ---------------------------------------------------------------- models

  function normaliseModels(info) {
    let members = info.members || [];
    if (!Array.isArray(members)) {
      members = Object.entries(members).map(([name, v]) => ({ name, ...(v || {}) }));
    }
    members = members.map((m) => (typeof m === "string" ? { name: m } : m));
    let labels = info.labels || [];
    labels = labels.map((l) => (typeof l === "string" ? { code: l, name: l } : { code: l.code, name: l.name || l.code }));
    let thresholds = info.thresholds || {};
    if (Array.isArray(thresholds)) {
      thresholds = Object.fromEntries(labels.map((l, i) => [l.code, thresholds[i]]));
    } else if (typeof thresholds === "number") {
      thresholds = Object.fromEntries(labels.map((l) => [l.code, info.thresholds]));
    }
    const raw = info.weights && Object.keys(info.weights).length
      ? info.weights
      : Object.fromEntries(members.map((m) => [m.name, 1]));
    const weights = Object.fromEntries(members.map((m) => [m.name, Math.max(0, Number(raw[m.name]) || 0)]));
    const total = Object.values(weights).reduce((a, b) => a + b, 0) || 1;
    for (const k of Object.keys(weights)) weights[k] /= total;
    return { members, labels, thresholds, weights, limits: info.limits || {} };
  }

  function describeSpec(info, members) {
    const spec = info.spec && typeof info.spec === "object" ? info.spec : {};
    const version = spec.version ?? info.spec_version ?? info.version;
    const source = spec.source ?? info.spec_source ?? info.source;
    const ensemble = spec.ensemble ?? info.ensemble;
    const parts = [];
    if (ensemble) parts.push(`ensemble ${ensemble}`);
    parts.push(`${members.length} model${members.length === 1 ? "" : "s"}`);
    if (version !== undefined && version !== null) parts.push(`spec v${version}${source ? ` (${source})` : ""}`);
    else if (source) parts.push(`spec: ${source}`);
    if (info.aggregation) parts.push(`aggregation ${info.aggregation}`);
    el.modelInfo.replaceChildren(...parts.map((p) => {
      const s = document.createElement("span");
      s.className = "pill";
      s.textContent = p;
      return s;
    }));
  }

  async function loadModels() {
    setStatus("Loading models…", "busy");
    let info;
    try {
      const resp = await apiFetch("/models", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw await httpError(resp);
      info = await resp.json();
    } catch (err) {
      el.modelInfo.textContent = "Models unavailable.";
      el.weights.replaceChildren(Object.assign(document.createElement("p"), {
        className: "hint", textContent: "Could not load the models.",
      }));
      setStatus(`Could not load the model list: ${err.message}. Reload the page to try again.`, "error");
      return;
    }
    const norm = normaliseModels(info);
    state.members = norm.members;
    state.labels = norm.labels;
    state.labelName = Object.fromEntries(norm.labels.map((l) => [l.code, l.name]));
    state.specThresholds = norm.thresholds;
    state.specWeights = norm.weights;
    state.weights = { ...norm.weights };
    state.limits = norm.limits;
    describeSpec(info, norm.members);
    renderWeights();
    renderHeader(null);
    state.ready = true;
    setStatus("Ready: drop audio files, choose them, or record from the microphone.", "info");
    if (state.files.length) analyse();
  }

  // ---------------------------------------------------------------- weights & threshold controls

  function weightPercents() {
    const total = Object.values(state.weights).reduce((a, b) => a + b, 0);
    return Object.fromEntries(state.members.map((m) => [
      m.name, total > 0 ? (100 * state.weights[m.name]) / total : 0,
    ]));
  }

  function renderWeights() {
    const rows = state.members.map((m) => {
      const row = document.createElement("div");
      row.className = "weight-row";
      row.dataset.member = m.name;
      const id = `weight-${m.name.replace(/[^A-Za-z0-9_-]/g, "_")}`;

      const label = document.createElement("label");
      label.htmlFor = id;
      label.textContent = m.name;

      const slider = document.createElement("input");
      slider.type = "range";
      slider.id = id;
      slider.min = "0";
      slider.max = "100";
      slider.step = "1";
      slider.value = String(Math.round(state.weights[m.name] * 100));
      slider.setAttribute("data-testid", `weight-slider-${m.name}`);
      slider.dataset.member = m.name;

      const out = document.createElement("output");
      out.className = "slider-value";
      out.htmlFor = id;
      out.setAttribute("data-testid", `weight-pct-${m.name}`);

      const meta = document.createElement("span");
      meta.className = "member-meta";
      meta.id = `${id}-desc`;
      const bits = [m.description, [m.arch, m.front_end].filter(Boolean).join(" · "),
        m.sample_rate ? `${Number((m.sample_rate / 1000).toFixed(2))} kHz` : ""]
        .filter(Boolean);
      meta.textContent = bits.join(" — ");
      slider.setAttribute("aria-describedby", meta.id);

      slider.addEventListener("input", () => {
        state.weights[m.name] = Number(slider.value) / 100;
        updateWeightOutputs();
        scheduleRefresh();
      });
      row.append(label, meta, slider, out);
      return row;
    });
    el.weights.replaceChildren(...rows);
    el.resetWeights.disabled = false;
    updateWeightOutputs();
  }

  function updateWeightOutputs() {
    const pct = weightPercents();
    for (const row of el.weights.querySelectorAll(".weight-row")) {
      const name = row.dataset.member;
      const out = row.querySelector("output");
      const slider = row.querySelector("input");
      const text = `${Math.round(pct[name])} %`;
      out.textContent = text;
      slider.setAttribute("aria-valuetext", `${text} of the ensemble`);
      row.classList.toggle("dropped", !(state.weights[name] > 0));
    }
  }

  function resetWeights() {
    state.weights = { ...state.specWeights };
    for (const s of el.weights.querySelectorAll("input[type=range]")) {
      s.value = String(Math.round(state.weights[s.dataset.member] * 100));
    }
    updateWeightOutputs();
    scheduleRefresh();
  }

  /** Re-weigh/re-threshold the last answer once per frame while a control moves: nothing is sent. */
  function scheduleRefresh() {
    cancelAnimationFrame(state.frame);
    state.frame = requestAnimationFrame(() => {
      if (!state.server || state.controller) return; // a request in flight is applied when it lands
      refresh();
      if (!state.stale) setStatus(`Updated in this browser without uploading again${thresholdNote()}`, "ok");
    });
  }

  function updateThresholdUi() {
    el.thresholdValue.textContent = Number(state.threshold).toFixed(2);
    el.threshold.setAttribute("aria-valuetext", Number(state.threshold).toFixed(2));
    el.thresholdTuned.checked = state.thresholdMode === "tuned";
    el.thresholdFieldset.classList.toggle("tuned", state.thresholdMode === "tuned");
  }

  // ---------------------------------------------------------------- files & requests

  function describeFiles(files) {
    if (!files.length) {
      el.fileSummary.textContent = "None yet.";
      return;
    }
    const total = files.reduce((a, f) => a + f.size, 0);
    const names = files.slice(0, 4).map((f) => {
      const s = document.createElement("span");
      s.className = "file-name";
      s.textContent = f.name;
      return s;
    });
    const frag = [document.createTextNode(`${files.length} file${files.length === 1 ? "" : "s"} (${fmtBytes(total)}): `)];
    names.forEach((n, i) => {
      if (i) frag.push(document.createTextNode(", "));
      frag.push(n);
    });
    if (files.length > 4) frag.push(document.createTextNode(`, and ${files.length - 4} more`));
    el.fileSummary.replaceChildren(...frag);
  }

  const COMPRESS_HINT = "Convert the audio to FLAC (lossless, about half the size of WAV) or MP3 "
    + "(about a tenth) and try again.";

  function setFiles(list) {
    const files = Array.from(list || []).filter((f) => f && typeof f.name === "string");
    if (!files.length) return;
    const { max_files: maxFiles, max_upload_bytes: maxBytes } = state.limits;
    if (maxFiles && files.length > maxFiles) {
      setStatus(`Too many files: ${files.length} chosen, at most ${maxFiles} per request.`, "error");
      return;
    }
    const total = files.reduce((a, f) => a + f.size, 0);
    if (maxBytes && total > maxBytes) {
      setStatus(`Files too large: ${fmtBytes(total)} in total, but the server accepts at most `
        + `${fmtBytes(maxBytes)} per request. ${COMPRESS_HINT}`, "error");
      return;
    }
    state.files = files;
    state.revealResults = true; // a new batch: bring the results into view once they arrive
    describeFiles(files);
    if (!state.ready) {
      setStatus("Files received; waiting for the model list…", "busy");
      return;
    }
    analyse();
  }

  function activeWeights() {
    return Object.fromEntries(state.members.map((m) => [m.name, Number(state.weights[m.name].toPrecision(6))]));
  }

  function buildForm() {
    const form = new FormData();
    for (const f of state.files) form.append("files", f, f.name);
    form.append("weights", JSON.stringify(activeWeights()));
    // Every member's window scores come back, so weights and thresholds are applied here afterwards.
    form.append("windows", "true");
    return form;
  }

  function anyWeight() {
    return Object.values(state.weights).some((w) => w > 0);
  }

  function canQuery() {
    if (!state.files.length) return false;
    if (!anyWeight()) {
      setStatus("Every model has weight 0 %: give at least one model a positive weight.", "warn");
      return false;
    }
    return true;
  }

  // ---- progress of an upload and its analysis

  function showProgress(phase, loaded = 0, total = 0) {
    clearInterval(state.progressTimer);
    el.progress.hidden = false;
    el.progress.dataset.phase = phase;
    if (phase === "upload") {
      const frac = total > 0 ? loaded / total : 0;
      el.progressBar.value = frac;
      el.progressText.textContent = `Uploading ${fmtBytes(loaded)} of ${fmtBytes(total)} (${Math.round(100 * frac)} %)…`;
      return;
    }
    el.progressBar.removeAttribute("value"); // indeterminate: the server does not report its progress
    const t0 = performance.now();
    const tick = () => {
      const s = Math.round((performance.now() - t0) / 1000);
      el.progressText.textContent = `Uploaded; analysing on the server${s >= 1 ? ` (${s} s)` : ""}…`;
    };
    tick();
    state.progressTimer = setInterval(tick, 1000);
  }

  function hideProgress() {
    clearInterval(state.progressTimer);
    el.progress.hidden = true;
    el.progress.dataset.phase = "";
  }

  /** POST a form with XMLHttpRequest (fetch cannot report upload progress); resolves to a Response. */
  function postWithProgress(url, form, signal, onUpload, onUploaded) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      if (state.apiKey) xhr.setRequestHeader("X-API-Key", state.apiKey);
      xhr.responseType = "text";
      xhr.upload.addEventListener("progress", (ev) => onUpload(ev.loaded, ev.lengthComputable ? ev.total : 0));
      xhr.upload.addEventListener("load", onUploaded);
      xhr.addEventListener("load", () => {
        const headers = new Headers();
        const type = xhr.getResponseHeader("Content-Type");
        if (type) headers.set("Content-Type", type);
        const status = xhr.status >= 200 && xhr.status <= 599 ? xhr.status : 502;
        resolve(new Response(status === 204 ? null : xhr.responseText, { status, headers }));
      });
      xhr.addEventListener("error", () => reject(new TypeError("network error")));
      xhr.addEventListener("abort", () => reject(new DOMException("aborted", "AbortError")));
      if (signal) signal.addEventListener("abort", () => xhr.abort());
      xhr.send(form);
    });
  }

  async function analyse() {
    if (!canQuery()) return;
    if (state.controller) state.controller.abort();
    const controller = new AbortController();
    state.controller = controller;
    const seq = ++state.seq;
    const n = state.files.length;
    const t0 = performance.now();
    markStale("Out of date: analysing the new files…");
    el.table.setAttribute("aria-busy", "true");
    setStatus(`Analysing ${n} file${n === 1 ? "" : "s"}…`, "busy");
    const total = state.files.reduce((a, f) => a + f.size, 0);
    showProgress("upload", 0, total);
    try {
      const resp = await postWithProgress(`${ENDPOINT}?windows=true`, buildForm(), controller.signal,
        (loaded, all) => { if (seq === state.seq) showProgress("upload", loaded, all || total); },
        () => { if (seq === state.seq) showProgress("analyse"); });
      if (resp.status === 401) throw keyRefused();
      if (!resp.ok) throw await httpError(resp);
      const data = await resp.json();
      if (seq !== state.seq) return; // a newer request superseded this one
      state.server = data;
      state.stale = "";
      refresh();
      if (state.revealResults) {
        state.revealResults = false;
        const panel = el.status.closest("section") || el.status;
        const top = el.status.getBoundingClientRect().top;
        if (top > window.innerHeight - 80 || top < 0) {
          const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
          panel.scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
        }
      }
      const results = data.results || [];
      const bad = results.filter((r) => r.error).length;
      const secs = ((performance.now() - t0) / 1000).toFixed(1);
      const ok = results.length - bad;
      let msg = `Analysed ${ok} file${ok === 1 ? "" : "s"} in ${secs} s`;
      if (bad) {
        const why = results.filter((r) => r.error).slice(0, 3)
          .map((r) => `${r.file}: ${fileError(r.error).reason.replace(/\s*\(.*\)$/, "").toLowerCase()}`)
          .join("; ");
        msg += `; rejected ${bad} (${why}${bad > 3 ? "; …" : ""})`;
      }
      setStatus(`${msg}${thresholdNote()}`, bad ? "warn" : "ok");
    } catch (err) {
      if (err.name === "AbortError" || seq !== state.seq) return;
      // The shown results belong to other files (or none): clear them rather than leave them looking current.
      clearResults("No results: the last analysis failed (see the message above).");
      const offline = err instanceof TypeError ? " (is the server running?)" : "";
      setStatus(`${err.message}${offline}`, "error");
    } finally {
      if (seq === state.seq) {
        hideProgress();
        el.table.removeAttribute("aria-busy");
        state.controller = null;
        updateDownloadButtons();
      }
    }
  }

  function keyRefused() {
    el.keyForm.hidden = false;
    if (state.apiKey) el.keyInput.setAttribute("aria-invalid", "true");
    el.keyInput.focus();
    return new Error(state.apiKey ? "The API key was refused: enter a valid key at the top of the page."
      : "This server needs an API key: enter it at the top of the page.");
  }

  function thresholdNote() {
    return state.thresholdMode === "global"
      ? ` · threshold ${Number(state.threshold).toFixed(2)} for every instrument.`
      : " · tuned per-instrument thresholds.";
  }

  // ---- re-weighing and re-thresholding in the browser (the same math as ml/inference.fuse_windows)

  /** Aggregate one member's windows (W × C) into C scores: mean, max, or s2 (sum ÷ largest class sum). */
  function aggregate(rows, method) {
    const c = rows.length ? rows[0].length : 0;
    const out = new Array(c).fill(method === "max" ? -Infinity : 0);
    for (const row of rows) {
      for (let k = 0; k < c; k += 1) {
        out[k] = method === "max" ? Math.max(out[k], row[k]) : out[k] + row[k];
      }
    }
    if (method === "mean") return out.map((v) => v / Math.max(1, rows.length));
    if (method === "s2") {
      const peak = Math.max(...out);
      return out.map((v) => (peak > 0 ? v / peak : 0));
    }
    return out;
  }

  const round = (x, digits) => Number(x.toFixed(digits));

  /** Weights over the members with a positive weight, summing to 1. */
  function normalisedWeights(weights) {
    const used = Object.entries(weights).filter(([, w]) => w > 0);
    const total = used.reduce((a, [, w]) => a + w, 0);
    return Object.fromEntries(used.map(([m, w]) => [m, w / total]));
  }

  function sameWeights(a, b) {
    const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
    return [...keys].every((k) => Math.abs((a[k] || 0) - (b[k] || 0)) < 1e-6);
  }

  /** One file's fused scores and segments for `weights` from its members' window scores. */
  function refuse(r, weights, labels, aggregation, windowS) {
    const members = r.windows.members;
    const used = Object.keys(weights).filter((m) => members[m]);
    const nW = Math.min(...used.map((m) => members[m].length));
    const scores = new Array(labels.length).fill(0);
    const segs = Array.from({ length: nW }, () => new Array(labels.length).fill(0));
    for (const m of used) {
      const w = weights[m];
      aggregate(members[m], aggregation).forEach((v, k) => { scores[k] += w * v; });
      for (let i = 0; i < nW; i += 1) {
        const row = members[m][i];
        for (let k = 0; k < labels.length; k += 1) segs[i][k] += w * row[k];
      }
    }
    const duration = Number(r.duration_s);
    return {
      scores: Object.fromEntries(labels.map((c, k) => [c, round(scores[k], 4)])),
      segments: segs.map((row, i) => {
        const a = r.windows.starts_s[i];
        return {
          start_s: round(a, 3),
          end_s: round(Math.min(a + windowS, duration), 3),
          scores: Object.fromEntries(labels.map((c, k) => [c, round(row[k], 4)])),
        };
      }),
    };
  }

  function currentThresholds(labels, tuned) {
    if (state.thresholdMode === "global") return Object.fromEntries(labels.map((c) => [c, state.threshold]));
    return { ...tuned };
  }

  /** The results document for the current weights and thresholds, computed from the last answer. */
  function buildView(d) {
    const labels = d.labels || state.labels.map((l) => l.code);
    const weights = normalisedWeights(state.weights);
    const reweighed = !sameWeights(weights, d.weights || {});
    const info = d.windows || {};
    if (reweighed && !(d.results || []).every((r) => r.error || r.windows)) return null;
    const thresholds = currentThresholds(labels, d.thresholds || state.specThresholds);
    const asAnswered = !reweighed && state.thresholdMode === "tuned";
    const results = (d.results || []).map((r) => {
      if (r.error) return { file: r.file, error: r.error };
      const fused = reweighed
        ? refuse(r, weights, labels, info.aggregation || d.aggregation, Number(info.window_s))
        : { scores: r.scores, segments: r.segments };
      const instruments = asAnswered ? r.instruments
        : (r.silent ? [] : labels.filter((c) => fused.scores[c] >= thresholds[c]));
      return {
        file: r.file, duration_s: r.duration_s, scores: fused.scores, instruments, silent: Boolean(r.silent),
        segments: fused.segments,
      };
    });
    return {
      labels,
      weights: Object.fromEntries(Object.entries(weights).map(([m, w]) => [m, round(w, 6)])),
      thresholds,
      aggregation: d.aggregation,
      ensemble: d.ensemble,
      model: d.model ?? null,
      computed: asAnswered ? "server" : "browser",
      results,
    };
  }

  /** Show the last answer under the current controls; no request (the window scores are here). */
  function refresh() {
    if (!state.server) return;
    if (!anyWeight()) {
      markStale("Out of date: every model has weight 0 %. Give a model a positive weight to see results.");
      setStatus("Every model has weight 0 %: give at least one model a positive weight.", "warn");
      return;
    }
    const view = buildView(state.server);
    if (!view) { // an answer without window scores (an older server): ask again
      analyse();
      return;
    }
    state.view = view;
    state.stale = "";
    el.table.classList.remove("stale");
    el.staleNote.hidden = true;
    render(view);
    describeAnswer(view);
    updateDownloadButtons();
  }

  function markStale(reason) {
    state.stale = reason;
    el.table.classList.add("stale");
    el.timelines.classList.add("stale");
    el.staleNote.textContent = reason;
    el.staleNote.hidden = !state.view;
    updateDownloadButtons();
  }

  function clearResults(message) {
    state.server = null;
    state.view = null;
    state.stale = "";
    el.staleNote.hidden = true;
    el.table.classList.remove("stale");
    el.timelines.classList.remove("stale");
    const codes = renderHeader(null);
    const tr = document.createElement("tr");
    tr.className = "empty-row";
    const td = document.createElement("td");
    td.colSpan = 3 + codes.length;
    td.textContent = message;
    tr.append(td);
    el.table.tBodies[0].replaceChildren(tr);
    el.timelines.replaceChildren();
    el.answeredBy.textContent = "";
    updateDownloadButtons();
  }

  function describeAnswer(view) {
    const e = view.ensemble || {};
    const parts = [`ensemble ${e.name || "?"}`];
    if (e.registered_model) parts.push(`registered model ${e.registered_model} v${e.version}`);
    else parts.push("not registered");
    if (e.source) parts.push(`source ${e.source}`);
    parts.push(`aggregation ${view.aggregation}`);
    el.answeredBy.textContent = `Answered by ${parts.join(" · ")}`
      + (view.computed === "browser" ? " · re-weighed in this browser" : "");
    el.answeredBy.dataset.version = e.version == null ? "" : String(e.version);
  }

  function updateDownloadButtons() {
    const on = Boolean(state.view && !state.stale && !state.controller);
    el.downloadCsv.disabled = !on;
    el.downloadJson.disabled = !on;
  }

  // ---- downloads: what the page shows, with the settings that produced it (no request)

  const FORMULA_START = /^[=+\-@\t\r]/;

  function csvCell(value) {
    let s = value === null || value === undefined ? "" : String(value);
    if (FORMULA_START.test(s)) s = `'${s}`; // a spreadsheet would run it as a formula
    return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  }

  function toCsv(view) {
    const e = view.ensemble || {};
    const pairs = (o, d) => Object.entries(o).map(([k, v]) => `${k}=${Number(v).toFixed(d)}`).join(";");
    const tail = [e.name || "", e.registered_model || "", e.version ?? "", view.aggregation,
      pairs(view.weights, 4), pairs(view.thresholds, 4)];
    const head = ["file", "duration_s", "instruments", ...view.labels, "error", "ensemble", "registered_model",
      "version", "aggregation", "weights", "thresholds"];
    const rows = [head];
    for (const r of view.results) {
      if (r.error) {
        rows.push([r.file, "", "", ...view.labels.map(() => ""), r.error, ...tail]);
      } else {
        rows.push([r.file, Number(r.duration_s).toFixed(3), r.instruments.join(";"),
          ...view.labels.map((c) => Number(r.scores[c]).toFixed(4)), "", ...tail]);
      }
    }
    return rows.map((row) => row.map(csvCell).join(",")).join("\n") + "\n";
  }

  function download(format) {
    if (!state.view || state.stale) return;
    const view = state.view;
    const text = format === "csv" ? toCsv(view) : JSON.stringify(view, null, 2);
    const blob = new Blob([text], { type: format === "csv" ? "text/csv" : "application/json" });
    const name = `${DOWNLOAD_NAME}.${format}`;
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.rel = "noopener";
    a.style.display = "none";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    setStatus(`Downloaded ${name} (${fmtBytes(blob.size)}).`, "ok");
  }

  // ---------------------------------------------------------------- results table

  function renderHeader(data) {
    const thead = el.table.tHead;
    const codes = data && Array.isArray(data.labels) && data.labels.length
      ? data.labels : state.labels.map((l) => l.code);
    const thresholds = (data && data.thresholds) || (state.thresholdMode === "tuned" ? state.specThresholds : {});
    const tr = document.createElement("tr");
    const cols = [["File", "file-col"], ["Length", "duration-col"], ["Instruments", "instruments-col"]];
    for (const [text, cls] of cols) {
      const th = document.createElement("th");
      th.scope = "col";
      th.className = cls;
      th.textContent = text;
      tr.append(th);
    }
    for (const code of codes) {
      const th = document.createElement("th");
      th.scope = "col";
      th.className = "label-col";
      th.dataset.label = code;
      const abbr = document.createElement("abbr");
      abbr.title = state.labelName[code] || code;
      abbr.textContent = code;
      th.append(abbr);
      tr.append(th);
    }
    const tr2 = document.createElement("tr");
    tr2.className = "thresholds-row";
    const lead = document.createElement("th");
    lead.scope = "row";
    lead.colSpan = 3;
    lead.textContent = "threshold";
    lead.style.textAlign = "right";
    tr2.append(lead);
    let any = false;
    for (const code of codes) {
      const th = document.createElement("th");
      th.className = "label-col";
      const t = thresholds[code];
      if (t !== undefined && t !== null) {
        th.textContent = `≥ ${Number(t).toFixed(2)}`;
        any = true;
      }
      tr2.append(th);
    }
    thead.replaceChildren(...(any ? [tr, tr2] : [tr]));
    return codes;
  }

  function render(data) {
    const codes = renderHeader(data);
    const results = Array.isArray(data.results) ? data.results : [];
    const rows = results.map((r, i) => resultRow(r, i, codes));
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty-row";
      const td = document.createElement("td");
      td.colSpan = 3 + codes.length;
      td.textContent = "The API returned no results.";
      tr.append(td);
      rows.push(tr);
    }
    el.table.tBodies[0].replaceChildren(...rows);
    renderTimelines(results, codes, data.thresholds || {});
  }

  function resultRow(r, index, codes) {
    const tr = document.createElement("tr");
    tr.dataset.file = r.file;
    tr.dataset.index = String(index);
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = r.file;
    tr.append(th);
    if (r.error) {
      tr.className = "error-row";
      tr.dataset.status = "error";
      const td = document.createElement("td");
      td.className = "error-msg";
      td.colSpan = 2 + codes.length;
      const kind = document.createElement("span");
      kind.className = "error-kind";
      kind.textContent = "Rejected: ";
      const { code, reason } = fileError(r.error);
      const msg = document.createElement("span");
      msg.className = "error-text";
      msg.textContent = reason;
      const box = document.createElement("div");
      box.className = "error-box";
      box.append("⚠ ", kind, msg);
      if (code) {
        tr.dataset.errorCode = code;
        const tag = document.createElement("code");
        tag.className = "error-code";
        tag.textContent = code;
        tag.title = "error code from the API";
        box.append(" ", tag);
      }
      td.append(box);
      tr.append(td);
      return tr;
    }
    tr.className = "result-row";
    tr.dataset.status = r.silent ? "silent" : "ok";
    const dur = document.createElement("td");
    dur.className = "duration";
    dur.textContent = fmtTime(Number(r.duration_s), 0.1);
    tr.append(dur);

    const inst = document.createElement("td");
    inst.className = "instruments";
    const found = Array.isArray(r.instruments) ? r.instruments : [];
    inst.dataset.instruments = found.join(" ");
    const chips = document.createElement("div");
    chips.className = "chips";
    if (r.silent) {
      const s = document.createElement("span");
      s.className = "chip silent";
      s.textContent = "silent";
      s.title = "The recording is below the silence level: no instruments are reported.";
      chips.append(s);
    } else if (!found.length) {
      const s = document.createElement("span");
      s.className = "none";
      s.textContent = "none above threshold";
      chips.append(s);
    }
    for (const code of found) chips.append(chip(code));
    inst.append(chips);
    tr.append(inst);

    const scores = r.scores || {};
    for (const code of codes) {
      const td = document.createElement("td");
      td.className = "score";
      td.dataset.label = code;
      const p = Number(scores[code]);
      if (Number.isFinite(p)) {
        td.dataset.score = String(p);
        td.style.setProperty("--p", String(Math.min(1, Math.max(0, p))));
        td.title = `${state.labelName[code] || code}: ${p.toFixed(4)}`;
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.setAttribute("aria-hidden", "true");
        const v = document.createElement("span");
        v.className = "val";
        v.textContent = p.toFixed(3);
        td.append(bar, v);
        if (found.includes(code)) td.classList.add("hit");
      } else {
        td.textContent = "–";
      }
      tr.append(td);
    }
    return tr;
  }

  // ---------------------------------------------------------------- timelines (canvas heat maps)

  function niceStep(duration, widthPx) {
    const target = Math.max(2, Math.floor(widthPx / 90));
    const raw = duration / target;
    const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
    return steps.find((s) => s >= raw) || 600;
  }

  function renderTimelines(results, codes, thresholds) {
    const cards = [];
    results.forEach((r, i) => {
      if (r.error) return;
      const fig = document.createElement("figure");
      fig.className = "timeline-card";
      fig.dataset.file = r.file;
      const cap = document.createElement("figcaption");
      const name = document.createElement("span");
      name.className = "file-name";
      name.textContent = r.file;
      const meta = document.createElement("span");
      meta.className = "meta";
      const segs = Array.isArray(r.segments) ? r.segments : [];
      meta.textContent = `${fmtTime(Number(r.duration_s), 0.1)} · ${segs.length} window${segs.length === 1 ? "" : "s"}`;
      cap.append(name, meta);
      const canvas = document.createElement("canvas");
      canvas.setAttribute("data-testid", `timeline-${i}`);
      canvas.setAttribute("role", "img");
      const found = (r.instruments || []).map((c) => state.labelName[c] || c);
      canvas.setAttribute("aria-label", `Timeline heat map of ${r.file}: instrument scores over `
        + `${fmtTime(Number(r.duration_s), 0.1)}; detected: ${found.length ? found.join(", ") : "none"}. `
        + "Arrow keys read the score of each window and instrument.");
      canvas.tabIndex = 0; // keyboard access to the per-window values
      canvas._result = r;
      canvas._codes = codes;
      canvas._thresholds = thresholds;
      const prev = state.cursors[r.file];
      canvas._cursor = prev && prev.col < segs.length ? prev : null;
      attachTip(canvas);
      attachKeys(canvas);
      fig.append(cap, canvas);
      if (!segs.length) {
        const p = document.createElement("p");
        p.className = "hint";
        p.textContent = "No time segments were returned for this file.";
        fig.append(p);
      }
      cards.push(fig);
    });
    const focused = document.activeElement && document.activeElement.closest
      && document.activeElement.closest("#timelines figure");
    const refocus = focused ? focused.dataset.file : null;
    el.timelines.replaceChildren(...cards);
    el.timelines.classList.remove("stale");
    if (refocus !== null) { // the controls moved while a heat map had focus: keep it
      const again = cards.find((c) => c.dataset.file === refocus);
      if (again) again.querySelector("canvas").focus({ preventScroll: true });
    }
    if (!cards.length && results.length) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = "No timelines: no file could be analysed.";
      el.timelines.append(p);
    }
    drawAllTimelines();
  }

  function drawAllTimelines() {
    for (const c of el.timelines.querySelectorAll("canvas")) drawTimeline(c);
  }

  function themeColor(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function timelineGeometry(canvas) {
    const codes = canvas._codes;
    const width = Math.max(200, canvas.parentElement.clientWidth - 20);
    const compact = width < 520;
    const rowH = compact ? 16 : 18;
    const font = `${compact ? 11 : 12}px ${getComputedStyle(document.body).fontFamily}`;
    const ctx = canvas.getContext("2d");
    ctx.font = `bold ${font}`; // detected instruments are drawn in bold: measure the wider face
    const names = codes.map((c) => (compact ? c : state.labelName[c] || c));
    const gutter = Math.ceil(Math.max(...names.map((n) => ctx.measureText(n).width), 20)) + 22;
    const top = 4;
    const axisH = 24;
    const plotW = Math.max(40, width - gutter - 8);
    return { codes, width, height: top + rowH * codes.length + axisH, rowH, font, names, gutter, top, plotW };
  }

  function drawTimeline(canvas) {
    const r = canvas._result;
    if (!r || !canvas.parentElement) return;
    const g = timelineGeometry(canvas);
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.round(g.width * dpr);
    canvas.height = Math.round(g.height * dpr);
    canvas.style.height = `${g.height}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, g.width, g.height);
    ctx.font = g.font;

    const segs = Array.isArray(r.segments) ? r.segments : [];
    const lastEnd = segs.reduce((a, s) => Math.max(a, Number(s.end_s) || 0), 0);
    const duration = Math.max(Number(r.duration_s) || 0, lastEnd, 0.001);
    const x = (t) => g.gutter + (t / duration) * g.plotW;
    canvas._geo = { ...g, duration, x };
    const found = new Set(r.instruments || []);
    const text = themeColor("--text", "#1c1f2e");
    const muted = themeColor("--muted", "#5b6072");
    const ok = themeColor("--ok", "#137a4b");

    // Background of the plot area (time without a window), then one cell per window and label.
    ctx.fillStyle = themeColor("--bg", "#eee");
    ctx.fillRect(g.gutter, g.top, g.plotW, g.rowH * g.codes.length);
    segs.forEach((s, k) => {
      const t0 = Number(s.start_s) || 0;
      const next = k + 1 < segs.length ? Number(segs[k + 1].start_s) : Number(s.end_s);
      const t1 = Math.max(t0, Math.min(Number(s.end_s) || next, next));
      const x0 = x(t0);
      const w = Math.max(1, x(t1) - x0);
      g.codes.forEach((code, row) => {
        ctx.fillStyle = colorFor(s.scores ? s.scores[code] : 0);
        // +0.5 px overlap hides hairline seams between neighbouring cells.
        ctx.fillRect(x0, g.top + row * g.rowH, w + 0.5, g.rowH - 1);
      });
    });

    // Threshold marks: a white bar along the bottom of every window whose score reaches the row's threshold.
    const th = canvas._thresholds || {};
    const marks = [];
    segs.forEach((s, k) => {
      const t0 = Number(s.start_s) || 0;
      const next = k + 1 < segs.length ? Number(segs[k + 1].start_s) : Number(s.end_s);
      const t1 = Math.max(t0, Math.min(Number(s.end_s) || next, next));
      g.codes.forEach((code, row) => {
        const t = Number(th[code]);
        const p = Number(s.scores ? s.scores[code] : NaN);
        if (!(Number.isFinite(t) && Number.isFinite(p) && p >= t)) return;
        ctx.fillStyle = "#ffffff";
        ctx.fillRect(x(t0), g.top + (row + 1) * g.rowH - 4, Math.max(1, x(t1) - x(t0)) + 0.5, 3);
        marks.push(`${k}:${row}`);
      });
    });
    canvas.dataset.marks = String(marks.length);

    // The keyboard cursor (focused heat map): a double outline, visible on every colour.
    const cur = canvas._cursor;
    if (cur && document.activeElement === canvas && segs[cur.col]) {
      const s = segs[cur.col];
      const next = cur.col + 1 < segs.length ? Number(segs[cur.col + 1].start_s) : Number(s.end_s);
      const x0 = x(Number(s.start_s));
      const w = Math.max(3, x(next) - x0);
      const y0 = g.top + cur.row * g.rowH;
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#000000";
      ctx.strokeRect(x0 + 1, y0 + 1, w - 2, g.rowH - 3);
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#ffffff";
      ctx.strokeRect(x0 - 0.5, y0 - 0.5, w + 1, g.rowH);
    }

    // Row labels; detected instruments in bold with a marker.
    ctx.textBaseline = "middle";
    g.codes.forEach((code, row) => {
      const y = g.top + row * g.rowH + g.rowH / 2;
      const hit = found.has(code);
      ctx.font = `${hit ? "bold " : ""}${g.font}`;
      ctx.fillStyle = hit ? ok : muted;
      ctx.textAlign = "right";
      ctx.fillText(g.names[row], g.gutter - 14, y);
      if (hit) {
        ctx.beginPath();
        ctx.arc(g.gutter - 7, y, 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    });
    ctx.font = g.font;

    // Time axis.
    const axisY = g.top + g.rowH * g.codes.length;
    ctx.strokeStyle = muted;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(g.gutter, axisY + 0.5);
    ctx.lineTo(g.gutter + g.plotW, axisY + 0.5);
    ctx.stroke();
    const step = niceStep(duration, g.plotW);
    ctx.fillStyle = text;
    ctx.textBaseline = "top";
    const ticks = [];
    for (let t = 0; t <= duration + 1e-9; t += step) ticks.push(t);
    ticks.forEach((t, i) => {
      const tx = Math.round(x(t)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(tx, axisY);
      ctx.lineTo(tx, axisY + 4);
      ctx.stroke();
      ctx.textAlign = i === 0 ? "left" : (tx > g.gutter + g.plotW - 20 ? "right" : "center");
      ctx.fillText(fmtTime(t, step), tx, axisY + 6);
    });
    // Plot geometry in CSS pixels, for tests and tools that read values back from the picture.
    canvas.dataset.plot = JSON.stringify({ left: g.gutter, width: g.plotW, top: g.top, rowH: g.rowH,
      cssWidth: g.width, duration, codes: g.codes });
    canvas.dataset.drawn = String(segs.length);
    canvas.dataset.duration = String(duration);
    canvas.dataset.ticks = String(ticks.length);
  }

  function attachTip(canvas) {
    const hide = () => { el.tip.hidden = true; };
    canvas.addEventListener("mouseleave", hide);
    canvas.addEventListener("mousemove", (ev) => {
      const g = canvas._geo;
      const r = canvas._result;
      if (!g || !r || !Array.isArray(r.segments) || !r.segments.length) return hide();
      const rect = canvas.getBoundingClientRect();
      const px = ev.clientX - rect.left;
      const py = ev.clientY - rect.top;
      const row = Math.floor((py - g.top) / g.rowH);
      if (px < g.gutter || px > g.gutter + g.plotW || row < 0 || row >= g.codes.length) return hide();
      const t = ((px - g.gutter) / g.plotW) * g.duration;
      let seg = r.segments[0];
      for (const s of r.segments) if (Number(s.start_s) <= t) seg = s;
      el.tip.textContent = cellText(canvas, row, r.segments.indexOf(seg));
      el.tip.hidden = false;
      const tipW = el.tip.offsetWidth;
      el.tip.style.left = `${Math.min(window.innerWidth - tipW - 8, ev.clientX + 12)}px`;
      el.tip.style.top = `${ev.clientY + 14}px`;
    });
  }

  /** The text for one heat-map cell: instrument, window, score and how it compares with the threshold. */
  function cellText(canvas, row, col) {
    const r = canvas._result;
    const seg = r.segments[col];
    const code = canvas._codes[row];
    const p = Number(seg.scores && seg.scores[code]);
    const t = Number((canvas._thresholds || {})[code]);
    let text = `${state.labelName[code] || code} · ${Number(seg.start_s).toFixed(1)}–`
      + `${Number(seg.end_s).toFixed(1)} s · score ${Number.isFinite(p) ? p.toFixed(3) : "–"}`;
    if (Number.isFinite(t) && Number.isFinite(p)) {
      text += ` · ${p >= t ? "reaches" : "below"} the threshold ${t.toFixed(2)}`;
    }
    return text;
  }

  function attachKeys(canvas) {
    const show = () => {
      const r = canvas._result;
      const n = Array.isArray(r.segments) ? r.segments.length : 0;
      if (!n) return;
      const cur = canvas._cursor || { row: 0, col: 0 };
      canvas._cursor = cur;
      state.cursors[r.file] = cur;
      const text = cellText(canvas, cur.row, cur.col);
      canvas.dataset.cursor = `${cur.row},${cur.col}`;
      canvas.setAttribute("aria-description", text);
      el.live.textContent = text;
      el.tip.textContent = text;
      el.tip.hidden = false;
      drawTimeline(canvas);
      const g = canvas._geo;
      const rect = canvas.getBoundingClientRect();
      const seg = r.segments[cur.col];
      const left = rect.left + g.x(Number(seg.start_s));
      el.tip.style.left = `${Math.max(8, Math.min(window.innerWidth - el.tip.offsetWidth - 8, left))}px`;
      el.tip.style.top = `${rect.top + g.top + (cur.row + 1) * g.rowH + 6}px`;
    };
    canvas.addEventListener("focus", show);
    canvas.addEventListener("blur", () => {
      el.tip.hidden = true;
      drawTimeline(canvas);
    });
    canvas.addEventListener("keydown", (ev) => {
      const r = canvas._result;
      const n = Array.isArray(r.segments) ? r.segments.length : 0;
      if (!n) return;
      const cur = canvas._cursor || { row: 0, col: 0 };
      const rows = canvas._codes.length;
      const page = Math.max(1, Math.round(n / 10));
      const moves = {
        ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0],
        PageUp: [0, -page], PageDown: [0, page], Home: [0, -n], End: [0, n],
      };
      const mv = moves[ev.key];
      if (!mv) return;
      ev.preventDefault();
      canvas._cursor = {
        row: Math.min(rows - 1, Math.max(0, cur.row + mv[0])),
        col: Math.min(n - 1, Math.max(0, cur.col + mv[1])),
      };
      show();
    });
  }

  let resizeFrame = 0;
  let lastWidth = 0;
  const ro = new ResizeObserver((entries) => {
    const w = entries[0].contentRect.width;
    if (Math.abs(w - lastWidth) < 1) return;
    lastWidth = w;
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(drawAllTimelines);
  });
  ro.observe(el.timelines);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener?.("change", drawAllTimelines);

  // ---------------------------------------------------------------- microphone recording

  const rec = {
    active: false,
    starting: false,
    stream: null,
    ctx: null,
    node: null,
    source: null,
    sink: null,
    chunks: [],
    length: 0,
    sampleRate: 44100,
    timer: null,
    t0: 0,
  };

  function setRecordUi(on) {
    el.recordBtn.classList.toggle("recording", on);
    el.recordBtn.setAttribute("aria-pressed", String(on));
    el.recordBtn.querySelector(".rec-label").textContent = on ? "Stop" : "Start recording";
    el.recordTime.classList.toggle("live", on);
    if (!on) el.recordLevel.style.width = "0";
  }

  function onSamples(data) {
    if (!rec.active) return;
    rec.chunks.push(data);
    rec.length += data.length;
    let sum = 0;
    for (let i = 0; i < data.length; i += 1) sum += data[i] * data[i];
    const rms = Math.sqrt(sum / Math.max(1, data.length));
    const level = Math.min(1, Math.max(0, (20 * Math.log10(rms + 1e-9) + 60) / 60));
    el.recordLevel.style.width = `${Math.round(level * 100)}%`;
    const maxS = Math.min(Number(state.limits.max_seconds) || 600, 600);
    if (rec.length / rec.sampleRate >= maxS) stopRecording();
  }

  async function startRecording() {
    if (rec.active || rec.starting) return;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("Recording is not available here: the browser allows the microphone only on HTTPS or localhost pages.", "error");
      return;
    }
    rec.starting = true;
    el.recordBtn.disabled = true;
    setStatus("Asking for microphone access…", "busy");
    try {
      rec.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      });
      const Ctx = window.AudioContext || window.webkitAudioContext;
      rec.ctx = new Ctx();
      if (rec.ctx.state === "suspended") await rec.ctx.resume();
      rec.sampleRate = rec.ctx.sampleRate;
      rec.source = rec.ctx.createMediaStreamSource(rec.stream);
      rec.sink = rec.ctx.createGain();
      rec.sink.gain.value = 0; // keep the graph pulling without playing the microphone back
      rec.chunks = [];
      rec.length = 0;
      rec.node = await captureNode(rec.ctx);
      rec.source.connect(rec.node);
      rec.node.connect(rec.sink);
      rec.sink.connect(rec.ctx.destination);
      rec.active = true;
      rec.t0 = performance.now();
      rec.timer = setInterval(() => {
        el.recordTime.textContent = clock((performance.now() - rec.t0) / 1000);
      }, 200);
      el.recordTime.textContent = "0:00";
      setRecordUi(true);
      setStatus("Recording… press Stop to analyse the take.", "busy");
    } catch (err) {
      cleanupRecording();
      const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
      const missing = err && (err.name === "NotFoundError" || err.name === "OverconstrainedError");
      setStatus(denied ? "Microphone access was denied: allow it in the browser to record."
        : missing ? "No microphone was found." : `Could not start recording: ${err.message || err}`, "error");
    } finally {
      rec.starting = false;
      el.recordBtn.disabled = false;
    }
  }

  function clock(s) {
    const m = Math.floor(s / 60);
    return `${m}:${String(Math.floor(s - m * 60)).padStart(2, "0")}`;
  }

  /** An AudioWorklet capture node, or a ScriptProcessor where worklets are unavailable. */
  async function captureNode(ctx) {
    if (ctx.audioWorklet && window.AudioWorkletNode) {
      try {
        await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
        const node = new AudioWorkletNode(ctx, "mpic-recorder", {
          numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1,
          channelCountMode: "explicit", channelInterpretation: "speakers",
        });
        node.port.onmessage = (ev) => onSamples(ev.data);
        return node;
      } catch (_) { /* fall back below */ }
    }
    const node = ctx.createScriptProcessor(4096, 1, 1);
    node.onaudioprocess = (ev) => onSamples(new Float32Array(ev.inputBuffer.getChannelData(0)));
    return node;
  }

  function cleanupRecording() {
    clearInterval(rec.timer);
    rec.active = false;
    try {
      if (rec.node && rec.node.port) rec.node.port.onmessage = null;
      if (rec.node) rec.node.disconnect();
      if (rec.source) rec.source.disconnect();
      if (rec.sink) rec.sink.disconnect();
    } catch (_) { /* already disconnected */ }
    if (rec.stream) rec.stream.getTracks().forEach((t) => t.stop());
    if (rec.ctx && rec.ctx.state !== "closed") rec.ctx.close().catch(() => {});
    rec.stream = rec.ctx = rec.node = rec.source = rec.sink = null;
    setRecordUi(false);
  }

  function stopRecording() {
    if (!rec.active) return;
    const chunks = rec.chunks;
    const length = rec.length;
    const rate = rec.sampleRate;
    cleanupRecording();
    rec.chunks = [];
    if (length < rate * 0.1) {
      setStatus("The recording was too short (under 0.1 s); nothing was sent.", "warn");
      return;
    }
    const samples = new Float32Array(length);
    let off = 0;
    for (const c of chunks) {
      samples.set(c, off);
      off += c.length;
    }
    const stamp = new Date().toISOString().replace(/\.\d+Z$/, "Z").replace(/:/g, "-");
    const file = new File([encodeWav(samples, rate)], `recording-${stamp}.wav`, { type: "audio/wav" });
    setFiles([file]);
  }

  /** Mono float samples → a 16-bit PCM WAV file (RIFF). */
  function encodeWav(samples, sampleRate) {
    const bytesPerSample = 2;
    const dataBytes = samples.length * bytesPerSample;
    const buf = new ArrayBuffer(44 + dataBytes);
    const v = new DataView(buf);
    const str = (o, s) => { for (let i = 0; i < s.length; i += 1) v.setUint8(o + i, s.charCodeAt(i)); };
    str(0, "RIFF");
    v.setUint32(4, 36 + dataBytes, true);
    str(8, "WAVE");
    str(12, "fmt ");
    v.setUint32(16, 16, true); // fmt chunk size
    v.setUint16(20, 1, true); // PCM
    v.setUint16(22, 1, true); // mono
    v.setUint32(24, sampleRate, true);
    v.setUint32(28, sampleRate * bytesPerSample, true); // byte rate
    v.setUint16(32, bytesPerSample, true); // block align
    v.setUint16(34, 16, true); // bits per sample
    str(36, "data");
    v.setUint32(40, dataBytes, true);
    let o = 44;
    for (let i = 0; i < samples.length; i += 1, o += 2) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      v.setInt16(o, s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff), true);
    }
    return buf;
  }

  // ---------------------------------------------------------------- wiring

  el.pickBtn.addEventListener("click", (ev) => {
    ev.stopPropagation();
    el.fileInput.click();
  });
  el.dropZone.addEventListener("click", (ev) => {
    if (ev.target === el.fileInput || ev.target.closest("button")) return;
    el.fileInput.click();
  });
  el.fileInput.addEventListener("change", () => {
    setFiles(el.fileInput.files);
    el.fileInput.value = ""; // picking the same files again still triggers a change
  });

  // Files may be dropped anywhere on the page; the drop zone lights up while dragging.
  let dragDepth = 0;
  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    dragDepth += 1;
    el.dropZone.classList.add("dragging");
  });
  document.addEventListener("dragover", (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.dropZone.classList.remove("dragging");
  });
  document.addEventListener("drop", (ev) => {
    if (!ev.dataTransfer) return;
    ev.preventDefault();
    dragDepth = 0;
    el.dropZone.classList.remove("dragging");
    if (ev.dataTransfer.files && ev.dataTransfer.files.length) setFiles(ev.dataTransfer.files);
  });

  el.keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.apiKey = el.keyInput.value.trim();
    sessionStorage.setItem("mpic-api-key", state.apiKey);
    el.keyInput.removeAttribute("aria-invalid");
    el.keyForm.hidden = true;
    if (state.ready) analyse();
    else loadModels();
  });
  el.resetWeights.addEventListener("click", resetWeights);
  el.thresholdTuned.addEventListener("change", () => {
    state.thresholdMode = el.thresholdTuned.checked ? "tuned" : "global";
    updateThresholdUi();
    scheduleRefresh();
  });
  el.threshold.addEventListener("input", () => {
    state.threshold = Number(el.threshold.value);
    state.thresholdMode = "global";
    updateThresholdUi();
    scheduleRefresh();
  });
  el.downloadCsv.addEventListener("click", () => download("csv"));
  el.downloadJson.addEventListener("click", () => download("json"));
  el.recordBtn.addEventListener("click", () => (rec.active ? stopRecording() : startRecording()));

  state.threshold = Number(el.threshold.value);
  updateThresholdUi();
  updateDownloadButtons();
  loadModels();

  // A small hook for tests and debugging (read-only view of the page state).
  window.mpic = { state, encodeWav };
})();
