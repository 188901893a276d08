"""The MLflow pyfunc models mpic registers: one member's fold models, and the whole fused ensemble.

:class:`EnsembleModel` is what a registered ensemble version holds (artifact ``model/`` of its run): the
members' fold checkpoints, the ensemble spec (weights, aggregation, per-class thresholds), the config it
runs with, a signature, an input example and the ``ml`` package itself (``code_paths``), so it loads
anywhere the pinned requirements are installed, outside this repository::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/mpic-demo-ensemble-default@champion")
    scores = model.predict(pd.DataFrame({"path": ["song.wav", "other.flac"]}))

``predict`` takes a DataFrame with a ``path`` column (audio files any format ``ml.audio.decode`` reads)
and returns one row per file, in input order: a float column per label code (the fused file score, the
same numbers `mpic predict` gives) and ``error`` (None, or why the file could not be analysed, its scores
then NaN). It runs :class:`ml.inference.EnsemblePredictor` — the one analysis pipeline of the CLI and
HTTP — on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel

from ml.tracking.store import quiet

INPUT_COLUMN = "path"
ERROR_COLUMN = "error"
_BUNDLE = "ensemble"  # the one artifact folder of an EnsembleModel
WHEELS_DIR = "wheels"  # inside the bundle: pretrained weights members rebuild from
_PINNED = (
    "mlflow",
    "torch",
    "torchaudio",
    "numpy",
    "scipy",
    "nnAudio",
    "pydantic",
    "pyyaml",
    "soundfile",
    "pandas",
)


def requirements() -> list[str]:
    """Pinned requirements of the pyfunc models (skips MLflow's slow requirement inference)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in _PINNED:
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def _fold_checkpoint(p: Path) -> Path:
    from ml.checkpoint import MODEL_FILE

    return p / MODEL_FILE if p.is_dir() else p


class MemberModel(PythonModel):
    """pyfunc wrapper of one member's fold checkpoints (artifacts ``fold<k>/model.pt``).

    ``predict`` takes (W, samples) windows at the member's sample rate (a numpy array or DataFrame) and
    returns (W, C) sigmoid scores averaged over the fold models
    (:meth:`ml.inference.Predictor.score_windows`). Checkpoints load with
    ``torch.load(weights_only=True)``.
    """

    # Inputs are plain arrays converted in predict(); this opts out of MLflow 3's type-hint validation
    # (and its warning that predict() has no hints), as MLflow's own ChatModel does.
    _skip_type_hint_validation = True

    def __init__(self, member: str = "", hop_s: float = 0.5, aggregation: str = "mean") -> None:
        """Remember how the member is scored; the weights come from the artifacts."""
        self.member = member
        self.hop_s = hop_s
        self.aggregation = aggregation
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        """Load every fold checkpoint listed in the model's artifacts."""
        from ml.inference import Predictor

        arts = sorted(context.artifacts.items())
        paths = [_fold_checkpoint(Path(p)) for k, p in arts if k.startswith("fold")]
        self.predictor = Predictor.from_checkpoints(
            paths, member=self.member or None, hop_s=self.hop_s, aggregation=self.aggregation
        )

    def predict(self, context, model_input, params=None):
        """Scores for (W, samples) windows → (W, C) float32 numpy array."""
        import numpy as np

        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
        return self.predictor.score_windows(np.asarray(values, dtype=np.float32))


def save_member_model(
    path: str | Path, member: str, checkpoints: Mapping[int, str | Path], *, hop_s: float, aggregation: str
) -> None:
    """Write a :class:`MemberModel` of ``member``'s fold checkpoints (fold → ``model.pt``) to ``path``."""
    stage = Path(path).with_name(Path(path).name + ".stage")
    artifacts = {}
    for k in sorted(checkpoints):
        d = stage / f"fold{k}"
        d.mkdir(parents=True)
        shutil.copy2(checkpoints[k], d / "model.pt")
        artifacts[f"fold{k}"] = str(d)
    with quiet("mlflow.pyfunc"):  # its CloudPickle notice; the class is imported by reference
        mlflow.pyfunc.save_model(
            str(path),
            python_model=MemberModel(member, hop_s, aggregation),
            artifacts=artifacts,
            pip_requirements=requirements(),
            metadata={"member": member, "folds": sorted(checkpoints)},
        )
    shutil.rmtree(stage, ignore_errors=True)


class EnsembleModel(PythonModel):
    """pyfunc of a fused ensemble: audio file paths in, fused per-class file scores out (module doc)."""

    _skip_type_hint_validation = True  # a DataFrame converted in predict(), as in MemberModel

    def __init__(self) -> None:
        """Everything comes from the artifacts in :meth:`load_context`."""
        self.predictor: Any = None

    def load_context(self, context: Any) -> None:
        """Rebuild the config and spec and load every weighted member's bundled fold checkpoints."""
        from ml.config import Config
        from ml.ensemble import EnsembleSpec
        from ml.inference import EnsemblePredictor, load_member

        root = Path(context.artifacts[_BUNDLE])
        wheels = sorted((root / WHEELS_DIR).glob("musicnn-*.whl"))
        if wheels:  # a musicnn member's frozen trunk comes from the bundled wheel (sha-256 checked)
            from ml.pretrained.musicnn import WHEEL_ENV

            os.environ.setdefault(WHEEL_ENV, str(wheels[0]))
        cfg = Config.model_validate(json.loads((root / "config.json").read_text()))
        spec = EnsembleSpec.from_json((root / "spec.json").read_text())
        predictors = {}
        for m, w in spec.weights.items():
            if w <= 0:
                continue
            paths = sorted((root / "members" / m).glob("fold*/model.pt"), key=lambda p: p.parent.name)
            if not paths:
                raise FileNotFoundError(f"the ensemble model holds no checkpoints of member {m!r}")
            predictors[m] = load_member(cfg, m, checkpoints=paths, device="cpu")
        self.predictor = EnsemblePredictor(
            predictors,
            {m: spec.weights[m] for m in predictors},
            spec.thresholds or [cfg.inference.threshold] * len(cfg.labels),
            spec.aggregation,
            cfg=cfg,
            spec=spec,
        )

    def predict(self, context, model_input, params=None):
        """Fused scores of audio files: a DataFrame with a ``path`` column → one row per file (module doc)."""
        import numpy as np
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(
                    f"expected a DataFrame with a {INPUT_COLUMN!r} column of audio file paths, "
                    f"got columns {list(model_input.columns)}"
                )
            paths = [str(p) for p in model_input[INPUT_COLUMN]]
        else:
            paths = [str(p) for p in np.atleast_1d(np.asarray(model_input, dtype=object))]
        results = self.predictor.predict([(p, Path(p)) for p in paths])
        labels = list(self.predictor.labels)
        out = pd.DataFrame(
            {c: np.array([r.scores.get(c, np.nan) for r in results], dtype=np.float64) for c in labels}
        )
        # object dtype keeps None (no error) apart from NaN, which pandas would otherwise put there
        out[ERROR_COLUMN] = pd.Series([r.error for r in results], dtype=object)
        return out


def save_ensemble_model(
    path: str | Path,
    cfg_snapshot: Mapping[str, Any],
    spec_json: str,
    checkpoints: Mapping[str, Sequence[str | Path]],
    labels: Sequence[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    extra_files: Mapping[str, str | Path] | None = None,
) -> None:
    """Write an :class:`EnsembleModel` to ``path`` (a new folder).

    Args:
        path: Destination folder.
        cfg_snapshot: :meth:`ml.config.Config.snapshot` of the config the ensemble runs with.
        spec_json: The ensemble spec (:meth:`ml.ensemble.EnsembleSpec.to_json`).
        checkpoints: Weighted member → its fold checkpoints (``…/fold<k>/model.pt``).
        labels: Label codes (the output columns).
        metadata: Extra MLflow model metadata (ensemble name, namespace, spec sha256).
        extra_files: Bundle-relative path → file, e.g. ``wheels/musicnn-….whl``: the pretrained trunk a
            musicnn member rebuilds from (checkpoints hold only its head), used by :meth:`load_context`.
    """
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    import ml

    stage = Path(path).with_name(Path(path).name + ".stage")
    bundle = stage / _BUNDLE
    for m, paths in checkpoints.items():
        for p in paths:
            d = bundle / "members" / m / Path(p).parent.name
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, d / "model.pt")
    (bundle / "spec.json").write_text(spec_json)
    for rel, src in (extra_files or {}).items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, bundle / rel)
    (bundle / "config.json").write_text(json.dumps(dict(cfg_snapshot), indent=2, sort_keys=True))
    code = stage / "code" / "ml"  # the package as it is now, without caches
    shutil.copytree(
        Path(ml.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    )
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema(
            [*(ColSpec("double", c) for c in labels), ColSpec("string", ERROR_COLUMN, required=False)]
        ),
    )
    with quiet("mlflow.pyfunc"), quiet("mlflow.models"):
        mlflow.pyfunc.save_model(
            str(path),
            python_model=EnsembleModel(),
            artifacts={_BUNDLE: str(bundle)},
            code_paths=[str(code)],
            pip_requirements=requirements(),
            signature=signature,
            input_example=pd.DataFrame({INPUT_COLUMN: ["song.wav"]}),
            metadata=dict(metadata or {}),
        )
    shutil.rmtree(stage, ignore_errors=True)
