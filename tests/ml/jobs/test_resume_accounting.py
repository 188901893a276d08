"""A fold resumed from a checkpoint with nothing left to train still says it resumed, and where.

A job killed after a fold's last epoch was committed but before the driver published its files is
resubmitted: the worker gets that checkpoint back, trains no epoch and reports only its final files. The
job's outcome must name the epoch it resumed at (all of them done), not read as a fresh run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from ml.checkpoint import MODEL_FILE
from ml.config import Config, load_config
from ml.jobs.driver import CHECKPOINT_PATH_KEY, TrainJob
from ml.jobs.folds import RESULT_FILE, fold_dir
from ml.jobs.worker import fit_fold
from ml.oof import OOF_FILE
from tests.conftest import ROOT

MEMBER, FOLD, EPOCHS = "res_bpm", 0, 6


class Handover:
    """A runtime that hands the worker a given checkpoint and keeps copies of what it reports."""

    rank, world, run_name = 0, 1, "resume-accounting"
    device = torch.device("cpu")
    prepare_model = None

    def __init__(self, checkpoint: Path | None, store: Path) -> None:
        self.checkpoint, self.store = checkpoint, store
        self.reports: list[dict[str, Any]] = []

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        row: dict[str, Any] = dict(metrics)
        if checkpoint_dir is not None:  # the worker removes its folder after reporting: keep a copy
            kept = self.store / f"report{len(self.reports)}"
            shutil.copytree(checkpoint_dir, kept)
            row[CHECKPOINT_PATH_KEY] = str(kept)
        self.reports.append(row)

    def resume_into(self, dest: Path) -> bool:
        if self.checkpoint is None:
            return False
        shutil.copytree(self.checkpoint, dest, dirs_exist_ok=True)
        return True


def _cfg(tmp: Path) -> Config:
    return load_config(
        ROOT / "config.yml", profile="smoke", overrides=[f"runs_dir={tmp / 'runs'}", "mlflow.enabled=false"]
    )


def _finished_checkpoint(tmp: Path) -> Path:
    d = tmp / "committed"
    d.mkdir()
    (d / MODEL_FILE).write_bytes(b"weights")
    (d / OOF_FILE).write_bytes(b"oof")
    history = [{"epoch": float(e), "val_loss": 0.7 - 0.01 * e} for e in range(EPOCHS)]
    info = {
        "member": MEMBER,
        "fold": FOLD,
        "fold_key": "k",
        "best_epoch": EPOCHS - 1,
        "epochs_run": EPOCHS,
        "metrics": {"val_loss": 0.65},
        "history": history,
    }
    (d / RESULT_FILE).write_text(json.dumps(info))
    return d


def _complete(cfg: Config, runtime: Handover) -> Any:
    def fetch(src: str, dest: Path) -> None:
        shutil.copytree(src, dest, dirs_exist_ok=True)

    job = TrainJob(cfg, {MEMBER: "k"}, "job", None, fetch)
    for row in runtime.reports:
        job.record_row((MEMBER, FOLD), row)
    return job.complete((MEMBER, FOLD), runtime.reports[-1])


def test_a_fold_resumed_with_every_epoch_done_reports_where_it_resumed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    runtime = Handover(_finished_checkpoint(tmp_path), tmp_path / "reports")
    fit_fold(cfg, MEMBER, FOLD, "k", runtime)

    assert [r.get("final") for r in runtime.reports] == [1.0]  # no epoch trained again
    assert runtime.reports[0]["resumed"] == 1.0
    out = _complete(cfg, runtime)
    assert out.status == "trained" and out.reported_epochs == []
    assert out.resumed_at_epoch == EPOCHS  # every epoch before it was done: nothing left
    assert (fold_dir(cfg, MEMBER, FOLD) / MODEL_FILE).read_bytes() == b"weights"  # published as committed


def test_a_final_row_that_did_not_resume_leaves_the_fold_unresumed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    runtime = Handover(None, tmp_path / "reports")
    src = _finished_checkpoint(tmp_path)
    runtime.report({"final": 1.0, "resumed": 0.0, "epochs_run": float(EPOCHS)}, src)
    out = _complete(cfg, runtime)
    assert out.status == "trained" and out.resumed_at_epoch is None
