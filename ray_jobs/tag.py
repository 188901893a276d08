r"""Tag a whole music library on Ray Data: decode on CPU workers, score with actor pools of the ensemble.

Run it on a cluster with::

    ray job submit --working-dir . -- python -m ray_jobs.tag --profile demo --base-dir "$PWD" \
        --input /shared/music --output /shared/tags.parquet

or locally (a Ray instance is started for the run) with ``python -m ray_jobs.tag --input DIR --output OUT``.

The pipeline is `mpic predict`'s, split over Ray Data stages (the stages live in :mod:`ml.batch`):

1. the driver lists the audio files (:func:`ml.batch.discover_sources`: folders recursively by audio
   extension, local paths or URIs such as ``s3://bucket/music``) and resolves the ensemble once
   (:func:`ml.ensemble.load_spec`: the champion alias, or ``--version``), so every actor scores with the
   same registered version;
2. Ray tasks read and decode the files (:func:`ml.batch.decode_batch`, ``tag.decode_cpus`` each);
3. an autoscaling pool of ``tag.min_actors``..``tag.max_actors`` actors (:class:`ml.batch.BatchScorer`),
   each holding the members on its own GPU share (``tag.gpus_per_actor``, when the cluster has GPUs) or
   CPUs, scores ``tag.batch_size`` files per call and fuses;
4. one row per file (file, duration, instruments, a score per label, error, ensemble, version) is written
   with Ray Data's writers: ``--output`` is a folder or URI that must not exist yet, holding Parquet, CSV
   or JSON-lines files (``--format``, or the output's extension ``.parquet``/``.csv``/``.json``).

A file that cannot be read, decoded or scored gives a row with ``error`` set; the job still succeeds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from ml import batch
from ml.config import Config
from ml.ensemble import SpecError
from ray_jobs import common

log = logging.getLogger(__name__)

WRITERS = ("parquet", "csv", "json")


class TagJobError(ValueError):
    """Inputs or an output the job cannot use; the message says what to do."""


def output_format(output: str, fmt: str | None) -> str:
    """The format to write: ``fmt``, else the output's extension, else Parquet.

    Raises:
        TagJobError: ``fmt`` contradicts the extension.
    """
    by_ext = batch.FORMATS.get(Path(output.rstrip("/")).suffix.lower())
    if fmt and by_ext and fmt != by_ext:
        raise TagJobError(f"--format {fmt} contradicts --output {output} (a {by_ext} name)")
    return fmt or by_ext or "parquet"


def _check_output_free(output: str) -> None:
    """Refuse an output that exists: the job never mixes its rows into, or replaces, earlier results."""
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(output) if batch.is_uri(output) else (None, output)
        exists = (
            Path(output).exists()
            if filesystem is None
            else filesystem.get_file_info(path).type != pafs.FileType.NotFound
        )
    except (OSError, ValueError) as e:
        raise TagJobError(f"--output {output}: cannot check it ({e})") from None
    if exists:
        raise TagJobError(
            f"--output {output} already exists; the job writes a new folder of result files and never "
            "replaces earlier results: choose another --output (or remove it yourself)"
        )


def tag(
    cfg: Config,
    inputs: Sequence[str],
    output: str,
    *,
    version: str | None = None,
    fmt: str | None = None,
    allow_untrained: bool = False,
) -> dict[str, Any]:
    """Tag the audio files under ``inputs`` and write one row per file to ``output`` (see the module doc).

    Args:
        cfg: The configuration (``tag`` section: batch size, actors, CPUs/GPUs).
        inputs: Files, folders or URIs.
        output: A folder or URI that does not exist yet.
        version: The ensemble to use: an alias or version number (default: the champion alias).
        fmt: ``parquet``, ``csv`` or ``json`` (default: from the output's extension, else Parquet).
        allow_untrained: With nothing registered, use the equal-weights spec with untrained members.

    Returns:
        A summary: output, format, files, failed, audio seconds, wall seconds, ensemble, version, actors'
        GPU share.

    Raises:
        TagJobError: A bad output or format.
        FileNotFoundError, ml.batch.BatchError: An input does not exist or holds no audio.
        ml.ensemble.SpecNotFoundError: Nothing is registered under the alias or version.
    """
    import ray
    import ray.data

    from ml.ensemble import load_spec, stamp

    t0 = time.perf_counter()
    fmt = output_format(output, fmt)
    if not batch.is_uri(output):
        output = os.path.abspath(output)
    _check_output_free(output)
    files = batch.discover_sources(inputs)
    spec = load_spec(cfg, version, allow_untrained=allow_untrained)
    st = stamp(spec)
    tc = cfg.tag
    started = common.init_ray(cfg)
    try:
        gpus = tc.gpus_per_actor if common.cluster_resources().get("GPU", 0.0) > 0 else 0.0
        blocks = max(1, min(len(files), math.ceil(len(files) / tc.batch_size)))
        ds: ray.data.Dataset = ray.data.from_items([{"file": f} for f in files], override_num_blocks=blocks)
        ds = ds.map_batches(
            cast(Any, batch.decode_batch),  # takes numpy batches (batch_format); Ray's type is a union
            fn_kwargs={"cfg": cfg},
            batch_size=tc.batch_size,
            batch_format="numpy",
            num_cpus=tc.decode_cpus,
        )
        ds = ds.map_batches(
            batch.BatchScorer,
            fn_constructor_kwargs={
                "cfg": cfg,
                "spec_json": spec.to_json(),
                "device": "cuda" if gpus > 0 else "cpu",
                "allow_untrained": allow_untrained,
                "instruments_text": fmt == "csv",
            },
            batch_size=tc.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(min_size=tc.min_actors, max_size=tc.max_actors),
            num_cpus=tc.cpus_per_actor,
            num_gpus=gpus,
        )
        # the scored rows are small (a few numbers per file): keep them to count, then write
        rows = ds.materialize()
        table = rows.select_columns(["duration_s", "error"]).to_arrow_refs()
        failed = audio_s = 0.0
        for part in ray.get(table):
            errors = part.column("error").to_pylist()
            failed += sum(e is not None for e in errors)
            audio_s += sum(
                d or 0.0
                for d, e in zip(part.column("duration_s").to_pylist(), errors, strict=True)
                if e is None
            )
        writer = {"parquet": rows.write_parquet, "csv": rows.write_csv, "json": rows.write_json}[fmt]
        writer(output, mode=ray.data.SaveMode.ERROR)
    finally:
        if started:
            ray.shutdown()
    return {
        "output": output,
        "format": fmt,
        "files": len(files),
        "failed": int(failed),
        "audio_s": round(audio_s, 3),
        "wall_s": round(time.perf_counter() - t0, 3),
        "ensemble": st["registered_model"] or st["name"],
        "version": st["version"],
        "gpus_per_actor": gpus,
    }


def _resolve(name: str, base: str | None) -> str:
    # inside a `ray job submit` driver the working directory is a temporary copy: relative paths are
    # meant relative to --base-dir (the project folder on the shared disk)
    if batch.is_uri(name) or os.path.isabs(name) or not base:
        return name
    return str(Path(base) / name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ray_jobs.tag --input DIR|URI … --output DIR|URI [--format F] [--version V]``."""
    parser = common.add_config_args(
        argparse.ArgumentParser(
            prog="python -m ray_jobs.tag",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="audio files, folders (searched recursively) or URIs"
    )
    parser.add_argument(
        "--output", required=True, help="a new folder or URI for the result files (never overwritten)"
    )
    parser.add_argument(
        "--format", choices=WRITERS, help="file format (default: from --output's extension, else parquet)"
    )
    parser.add_argument(
        "--version", help="ensemble alias or registry version number (default: the champion alias)"
    )
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="with nothing registered, tag with untrained members (a pipeline check, not real tags)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args, cfg = common.parse(parser, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    base = args.base_dir or os.environ.get(common.BASE_DIR_ENV)
    try:
        summary = tag(
            cfg,
            [_resolve(x, base) for x in args.input],
            _resolve(args.output, base),
            version=args.version,
            fmt=args.format,
            allow_untrained=args.untrained,
        )
    except (TagJobError, batch.BatchError, FileNotFoundError, SpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        which = batch.stamp_text(summary["ensemble"], summary["version"])
        print(
            f"tagged {summary['files']} file(s), {summary['failed']} failed, {summary['audio_s']:.0f} s of "
            f"audio in {summary['wall_s']:.1f} s with {which} → {summary['output']} ({summary['format']})"
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
