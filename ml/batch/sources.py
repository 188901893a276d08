"""Which files a batch run tags: local files and folders, and URIs (``s3://``, ``gs://``, ``file://``).

:func:`discover` expands files and folders (recursively, by :data:`ml.audio.AUDIO_EXTENSIONS`) into a sorted,
de-duplicated list of paths; :func:`discover_sources` does the same for URIs as well (listed with pyarrow's
filesystems) and :func:`read_source` reads either. Files are identified across runs by :func:`file_key`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ml.audio import AUDIO_EXTENSIONS


class BatchError(ValueError):
    """Inputs or an output that a batch run cannot use; the message says what to do."""


def file_key(name: str | Path) -> str:
    """What identifies a file across runs: its absolute, normalised path."""
    return os.path.normcase(os.path.abspath(os.fspath(name)))


def _hidden(rel: Path) -> bool:
    # dot folders (.git, .Trash) and AppleDouble "._x.wav" files are not music
    return any(part.startswith(".") for part in rel.parts)


def discover(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into the audio files to tag, in a stable order, each once.

    A folder contributes every file below it (recursively; hidden files and folders skipped) whose
    extension is in :data:`~ml.audio.AUDIO_EXTENSIONS`, sorted by path. A file named explicitly is taken
    whatever its extension (decoding will say if it is not audio).

    Raises:
        FileNotFoundError: An input does not exist.
        BatchError: The inputs hold no audio file at all.
    """
    files: list[Path] = []
    seen: set[str] = set()
    names = [str(x) for x in inputs]
    for raw in names:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                q
                for q in p.rglob("*")
                if q.suffix.lower() in AUDIO_EXTENSIONS and not _hidden(q.relative_to(p)) and q.is_file()
            )
        elif p.exists():
            found = [p]
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
        for q in found:
            key = file_key(q)
            if key not in seen:
                seen.add(key)
                files.append(q)
    if not files:
        exts = ", ".join(sorted(AUDIO_EXTENSIONS))
        raise BatchError(f"no audio files under {', '.join(names)} (looked for {exts})")
    return files


def is_uri(name: str) -> bool:
    """Whether ``name`` is a URI with a scheme (``s3://``, ``gs://``, ``file://``), not a local path."""
    scheme, sep, _ = name.partition("://")
    return bool(sep) and scheme.isidentifier()


def discover_sources(inputs: Iterable[str | Path]) -> list[str]:
    """:func:`discover` for local paths and URIs alike: absolute paths and URIs, in a stable order, each once.

    A URI (any filesystem pyarrow knows: ``s3://``, ``gs://``, ``file://``, …) is listed like a local folder
    (recursively, by audio extension, hidden entries skipped) or taken as one file. Local paths become
    absolute so that workers on other nodes (with the same shared mount) and `ray job submit` drivers
    (whose working directory is a temporary copy) find them.

    Raises:
        FileNotFoundError: An input does not exist.
        BatchError: The inputs hold no audio file at all.
    """
    names = [str(x) for x in inputs]
    out: list[str] = []
    seen: set[str] = set()
    local = [n for n in names if not is_uri(n)]
    found_local = iter(discover(local)) if local else iter(())
    for name in names:
        if not is_uri(name):
            continue
        for uri in _list_uri(name):
            if uri not in seen:
                seen.add(uri)
                out.append(uri)
    for p in found_local:
        key = file_key(p)
        if key not in seen:
            seen.add(key)
            out.append(key)
    if not out:
        raise BatchError(f"no audio files under {', '.join(names)}")
    return out


def _list_uri(uri: str) -> list[str]:
    from pyarrow import fs as pafs

    scheme = uri.partition("://")[0]
    try:
        filesystem, root = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot open {uri}: {e}") from None
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or folder: {uri}")
    if info.type == pafs.FileType.File:
        return [uri]
    entries = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    base = root.rstrip("/") + "/"
    return sorted(
        f"{scheme}://{e.path}"
        for e in entries
        if e.type == pafs.FileType.File
        and Path(e.path).suffix.lower() in AUDIO_EXTENSIONS
        and not _hidden(Path(e.path[len(base) :] if e.path.startswith(base) else e.base_name))
    )


def read_source(name: str) -> bytes:
    """The bytes of a local file or a URI (see :func:`discover_sources`).

    Raises:
        OSError: It cannot be read.
    """
    if not is_uri(name):
        return Path(name).read_bytes()
    from pyarrow import fs as pafs

    try:
        filesystem, path = pafs.FileSystem.from_uri(name)
    except ValueError as e:
        raise OSError(str(e)) from None
    with filesystem.open_input_stream(path) as f:
        return bytes(f.read())
