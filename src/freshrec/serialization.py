"""The one format freshrec writes its states in (checkpoints, model snapshots,
store mirrors, the learner's pipe), and reads back without running code.

A blob is a header line and a safetensors file::

    FRESHREC/1 unsigned\\n<safetensors>
    FRESHREC/1 hmac-sha256 <64 hex digits>\\n<safetensors>

Every tensor and NumPy array of the state is a tensor of the safetensors file, and
so is every long list of strings (a catalog's item ids: their UTF-8 bytes and ends);
everything else (nested dicts, lists, numbers, strings) is a JSON skeleton in
the file's metadata, with references to the tensors. Reading parses JSON and
safetensors and nothing else: no pickle, so crafted bytes cannot run code, and
anything but the expected structure is refused as :class:`Malformed`.

With a key (``[cluster] snapshot_key``), the header carries an HMAC-SHA256 of
the safetensors bytes and a reader holding the key refuses a blob without a
valid one: whoever can write to Redis or the store cannot plant a model.

The pickled files of earlier versions are read by :func:`load_legacy` only,
with torch's restricted unpickler, by ``freshrec model migrate``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import math
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_tensors

MAGIC = b"FRESHREC/1 "
MAX_BYTES = 8 << 30
"""Blobs larger than this are refused before they are parsed."""
_TENSOR, _ARRAY, _DICT, _TUPLE, _ROWS = "$tensor", "$array", "$dict", "$tuple", "$rows"
_STRINGS = "$strings"
STRINGS_MIN = 1_024
"""Lists of at least this many strings (a catalog's item ids) are saved as tensors, not in
the JSON skeleton. Why: parsing JSON is one call that holds the interpreter lock; for a
million ids the skeleton and the header that holds it took 85 and 50-70 ms, while a
server taking in a whole snapshot made its requests wait."""
STRINGS_PIECE = 1 << 16
"""Such a list is decoded this many strings at a time (each a short hold of the lock)."""
SPARSE_MIN_ROWS = 1_024
"""Tables with at least this many rows, most of them zero, are saved as their nonzero rows."""
MAX_ROW_WIDTH = 1 << 16


class Malformed(ValueError):
    """The bytes are not a state freshrec wrote (or not with this key)."""


class UnsafeData(Malformed):
    """A legacy pickle holds something other than tensors, arrays, numbers, strings and containers."""


def dumps(state: Any, key: bytes | None = None) -> bytes:
    """``state`` (dicts, lists, tuples, numbers, strings, None, tensors, NumPy
    arrays) as one blob; signed when ``key`` is given."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(state, tensors), separators=(",", ":"), allow_nan=True)
    body = save_tensors(tensors, metadata={"freshrec": skeleton})
    if key:
        return MAGIC + b"hmac-sha256 " + _mac(key, body).encode() + b"\n" + body
    return MAGIC + b"unsigned\n" + body


def loads(
    data: bytes | memoryview, key: bytes | None = None, max_bytes: int = MAX_BYTES, reuse: StringLists | None = None
) -> Any:
    """What :func:`dumps` wrote. With ``key``, only a blob signed with it. With ``reuse``, a
    long string list an earlier blob carried too is handed back, not decoded again.

    ``data`` may be a view of a larger buffer (a message's tail): it is not copied whole
    (a copy of a large snapshot holds the interpreter lock: 150 MB, about 0.1 s on the
    reference machine), only each tensor out of it (:func:`_tensors`)."""
    view = memoryview(data)
    if len(view) > max_bytes:
        raise Malformed(f"{len(view):,} bytes, more than the limit of {max_bytes:,}")
    start = bytes(view[:200])
    if not start.startswith(MAGIC):
        raise Malformed("not a freshrec state (no FRESHREC/1 header; `freshrec model migrate` converts old files)")
    end = start.find(b"\n")
    if end < 0:
        raise Malformed("header line not terminated")
    header, body = start[len(MAGIC) : end].split(), view[end + 1 :]
    if key:
        if len(header) != 2 or header[0] != b"hmac-sha256":
            raise Malformed("not signed, and a snapshot key is set")
        if not hmac.compare_digest(header[1], _mac(key, body).encode()):
            raise Malformed("signature does not match the snapshot key")
    elif header not in ([b"unsigned"],) and (len(header) != 2 or header[0] != b"hmac-sha256"):
        raise Malformed(f"unknown header {start[:end]!r}")
    try:
        entries, data_at = _header(body)
        meta = entries.pop("__metadata__", None)
        if not isinstance(meta, dict) or not isinstance(meta.get("freshrec"), str):
            raise Malformed("no freshrec metadata")
        skeleton = json.loads(meta["freshrec"])
        tensors = _tensors(body, entries, data_at)
    except Malformed:
        raise
    except Exception as exc:  # json and NumPy raise their own errors on bad bytes
        raise Malformed(f"unreadable: {exc}") from exc
    return _decode(skeleton, tensors, reuse)


def load(path: Path, key: bytes | None = None) -> Any:
    """:func:`loads` of a file."""
    return loads(path.read_bytes(), key)


def _mac(key: bytes, body: bytes | memoryview) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def _header(body: memoryview) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON), and
    where the tensors' data starts."""
    if len(body) < 8:
        raise Malformed("truncated")
    (size,) = struct.unpack("<Q", body[:8])
    if size > len(body) - 8:
        raise Malformed("truncated header")
    header = json.loads(bytes(body[8 : 8 + size]))
    if not isinstance(header, dict):
        raise Malformed("a safetensors header must be an object")
    return header, 8 + size


_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
    "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}  # fmt: skip


def _tensors(body: memoryview, header: dict[str, Any], start: int) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file whose ``header`` was read (their data from
    ``start`` on), each copied out of ``body`` by NumPy.

    Why not ``safetensors.torch.load``: it needs the body as one ``bytes`` object (a copy
    of the blob) and copies each tensor out of it again, both with the interpreter lock
    held: a server taking in a whole snapshot of a million items (150 MB) paused its
    requests 112 and 126 ms for them. NumPy's copies let go of the lock. The checks are
    safetensors' own: known dtypes, and data that fits its shape inside the file."""
    out = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise Malformed(f"tensor {name!r}: not a safetensors entry")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPES:
            raise Malformed(f"tensor {name!r}: dtype {dtype!r} is not one freshrec writes")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise Malformed(f"tensor {name!r}: bad shape")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets):
            raise Malformed(f"tensor {name!r}: bad data offsets")
        kind = np.dtype(_DTYPES[dtype])
        count = math.prod(shape)  # exact: a crafted shape must not wrap around
        begin, end = offsets
        if not 0 <= begin <= end <= len(body) - start or end - begin != count * kind.itemsize:
            raise Malformed(f"tensor {name!r}: its data does not fit its shape inside the file")
        values = np.frombuffer(body, dtype=kind, count=count, offset=start + begin).reshape(shape).copy()
        out[name] = torch.from_numpy(values)
    return out


def _encode(x: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(x, torch.Tensor) and (rows := _nonzero_rows(x)) is not None:
        # an item table of a large catalog is mostly rows of items nobody touched yet,
        # which are exactly zero (and so is their optimizer state): a 200,000-item
        # shop's checkpoint and snapshots shrink by the share of untouched items
        values = x.detach().cpu()[rows]
        refs = []
        for t in (rows, values):
            refs.append(f"t{len(tensors)}")
            tensors[refs[-1]] = t.contiguous()
        return {_ROWS: [*refs, list(x.shape)]}
    if isinstance(x, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = _alone(x.detach().cpu(), tensors)
        return {_TENSOR: name}
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise TypeError(f"cannot save a NumPy array of dtype {x.dtype}")
        name = f"t{len(tensors)}"
        tensors[name] = _alone(torch.from_numpy(np.ascontiguousarray(x)), tensors)
        return {_ARRAY: name}
    if isinstance(x, dict):
        return {_DICT: [[_encode(k, tensors), _encode(v, tensors)] for k, v in x.items()]}
    if isinstance(x, tuple):
        return {_TUPLE: [_encode(v, tensors) for v in x]}
    if isinstance(x, list):
        if len(x) >= STRINGS_MIN and all(type(v) is str for v in x):
            return {_STRINGS: _strings_out(x, tensors)}
        if _plain(x):  # an id list of a large catalog: 200,000 strings cost 0.8 s one by one
            return x
        return [_encode(v, tensors) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, bool | int | float | str):
        return x
    raise TypeError(f"cannot save a {type(x).__name__}")


def _nonzero_rows(x: torch.Tensor) -> torch.Tensor | None:
    """The indices of ``x``'s nonzero rows if it is a large table that is mostly zero rows."""
    if x.dim() < 2 or x.shape[0] < SPARSE_MIN_ROWS or not x.is_floating_point() or x.is_sparse:
        return None
    nonzero = (x.detach().cpu() != 0).reshape(x.shape[0], -1).any(1)
    count = int(nonzero.sum())
    return torch.nonzero(nonzero).squeeze(1) if 2 * count <= x.shape[0] else None


def _alone(t: torch.Tensor, saved: dict[str, torch.Tensor]) -> torch.Tensor:
    """``t`` itself if it is the whole of its storage and no tensor saved so far shares
    it, else a compact copy: safetensors refuses tensors that share memory, and a view
    would save its whole base."""
    whole = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.nbytes
    ptr = t.untyped_storage().data_ptr()
    shared = ptr != 0 and any(s.untyped_storage().data_ptr() == ptr for s in saved.values())
    return t if whole and not shared else t.contiguous().clone()


def _plain(x: list[Any]) -> bool:
    """Whether ``x`` holds only strings and ``None``, which JSON holds as they are."""
    return all(type(v) is str or v is None for v in x)


def _decode(x: Any, tensors: dict[str, torch.Tensor], reuse: StringLists | None) -> Any:
    if isinstance(x, list):
        return x if _plain(x) else [_decode(v, tensors, reuse) for v in x]
    if isinstance(x, dict):
        if len(x) != 1:
            raise Malformed("unexpected object in the skeleton")
        ((tag, value),) = x.items()
        if tag in (_TENSOR, _ARRAY):
            if not isinstance(value, str) or value not in tensors:
                raise Malformed(f"reference to a missing tensor {value!r}")
            return tensors[value] if tag == _TENSOR else tensors[value].numpy()
        if tag == _DICT and isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            out = {}
            for k, v in value:
                k = _decode(k, tensors, reuse)
                if not isinstance(k, str | int | float | bool) and k is not None:
                    raise Malformed("a dict key that is not a scalar")
                out[k] = _decode(v, tensors, reuse)
            return out
        if tag == _TUPLE and isinstance(value, list):
            return tuple(_decode(v, tensors, reuse) for v in value)
        if tag == _ROWS and isinstance(value, list) and len(value) == 3:
            return _rows(value, tensors)
        if tag == _STRINGS and isinstance(value, list) and len(value) == 2:
            return _strings_in(value, tensors, reuse)
        raise Malformed(f"unexpected tag {tag!r} in the skeleton")
    return x  # JSON scalars


def _rows(value: list[Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """A table saved as its nonzero rows (see :func:`_encode`), checked before it is built."""
    names, shape = value[:2], value[2]
    if not all(isinstance(n, str) and n in tensors for n in names):
        raise Malformed("reference to a missing tensor")
    rows, values = (tensors[n] for n in names)
    if not isinstance(shape, list) or len(shape) < 2 or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise Malformed("a table's shape must be a list of sizes")
    width = int(np.prod(shape[1:]))
    if shape[0] > MAX_BYTES // 4 or width > MAX_ROW_WIDTH:
        raise Malformed(f"a table of shape {shape} is larger than a state may hold")
    if rows.dtype != torch.int64 or rows.dim() != 1 or tuple(values.shape) != (len(rows), *shape[1:]):
        raise Malformed("a table's rows do not fit its shape")
    if len(rows) and (int(rows[0]) < 0 or int(rows[-1]) >= shape[0] or not bool((rows[1:] > rows[:-1]).all())):
        raise Malformed("a table's rows must ascend within it")
    out = values.new_zeros(shape)
    out[rows] = values
    return out


def _strings_out(x: list[str], tensors: dict[str, torch.Tensor]) -> list[str]:
    """A long list of strings as two tensors: their UTF-8 bytes one after the other, and
    where each ends (see :data:`STRINGS_MIN`)."""
    encoded = [v.encode("utf-8", "surrogatepass") for v in x]
    ends = np.cumsum([len(v) for v in encoded], dtype=np.int64)
    refs = [f"t{len(tensors)}", f"t{len(tensors) + 1}"]
    tensors[refs[0]] = torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy())
    tensors[refs[1]] = torch.from_numpy(ends)
    return refs


def _strings_in(value: list[Any], tensors: dict[str, torch.Tensor], reuse: StringLists | None) -> list[str]:
    """The list :func:`_strings_out` wrote, checked, then decoded (or reused: ``reuse``)."""
    if not all(isinstance(n, str) and n in tensors for n in value):
        raise Malformed("reference to a missing tensor")
    blob, ends = (tensors[n] for n in value)
    if blob.dtype != torch.uint8 or blob.dim() != 1 or ends.dtype != torch.int64 or ends.dim() != 1:
        raise Malformed("a string list must be bytes and their ends")
    data, where = blob.numpy(), ends.numpy()
    if len(where) and (where[0] < 0 or where[-1] != len(data) or bool((where[1:] < where[:-1]).any())):
        raise Malformed("a string list's ends must ascend to its length")
    return reuse.decoded(data, where) if reuse is not None else _decoded(data, where)


def _decoded(data: np.ndarray, where: np.ndarray, first: int = 0) -> list[str]:
    """The strings of ``data`` ending at ``where`` (checked), from the ``first`` on, a piece
    at a time (:data:`STRINGS_PIECE`)."""
    out: list[str] = []
    start = int(where[first - 1]) if first else 0
    raw = data[start:].tobytes()
    try:
        for at in range(first, len(where), STRINGS_PIECE):
            piece = (where[at : at + STRINGS_PIECE] - start).tolist()
            begin = int(where[at - 1]) - start if at else 0
            text = raw[begin : piece[-1]].decode("utf-8", "surrogatepass")
            bounds = zip([begin, *piece[:-1]], piece, strict=True)
            if text.isascii():  # one byte a character: the byte offsets cut the text
                out += [text[a - begin : b - begin] for a, b in bounds]
            else:
                out += [raw[a:b].decode("utf-8", "surrogatepass") for a, b in bounds]
    except UnicodeDecodeError as exc:
        raise Malformed(f"a string list is not UTF-8: {exc}") from exc
    return out


class StringLists:
    """The long string lists a reader decoded last (:data:`KEEP` of them), handed back when
    a later blob carries one again: the same list, or a new one that starts with it and
    adds the strings after it.

    Why: a server takes in a whole model snapshot every few minutes, and its million item
    ids are nearly always those of the one before, or those and a few more (a catalog grows
    at its end). Decoding them held the interpreter lock 0.1 s per snapshot, and checking
    them again 0.15 s more (:meth:`freshrec.model.snapshot.Snapshot.validate`), while
    requests waited for it; comparing their bytes with the last ones' lets the lock go
    (NumPy), and the same list is known valid by identity. Item lists are never changed in
    place (:func:`freshrec.serve.catalog.starts_with`), so handing one out twice is safe."""

    KEEP = 2

    def __init__(self) -> None:
        self._known: list[tuple[np.ndarray, np.ndarray, list[str]]] = []
        self._lock = threading.Lock()

    def decoded(self, data: np.ndarray, where: np.ndarray) -> list[str]:
        """The list of ``data``'s strings ending at ``where`` (both checked)."""
        with self._lock:
            for n, (old_data, old_where, old) in enumerate(self._known):
                size, count = len(old_data), len(old_where)
                longer = len(data) >= size and len(where) >= count
                if longer and np.array_equal(where[:count], old_where) and np.array_equal(data[:size], old_data):
                    out = old if len(where) == count else old + _decoded(data, where, count)
                    del self._known[n]
                    break
            else:
                out = _decoded(data, where)
            self._known.insert(0, (data, where, out))
            del self._known[self.KEEP :]
            return out


_ARRAYS: list[Any] = [np.ndarray, np.dtype, np._core.multiarray._reconstruct]  # type: ignore[attr-defined]
_ARRAYS += [type(np.dtype(t)) for t in ("b1", "i1", "i4", "i8", "u1", "f4", "f8", "U1", "O")]


def load_legacy(source: bytes | Path) -> Any:
    """What an earlier freshrec pickled with :func:`torch.save`: read with torch's
    restricted unpickler (tensors, plain NumPy arrays, numbers, strings and
    containers; nothing that runs code). For ``freshrec model migrate`` only."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with torch.serialization.safe_globals(_ARRAYS):
            return torch.load(stream, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError (or RuntimeError) for forbidden globals
        raise UnsafeData(f"refused to load: {str(exc).splitlines()[0]}") from exc
