"""The musicnn weights (Pons & Serra 2019), read from the ``musicnn==0.1.0`` wheel without TensorFlow.

The wheel on PyPI carries TF1 checkpoints of musicnn trained on MagnaTagATune (``MTT_musicnn``) and on the
Million Song Dataset (``MSD_musicnn``), 50 tags each. Its metadata pins numpy < 1.17 and TensorFlow, so it
cannot be installed next to this project; ``make pretrained`` (part of ``make setup``) only *downloads* it
(``pip download --no-deps``) to :data:`DEFAULT_WHEEL`, and this module reads the checkpoints out of the zip.

The wheel is located, in this order, at ``$MPIC_MUSICNN_WHEEL``, at the path a caller passes (the
``wheel`` argument of the ``musicnn`` architecture; relative paths are relative to the project directory),
or at :data:`DEFAULT_WHEEL`. Its SHA-256 must be :data:`WHEEL_SHA256`, so a model rebuilt from a checkpoint
always gets the very weights it was trained with.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from ml.config import PROJECT_DIR
from ml.pretrained.tf_checkpoint import TfCheckpointError, read_checkpoint_from_zip

__all__ = [
    "DEFAULT_WHEEL",
    "WHEEL_ENV",
    "WHEEL_SHA256",
    "MusicnnWeightsError",
    "load_weights",
    "resolve_wheel",
    "tags",
]

Weights = Literal["mtt", "msd"]

WHEEL_NAME = "musicnn-0.1.0-py3-none-any.whl"
DEFAULT_WHEEL = Path(".cache/mpic/wheels") / WHEEL_NAME
"""Where ``make pretrained`` puts the wheel, relative to the project directory."""
WHEEL_ENV = "MPIC_MUSICNN_WHEEL"
"""Environment variable naming the wheel file; wins over every other setting."""
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
"""SHA-256 of musicnn 0.1.0's wheel on PyPI."""

_CHECKPOINTS: dict[str, str] = {"mtt": "musicnn/MTT_musicnn/", "msd": "musicnn/MSD_musicnn/"}
_LABEL_LISTS: dict[str, str] = {"mtt": "MTT_LABELS", "msd": "MSD_LABELS"}
# the model's variables; the checkpoints also hold Adam's moment estimates (".../Adam", ".../Adam_1")
_MODEL_VARS = r"^(conv2d|batch_normalization|dense)(_\d+)?/(kernel|bias|gamma|beta|moving_(mean|variance))$"


class MusicnnWeightsError(RuntimeError):
    """The musicnn wheel is missing, not the expected file, or unreadable; the message says what to run."""


def resolve_wheel(path: str | os.PathLike[str] | None = None) -> Path:
    """The wheel file to read: ``$MPIC_MUSICNN_WHEEL``, else ``path``, else :data:`DEFAULT_WHEEL`.

    Relative paths are taken relative to the project directory (where ``make pretrained`` writes).

    Raises:
        MusicnnWeightsError: The file does not exist; the message names the ``make`` target that fetches it.
    """
    env = os.environ.get(WHEEL_ENV)
    chosen = Path(env) if env else Path(path) if path else DEFAULT_WHEEL
    if not chosen.is_absolute():
        chosen = PROJECT_DIR / chosen
    if not chosen.is_file():
        source = (
            f"${WHEEL_ENV}" if env else "the musicnn architecture's `wheel` setting" if path else "default"
        )
        raise MusicnnWeightsError(
            f"musicnn weights not found: no wheel at {chosen} ({source}). Run `make pretrained` (part of "
            f"`make setup`), i.e. `python -m pip download --no-deps musicnn==0.1.0 -d "
            f"{PROJECT_DIR / DEFAULT_WHEEL.parent}`, or point ${WHEEL_ENV} at a copy of {WHEEL_NAME}."
        )
    return chosen


@functools.lru_cache(maxsize=4)
def _verified(path: Path, size: int, mtime_ns: int) -> None:
    """Check the SHA-256 once per file version (size and mtime are part of the cache key)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    if h.hexdigest() != WHEEL_SHA256:
        raise MusicnnWeightsError(
            f"{path} is not musicnn 0.1.0's wheel (SHA-256 {h.hexdigest()}, expected {WHEEL_SHA256}); "
            "delete it and run `make pretrained`"
        )


def _check(path: Path) -> None:
    st = path.stat()
    _verified(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: Path, weights: str, size: int, mtime_ns: int) -> dict[str, np.ndarray]:
    try:
        arrays = read_checkpoint_from_zip(path, _CHECKPOINTS[weights], pattern=_MODEL_VARS)
    except TfCheckpointError as e:
        raise MusicnnWeightsError(f"{path}: cannot read the {weights} checkpoint ({e})") from None
    for a in arrays.values():
        a.flags.writeable = False  # shared between callers through the cache
    return arrays


def load_weights(weights: Weights, wheel: str | os.PathLike[str] | None = None) -> dict[str, np.ndarray]:
    """The TF variables of a musicnn model, by their checkpoint names (``conv2d/kernel``, ...), read-only.

    Args:
        weights: ``mtt`` (MagnaTagATune) or ``msd`` (Million Song Dataset).
        wheel: Wheel path (see :func:`resolve_wheel`).

    Returns:
        ``{name: float32 array}`` in TF layouts (HWIO kernels, (in, out) dense matrices); cached per process.

    Raises:
        MusicnnWeightsError: Missing or wrong wheel, unreadable checkpoint.
    """
    if weights not in _CHECKPOINTS:
        raise ValueError(f"unknown musicnn weights {weights!r}; valid: {sorted(_CHECKPOINTS)}")
    path = resolve_wheel(wheel)
    _check(path)
    st = path.stat()
    return _load(path, weights, st.st_size, st.st_mtime_ns)


def tags(weights: Weights, wheel: str | os.PathLike[str] | None = None) -> list[str]:
    """The 50 tag names of a model's outputs, from the wheel's ``musicnn/configuration.py`` (not executed)."""
    if weights not in _LABEL_LISTS:
        raise ValueError(f"unknown musicnn weights {weights!r}; valid: {sorted(_LABEL_LISTS)}")
    path = resolve_wheel(wheel)
    _check(path)
    with zipfile.ZipFile(path) as zf:
        tree = ast.parse(zf.read("musicnn/configuration.py").decode("utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == _LABEL_LISTS[weights] for t in node.targets
        ):
            return [str(x) for x in ast.literal_eval(node.value)]
    raise MusicnnWeightsError(f"{path}: no {_LABEL_LISTS[weights]} in musicnn/configuration.py")
