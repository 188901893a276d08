"""The analysis flow behind the HTTP API, without HTTP: backends, fusion settings, decode → fan out → fuse.

:func:`analyze` is what both the FastAPI app (:mod:`serve.api`) and any other front end call: decode each
upload once (in a worker thread) at its own rate, place the windows, send each member the song (one compact
float32 mono array, :class:`Song`) concurrently through a :class:`Backend` (in-process :class:`LocalBackend`,
or Ray Serve deployment handles in :mod:`serve.ingress`), which resample, frame and score on the member's
device with the windows of many songs batched together; then fuse and build per-file results. The fusion
settings (:class:`Fusion`: weights, aggregation, thresholds) come from the ensemble spec and can be swapped
live (:class:`FusionUpdate`, :func:`apply_fusion_update`).

One module per concern, all re-exported here (import from ``ml.service``):

- :mod:`ml.service.backend`: :class:`Backend`, :class:`Song`, :class:`LocalBackend`, loading members;
- :mod:`ml.service.fusion`: :class:`Fusion` from the spec, live updates, request weights;
- :mod:`ml.service.analysis`: decode → score → fuse (:func:`analyze`, :func:`analyze_stream`, …);
- :mod:`ml.service.settings`: :class:`RunSettings` and the :func:`results_document` answer.
"""

from __future__ import annotations

from ml.service.analysis import (
    AnalysisObserver,
    AnalyzedFile,
    Decoded,
    ScoringError,
    analyze,
    analyze_files,
    analyze_sources,
    analyze_stream,
    decode_upload,
    place_windows,
    score_decoded,
    score_decoded_files,
)
from ml.service.backend import (
    Backend,
    Loader,
    LocalBackend,
    MemberUnavailableError,
    Song,
    check_predictor,
    config_sample_rate,
    load_predictor,
)
from ml.service.fusion import (
    Fusion,
    FusionBox,
    FusionUpdate,
    WeightsError,
    apply_fusion_update,
    fusion_from_spec,
    parse_weights,
    validate_weights,
)
from ml.service.settings import RunSettings, multi_model_settings, results_document, single_model_settings

__all__ = [
    "AnalysisObserver",
    "AnalyzedFile",
    "Backend",
    "Decoded",
    "Fusion",
    "FusionBox",
    "FusionUpdate",
    "Loader",
    "LocalBackend",
    "MemberUnavailableError",
    "RunSettings",
    "ScoringError",
    "Song",
    "WeightsError",
    "analyze",
    "analyze_files",
    "analyze_sources",
    "analyze_stream",
    "apply_fusion_update",
    "check_predictor",
    "config_sample_rate",
    "decode_upload",
    "fusion_from_spec",
    "load_predictor",
    "multi_model_settings",
    "parse_weights",
    "place_windows",
    "results_document",
    "score_decoded",
    "score_decoded_files",
    "single_model_settings",
    "validate_weights",
]
