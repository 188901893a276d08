"""`evaluate --data`: an IRMAS layout and a plain folder of NAME.wav + NAME.txt give the same excerpts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ml import evaluate as ev  # not `import test_excerpts`: pytest would collect it
from ml.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LABELS = {"a": ["cel"], "b": ["gac", "voi"], "c": ["pia", "cel"]}


def write_pairs(folder: Path) -> None:
    folder.mkdir(parents=True)
    for name, codes in LABELS.items():
        sf.write(folder / f"{name}.wav", np.full(8000, 0.1, np.float32), 16000)
        (folder / f"{name}.txt").write_text("".join(f"{c}\n" for c in codes))


@pytest.mark.parametrize("layout", ["irmas", "plain"])
def test_both_layouts_give_the_labels_of_the_txt_files(tmp_path: Path, layout: str) -> None:
    cfg = load_config(ROOT / "config.yml", "smoke", [f"data.cache_dir={tmp_path / 'cache'}"])
    root = tmp_path / "data"
    write_pairs(root / "IRMAS-TestingData-Part1" if layout == "irmas" else root)
    paths, y = ev.test_excerpts(cfg, root)
    assert [p.stem for p in paths] == ["a", "b", "c"] and all(p.is_absolute() for p in paths)
    codes = cfg.label_codes
    assert [[codes[j] for j in np.flatnonzero(row)] for row in y] == [
        sorted(LABELS[n], key=codes.index) for n in "abc"
    ]


def test_plain_folder_with_unknown_codes_is_refused(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "config.yml", "smoke", [f"data.cache_dir={tmp_path / 'cache'}"])
    write_pairs(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("kazoo\n")
    with pytest.raises(ev.EvaluationDataError, match=r"a\.txt: unknown codes \['kazoo'\]"):
        ev.test_excerpts(cfg, tmp_path / "d")
