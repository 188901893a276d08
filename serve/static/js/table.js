/* The results table: one row per file, a column per instrument, and the thresholds row. */

import { fileError } from "./api.js";
import { el, state } from "./dom.js";
import { renderTimelines } from "./timelines.js";
import { chip, fmtTime } from "./util.js";

export function renderHeader(data) {
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

export function render(data) {
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
