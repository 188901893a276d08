/* Files in, analysis requests out: limits checked before upload, progress while it runs. */

import { ENDPOINT, fileError, httpError, keyRefused, postWithProgress } from "./api.js";
import { thresholdNote } from "./controls.js";
import { el, state } from "./dom.js";
import { fmtBytes, setStatus } from "./util.js";
import { clearResults, markStale, refresh, updateDownloadButtons } from "./view.js";

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

export function setFiles(list) {
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

export function anyWeight() {
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

export async function analyse() {
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
