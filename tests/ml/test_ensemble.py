"""ml.ensemble's spec and the cap on the instruments named, from config to every answer."""

from __future__ import annotations

import json

import pytest

from ml.config import Config, ConfigError, load_config
from ml.ensemble import EnsembleSpec, MemberRef, SpecError, default_spec
from ml.inference import FileResult
from ml.service import (
    apply_fusion_update,
    fusion_from_spec,
    multi_model_settings,
    results_document,
    single_model_settings,
)


def spec(cfg: Config, **kw) -> EnsembleSpec:
    members = cfg.ensemble_members
    return EnsembleSpec(
        ensemble=cfg.ensemble,
        labels=cfg.label_codes,
        members={m: MemberRef(checkpoints=[]) for m in members},
        weights={m: 1.0 for m in members},
        thresholds=[0.3] * len(cfg.labels),
        **kw,
    )


def test_the_cap_round_trips_and_older_specs_have_none(smoke_cfg: Config) -> None:
    s = spec(smoke_cfg, max_instruments=3)
    assert EnsembleSpec.from_json(s.to_json()).max_instruments == 3
    raw = json.loads(spec(smoke_cfg).to_json())
    del raw["max_instruments"]  # a spec written before the field existed
    assert EnsembleSpec.from_json(json.dumps(raw)).max_instruments is None
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(SpecError, match="max_instruments"):
            spec(smoke_cfg, max_instruments=bad)


def test_the_config_cap_reaches_the_default_spec_and_bad_values_fail_with_their_path() -> None:
    assert default_spec(load_config(profile="smoke")).max_instruments == 3  # config.yml's default
    cfg = load_config(profile="smoke", overrides=["fusion.max_instruments=2"])
    assert default_spec(cfg).max_instruments == 2
    off = load_config(profile="smoke", overrides=["fusion.max_instruments=null"])
    assert default_spec(off).max_instruments is None
    with pytest.raises(ConfigError, match=r"fusion\.max_instruments"):
        load_config(profile="smoke", overrides=["fusion.max_instruments=0"])


def test_every_answer_carries_the_spec_cap(smoke_cfg: Config) -> None:
    served = smoke_cfg.ensemble_members
    fusion = fusion_from_spec(smoke_cfg, spec(smoke_cfg, max_instruments=2), served)
    assert fusion.max_instruments == 2
    multi = multi_model_settings(smoke_cfg, fusion)
    single = single_model_settings(smoke_cfg, fusion, served[0])
    assert multi.max_instruments == single.max_instruments == 2
    doc = results_document(smoke_cfg, fusion, multi, [FileResult(file="x.wav", error="e")])
    assert doc["max_instruments"] == 2
    # a live update keeps the cap of the spec it applies to; a new spec brings its own
    assert apply_fusion_update(smoke_cfg, spec(smoke_cfg, max_instruments=2), {}, served).max_instruments == 2
    inline = json.loads(spec(smoke_cfg, max_instruments=4).to_json())
    inline.pop("format")
    assert apply_fusion_update(smoke_cfg, spec(smoke_cfg), {"spec": inline}, served).max_instruments == 4
