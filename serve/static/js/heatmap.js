/* Drawing one timeline heat map on its canvas (viridis cells, threshold marks, cursor, axis). */

import { state } from "./dom.js";
import { fmtTime } from "./util.js";

// Perceptually uniform "viridis" stops for the heat maps (also used by the CSS legend).
const PALETTE = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

function colorFor(p) {
  const x = Math.min(1, Math.max(0, Number(p) || 0)) * (PALETTE.length - 1);
  const i = Math.min(PALETTE.length - 2, Math.floor(x));
  const f = x - i;
  const a = PALETTE[i];
  const b = PALETTE[i + 1];
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(",")})`;
}

function niceStep(duration, widthPx) {
  const target = Math.max(2, Math.floor(widthPx / 90));
  const raw = duration / target;
  const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600];
  return steps.find((s) => s >= raw) || 600;
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

export function drawTimeline(canvas) {
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
