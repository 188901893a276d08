/* mpic web page: upload or record audio, tune the ensemble, see and download predictions.
 *
 * Talks to the same-origin API:
 *   GET  /models                        members, weights, thresholds, labels, spec info
 *   POST /analyze_files/multi_model     multipart `files`, form `weights` (JSON), form `threshold`,
 *                                       query `format=csv|json` for a download
 * No external scripts, fonts or assets: works offline.
 *
 * Entry point (a native ES module, no build step): wires the modules in this folder to the page.
 */

import { resetWeights, scheduleRefresh, updateThresholdUi } from "./controls.js";
import { el, state } from "./dom.js";
import { download } from "./downloads.js";
import { loadModels } from "./models.js";
import { rec, startRecording, stopRecording } from "./recorder.js";
import { analyse, setFiles } from "./requests.js";
import { watchTimelines } from "./timelines.js";
import { updateDownloadButtons } from "./view.js";
import { encodeWav } from "./wav.js";

// ---------------------------------------------------------------- wiring

watchTimelines(); // heat maps follow the column width and the colour scheme

el.pickBtn.addEventListener("click", (ev) => {
  ev.stopPropagation();
  el.fileInput.click();
});
el.dropZone.addEventListener("click", (ev) => {
  if (ev.target === el.fileInput || ev.target.closest("button")) return;
  el.fileInput.click();
});
el.fileInput.addEventListener("change", () => {
  setFiles(el.fileInput.files);
  el.fileInput.value = ""; // picking the same files again still triggers a change
});

// Files may be dropped anywhere on the page; the drop zone lights up while dragging.
let dragDepth = 0;
const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes("Files");
document.addEventListener("dragenter", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  dragDepth += 1;
  el.dropZone.classList.add("dragging");
});
document.addEventListener("dragover", (ev) => {
  if (!hasFiles(ev)) return;
  ev.preventDefault();
  ev.dataTransfer.dropEffect = "copy";
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) el.dropZone.classList.remove("dragging");
});
document.addEventListener("drop", (ev) => {
  if (!ev.dataTransfer) return;
  ev.preventDefault();
  dragDepth = 0;
  el.dropZone.classList.remove("dragging");
  if (ev.dataTransfer.files && ev.dataTransfer.files.length) setFiles(ev.dataTransfer.files);
});

el.keyForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.apiKey = el.keyInput.value.trim();
  sessionStorage.setItem("mpic-api-key", state.apiKey);
  el.keyInput.removeAttribute("aria-invalid");
  el.keyForm.hidden = true;
  if (state.ready) analyse();
  else loadModels();
});
el.resetWeights.addEventListener("click", resetWeights);
el.thresholdTuned.addEventListener("change", () => {
  state.thresholdMode = el.thresholdTuned.checked ? "tuned" : "global";
  updateThresholdUi();
  scheduleRefresh();
});
el.threshold.addEventListener("input", () => {
  state.threshold = Number(el.threshold.value);
  state.thresholdMode = "global";
  updateThresholdUi();
  scheduleRefresh();
});
el.downloadCsv.addEventListener("click", () => download("csv"));
el.downloadJson.addEventListener("click", () => download("json"));
el.recordBtn.addEventListener("click", () => (rec.active ? stopRecording() : startRecording()));

state.threshold = Number(el.threshold.value);
updateThresholdUi();
updateDownloadButtons();
loadModels();

// A small hook for tests and debugging (read-only view of the page state).
window.mpic = { state, encodeWav };
