"""Synthetic IRMAS-style data set rendered with FluidSynth from programmatically composed MIDI.

Every item (a training "recording" cut into 3-s clips, or a test excerpt) is composed from a drawn genre
style: tempo, meter, key, chord progression, a predominant part and an accompaniment (bass, chords, GM
drums). Each part (stem) is rendered separately with a drawn General MIDI sample library, placed with a
known level, passed through a drawn room (exponentially decaying noise impulse response) and summed, so
the level of every labelled instrument in the written file is known and checked: a label is only written
when its stem is clearly audible (above :data:`MIN_STEM_DBFS` in the final mix).

Randomness: item ``i`` of kind ``k`` (0 = training recording, 1 = test excerpt) draws everything from
``np.random.SeedSequence(seed, spawn_key=(k, i))``, so the output depends on ``seed`` and the item, not on
the worker count or completion order. FluidSynth renders through the float API (no dither) with its own
reverb and chorus off and a full reset after every stem, so a stem does not depend on what the worker
rendered before.

Only the two sample libraries this project ships with are used by default (:func:`default_soundfonts`):
``TimGM6mb.sf2`` from ``pretty_midi`` and Debian's ``FluidR3_GM.sf2``.

Modules: :mod:`~ml.data.synth.styles` (music tables), :mod:`~ml.data.synth.compose` (songs and notes),
:mod:`~ml.data.synth.render` (libraries and the stem renderer), :mod:`~ml.data.synth.parts` (the parts
of an item), :mod:`~ml.data.synth.mixing` (levels, rooms, the mix), :mod:`~ml.data.synth.items` (one
recording or excerpt rendered, checked and written) and :mod:`~ml.data.synth.dataset` (the plan, the
worker pool and the manifest: :func:`synthesize`, :func:`synthesize_config`).
"""

from ml.data.synth.base import (
    MAX_ATTEMPTS,
    MAX_BELOW_LOUDEST_DB,
    META_NAME,
    MIN_ACTIVE_FRACTION,
    MIN_LEAD_MARGIN_DB,
    MIN_STEM_DBFS,
    MIX,
    STEMS_DIR,
    TEST,
    TEST_DIR,
    TRAIN,
    TRAIN_CLIP_S,
    SynthError,
)
from ml.data.synth.compose import Note
from ml.data.synth.dataset import SynthReport, plan_mixes, plan_train, synthesize, synthesize_config
from ml.data.synth.render import Preset, default_soundfonts, resolve_soundfont
from ml.data.synth.styles import DEFAULT_GM_PROGRAMS, DEFAULT_RANGES, GENERIC_RANGE, resolve_programs

__all__ = [
    "DEFAULT_GM_PROGRAMS",
    "DEFAULT_RANGES",
    "GENERIC_RANGE",
    "MAX_ATTEMPTS",
    "MAX_BELOW_LOUDEST_DB",
    "META_NAME",
    "MIN_ACTIVE_FRACTION",
    "MIN_LEAD_MARGIN_DB",
    "MIN_STEM_DBFS",
    "MIX",
    "STEMS_DIR",
    "TEST",
    "TEST_DIR",
    "TRAIN",
    "TRAIN_CLIP_S",
    "Note",
    "Preset",
    "SynthError",
    "SynthReport",
    "default_soundfonts",
    "plan_mixes",
    "plan_train",
    "resolve_programs",
    "resolve_soundfont",
    "synthesize",
    "synthesize_config",
]
