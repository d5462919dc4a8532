"""Loading what freshrec itself saved (checkpoints, model snapshots) without
running code from the bytes.

A plain ``torch.load`` without ``weights_only`` unpickles, so a crafted file, mirror
copy or pipe message could run arbitrary code in the learner or a replica.
``weights_only=True`` uses torch's restricted unpickler: tensors, numbers,
strings and containers only. The states also hold NumPy arrays (replay
buffer, counting signals, random-generator states), so the globals that
rebuild a plain array (``ndarray``, ``dtype``, ``_reconstruct`` and a few dtype
classes) are allowed besides; an object array's items go through the same
restricted unpickler.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

_ARRAYS: list[Any] = [np.ndarray, np.dtype, np._core.multiarray._reconstruct]  # type: ignore[attr-defined]
_ARRAYS += [type(np.dtype(t)) for t in ("b1", "i1", "i4", "i8", "u1", "f4", "f8", "U1", "O")]


class UnsafeData(ValueError):
    """The bytes hold something other than tensors, arrays, numbers, strings and containers."""


def load(source: bytes | Path) -> Any:
    """What :func:`torch.save` wrote, refusing anything that would run code."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with torch.serialization.safe_globals(_ARRAYS):
            return torch.load(stream, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError (or RuntimeError) for forbidden globals
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise UnsafeData(f"refused to load: {str(exc).splitlines()[0]}") from exc
        raise
