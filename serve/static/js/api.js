/* Talking to the API: the endpoint, the API key, error bodies turned into sentences, uploads with progress. */

import { el, state } from "./dom.js";

export const ENDPOINT = "/analyze_files/multi_model";

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

export async function httpError(resp) {
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
export function fileError(raw) {
  const text = String(raw || "could not be analysed").trim();
  const m = /^([a-z][a-z0-9_]*):\s*(.+)$/s.exec(text);
  const code = m ? m[1] : "";
  const reason = m ? m[2] : text;
  return { code, reason: reason.charAt(0).toUpperCase() + reason.slice(1) };
}

/** fetch() with the API key header (when the server asked for one); a 401 reveals the key form. */
export async function apiFetch(url, opts = {}) {
  const headers = new Headers(opts.headers || {});
  if (state.apiKey) headers.set("X-API-Key", state.apiKey);
  const resp = await fetch(url, { ...opts, headers });
  if (resp.status === 401) throw keyRefused();
  return resp;
}

/** POST a form with XMLHttpRequest (fetch cannot report upload progress); resolves to a Response. */
export function postWithProgress(url, form, signal, onUpload, onUploaded) {
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

export function keyRefused() {
  el.keyForm.hidden = false;
  if (state.apiKey) el.keyInput.setAttribute("aria-invalid", "true");
  el.keyInput.focus();
  return new Error(state.apiKey ? "The API key was refused: enter a valid key at the top of the page."
    : "This server needs an API key: enter it at the top of the page.");
}
