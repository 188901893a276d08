"""ray_jobs.train.fit_reporting: every Train report reaches Tune from the trial thread, before it returns."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import pytest
from ray.util.queue import Empty

from ray_jobs import train as train_job


class FakeQueue:
    """The two methods of ``ray.util.queue.Queue`` the trial uses, over a local queue."""

    def __init__(self) -> None:
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()

    def put(self, item: dict[str, Any]) -> None:
        self.q.put(item)

    def get(self, timeout: float) -> dict[str, Any]:
        try:
            return self.q.get(timeout=timeout)
        except queue.Empty:
            raise Empty from None

    def empty(self) -> bool:
        return self.q.empty()


class FakeReporter:
    def __init__(self) -> None:
        self.queue = FakeQueue()


class FakeTrainer:
    """Reports like a Train run: epochs, then the final report queued just before ``fit`` returns."""

    def __init__(self, reporter: FakeReporter, epochs: int, fail: bool = False) -> None:
        self.reporter, self.epochs, self.fail = reporter, epochs, fail

    def fit(self) -> None:
        for e in range(self.epochs):
            time.sleep(0.01)
            self.reporter.queue.put({"epoch": e})
        if self.fail:
            raise RuntimeError("worker group failed for good")
        self.reporter.queue.put({"final": 1.0, "checkpoint_path": "/ckpt"})  # the last report, then return


def test_every_report_is_passed_on_in_order_before_the_trial_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_job, "REPORT_POLL_S", 0.05)
    reporter = FakeReporter()
    seen: list[dict[str, Any]] = []
    callers: set[str] = set()

    def report(item: dict[str, Any]) -> None:
        callers.add(threading.current_thread().name)
        seen.append(item)

    train_job.fit_reporting(FakeTrainer(reporter, epochs=3), reporter, report)
    # the final report (queued as `fit` returns) is through before fit_reporting returns
    assert seen == [{"epoch": 0}, {"epoch": 1}, {"epoch": 2}, {"final": 1.0, "checkpoint_path": "/ckpt"}]
    assert callers == {threading.current_thread().name}  # all from the trial thread, never the fit thread
    assert reporter.queue.empty()


def test_a_failed_fit_is_raised_after_its_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_job, "REPORT_POLL_S", 0.05)
    reporter = FakeReporter()
    seen: list[dict[str, Any]] = []
    with pytest.raises(RuntimeError, match="failed for good"):
        train_job.fit_reporting(FakeTrainer(reporter, epochs=2, fail=True), reporter, seen.append)
    assert seen == [{"epoch": 0}, {"epoch": 1}]


def test_the_callback_passes_rank_0_metrics_and_the_checkpoint_path(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray.util.queue

    monkeypatch.setattr(ray.util.queue, "Queue", lambda **_: FakeQueue())
    cb = train_job._trial_reporter()

    class Ckpt:
        path = "/storage/run/checkpoint_000001"

    cb.after_report(None, [{"epoch": 1, "val_lrap": 0.5}, {"epoch": 1, "val_lrap": 0.4}], Ckpt())
    cb.after_report(None, [{"epoch": 2}], None)
    assert cb.queue.get(timeout=0.1) == {"epoch": 1, "val_lrap": 0.5, "checkpoint_path": Ckpt.path}
    assert cb.queue.get(timeout=0.1) == {"epoch": 2}
