/* The model list (GET /models): members, weights, thresholds, labels and the spec line. */

import { apiFetch, httpError } from "./api.js";
import { renderWeights } from "./controls.js";
import { el, state } from "./dom.js";
import { analyse } from "./requests.js";
import { renderHeader } from "./table.js";
import { setStatus } from "./util.js";

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

export async function loadModels() {
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
  state.maxInstruments = Number.isInteger(info.max_instruments) ? info.max_instruments : null;
  const cap = state.maxInstruments;
  el.capNote.hidden = cap === null;
  el.capNote.textContent = cap === null ? ""
    : `At most ${cap} instrument${cap === 1 ? " is" : "s are"} named per file: the highest scores among those that reach their thresholds.`;
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
