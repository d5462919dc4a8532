"""Checkpoint retention (by count and by total size, never the newest) and writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from freshrec.learn.checkpoints import SUFFIX, SYNC_CHUNK, Checkpoints, atomic_write
from freshrec.settings import Settings


def save(checkpoints: Checkpoints, n: int, size: int = 1 << 20) -> None:
    for _ in range(n):
        checkpoints.save({"w": torch.randn(size // 4)}, offset=1, events_learned=1, loss=None)


def test_old_versions_go_by_count_and_by_total_size_and_the_newest_stays(tmp_path: Path) -> None:
    by_count = Checkpoints(tmp_path / "count", keep=3)
    save(by_count, 5, size=1_000)
    assert [v.version for v in by_count.list()] == [3, 4, 5]
    by_size = Checkpoints(tmp_path / "size", max_mb=3.5)  # room for three of 1 MB (and their headers)
    save(by_size, 6)
    assert [v.version for v in by_size.list()] == [4, 5, 6]
    assert sum(p.stat().st_size for p in (tmp_path / "size").glob(f"*{SUFFIX}")) < 3.5 * (1 << 20) + (1 << 20)
    alone = Checkpoints(tmp_path / "alone", max_mb=0.1)  # smaller than one version: the newest stays
    save(alone, 2)
    assert [v.version for v in alone.list()] == [2]


def test_the_settings_size_the_retention(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, learn={"checkpoints_keep": 2, "checkpoints_max_mb": 50})  # type: ignore[arg-type]
    checkpoints = Checkpoints.of(settings)
    assert checkpoints.keep == 2 and checkpoints.max_bytes == 50 << 20
    assert checkpoints.folder == tmp_path / "checkpoints"


def test_a_large_file_is_synced_as_it_is_written_and_arrives_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Synced every ``SYNC_CHUNK`` bytes, so that the store's commits beside it are not held
    up behind one flush of the whole file; the file is whole, and a small one synced once."""
    synced: list[int] = []
    real = os.fdatasync

    def counted(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", counted)
    data = os.urandom(2 * SYNC_CHUNK + 5)
    atomic_write(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data
    assert synced == [SYNC_CHUNK, 2 * SYNC_CHUNK]
    atomic_write(tmp_path / "small", b"x" * 100)
    assert (tmp_path / "small").read_bytes() == b"x" * 100 and len(synced) == 2
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
