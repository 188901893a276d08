"""Reference outputs of the ORIGINAL musicnn TensorFlow graph, for tests/ml/models/test_musicnn.py.

Not part of the project or its test suite (TensorFlow and librosa are not dependencies): it was run once, in
a throw-away virtualenv outside the repository, to produce ``tests/ml/models/data/musicnn_reference.npz``::

    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tf-keras librosa numpy
    python -m pip download --no-deps musicnn==0.1.0 -d .cache/mpic/wheels      # (make pretrained)
    /tmp/tfvenv/bin/python tools/musicnn_reference.py \
        --wheel .cache/mpic/wheels/musicnn-0.1.0-py3-none-any.whl \
        --out tests/ml/models/data/musicnn_reference.npz

(run with tensorflow-cpu 2.21.0, tf-keras, librosa 0.11.0, numpy 2.4.6.)

What it does, per model (MTT_musicnn and MSD_musicnn) and per deterministic synthetic signal of
:func:`signals` (the test rebuilds the same signals):

1. the musicnn front end exactly as ``musicnn/extractor.py`` computes it (librosa mel at 16 kHz, n_fft 512,
   hop 256, 96 Slaney mels, centred frames), except two deliberate differences that our port shares:
   the padding mode is given explicitly as ``reflect`` (the default of the librosa releases musicnn was
   trained with; librosa >= 0.10 pads with zeros) and the log compression ``log10(10000 x + 1)`` is done in
   float32, not float16 (float16 overflows to inf for loud input, which the ``drums`` signal is);
2. the original graph, built by the wheel's own ``musicnn/models.py`` (imported from the wheel file with
   zipimport) under ``tf.compat.v1`` graph mode with ``is_training=False``, restored with ``tf.train.Saver``
   from the wheel's checkpoint, run on the WHOLE spectrogram of each signal (the graph is convolutional in
   time: the time axis of the placeholder is left unknown), i.e. one "patch" per signal;
3. saves the logits, the taggram (sigmoid), the penultimate layer, the mean/max pooled mid-end features and,
   for the 1-s signal only (to keep the file small), the log-mel input itself.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

SR = 16000


def signals() -> dict[str, np.ndarray]:
    """Three seeded synthetic signals at 16 kHz: two of 3 s (musicnn's patch length) and one of 1 s."""
    rng = np.random.default_rng(12345)
    t3 = np.arange(3 * SR) / SR
    f0 = 220.0 * (1 + 0.01 * np.sin(2 * np.pi * 5 * t3))  # a bowed-string-like tone with vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SR
    tone = 0.2 * sum(np.sin(k * phase) / k for k in range(1, 11)) + 0.01 * rng.standard_normal(t3.size)
    env = np.exp(-30 * (t3 % 0.25))  # loud decaying noise bursts every 0.25 s over a 55 Hz bass
    drums = 0.5 * env * rng.standard_normal(t3.size) + 0.3 * np.sin(2 * np.pi * 55 * t3)
    t1 = np.arange(SR) / SR  # 1 s of an A major chord of square waves
    chord = sum(0.15 * np.sign(np.sin(2 * np.pi * f * t1)) for f in (220.0, 277.18, 329.63))
    return {
        k: np.asarray(v, dtype=np.float32) for k, v in (("tone", tone), ("drums", drums), ("chord", chord))
    }


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(frames, 96) float32: musicnn's front end, float32 log compression, reflect padding."""
    import librosa

    mel = librosa.feature.melspectrogram(
        y=wave, sr=SR, hop_length=256, n_fft=512, n_mels=96, pad_mode="reflect"
    ).T.astype(np.float32)
    return np.log10(np.float32(10000) * mel + np.float32(1)).astype(np.float32)


def run_model(wheel: Path, model: str, mels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of the original graph of ``model`` (e.g. ``MTT_musicnn``) for each log-mel (frames, 96)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs tf-keras (Keras 2) in TF >= 2.16
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    sys.path.insert(0, str(wheel))  # zipimport: the wheel's own musicnn/models.py and configuration.py
    from musicnn import configuration, models

    n_classes = len(configuration.MTT_LABELS if model.startswith("MTT") else configuration.MSD_LABELS)
    out: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                if member.startswith(f"musicnn/{model}/"):
                    zf.extract(member, tmp)
        tf.compat.v1.reset_default_graph()
        with tf.name_scope("model"):
            x = tf.compat.v1.placeholder(tf.float32, [None, None, configuration.N_MELS])
            is_training = tf.compat.v1.placeholder(tf.bool)
            y, _timbral, _temporal, _c1, _c2, _c3, mean_pool, max_pool, penultimate = models.define_model(
                x, is_training, model, n_classes
            )
            taggram = tf.nn.sigmoid(y)
        with tf.compat.v1.Session() as sess:
            tf.compat.v1.train.Saver().restore(sess, f"{tmp}/musicnn/{model}/")
            for name, mel in mels.items():
                vals = sess.run(
                    [y, taggram, penultimate, mean_pool, max_pool], {x: mel[None], is_training: False}
                )
                for key, v in zip(
                    ("logits", "taggram", "penultimate", "mean_pool", "max_pool"), vals, strict=True
                ):
                    out[f"{model}/{name}/{key}"] = np.asarray(v[0], dtype=np.float32)
    return out


def main() -> None:
    """Write the reference .npz."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    waves = signals()
    mels = {k: log_mel(w) for k, w in waves.items()}
    data: dict[str, np.ndarray] = {"chord/mel": mels["chord"]}
    for k, w in waves.items():  # lets the test check it rebuilt the very same signals
        data[f"{k}/wave_stats"] = np.array([w.size, w.sum(dtype=np.float64), np.abs(w).sum(dtype=np.float64)])
    for model in ("MTT_musicnn", "MSD_musicnn"):
        data.update(run_model(args.wheel, model, mels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {len(data)} arrays)")


if __name__ == "__main__":
    main()
