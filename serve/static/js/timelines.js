/* The timeline cards: one heat map per file, with a hover tip and keyboard reading of each window. */

import { el, state } from "./dom.js";
import { drawTimeline } from "./heatmap.js";
import { fmtTime } from "./util.js";

export function renderTimelines(results, codes, thresholds) {
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

/** Redraw the heat maps when their column changes width or the colour scheme flips. */
export function watchTimelines() {
  const ro = new ResizeObserver((entries) => {
    const w = entries[0].contentRect.width;
    if (Math.abs(w - lastWidth) < 1) return;
    lastWidth = w;
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(drawAllTimelines);
  });
  ro.observe(el.timelines);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener?.("change", drawAllTimelines);
}
