"""The training job's closing summary: what a newcomer reads after `make run`'s training step."""

from __future__ import annotations

import pytest

from ml.jobs.driver import print_summary


def _summary() -> dict:
    member = {
        "val_micro_f1": 0.046,
        "val_macro_f1": 0.029,
        "val_lrap": 0.448,
        "val_loss": 0.461,
        "folds": [0, 1],
        "samples_per_s": 118.5,
        "data_share": 0.04,
        "registry": {"registered": True, "name": "mpic-demo-res_genre", "version": "3", "champion": True},
    }
    return {
        "members": {"res_genre": member},
        "trained": ["a", "b"],
        "skipped": [],
        "failed": [],
        "wall_s": 607.0,
        "runs_dir": "/tmp/runs",
    }


def test_summary_leads_with_ranking_and_names_the_fixed_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(_summary(), threshold=0.5)
    line = capsys.readouterr().out.splitlines()[0]
    # a near-zero F1 at the fixed threshold must not read as the model's quality: LRAP first, F1 qualified
    assert line.startswith("res_genre: validation LRAP 0.448, loss 0.461")
    assert "0.046/0.029 at the fixed threshold 0.5" in line
    assert "over folds [0, 1]" in line and "→ mpic-demo-res_genre v3 (champion)" in line


def test_summary_threshold_comes_from_the_caller(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(_summary(), threshold=0.35)
    assert "at the fixed threshold 0.35" in capsys.readouterr().out
