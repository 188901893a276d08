/* Downloads: what the page shows, with the settings that produced it (no request). */

import { state } from "./dom.js";
import { fmtBytes, setStatus } from "./util.js";

const DOWNLOAD_NAME = "wav-files-instruments-predictions";

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

export function download(format) {
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
