"""Fault injection for tests and drills: fail a training worker once, right after an epoch's checkpoint.

``MPIC_FAIL_ONCE_AT_EPOCH=<n>`` makes a worker raise once right after reporting epoch ``n``'s checkpoint
(``MPIC_FAIL_ONCE_ONLY=member/fold[,…]`` limits it to some trials; marker files under
``MPIC_FAIL_MARKER_DIR``, default ``runs_dir/.faults``, make it happen once).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ml.config import Config

FAIL_EPOCH_ENV = "MPIC_FAIL_ONCE_AT_EPOCH"
FAIL_ONLY_ENV = "MPIC_FAIL_ONCE_ONLY"
FAIL_MARKER_ENV = "MPIC_FAIL_MARKER_DIR"


class InjectedFailure(RuntimeError):
    """Raised by the fault-injection hook (``MPIC_FAIL_ONCE_AT_EPOCH``)."""


@dataclass(frozen=True)
class FaultInjection:
    """Fail a trial's worker once, right after it reported the checkpoint of ``epoch``."""

    epoch: int
    marker_dir: str
    only: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, cfg: Config) -> FaultInjection | None:
        """Read the fault-injection settings from the driver's environment (None when unset)."""
        raw = os.environ.get(FAIL_EPOCH_ENV, "").strip()
        if not raw:
            return None
        only = tuple(s.strip() for s in os.environ.get(FAIL_ONLY_ENV, "").split(",") if s.strip())
        marker = os.environ.get(FAIL_MARKER_ENV) or str(cfg.runs_dir / ".faults")
        return cls(epoch=int(raw), marker_dir=marker, only=only)

    def marker(self, member: str, fold: int) -> Path:
        """The file that records that (member, fold) already failed once."""
        return Path(self.marker_dir) / f"{member}-fold{fold}.failed"

    def maybe_fail(self, member: str, fold: int, epoch: int) -> None:
        """Raise :class:`InjectedFailure` the first time (member, fold) reaches ``self.epoch``."""
        if epoch != self.epoch or (self.only and f"{member}/{fold}" not in self.only):
            return
        path = self.marker(member, fold)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x") as f:
                f.write(f"{time.time()}\n")
        except FileExistsError:
            return
        raise InjectedFailure(
            f"injected failure of {member}/fold{fold} after epoch {epoch} ({FAIL_EPOCH_ENV})"
        )
