/* The weight sliders and the threshold controls; moving them re-weighs in the browser. */

import { el, state } from "./dom.js";
import { setStatus } from "./util.js";
import { refresh } from "./view.js";

function weightPercents() {
  const total = Object.values(state.weights).reduce((a, b) => a + b, 0);
  return Object.fromEntries(state.members.map((m) => [
    m.name, total > 0 ? (100 * state.weights[m.name]) / total : 0,
  ]));
}

export function renderWeights() {
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

export function resetWeights() {
  state.weights = { ...state.specWeights };
  for (const s of el.weights.querySelectorAll("input[type=range]")) {
    s.value = String(Math.round(state.weights[s.dataset.member] * 100));
  }
  updateWeightOutputs();
  scheduleRefresh();
}

/** Re-weigh/re-threshold the last answer once per frame while a control moves: nothing is sent. */
export function scheduleRefresh() {
  cancelAnimationFrame(state.frame);
  state.frame = requestAnimationFrame(() => {
    if (!state.server || state.controller) return; // a request in flight is applied when it lands
    refresh();
    if (!state.stale) setStatus(`Updated in this browser without uploading again${thresholdNote()}`, "ok");
  });
}

export function updateThresholdUi() {
  el.thresholdValue.textContent = Number(state.threshold).toFixed(2);
  el.threshold.setAttribute("aria-valuetext", Number(state.threshold).toFixed(2));
  el.thresholdTuned.checked = state.thresholdMode === "tuned";
  el.thresholdFieldset.classList.toggle("tuned", state.thresholdMode === "tuned");
}

export function thresholdNote() {
  return state.thresholdMode === "global"
    ? ` · threshold ${Number(state.threshold).toFixed(2)} for every instrument.`
    : " · tuned per-instrument thresholds.";
}
