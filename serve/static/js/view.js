/* The shown results: current, stale (out of date) or cleared, and the buttons that depend on them. */

import { el, state } from "./dom.js";
import { buildView } from "./fusion.js";
import { analyse, anyWeight } from "./requests.js";
import { render, renderHeader } from "./table.js";
import { setStatus } from "./util.js";

/** Show the last answer under the current controls; no request (the window scores are here). */
export function refresh() {
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

export function markStale(reason) {
  state.stale = reason;
  el.table.classList.add("stale");
  el.timelines.classList.add("stale");
  el.staleNote.textContent = reason;
  el.staleNote.hidden = !state.view;
  updateDownloadButtons();
}

export function clearResults(message) {
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

export function updateDownloadButtons() {
  const on = Boolean(state.view && !state.stale && !state.controller);
  el.downloadCsv.disabled = !on;
  el.downloadJson.disabled = !on;
}
