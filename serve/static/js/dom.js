/* The page's elements (looked up once) and the state every module shares. */

const $ = (sel) => document.querySelector(sel);
export const el = {
  modelInfo: $("#model-info"),
  dropZone: $("#drop-zone"),
  fileInput: $("#file-input"),
  pickBtn: $("#pick-btn"),
  recordBtn: $("#record-btn"),
  recordTime: $("#record-time"),
  recordLevel: $("#record-level"),
  fileSummary: $("#file-summary"),
  weights: $("#weights"),
  resetWeights: $("#reset-weights"),
  thresholdTuned: $("#threshold-tuned"),
  threshold: $("#threshold"),
  thresholdValue: $("#threshold-value"),
  thresholdFieldset: document.querySelector(".threshold-fieldset"),
  capNote: $("#cap-note"),
  status: $("#status"),
  table: $("#results-table"),
  timelines: $("#timelines"),
  tip: $("#timeline-tip"),
  downloadCsv: $("#download-csv"),
  downloadJson: $("#download-json"),
  keyForm: $("#api-key-form"),
  progress: $("#progress"),
  progressBar: $("#progress-bar"),
  progressText: $("#progress-text"),
  staleNote: $("#stale-note"),
  answeredBy: $("#answered-by"),
  live: $("#timeline-live"),
  keyInput: $("#api-key"),
};

export const state = {
  labels: [], // [{code, name}]
  labelName: {}, // code -> readable name
  members: [], // [{name, arch, front_end, description, sample_rate}]
  specWeights: {}, // member -> weight (normalised to sum 1)
  weights: {}, // member -> weight currently chosen
  specThresholds: {}, // code -> threshold
  maxInstruments: null, // the spec's cap on the instruments named per file (null: none)
  limits: {}, // optional: max_files, max_upload_bytes, max_seconds
  thresholdMode: "tuned", // "tuned" (spec per-class) | "global"
  threshold: 0.5,
  files: [], // the last files sent (analysed again only when new files come)
  server: null, // the last answer, with every member's window scores (windows=true)
  view: null, // what the page shows: the answer re-weighed and re-thresholded for the controls
  stale: "", // why the shown results are out of date ("" when current)
  seq: 0,
  controller: null,
  frame: 0,
  cursors: {}, // file -> heat-map keyboard cursor {row, col}, kept across re-weighing
  progressTimer: null,
  ready: false,
  revealResults: false,
  apiKey: sessionStorage.getItem("mpic-api-key") || "",
};
