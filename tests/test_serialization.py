"""Saved states load back, and bytes that would run code are refused without running it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from freshrec import serialization
from freshrec.learn.checkpoints import Checkpoints
from freshrec.model.snapshot import Snapshot


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_tensors_arrays_and_containers_round_trip() -> None:
    state = {"t": torch.arange(3.0), "a": np.arange(4, dtype=np.int64), "s": ["x", None], "n": 1.5, "o": {"k": (1, 2)}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    loaded = serialization.load(buffer.getvalue())
    assert torch.equal(loaded["t"], state["t"]) and np.array_equal(loaded["a"], state["a"])
    assert loaded["s"] == ["x", None] and loaded["n"] == 1.5 and loaded["o"] == {"k": (1, 2)}


def test_a_crafted_snapshot_or_checkpoint_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    crafted = pickle.dumps({"state": {}, "meta": Payload(marker)})
    legacy = io.BytesIO()
    torch.save({"state": {}, "meta": Payload(marker)}, legacy)
    for data in (crafted, legacy.getvalue()):
        with pytest.raises(Exception):  # noqa: B017 - refused, whichever layer notices first
            Snapshot.from_bytes(data)
        with pytest.raises(Exception):  # noqa: B017
            Checkpoints(tmp_path / "checkpoints").restore(data)
    assert not marker.exists()
    with pytest.raises(serialization.UnsafeData):
        serialization.load(legacy.getvalue())
