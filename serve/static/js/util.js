/* Small display helpers: the status line, byte/time formats, instrument chips. */

import { el, state } from "./dom.js";

export function setStatus(text, kind = "info") {
  el.status.dataset.state = kind;
  el.status.textContent = text;
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function fmtTime(s, step = 1) {
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

export function chip(code, extraClass = "") {
  const c = document.createElement("span");
  c.className = `chip ${extraClass}`.trim();
  c.dataset.code = code;
  c.style.setProperty("--h", labelHue(code));
  c.textContent = state.labelName[code] || code;
  c.title = code;
  return c;
}
