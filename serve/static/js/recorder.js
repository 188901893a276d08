/* Microphone recording: capture (AudioWorklet or ScriptProcessor), level meter, time limit, WAV take. */

import { el, state } from "./dom.js";
import { setFiles } from "./requests.js";
import { setStatus } from "./util.js";
import { encodeWav } from "./wav.js";

export const rec = {
  active: false,
  starting: false,
  stream: null,
  ctx: null,
  node: null,
  source: null,
  sink: null,
  chunks: [],
  length: 0,
  sampleRate: 44100,
  timer: null,
  t0: 0,
};

function setRecordUi(on) {
  el.recordBtn.classList.toggle("recording", on);
  el.recordBtn.setAttribute("aria-pressed", String(on));
  el.recordBtn.querySelector(".rec-label").textContent = on ? "Stop" : "Start recording";
  el.recordTime.classList.toggle("live", on);
  if (!on) el.recordLevel.style.width = "0";
}

function onSamples(data) {
  if (!rec.active) return;
  rec.chunks.push(data);
  rec.length += data.length;
  let sum = 0;
  for (let i = 0; i < data.length; i += 1) sum += data[i] * data[i];
  const rms = Math.sqrt(sum / Math.max(1, data.length));
  const level = Math.min(1, Math.max(0, (20 * Math.log10(rms + 1e-9) + 60) / 60));
  el.recordLevel.style.width = `${Math.round(level * 100)}%`;
  const maxS = Math.min(Number(state.limits.max_seconds) || 600, 600);
  if (rec.length / rec.sampleRate >= maxS) stopRecording();
}

export async function startRecording() {
  if (rec.active || rec.starting) return;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("Recording is not available here: the browser allows the microphone only on HTTPS or localhost pages.", "error");
    return;
  }
  rec.starting = true;
  el.recordBtn.disabled = true;
  setStatus("Asking for microphone access…", "busy");
  try {
    rec.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const Ctx = window.AudioContext || window.webkitAudioContext;
    rec.ctx = new Ctx();
    if (rec.ctx.state === "suspended") await rec.ctx.resume();
    rec.sampleRate = rec.ctx.sampleRate;
    rec.source = rec.ctx.createMediaStreamSource(rec.stream);
    rec.sink = rec.ctx.createGain();
    rec.sink.gain.value = 0; // keep the graph pulling without playing the microphone back
    rec.chunks = [];
    rec.length = 0;
    rec.node = await captureNode(rec.ctx);
    rec.source.connect(rec.node);
    rec.node.connect(rec.sink);
    rec.sink.connect(rec.ctx.destination);
    rec.active = true;
    rec.t0 = performance.now();
    rec.timer = setInterval(() => {
      el.recordTime.textContent = clock((performance.now() - rec.t0) / 1000);
    }, 200);
    el.recordTime.textContent = "0:00";
    setRecordUi(true);
    setStatus("Recording… press Stop to analyse the take.", "busy");
  } catch (err) {
    cleanupRecording();
    const denied = err && (err.name === "NotAllowedError" || err.name === "SecurityError");
    const missing = err && (err.name === "NotFoundError" || err.name === "OverconstrainedError");
    setStatus(denied ? "Microphone access was denied: allow it in the browser to record."
      : missing ? "No microphone was found." : `Could not start recording: ${err.message || err}`, "error");
  } finally {
    rec.starting = false;
    el.recordBtn.disabled = false;
  }
}

function clock(s) {
  const m = Math.floor(s / 60);
  return `${m}:${String(Math.floor(s - m * 60)).padStart(2, "0")}`;
}

/** An AudioWorklet capture node, or a ScriptProcessor where worklets are unavailable. */
async function captureNode(ctx) {
  if (ctx.audioWorklet && window.AudioWorkletNode) {
    try {
      await ctx.audioWorklet.addModule("/static/recorder-worklet.js");
      const node = new AudioWorkletNode(ctx, "mpic-recorder", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], channelCount: 1,
        channelCountMode: "explicit", channelInterpretation: "speakers",
      });
      node.port.onmessage = (ev) => onSamples(ev.data);
      return node;
    } catch (_) { /* fall back below */ }
  }
  const node = ctx.createScriptProcessor(4096, 1, 1);
  node.onaudioprocess = (ev) => onSamples(new Float32Array(ev.inputBuffer.getChannelData(0)));
  return node;
}

function cleanupRecording() {
  clearInterval(rec.timer);
  rec.active = false;
  try {
    if (rec.node && rec.node.port) rec.node.port.onmessage = null;
    if (rec.node) rec.node.disconnect();
    if (rec.source) rec.source.disconnect();
    if (rec.sink) rec.sink.disconnect();
  } catch (_) { /* already disconnected */ }
  if (rec.stream) rec.stream.getTracks().forEach((t) => t.stop());
  if (rec.ctx && rec.ctx.state !== "closed") rec.ctx.close().catch(() => {});
  rec.stream = rec.ctx = rec.node = rec.source = rec.sink = null;
  setRecordUi(false);
}

export function stopRecording() {
  if (!rec.active) return;
  const chunks = rec.chunks;
  const length = rec.length;
  const rate = rec.sampleRate;
  cleanupRecording();
  rec.chunks = [];
  if (length < rate * 0.1) {
    setStatus("The recording was too short (under 0.1 s); nothing was sent.", "warn");
    return;
  }
  const samples = new Float32Array(length);
  let off = 0;
  for (const c of chunks) {
    samples.set(c, off);
    off += c.length;
  }
  const stamp = new Date().toISOString().replace(/\.\d+Z$/, "Z").replace(/:/g, "-");
  const file = new File([encodeWav(samples, rate)], `recording-${stamp}.wav`, { type: "audio/wav" });
  setFiles([file]);
}
