"""The registered ensemble as an MLflow model: loads outside the repository, scores like `mpic predict`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import tracking
from ml.config import Config

LOAD = r"""
import importlib.util, json, sys
# The venv holds an editable install of this project: take its import hook away, so that only the
# model's own copy of `ml` (its code_paths) can be imported.
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in (getattr(f, "__module__", "") or "")]
assert importlib.util.find_spec("ml") is None, "ml is importable before the model is loaded"
import mlflow, pandas as pd
uri, name, files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
out = model.predict(pd.DataFrame({"path": files}))
import ml
print(json.dumps({"ml": ml.__file__, "columns": list(out.columns), "rows": out.to_dict("records"),
                  "inputs": [c.name for c in model.metadata.get_input_schema().inputs]}))
"""


@pytest.fixture(scope="module")
def fused_smoke(smoke_training: tuple[Config, dict[str, Any], float]) -> tuple[Config, dict[str, Any]]:
    from ray_jobs.fuse import fuse

    cfg, _, _ = smoke_training
    return cfg, fuse(cfg)


def _mpic_predict_scores(cfg: Config, files: list[Path]) -> dict[str, dict[str, float]]:
    """Scores through the exact calls of `mpic predict FILES` (mpic/cli.py: cmd_predict)."""
    from ml import batch
    from ml.ensemble import load_spec
    from ml.service import LocalBackend, fusion_from_spec, multi_model_settings

    spec = load_spec(cfg, None)
    backend = LocalBackend.from_config(cfg, None, spec=spec)
    settings = multi_model_settings(cfg, fusion_from_spec(cfg, spec, backend.members))
    rows: list[Any] = []
    batch.tag(cfg, backend, settings, files, rows.extend)
    return {r.file: r.scores for r in rows}


def test_registered_ensemble_loads_outside_the_repo_and_matches_mpic_predict(
    fused_smoke: tuple[Config, dict[str, Any]], smoke_data: Path, tmp_path: Path
) -> None:
    cfg, fused = fused_smoke
    name = fused["registered_model"]
    mv = tracking.champion_version(cfg, name)
    assert mv is not None and str(mv.version) == str(fused["version"])
    assert mv.source.endswith("/model")  # the version is the self-contained model, not just the spec
    files = sorted(smoke_data.glob("IRMAS-TestingData*/**/*.wav"))[:3]
    assert files
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD,
            tracking.tracking_uri(cfg),
            name,
            json.dumps([*map(str, files), str(broken)]),
        ],
        cwd="/tmp",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert not got["ml"].startswith(str(root))  # the model's own copy of the code
    assert got["inputs"] == ["path"]
    assert got["columns"] == [*cfg.label_codes, "error"]
    want = _mpic_predict_scores(cfg, files)
    for f, row in zip(files, got["rows"], strict=False):
        assert row["error"] is None
        np.testing.assert_allclose(
            [row[c] for c in cfg.label_codes], [want[str(f)][c] for c in cfg.label_codes], atol=1e-5, rtol=0
        )
    bad = got["rows"][-1]
    assert bad["error"] and all(np.isnan(bad[c]) for c in cfg.label_codes)  # named, nothing lost


def test_ensemble_version_has_signature_example_and_pinned_code(
    fused_smoke: tuple[Config, dict[str, Any]],
) -> None:
    import yaml

    cfg, fused = fused_smoke
    c = tracking.client(cfg)
    run_id = fused["mlflow"]["spec_run_id"]
    folder = Path(c.download_artifacts(run_id, "model"))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["signature"]["inputs"] and mlmodel["saved_input_example_info"]
    assert (folder / "code" / "ml" / "tracking" / "pyfunc.py").is_file()
    members = sorted(p.relative_to(folder) for p in folder.rglob("model.pt"))
    weighted = [m for m, w in fused["weights"].items() if w > 0]
    assert len(members) == 2 * len(weighted)  # each weighted member's two fold checkpoints
    reqs = (folder / "requirements.txt").read_text()
    assert "torch==" in reqs and "mlflow==" in reqs
