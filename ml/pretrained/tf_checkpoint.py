"""Read TensorFlow "tensor bundle" checkpoints (``.index`` + ``.data-*``) with numpy alone.

A TF1/TF2 ``Saver`` checkpoint is a pair of files: ``<prefix>.index``, an SSTable (LevelDB's table
format) mapping each variable name to a ``BundleEntryProto`` (dtype, shape, shard, offset, size, CRC32C),
and ``<prefix>.data-00000-of-0000N``, the raw little-endian tensor bytes those entries point into. This
module parses both by hand (varints and the few protobuf fields involved), so pretrained weights that ship
as TF checkpoints inside a PyPI wheel can be loaded without importing TensorFlow, straight from the wheel
file (:func:`read_checkpoint_from_zip`).

Only what Saver writes for dense numeric variables is supported: uncompressed or absent table compression,
one or more shards, fixed-size dtypes. Partitioned (sliced) variables and string tensors raise
:class:`TfCheckpointError`.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BundleEntry",
    "TfCheckpointError",
    "crc32c",
    "parse_index",
    "read_checkpoint",
    "read_checkpoint_from_zip",
]

_TABLE_MAGIC = 0xDB4775248B80FB57  # LevelDB table magic number (last 8 bytes of every .index file)
_FOOTER_LEN = 48  # two BlockHandles padded to 40 bytes + 8 bytes of magic
_BLOCK_TRAILER_LEN = 5  # 1 byte compression type + 4 bytes masked CRC32C of the block
_CRC_MASK_DELTA = 0xA282EAD8  # LevelDB's CRC masking constant

# tensorflow/core/framework/types.proto → numpy (little-endian); only fixed-size dtypes
_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),  # DT_FLOAT
    2: np.dtype("<f8"),  # DT_DOUBLE
    3: np.dtype("<i4"),  # DT_INT32
    4: np.dtype("u1"),  # DT_UINT8
    5: np.dtype("<i2"),  # DT_INT16
    6: np.dtype("i1"),  # DT_INT8
    9: np.dtype("<i8"),  # DT_INT64
    10: np.dtype("?"),  # DT_BOOL
    17: np.dtype("<u2"),  # DT_UINT16
    19: np.dtype("<f2"),  # DT_HALF
    22: np.dtype("<u4"),  # DT_UINT32
    23: np.dtype("<u8"),  # DT_UINT64
}


class TfCheckpointError(ValueError):
    """A file that is not a readable TF tensor-bundle checkpoint, or a tensor this reader cannot decode."""


@dataclass(frozen=True)
class BundleEntry:
    """One variable's ``BundleEntryProto``: where its bytes lie and what they are."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None

    @property
    def np_dtype(self) -> np.dtype:
        """The numpy dtype of the tensor (raises for unsupported TF dtypes)."""
        if self.dtype not in _DTYPES:
            raise TfCheckpointError(f"{self.name}: unsupported TF dtype enum {self.dtype}")
        return _DTYPES[self.dtype]


# ---- CRC32C (Castagnoli), as TF and LevelDB use it -------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli polynomial) of ``data``, continuing from ``crc``; pure Python (~1 MB/s)."""
    c = crc ^ 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _unmask_crc(masked: int) -> int:
    rot = (masked - _CRC_MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---- varints and the few protobuf fields we need ----------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise TfCheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TfCheckpointError("varint longer than 64 bits")


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a serialised protobuf message, in order."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:  # varint
            value, pos = _varint(buf, pos)
        elif wire == 1:  # fixed64
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:  # length-delimited
            n, pos = _varint(buf, pos)
            value = bytes(buf[pos : pos + n])
            pos += n
        elif wire == 5:  # fixed32
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise TfCheckpointError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise TfCheckpointError("truncated protobuf message")
        yield field, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    """TensorShapeProto: repeated Dim dim = 2 (Dim: int64 size = 1); unknown_rank = 3."""
    dims: list[int] = []
    for field, _, value in _proto_fields(buf):
        if field == 2 and isinstance(value, bytes):
            size = 0
            for f2, _, v2 in _proto_fields(value):
                if f2 == 1 and isinstance(v2, int):
                    size = _signed64(v2)
            dims.append(size)
        elif field == 3 and value:
            raise TfCheckpointError("tensor of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> BundleEntry:
    """BundleEntryProto: dtype=1, shape=2, shard_id=3, offset=4, size=5, crc32c=6 (fixed32), slices=7."""
    dtype, shard_id, offset, size = 0, 0, 0, 0
    shape: tuple[int, ...] = ()
    crc: int | None = None
    for field, _, value in _proto_fields(buf):
        if field == 1 and isinstance(value, int):
            dtype = value
        elif field == 2 and isinstance(value, bytes):
            shape = _parse_shape(value)
        elif field == 3 and isinstance(value, int):
            shard_id = value
        elif field == 4 and isinstance(value, int):
            offset = value
        elif field == 5 and isinstance(value, int):
            size = value
        elif field == 6 and isinstance(value, int):
            crc = value
        elif field == 7:
            raise TfCheckpointError(f"{name}: partitioned (sliced) variables are not supported")
    return BundleEntry(name, dtype, shape, shard_id, offset, size, crc)


# ---- the SSTable -----------------------------------------------------------------------------------


def _block(buf: bytes, offset: int, size: int, *, verify: bool) -> bytes:
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_LEN > len(buf):
        raise TfCheckpointError("block handle points outside the index file")
    kind = buf[end]
    if kind != 0:  # 0 = no compression; 1 = snappy, which Saver does not use
        raise TfCheckpointError(f"compressed index blocks (type {kind}) are not supported")
    data = bytes(buf[offset:end])
    if verify:
        stored = _unmask_crc(struct.unpack_from("<I", buf, end + 1)[0])
        if crc32c(buf[offset : end + 1]) != stored:
            raise TfCheckpointError(f"CRC mismatch in the index block at {offset}")
    return data


def _block_entries(block: bytes) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) pairs of one table block (prefix-compressed keys, restart array at the end)."""
    if len(block) < 4:
        raise TfCheckpointError("table block too short")
    n_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * n_restarts
    if limit < 0:
        raise TfCheckpointError("corrupt table block (restart array)")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise TfCheckpointError("corrupt table block (entry)")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def parse_index(index: bytes, *, verify_crc: bool = False) -> dict[str, BundleEntry]:
    """Parse a ``.index`` file's bytes into ``{variable name: BundleEntry}`` (the header entry excluded).

    Args:
        index: The whole ``.index`` file.
        verify_crc: Also check every table block's CRC32C.

    Raises:
        TfCheckpointError: Not a LevelDB table, a corrupt block, or an unsupported feature.
    """
    if len(index) < _FOOTER_LEN or struct.unpack_from("<Q", index, len(index) - 8)[0] != _TABLE_MAGIC:
        raise TfCheckpointError("not a TF checkpoint index (no LevelDB table magic)")
    footer = index[len(index) - _FOOTER_LEN :]
    _, pos = _varint(footer, 0)  # metaindex offset (unused: bundles have no filter blocks)
    _, pos = _varint(footer, pos)  # metaindex size
    idx_off, pos = _varint(footer, pos)
    idx_size, pos = _varint(footer, pos)
    entries: dict[str, BundleEntry] = {}
    for _, handle in _block_entries(_block(index, idx_off, idx_size, verify=verify_crc)):
        off, p = _varint(handle, 0)
        size, _ = _varint(handle, p)
        for key, value in _block_entries(_block(index, off, size, verify=verify_crc)):
            if key == b"":  # BundleHeaderProto (num_shards, endianness, version)
                for field, _, v in _proto_fields(value):
                    if field == 2 and v == 1:
                        raise TfCheckpointError("big-endian checkpoints are not supported")
                continue
            name = key.decode("utf-8")
            entries[name] = _parse_entry(name, value)
    return entries


def _decode(entry: BundleEntry, raw: bytes, verify_crc: bool) -> np.ndarray:
    dt = entry.np_dtype
    n = int(np.prod(entry.shape, dtype=np.int64)) if entry.shape else 1
    if n * dt.itemsize != entry.size or len(raw) != entry.size:
        raise TfCheckpointError(
            f"{entry.name}: {len(raw)} bytes stored for shape {entry.shape} of {dt} "
            f"({n * dt.itemsize} expected)"
        )
    if verify_crc and entry.crc32c is not None:
        actual = crc32c(raw)
        if actual not in (entry.crc32c, _unmask_crc(entry.crc32c)):
            raise TfCheckpointError(f"{entry.name}: CRC32C mismatch (data corrupt)")
    return np.frombuffer(raw, dtype=dt).reshape(entry.shape).astype(dt.newbyteorder("="), copy=True)


def _read(
    index: bytes,
    read_shard: Callable[[int, int], bytes],
    names: Iterable[str] | None,
    pattern: str | None,
    verify_crc: bool,
) -> dict[str, np.ndarray]:
    entries = parse_index(index, verify_crc=verify_crc)
    if names is not None:
        wanted = list(names)
        missing = [n for n in wanted if n not in entries]
        if missing:
            raise TfCheckpointError(f"variables not in the checkpoint: {missing}")
    else:
        rx = re.compile(pattern) if pattern else None
        wanted = [n for n in sorted(entries) if rx is None or rx.search(n)]
    shards: dict[int, bytes] = {}
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        e = entries[name]
        if e.shard_id not in shards:
            shards[e.shard_id] = read_shard(e.shard_id, len(shards))
        data = shards[e.shard_id]
        if e.offset + e.size > len(data):
            raise TfCheckpointError(
                f"{name}: bytes {e.offset}..{e.offset + e.size} lie outside its data file"
            )
        out[name] = _decode(e, data[e.offset : e.offset + e.size], verify_crc)
    return out


def _num_shards(index: bytes) -> int:
    entries = parse_index(index)
    return 1 + max((e.shard_id for e in entries.values()), default=0)


def _shard_name(prefix: str, shard: int, n_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{n_shards:05d}"


def read_checkpoint(
    prefix: str | Path,
    names: Iterable[str] | None = None,
    *,
    pattern: str | None = None,
    verify_crc: bool = False,
) -> dict[str, np.ndarray]:
    """Read variables of a checkpoint on disk.

    Args:
        prefix: The checkpoint prefix (``path/model.ckpt`` for ``path/model.ckpt.index``; a directory
            path ending in ``/`` for files named ``.index``, as musicnn's are).
        names: Variables to read (all when None).
        pattern: Regular expression the names must contain a match of (when ``names`` is None).
        verify_crc: Check each tensor's CRC32C (pure Python: about a second per MB).

    Returns:
        ``{name: array}`` in native byte order, shapes as stored (TF layouts, e.g. HWIO kernels).

    Raises:
        TfCheckpointError: Missing files or variables, corrupt or unsupported content.
    """
    prefix = str(prefix)
    try:
        index = Path(prefix + ".index").read_bytes()
    except FileNotFoundError:
        raise TfCheckpointError(f"no checkpoint index at {prefix}.index") from None
    n_shards = _num_shards(index)

    def read_shard(shard: int, _: int) -> bytes:
        path = Path(_shard_name(prefix, shard, n_shards))
        if not path.is_file():
            raise TfCheckpointError(f"checkpoint data file missing: {path}")
        return path.read_bytes()

    return _read(index, read_shard, names, pattern, verify_crc)


def read_checkpoint_from_zip(
    archive: str | Path | zipfile.ZipFile,
    prefix: str,
    names: Iterable[str] | None = None,
    *,
    pattern: str | None = None,
    verify_crc: bool = False,
) -> dict[str, np.ndarray]:
    """Read variables of a checkpoint stored inside a zip archive (e.g. a wheel), without unpacking it.

    Args:
        archive: Path of the zip file, or an open :class:`zipfile.ZipFile`.
        prefix: The checkpoint prefix inside the archive, e.g. ``musicnn/MTT_musicnn/``.
        names: Variables to read (all when None).
        pattern: Regular expression the names must contain a match of (when ``names`` is None).
        verify_crc: Check each tensor's CRC32C.

    Returns:
        ``{name: array}`` as :func:`read_checkpoint`.

    Raises:
        TfCheckpointError: Not a zip file, missing members or variables, corrupt or unsupported content.
    """
    try:
        zf = archive if isinstance(archive, zipfile.ZipFile) else zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise TfCheckpointError(f"{archive}: not a readable zip archive ({e})") from None
    try:
        try:
            index = zf.read(prefix + ".index")
        except KeyError:
            raise TfCheckpointError(f"{zf.filename}: no checkpoint {prefix}.index inside") from None
        n_shards = _num_shards(index)

        def read_shard(shard: int, _: int) -> bytes:
            member = _shard_name(prefix, shard, n_shards)
            try:
                return zf.read(member)
            except KeyError:
                raise TfCheckpointError(f"{zf.filename}: checkpoint data {member} missing") from None

        return _read(index, read_shard, names, pattern, verify_crc)
    finally:
        if zf is not archive:
            zf.close()
