"""The `mpic` command line: one thin subcommand per job (``mpic …`` or ``python -m mpic …``).

It lives outside ``ml/`` because it may import all three packages (``ml``, ``ray_jobs``, ``serve``); the
library never imports its adapters. Every subcommand takes ``--config PATH``, ``--profile NAME`` (the
namespace: runs, MLflow experiment and registered names are the profile's own) and repeated ``--set
key=value``. Commands that need Ray (`train`, `fuse`, `serve`) import `ray_jobs` / `serve` lazily, so
``mpic --help`` is instant. `predict`, `evaluate` and `serve` load the registered ensemble (alias
``champion`` or ``--version N``) through :func:`ml.ensemble.load_spec`, and every answer names it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml.config import Config, ConfigError, add_config_args, load_config
from ml.ensemble import SpecError, SpecNotFoundError


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def _cfg(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    return load_config(args.config, args.profile, [*args.overrides, *extra])


def cmd_synth(args: argparse.Namespace) -> int:
    """Render a synthetic IRMAS-style data set."""
    from ml.data.synth import resolve_programs, synthesize

    cfg = _cfg(args)
    s = cfg.synth
    out = Path(args.out) if args.out else cfg.data.root
    t0 = time.perf_counter()
    report = synthesize(
        out,
        labels=cfg.label_codes,
        programs=resolve_programs(cfg.label_codes, s.programs),
        train_clips=args.train_clips if args.train_clips is not None else s.train_clips,
        test_excerpts=args.test_excerpts if args.test_excerpts is not None else s.test_excerpts,
        seed=args.seed if args.seed is not None else s.seed,
        libraries=args.soundfont or s.libraries,
        train_mixes=s.train_mixes,
        sample_rate=s.sample_rate,
        clips_per_recording=s.clips_per_recording,
        workers=args.workers or s.workers,
        progress=not args.quiet,
    )
    print(
        f"wrote {report.train_files} training clips, {report.mix_files} training mixes and "
        f"{report.test_files} test excerpts to {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    """Assign leak-free, label-stratified folds and write them as CSV."""
    from ml.data.folds import assign_folds, write_folds
    from ml.data.irmas import build_manifest
    from ml.data.manifest import Manifest

    cfg = _cfg(args)
    root = Path(args.data) if args.data else cfg.data.root
    k = args.k or cfg.folds.k
    manifest = build_manifest(root, cfg.label_codes, strict=False)
    recs = assign_folds(manifest.filter(split="train"), cfg.label_codes, k=k, seed=cfg.folds.seed)
    out = Path(args.out) if args.out else cfg.namespace_dir / "folds.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = write_folds(Manifest(manifest.root, recs), out)
    print(f"{n} clips in {k} folds → {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fold-parallel training on Ray (Tune grid of member × fold, each a TorchTrainer)."""
    from ray_jobs.train import RunsDirConflictError, train

    cfg = _cfg(args)
    try:
        summary = train(cfg, members=args.members, folds=args.folds, overwrite=args.overwrite)
    except RunsDirConflictError as e:
        print(f"mpic train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.get("members", summary), indent=2, default=str))
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    """Ray Tune search of fusion weights, aggregation and thresholds on out-of-fold predictions."""
    from ray_jobs.fuse import fuse

    cfg = _cfg(args)
    result = fuse(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate members and the fused ensemble on an IRMAS testing layout."""
    from ml.ensemble import load_spec
    from ml.evaluate import evaluate, format_table

    cfg = _cfg(args)
    # --version equal: equal weights and the fixed threshold, the baseline the fused spec is compared with
    spec = load_spec(cfg, args.version)
    report = evaluate(cfg, data_root=Path(args.data) if args.data else None, members=args.models, spec=spec)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    print(format_table(report) if args.format == "table" else json.dumps(report, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict instruments in audio files with the registered ensemble (or one of its members)."""
    from ml.ensemble import load_spec
    from ml.results import payload_to_json, results_to_csv
    from ml.service import (
        LocalBackend,
        analyze_sources,
        fusion_from_spec,
        multi_model_settings,
        results_document,
        single_model_settings,
        validate_weights,
    )

    cfg = _cfg(args)
    spec = load_spec(cfg, args.version, allow_untrained=args.untrained)
    weights = None
    if args.weights:
        try:
            weights = json.loads(args.weights)
        except ValueError as e:
            raise ConfigError(f"--weights is not valid JSON: {e}") from None
    elif args.models:
        weights = {m: 1.0 for m in args.models}
    if args.model:
        members = [args.model]
    elif weights is not None:
        members = [m for m, w in weights.items() if isinstance(w, int | float) and w > 0]
    else:
        members = None
    for m in members or []:
        if m not in spec.members:
            raise ConfigError(f"{m!r} is not a member of ensemble {spec.ensemble!r}: {sorted(spec.members)}")
    backend = LocalBackend.from_config(cfg, members, spec=spec, allow_untrained=args.untrained)
    fusion = fusion_from_spec(cfg, spec, backend.members)
    if args.model:
        settings = single_model_settings(cfg, fusion, args.model, threshold=args.threshold)
    else:
        w = None if weights is None else validate_weights(weights, backend.members, known=cfg.members)
        settings = multi_model_settings(cfg, fusion, weights=w, threshold=args.threshold)
    t0 = time.perf_counter()
    results = analyze_sources(
        cfg,
        backend,
        [(str(f), Path(f)) for f in args.files],
        weights=settings.weights,
        thresholds=settings.thresholds,
        aggregation=settings.aggregation,
    )
    took = time.perf_counter() - t0
    audio_s = sum(r.duration_s or 0.0 for r in results)
    payload = results_document(cfg, fusion, settings, results)
    if args.format == "csv":
        sys.stdout.write(results_to_csv(cfg.label_codes, payload["results"], ensemble=payload["ensemble"]))
    else:
        print(payload_to_json(payload))
    st = payload["ensemble"]
    which = (
        f"{st['registered_model']} version {st['version']}"
        if st["version"]
        else f"{st['name']} ({st['source']})"
    )
    print(
        f"{len(results)} file(s), {audio_s:.1f} s of audio in {took:.2f} s "
        f"({audio_s / max(took, 1e-9):.1f} audio-s/s) with {which}",
        file=sys.stderr,
    )
    return 1 if any(r.error for r in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the ensemble on a local Ray (HTTP + web page)."""
    from serve.app import run_local

    cfg = _cfg(args)
    run_local(
        cfg,
        host=args.host or cfg.serve.host,
        port=args.port or cfg.serve.port,
        allow_untrained=args.untrained,
        blocking=not args.detach,
        version=args.version,
    )
    return 0


def cmd_mlflow(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the SQL store (127.0.0.1:5000 by default)."""
    from ml.tracking import server_command

    cfg = _cfg(args)
    cmd = server_command(cfg)
    print("$", " ".join(cmd))
    return subprocess.call(cmd)


VERSION_HELP = (
    "registered ensemble version (a number) or alias (default: mlflow.alias, i.e. champion); "
    "'equal' for untuned equal weights"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `mpic`."""
    parser = argparse.ArgumentParser(
        prog="mpic", description="Multiple predominant instrument classification"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=fn.__doc__)
        _common(p)
        p.set_defaults(func=fn)
        return p

    p = add("synth", cmd_synth, "render a synthetic IRMAS-style data set")
    p.add_argument("--out", help="output folder (default: data.root)")
    p.add_argument("--train-clips", type=int)
    p.add_argument("--test-excerpts", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--soundfont", action="append", help="a sample library name (repeatable; default synth.libraries)"
    )
    p.add_argument("--workers", type=int)
    p.add_argument("--quiet", action="store_true")

    p = add("folds", cmd_folds, "assign cross-validation folds")
    p.add_argument("--data", help="data set root (default: data.root)")
    p.add_argument("--k", type=int)
    p.add_argument("--out", help="CSV to write (default: <cache_dir>/folds.csv)")

    p = add("train", cmd_train, "train the ensemble's members on Ray")
    p.add_argument("--members", nargs="+")
    p.add_argument("--folds", nargs="+", type=int)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished folds in runs_dir trained with another configuration (default: refuse)",
    )

    add("fuse", cmd_fuse, "search fusion weights/aggregation/thresholds on OOF predictions")

    p = add("evaluate", cmd_evaluate, "evaluate on an IRMAS testing layout")
    p.add_argument("--data", help="data set root holding IRMAS-TestingData* (default: data.root)")
    p.add_argument("--models", nargs="+", help="members to evaluate (default: the spec's)")
    p.add_argument("--format", choices=["json", "table"], default="table")
    p.add_argument("--output", help="also write the JSON report here")
    p.add_argument(
        "--version",
        help="registered ensemble version or alias (default: champion); 'equal': equal weights and the "
        "fixed threshold (the untuned baseline); or a spec .json file",
    )

    p = add("predict", cmd_predict, "predict instruments in audio files")
    p.add_argument("files", nargs="+")
    p.add_argument("--format", choices=["json", "csv"], default="json")
    p.add_argument("--models", nargs="+", help="members to fuse with equal weights")
    p.add_argument("--weights", help="JSON object member → weight, e.g. '{\"res_genre\": 1}'")
    p.add_argument(
        "--model",
        help="one member alone with its own fitted thresholds (as POST /analyze_files/single_model)",
    )
    p.add_argument("--threshold", type=float, help="one threshold for every class instead of the fitted ones")
    p.add_argument("--version", help=VERSION_HELP)
    p.add_argument(
        "--untrained", action="store_true", help="allow members without checkpoints (random weights)"
    )

    p = add("serve", cmd_serve, "serve the ensemble over HTTP with the web page")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--untrained", action="store_true", help="allow members without checkpoints (random weights)"
    )
    p.add_argument("--detach", action="store_true", help="deploy and return (Ray keeps serving)")
    p.add_argument("--version", help=VERSION_HELP)

    add("mlflow", cmd_mlflow, "start the MLflow UI")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mpic` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, SpecNotFoundError, SpecError) as e:
        print(f"mpic {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _run(argv: Sequence[str] | None = None) -> Any:  # pragma: no cover - `python -m mpic.cli`
    sys.exit(main(argv))


if __name__ == "__main__":  # pragma: no cover
    _run()
