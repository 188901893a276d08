"""One training worker: fit a (member, fold) and report its final files, through an injected runtime.

The runtime (:class:`Runtime`) is what the worker needs from whoever runs it — Ray Train in
`ray_jobs/train.py` (``ray.train.report``, ``ray.train.get_checkpoint``, ranks, the device), or a plain
loop in tests — so the loop itself is plain Python: resume from the checkpoint the runtime hands over,
:func:`ml.train.fit` with hooks that report every epoch (and fail once when fault injection asks), then
report ``model.pt`` + ``oof.npz`` + ``result.json`` as the final checkpoint (``final`` = 1).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ml.checkpoint import MODEL_FILE
from ml.config import Config
from ml.jobs.faults import FaultInjection
from ml.jobs.folds import RESULT_FILE
from ml.jobs.plan import member_sample_rate
from ml.oof import OOF_FILE


class Runtime(Protocol):
    """What a training worker needs from its runner."""

    rank: int
    world: int
    run_name: str
    device: Any  # torch.device
    prepare_model: Callable[[Any], Any] | None  # wraps the model for data-parallel training (world > 1)

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Report metrics and (from rank 0) a checkpoint folder the runner copies."""

    def resume_into(self, dest: Path) -> bool:
        """Copy the checkpoint handed to this worker (after a failure or a restored run) into ``dest``."""


class WorkerHooks:
    """:class:`ml.train.Hooks` over a :class:`Runtime`, with fault injection (only rank 0 uploads)."""

    def __init__(self, runtime: Runtime, member: str, fold: int, fault: FaultInjection | None = None) -> None:
        """Hooks of one worker of (member, fold)."""
        self.runtime, self.member, self.fold, self.fault = runtime, member, fold, fault
        self._resume: Path | None = None
        self._looked = False
        self.resumed = False

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        """Report an epoch (and its checkpoint from rank 0); maybe inject the configured failure."""
        rank0 = self.runtime.rank == 0
        self.runtime.report({**metrics, "resumed": float(self.resumed)}, checkpoint_dir if rank0 else None)
        if self.fault is not None and rank0:
            self.fault.maybe_fail(self.member, self.fold, int(metrics.get("epoch", -1)))

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint the runtime hands this worker, copied locally (None for a fresh start)."""
        if self._looked:
            return self._resume
        self._looked = True
        local = Path(tempfile.mkdtemp(prefix="mpic-resume-"))
        if not self.runtime.resume_into(local):
            shutil.rmtree(local, ignore_errors=True)
            return None
        self._resume = local
        self.resumed = True
        return local

    def cleanup(self) -> None:
        """Remove the local copy of the resume checkpoint."""
        if self._resume is not None:
            shutil.rmtree(self._resume, ignore_errors=True)


def fit_fold(
    cfg: Config,
    member: str,
    fold: int,
    fold_key: str,
    runtime: Runtime,
    fault: FaultInjection | None = None,
) -> dict[str, Any]:
    """Fit one (member, fold) and report its final files as the last checkpoint; returns ``result.json``.

    A run that already finished (restored by name with its final checkpoint) re-publishes that checkpoint
    instead of training again.
    """
    import torch

    from ml.train import fit
    from ml.train_data import load_train_data

    tc = cfg.member_train(member)
    if tc.torch_threads is None:
        torch.set_num_threads(max(1, int(tc.cpus_per_trial)))
    hooks = WorkerHooks(runtime, member, fold, fault)
    try:
        resume = hooks.latest_checkpoint()
        with tempfile.TemporaryDirectory(prefix="mpic-fit-") as tmp:
            out = Path(tmp)
            if resume is not None and (resume / RESULT_FILE).is_file():
                for name in (MODEL_FILE, OOF_FILE, RESULT_FILE):
                    shutil.copy2(resume / name, out / name)
                info = json.loads((out / RESULT_FILE).read_text())
            else:
                data = load_train_data(cfg, member_sample_rate(cfg, member))
                res = fit(
                    cfg,
                    member,
                    fold,
                    out_dir=out,
                    hooks=hooks,
                    data=data,
                    device=runtime.device,
                    prepare_model=runtime.prepare_model if runtime.world > 1 else None,
                    shard=(runtime.rank, runtime.world),
                )
                info = {
                    "member": member,
                    "fold": fold,
                    "fold_key": fold_key,
                    "best_epoch": res.best_epoch,
                    "epochs_run": res.epochs_run,
                    "metrics": {k: float(v) for k, v in res.metrics.items()},
                    "history": res.history,
                    "device": str(runtime.device),
                    "world_size": runtime.world,
                    "run_name": runtime.run_name,
                }
                (out / RESULT_FILE).write_text(json.dumps(info, indent=2))
            final = {
                "final": 1.0,
                # a resumed worker that had nothing left to train reports no epochs: this row says it resumed
                "resumed": float(hooks.resumed),
                "best_epoch": float(info["best_epoch"]),
                "epochs_run": float(info["epochs_run"]),
                **{f"best_{k}": float(v) for k, v in info["metrics"].items() if k.startswith("val_")},
            }
            runtime.report(final, out if runtime.rank == 0 else None)
            return dict(info)
    finally:
        hooks.cleanup()
