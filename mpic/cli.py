"""The `mpic` command line: one thin subcommand per job (``mpic …`` or ``python -m mpic …``).

It lives outside ``ml/`` because it may import all three packages (``ml``, ``ray_jobs``, ``serve``); the
library never imports its adapters. Every subcommand takes ``--config PATH``, ``--profile NAME`` (the
namespace: runs, MLflow experiment and registered names are the profile's own) and repeated ``--set
key=value``. Commands that need Ray (`train`, `fuse`, `serve`) import `ray_jobs` / `serve` lazily, so
``mpic --help`` is instant. `predict`, `evaluate` and `serve` load the registered ensemble (alias
``champion`` or ``--version N``) through :func:`ml.ensemble.load_spec`, and every answer names it.

Mistakes (missing data, a bad option value, nothing trained or registered yet, …) end in one line
``mpic <command>: <what is wrong>; <what to run>`` and exit status 2, never a traceback: :func:`main` is
the single boundary that turns the project's known error types into that line. Anything else is a bug and
keeps its traceback; ``--debug`` shows the traceback of known errors too.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ml.config import Config, add_config_args, load_config


def _common(p: argparse.ArgumentParser) -> None:
    add_config_args(p)


def _cfg(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    from ml.models import check_members

    cfg = load_config(args.config, args.profile, [*args.overrides, *extra])
    check_members(cfg)
    return cfg


class UsageError(Exception):
    """A mistake the CLI itself detects; the message says what is wrong and what to run instead."""


def _with_profile(args: argparse.Namespace, command: str) -> str:
    """``mpic <command>`` plus the ``--profile`` the user gave, for hints."""
    prof = getattr(args, "profile", None)
    return f"mpic {command}" + (f" --profile {prof}" if prof else "")


def cmd_synth(args: argparse.Namespace) -> int:
    """Render a synthetic IRMAS-style data set."""
    from ml.data.irmas import MIX_DIR, TRAIN_DIR
    from ml.data.synth import META_NAME, STEMS_DIR, TEST_DIR, synthesize_config

    cfg = _cfg(args)
    out = Path(args.out) if args.out else cfg.data.root
    # synthesize() refuses too, but its message names a function argument, not this command's flag
    held = [n for n in (TRAIN_DIR, MIX_DIR, TEST_DIR, META_NAME, STEMS_DIR) if (out / n).exists()]
    if held and not args.overwrite:
        raise UsageError(
            f"{out} already holds a data set ({held[0]}): pass --overwrite to replace it (only the "
            "folders mpic synth writes are removed), or --out ANOTHER_DIR"
        )
    t0 = time.perf_counter()
    given = {
        "train_clips": args.train_clips,
        "test_excerpts": args.test_excerpts,
        "seed": args.seed,
        "libraries": args.soundfont,
        "workers": args.workers,
    }
    report = synthesize_config(
        cfg,
        out,
        **{k: v for k, v in given.items() if v is not None},
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {report.train_files} training clips, {report.mix_files} training mixes and "
        f"{report.test_files} test excerpts to {out} "
        f"in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def cmd_folds(args: argparse.Namespace) -> int:
    """Assign leak-free folds (stratified by recording, or one per library family); write them as CSV."""
    from ml.data.folds import assign_folds, write_folds
    from ml.data.irmas import build_manifest
    from ml.data.manifest import Manifest
    from ml.train_data import library_folds

    cfg = _cfg(args)
    root = Path(args.data) if args.data else cfg.data.root
    k = args.k or cfg.folds.k
    manifest = build_manifest(root, cfg.label_codes, strict=False)
    train = manifest.filter(split="train").records
    if cfg.folds.by == "library":
        recs = library_folds(train, k)
    else:
        recs = assign_folds(train, cfg.label_codes, k=k, seed=cfg.folds.seed)
    out = Path(args.out) if args.out else cfg.namespace_dir / "folds.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    n = write_folds(Manifest(manifest.root, recs), out)
    print(f"{n} clips in {k} folds → {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Fold-parallel training on Ray (Tune grid of member × fold, each a TorchTrainer)."""
    cfg = _cfg(args)
    _check_members(cfg, args.members)
    _check_training_data(args, cfg)
    from ray_jobs.train import RunsDirConflictError, train  # imports Ray: after the cheap checks

    try:
        summary = train(cfg, members=args.members, folds=args.folds, overwrite=args.overwrite)
    except RunsDirConflictError as e:
        print(f"mpic train: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary.get("members", summary), indent=2, default=str))
    return 0


def _check_members(cfg: Config, members: Sequence[str] | None) -> None:
    unknown = [m for m in members or [] if m not in cfg.members]
    if unknown:
        raise UsageError(f"unknown members {unknown}; valid: {sorted(cfg.members)}")


def _check_training_data(args: argparse.Namespace, cfg: Config) -> None:
    """Fail before Ray starts when there is nothing to train on (the manifest is cached for the job)."""
    from ml.data.irmas import IrmasLayoutError, build_manifest

    root = cfg.data.root
    synth = _with_profile(args, "synth")
    try:
        manifest = build_manifest(root, cfg.label_codes, cache_path=cfg.data.cache_dir / "manifest.csv")
    except IrmasLayoutError as e:
        if not root.is_dir():
            raise UsageError(
                f"no data set at {root} (data.root): run `{synth}` first, or point data.root at an IRMAS "
                "copy with --set data.root=DIR"
            ) from None
        raise UsageError(f"{e}; run `{synth}` to render a data set there") from None
    if not any(r.split == "train" for r in manifest.records):
        raise UsageError(f"no training clips under {root} (IRMAS-TrainingData/<code>/*.wav): run `{synth}`")


def cmd_fuse(args: argparse.Namespace) -> int:
    """Ray Tune search of fusion weights, aggregation and thresholds on out-of-fold predictions."""
    from ml.oof import oof_files

    cfg = _cfg(args)
    untrained = [m for m in cfg.ensemble_members if not oof_files(cfg.runs_dir, m)]
    if untrained:
        raise UsageError(
            f"members {untrained} have no out-of-fold predictions under {cfg.runs_dir}: "
            f"run `{_with_profile(args, 'train')}` first"
        )
    from ray_jobs.fuse import fuse  # imports Ray: after the cheap check

    result = fuse(cfg)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate members and the fused ensemble on IRMAS test excerpts or NAME.wav + NAME.txt pairs."""
    from ml.ensemble import load_spec
    from ml.evaluate import evaluate, format_table

    cfg = _cfg(args)
    # --version equal: equal weights and the fixed threshold, the baseline the fused spec is compared with
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data}: no such folder")
    _check_members(cfg, args.models)
    if args.protocol == "lolo":
        return _evaluate_lolo(cfg, args, data)
    spec = load_spec(cfg, args.version, allow_untrained=args.untrained)
    report = evaluate(cfg, data_root=data, members=args.models, spec=spec, allow_untrained=args.untrained)
    if spec.registered_model and spec.version and "ensemble" in report and not args.models:
        from ml.tracking import attach_test_evaluation

        where = attach_test_evaluation(cfg, spec.registered_model, spec.version, report["ensemble"])
        print(f"test metrics attached to {where}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    print(format_table(report) if args.format == "table" else json.dumps(report, indent=2))
    return 0


def _evaluate_lolo(cfg: Any, args: argparse.Namespace, data: Path | None) -> int:
    """``evaluate --protocol lolo``: train without each library family, test on it (``ml.lolo``)."""
    from datetime import datetime

    from ml import lolo
    from ml.data.irmas import build_manifest

    root = data or cfg.data.root
    manifest = build_manifest(root, cfg.label_codes, cache_path=cfg.namespace_dir / "lolo-manifest.csv")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else cfg.namespace_dir / "lolo" / stamp
    folds = tuple(args.folds) if args.folds else None
    report = lolo.run_lolo(cfg, manifest, out, members=args.models, families=args.families, folds=folds)
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2))
    print(lolo.format_report(report) if args.format == "table" else json.dumps(report, indent=2))
    print(f"models, out-of-fold predictions and lolo.json under {out}", file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Tag audio files and folders with the registered ensemble (or one of its members).

    Folders are searched recursively for audio files; files go through the analysis pipeline a chunk at a
    time. With ``--output`` the rows are written to a CSV/JSON/Parquet file as they come, and a rerun
    skips the files already in it.
    """
    from ml import batch
    from ml.ensemble import load_spec
    from ml.results import payload_to_json, results_to_csv
    from ml.service import (
        LocalBackend,
        fusion_from_spec,
        multi_model_settings,
        results_document,
        single_model_settings,
        validate_weights,
    )

    cfg = _cfg(args)
    files = batch.discover(args.inputs)  # a missing path fails here, before any model is loaded
    if args.output:
        fmt = batch.output_format(args.output)
        if args.format and args.format != fmt:
            raise UsageError(f"--format {args.format} contradicts --output {args.output} (a {fmt} file)")
    spec = load_spec(cfg, args.version, allow_untrained=args.untrained)
    valid = sorted(spec.members)
    weights: dict[str, float] | None = None
    if args.weights:
        try:
            raw = json.loads(args.weights)
        except ValueError as e:
            raise UsageError(f"--weights is not valid JSON ({e}), e.g. '{{\"{valid[0]}\": 1}}'") from None
        weights = validate_weights(raw, valid)  # names unknown members and lists the valid ones
    elif args.models:
        _check_names("--models", args.models, valid)
        weights = {m: 1.0 for m in args.models}
    members: list[str] | None = None
    if args.model:
        _check_names("--model", [args.model], valid)
        members = [args.model]
    else:
        members = None if weights is None else [m for m, w in weights.items() if w > 0]
    backend = LocalBackend.from_config(cfg, members, spec=spec, allow_untrained=args.untrained)
    fusion = fusion_from_spec(cfg, spec, backend.members)
    if args.model:
        settings = single_model_settings(cfg, fusion, args.model, threshold=args.threshold)
    else:
        w = None if weights is None else {m: weights[m] for m in backend.members}
        settings = multi_model_settings(cfg, fusion, weights=w, threshold=args.threshold)
    header = results_document(cfg, fusion, settings, [])
    progress = not args.quiet and sys.stderr.isatty()

    if args.output:
        out = batch.open_output(args.output, cfg.label_codes, header)
        for note in out.notes:
            print(f"mpic predict: {note}", file=sys.stderr)
        todo = [f for f in files if not out.holds(f)]
        try:
            report = batch.tag(cfg, backend, settings, todo, out.write, progress=progress)
        except KeyboardInterrupt:
            out.close()
            print(
                f"mpic predict: interrupted; {out.rows} rows are in {out.path}: rerun the same command "
                "to tag the rest",
                file=sys.stderr,
            )
            return 130
        out.close()
        skipped = f", {len(files) - len(todo)} already in {out.path} skipped" if out.existing else ""
        where = f" → {out.path} ({out.rows} rows)"
    else:
        collected: list[Any] = []
        fmt = args.format or "json"

        def print_rows(part: list[Any]) -> None:
            sys.stdout.write(results_to_csv(cfg.label_codes, part, ensemble=header["ensemble"], header=False))
            sys.stdout.flush()

        # CSV rows are printed as they come; JSON is one document, printed at the end
        sink: Callable[[list[Any]], None] = collected.extend
        if fmt == "csv":
            sys.stdout.write(results_to_csv(cfg.label_codes, [], ensemble=header["ensemble"]))
            sink = print_rows
        report = batch.tag(cfg, backend, settings, files, sink, progress=progress)
        if fmt == "json":
            print(payload_to_json(results_document(cfg, fusion, settings, collected)))
        skipped = where = ""
    st = header["ensemble"]
    which = (
        f"{st['registered_model']} version {st['version']}"
        if st["version"]
        else f"{st['name']} ({st['source']})"
    )
    print(
        f"{report.files} file(s){skipped}, {report.failed} failed, {report.audio_s:.1f} s of audio in "
        f"{report.wall_s:.2f} s ({report.audio_s_per_s:.1f} audio-s/s) with {which}{where}",
        file=sys.stderr,
    )
    return 1 if report.failed else 0


def _check_names(flag: str, names: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [m for m in names if m not in valid]
    if unknown:
        raise UsageError(f"{flag}: unknown members {unknown}; valid: {list(valid)}")


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the ensemble on a local Ray (HTTP + web page)."""
    from serve.app import run_local

    cfg = _cfg(args)
    if args.detach and not cfg.ray.address:
        # A Ray started by this command stops with it: a detached deployment would vanish at once.
        raise UsageError(
            "--detach needs a running Ray cluster to leave Serve on: `ray start --head`, then "
            "`mpic serve --detach --set ray.address=auto` (without --detach, Ctrl-C stops serving)"
        )
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
UNTRAINED_HELP = "allow members without checkpoints (deterministic random weights: for tests and demos)"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} must be >= 1")
    return n


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} must be >= 0")
    return n


def package_version() -> str:
    """The installed ``mpic`` distribution's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("mpic")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line (``mpic predict: argument --port: …``) instead of the usage block."""

    def error(self, message: str) -> Any:
        """Print the mistake and where to read more; exit 2."""
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `mpic`."""
    parser = _Parser(prog="mpic", description="Multiple predominant instrument classification")
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {package_version()}", help="print the version"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of every error, not only of unexpected ones"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=fn.__doc__)
        _common(p)
        # also accepted after the command; SUPPRESS keeps a top-level --debug from being reset
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
        p.set_defaults(func=fn)
        return p

    p = add("synth", cmd_synth, "render a synthetic IRMAS-style data set")
    p.add_argument("--out", help="output folder (default: data.root)")
    p.add_argument("--train-clips", type=_count, help="training clips per label (default: synth.train_clips)")
    p.add_argument("--test-excerpts", type=_count, help="test excerpts (default: synth.test_excerpts)")
    p.add_argument("--seed", type=int, help="random seed (default: synth.seed)")
    p.add_argument(
        "--soundfont", action="append", help="a sample library name (repeatable; default synth.libraries)"
    )
    p.add_argument(
        "--workers", type=_positive, help="rendering processes (default: synth.workers or all cores)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a data set already in the output folder (default: refuse)",
    )

    p = add("folds", cmd_folds, "assign cross-validation folds")
    p.add_argument("--data", help="data set root (default: data.root)")
    p.add_argument("--k", type=_positive, help="number of folds (default: folds.k)")
    p.add_argument("--out", help="CSV to write (default: <cache_dir>/folds.csv)")

    p = add("train", cmd_train, "train the ensemble's members on Ray")
    p.add_argument("--members", nargs="+", help="members to train (default: the ensemble's)")
    p.add_argument("--folds", nargs="+", type=int, help="folds to train (default: train.folds or all)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace finished folds in runs_dir trained with another configuration (default: refuse)",
    )

    add("fuse", cmd_fuse, "search fusion weights/aggregation/thresholds on OOF predictions")

    p = add("evaluate", cmd_evaluate, "evaluate on IRMAS test excerpts (or NAME.wav + NAME.txt pairs)")
    p.add_argument(
        "--data",
        help="folder holding IRMAS-TestingData*, or a plain folder of NAME.wav + NAME.txt pairs (labels "
        "one per line) (default: data.test_root or data.root)",
    )
    p.add_argument("--models", nargs="+", help="members to evaluate (default: the spec's)")
    p.add_argument("--format", choices=["json", "table"], default="table", help="report on stdout as")
    p.add_argument("--output", help="also write the JSON report here")
    p.add_argument(
        "--version",
        help="registered ensemble version or alias (default: champion); 'equal': equal weights and the "
        "fixed threshold (the untuned baseline); or a spec .json file",
    )
    p.add_argument("--untrained", action="store_true", help=UNTRAINED_HELP)
    p.add_argument(
        "--protocol",
        choices=["registered", "lolo"],
        default="registered",
        help="'registered': score the registered ensemble on the test excerpts; 'lolo': leave one sample "
        "library family out — train the members without it, fit weights and thresholds without it, test on "
        "it, for every family (needs data rendered by `mpic synth` with several libraries)",
    )
    p.add_argument("--families", nargs="+", help="lolo: the families to hold out (default: all)")
    p.add_argument(
        "--folds", nargs="+", type=int, help="lolo: validation folds trained per member (default: all)"
    )
    p.add_argument(
        "--out", help="lolo: a new folder for the protocol's models and report (default: a timestamped one)"
    )

    p = add("predict", cmd_predict, "tag audio files and folders (recursively) with the ensemble")
    p.add_argument(
        "inputs", nargs="+", metavar="PATH", help="audio files and/or folders (searched recursively)"
    )
    p.add_argument(
        "--output",
        help="write the results to this .csv, .json or .parquet file as they come; if it exists, its "
        "rows are kept and the files already in it skipped (resume)",
    )
    p.add_argument(
        "--format", choices=["json", "csv"], help="format on stdout without --output (default: json)"
    )
    p.add_argument("--models", nargs="+", help="members to fuse with equal weights")
    p.add_argument("--weights", help="JSON object member → weight, e.g. '{\"res_genre\": 1}'")
    p.add_argument(
        "--model",
        help="one member alone with its own fitted thresholds (as POST /analyze_files/single_model)",
    )
    p.add_argument("--threshold", type=float, help="one threshold for every class instead of the fitted ones")
    p.add_argument("--version", help=VERSION_HELP)
    p.add_argument("--untrained", action="store_true", help=UNTRAINED_HELP)
    p.add_argument(
        "--quiet", action="store_true", help="no progress bar (also off when stderr is not a terminal)"
    )

    p = add("serve", cmd_serve, "serve the ensemble over HTTP with the web page")
    p.add_argument("--host", help="address to listen on (default: serve.host)")
    p.add_argument("--port", type=_port, help="port to listen on, 1-65535 (default: serve.port)")
    p.add_argument("--untrained", action="store_true", help=UNTRAINED_HELP)
    p.add_argument(
        "--detach",
        action="store_true",
        help="deploy and return; Serve keeps running on the Ray cluster of ray.address (needs one)",
    )
    p.add_argument("--version", help=VERSION_HELP)

    add("mlflow", cmd_mlflow, "start the MLflow UI")

    return parser


# Errors that are the user's to fix (bad input, missing data, nothing trained yet): one line, no traceback.
# By (module, class) so a command only imports what it needs: an exception of a class whose module was
# never imported cannot have been raised.
KNOWN_ERRORS = (
    ("ml.config", "ConfigError"),
    ("ml.ensemble", "SpecError"),
    ("ml.ensemble", "SpecNotFoundError"),
    ("ml.service", "WeightsError"),
    ("ml.batch", "BatchError"),
    ("ml.evaluate", "EvaluationDataError"),
    ("ml.data.irmas", "IrmasLayoutError"),
    ("ml.data.manifest", "ManifestError"),
    ("ml.data.libraries", "UnknownLibraryError"),
    ("ml.data.scores", "UnknownCollectionError"),
    ("ml.checkpoint", "CheckpointError"),
    ("ml.registry", "UnknownNameError"),
    ("ml.lolo", "LoloError"),
    ("ml.audio", "AudioError"),
    ("ray_jobs.train", "RunsDirConflictError"),
)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a mistake to report in one line (see :data:`KNOWN_ERRORS`)."""
    if isinstance(exc, UsageError | FileNotFoundError | FileExistsError | NotADirectoryError):
        return True
    for module, name in KNOWN_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def error_line(command: str, exc: BaseException) -> str:
    """``mpic <command>: <message>`` for a user error."""
    msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in msg:
        msg = f"{msg}: {exc.filename}"
    # one line: "invalid configuration:\n  a: why\n  b: why" → "invalid configuration: a: why; b: why"
    lines = [line.strip() for line in str(msg).splitlines() if line.strip()]
    if len(lines) > 1:
        msg = f"{lines[0]} {'; '.join(lines[1:])}" if lines[0].endswith(":") else "; ".join(lines)
    return f"mpic {command}: {msg or type(exc).__name__}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mpic` console script: run a command; user errors become one line, exit 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"mpic {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: keep its traceback
        if args.debug:
            traceback.print_exc()
        print(error_line(args.command, e), file=sys.stderr)
        return 2


def _run(argv: Sequence[str] | None = None) -> Any:  # pragma: no cover - `python -m mpic.cli`
    sys.exit(main(argv))


if __name__ == "__main__":  # pragma: no cover
    _run()
