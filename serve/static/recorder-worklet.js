/* AudioWorklet processor for the mpic recorder: posts the first input channel to the page in blocks. */
const BLOCK = 2048; // ~43 ms at 48 kHz: few messages, little lost when recording stops

class MpicRecorder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(BLOCK);
    this.n = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      let i = 0;
      while (i < ch.length) {
        const k = Math.min(ch.length - i, BLOCK - this.n);
        this.buf.set(ch.subarray(i, i + k), this.n);
        this.n += k;
        i += k;
        if (this.n === BLOCK) {
          this.port.postMessage(this.buf);
          this.buf = new Float32Array(BLOCK);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("mpic-recorder", MpicRecorder);
