/* Re-weighing and re-thresholding in the browser (the same math as ml/inference.fuse_windows). */

import { state } from "./dom.js";

/** Aggregate one member's windows (W × C) into C scores: mean, max, or s2 (sum ÷ largest class sum). */
function aggregate(rows, method) {
  const c = rows.length ? rows[0].length : 0;
  const out = new Array(c).fill(method === "max" ? -Infinity : 0);
  for (const row of rows) {
    for (let k = 0; k < c; k += 1) {
      out[k] = method === "max" ? Math.max(out[k], row[k]) : out[k] + row[k];
    }
  }
  if (method === "mean") return out.map((v) => v / Math.max(1, rows.length));
  if (method === "s2") {
    const peak = Math.max(...out);
    return out.map((v) => (peak > 0 ? v / peak : 0));
  }
  return out;
}

const round = (x, digits) => Number(x.toFixed(digits));

/** Weights over the members with a positive weight, summing to 1. */
function normalisedWeights(weights) {
  const used = Object.entries(weights).filter(([, w]) => w > 0);
  const total = used.reduce((a, [, w]) => a + w, 0);
  return Object.fromEntries(used.map(([m, w]) => [m, w / total]));
}

function sameWeights(a, b) {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].every((k) => Math.abs((a[k] || 0) - (b[k] || 0)) < 1e-6);
}

/** One file's fused scores and segments for `weights` from its members' window scores. */
function refuse(r, weights, labels, aggregation, windowS) {
  const members = r.windows.members;
  const used = Object.keys(weights).filter((m) => members[m]);
  const nW = Math.min(...used.map((m) => members[m].length));
  const scores = new Array(labels.length).fill(0);
  const segs = Array.from({ length: nW }, () => new Array(labels.length).fill(0));
  for (const m of used) {
    const w = weights[m];
    aggregate(members[m], aggregation).forEach((v, k) => { scores[k] += w * v; });
    for (let i = 0; i < nW; i += 1) {
      const row = members[m][i];
      for (let k = 0; k < labels.length; k += 1) segs[i][k] += w * row[k];
    }
  }
  const duration = Number(r.duration_s);
  return {
    scores: Object.fromEntries(labels.map((c, k) => [c, round(scores[k], 4)])),
    segments: segs.map((row, i) => {
      const a = r.windows.starts_s[i];
      return {
        start_s: round(a, 3),
        end_s: round(Math.min(a + windowS, duration), 3),
        scores: Object.fromEntries(labels.map((c, k) => [c, round(row[k], 4)])),
      };
    }),
  };
}

/** The labels named: score >= threshold, then at most `cap` of them, the highest scores (ml.metrics.decide). */
export function namedLabels(labels, scores, thresholds, cap) {
  const passing = labels.filter((c) => scores[c] >= thresholds[c]);
  if (!Number.isInteger(cap) || cap < 1 || passing.length <= cap) return passing;
  // stable sort: equal scores keep label order, as the server's argsort does
  const kept = new Set([...passing].sort((a, b) => scores[b] - scores[a]).slice(0, cap));
  return passing.filter((c) => kept.has(c));
}

function currentThresholds(labels, tuned) {
  if (state.thresholdMode === "global") return Object.fromEntries(labels.map((c) => [c, state.threshold]));
  return { ...tuned };
}

/** The results document for the current weights and thresholds, computed from the last answer. */
export function buildView(d) {
  const labels = d.labels || state.labels.map((l) => l.code);
  const weights = normalisedWeights(state.weights);
  const reweighed = !sameWeights(weights, d.weights || {});
  const info = d.windows || {};
  if (reweighed && !(d.results || []).every((r) => r.error || r.windows)) return null;
  const thresholds = currentThresholds(labels, d.thresholds || state.specThresholds);
  const asAnswered = !reweighed && state.thresholdMode === "tuned";
  const cap = Number.isInteger(d.max_instruments) ? d.max_instruments : state.maxInstruments;
  const results = (d.results || []).map((r) => {
    if (r.error) return { file: r.file, error: r.error };
    const fused = reweighed
      ? refuse(r, weights, labels, info.aggregation || d.aggregation, Number(info.window_s))
      : { scores: r.scores, segments: r.segments };
    const instruments = asAnswered ? r.instruments
      : (r.silent ? [] : namedLabels(labels, fused.scores, thresholds, cap));
    return {
      file: r.file, duration_s: r.duration_s, scores: fused.scores, instruments, silent: Boolean(r.silent),
      segments: fused.segments,
    };
  });
  return {
    labels,
    weights: Object.fromEntries(Object.entries(weights).map(([m, w]) => [m, round(w, 6)])),
    thresholds,
    max_instruments: cap ?? null,
    aggregation: d.aggregation,
    ensemble: d.ensemble,
    model: d.model ?? null,
    computed: asAnswered ? "server" : "browser",
    results,
  };
}
