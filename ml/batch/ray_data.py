"""The Ray Data tagging job's stages (python -m ray_jobs.tag): plain functions and a callable class.

Ray Data calls these on its workers; nothing here imports Ray. A decode task turns a batch of file names
into decoded audio (columns of :data:`DECODED_COLUMNS`), a scoring actor (:class:`BatchScorer`, one
ensemble loaded per actor) turns that into result rows (:func:`rows_table`). Both halves are those of
:func:`ml.service.analyze` (:func:`ml.service.decode_upload`, :func:`ml.service.score_decoded`), so the
job's scores are `mpic predict`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ml.batch.outputs import _stamp_columns
from ml.batch.sources import read_source
from ml.config import Config
from ml.inference import FileResult

DECODED_COLUMNS = (
    "file",
    "wave",
    "sample_rate",
    "source_rate",
    "channels",
    "format",
    "subtype",
    "silent",
    "error",
)
"""What a decode task hands to the scoring actors, per file (``wave``: float32 samples as bytes)."""


def decode_batch(batch: Mapping[str, Any], cfg: Config) -> dict[str, Any]:
    """Read and decode a batch of files (column ``file``) with :func:`ml.service.decode_upload`.

    Returns the :data:`DECODED_COLUMNS`; a file that cannot be read or decoded has its ``error`` set (and
    an empty ``wave``), so it ends as an error row instead of failing the job.
    """
    import numpy as np

    from ml.service import decode_upload

    cols: dict[str, list[Any]] = {c: [] for c in DECODED_COLUMNS}
    for name in (str(f) for f in batch["file"]):
        try:
            d = decode_upload(cfg, name, read_source(name))
        except OSError as e:
            d = None
            err = f"unreadable: {e.strerror or e}"
        a = d.audio if d is not None else None
        cols["file"].append(name)
        cols["wave"].append(a.wave.astype(np.float32, copy=False).tobytes() if a is not None else b"")
        cols["sample_rate"].append(a.sample_rate if a is not None else 0)
        cols["source_rate"].append(a.source_rate if a is not None else 0)
        cols["channels"].append(a.channels if a is not None else 0)
        cols["format"].append(a.format if a is not None else "")
        cols["subtype"].append(a.subtype if a is not None else "")
        cols["silent"].append(bool(a.silent) if a is not None else False)
        cols["error"].append(None if a is not None else (d.error if d is not None else err))
    return {
        "file": np.array(cols["file"], dtype=object),
        "wave": np.array(cols["wave"], dtype=object),
        "sample_rate": np.array(cols["sample_rate"], dtype=np.int64),
        "source_rate": np.array(cols["source_rate"], dtype=np.int64),
        "channels": np.array(cols["channels"], dtype=np.int64),
        "format": np.array(cols["format"], dtype=object),
        "subtype": np.array(cols["subtype"], dtype=object),
        "silent": np.array(cols["silent"], dtype=bool),
        "error": np.array(cols["error"], dtype=object),
    }


def rows_schema(labels: Sequence[str], *, instruments_text: bool = False) -> Any:
    """The pyarrow schema of the job's rows: :class:`ParquetOutput`'s columns, scores at full precision.

    ``instruments_text`` makes ``instruments`` one ``;``-joined string (CSV cannot hold lists), as in
    :func:`ml.results.results_to_csv`.
    """
    import pyarrow as pa

    return pa.schema(
        [
            ("file", pa.string()),
            ("duration_s", pa.float64()),
            ("instruments", pa.string() if instruments_text else pa.list_(pa.string())),
            *((c, pa.float64()) for c in labels),
            ("error", pa.string()),
            ("ensemble", pa.string()),
            ("version", pa.int64()),
        ]
    )


def rows_table(
    results: Sequence[FileResult],
    labels: Sequence[str],
    stamp: Mapping[str, Any],
    *,
    instruments_text: bool = False,
) -> Any:
    """One row per result (a ``pyarrow.Table`` of :func:`rows_schema`), naming the ensemble and version.

    Scores are the pipeline's own values (not rounded like the JSON/CSV answers); a failed file has only
    ``file``, ``error`` and the ensemble columns filled.
    """
    import pyarrow as pa

    ens, ver = _stamp_columns(stamp)
    rows = []
    for r in results:
        ok = r.error is None
        names = list(r.instruments) if ok else None
        rows.append(
            {
                "file": r.file,
                "duration_s": r.duration_s if ok else None,
                "instruments": (";".join(names) if instruments_text else names)
                if names is not None
                else None,
                **{c: (float(r.scores[c]) if ok else None) for c in labels},
                "error": r.error,
                "ensemble": ens,
                "version": ver,
            }
        )
    return pa.Table.from_pylist(rows, schema=rows_schema(labels, instruments_text=instruments_text))


class BatchScorer:
    """Scores decoded batches with the ensemble: the callable class of the job's actor pool.

    Each instance (one per actor) loads the members of ``spec`` once (:meth:`ml.service.LocalBackend.
    from_config`, as `mpic predict` does) on ``device`` (``cuda`` falls back to the CPU when no CUDA device
    is visible) and scores with the spec's fusion settings (:func:`ml.service.multi_model_settings`).

    Args:
        cfg: The configuration.
        spec_json: The ensemble spec (:meth:`ml.ensemble.EnsembleSpec.to_json`), resolved once by the
            driver so every actor uses the same version even if the alias moves during the job.
        device: ``cpu`` or ``cuda``.
        allow_untrained: Members without checkpoints get deterministic random weights (tests, demos).
        instruments_text: Write ``instruments`` as one string (CSV output).
    """

    def __init__(
        self,
        cfg: Config,
        spec_json: str,
        device: str = "cpu",
        allow_untrained: bool = False,
        instruments_text: bool = False,
    ) -> None:
        """Load the ensemble's members (see the class doc)."""
        import torch

        from ml.ensemble import EnsembleSpec
        from ml.service import LocalBackend, fusion_from_spec, multi_model_settings

        self.cfg = cfg
        spec = EnsembleSpec.from_json(spec_json)
        dev = device if device != "cuda" or torch.cuda.is_available() else "cpu"
        self.backend = LocalBackend.from_config(cfg, spec=spec, allow_untrained=allow_untrained, device=dev)
        self.fusion = fusion_from_spec(cfg, spec, self.backend.members)
        self.settings = multi_model_settings(cfg, self.fusion)
        self.instruments_text = instruments_text
        self.device = dev

    def __call__(self, batch: Mapping[str, Any]) -> Any:
        """Score a batch of :data:`DECODED_COLUMNS` → a table of :func:`rows_table`."""
        decoded = [self._decoded(batch, i) for i in range(len(batch["file"]))]
        try:
            results = self._score(decoded)
        except Exception:
            # one file broke a member (or the batch did): score them one by one, so only it fails
            results = []
            for d in decoded:
                try:
                    results.extend(self._score([d]))
                except Exception as e:
                    results.append(FileResult(file=d.name, error=f"scoring failed: {type(e).__name__}: {e}"))
        return rows_table(
            results, self.cfg.label_codes, self.fusion.stamp(), instruments_text=self.instruments_text
        )

    def _score(self, decoded: Sequence[Any]) -> list[FileResult]:
        import asyncio

        from ml.service import score_decoded

        return asyncio.run(score_decoded(self.cfg, self.backend, decoded, settings=self.settings))

    def _decoded(self, batch: Mapping[str, Any], i: int) -> Any:
        import numpy as np

        from ml.audio import Audio
        from ml.service import Decoded, place_windows

        name = str(batch["file"][i])
        error = batch["error"][i]
        if error is not None and error == error:  # NaN: a null that went through pandas
            return Decoded(name, error=str(error))
        audio = Audio(
            wave=np.frombuffer(batch["wave"][i], dtype=np.float32).copy(),  # writable, like decode()
            sample_rate=int(batch["sample_rate"][i]),
            source_rate=int(batch["source_rate"][i]),
            channels=int(batch["channels"][i]),
            format=str(batch["format"][i]),
            subtype=str(batch["subtype"][i]),
            silent=bool(batch["silent"][i]),
        )
        return place_windows(self.cfg, name, audio)
