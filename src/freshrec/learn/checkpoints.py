"""Versioned, atomic checkpoints of the online model.

``<data>/checkpoints/model-000007.state`` holds the model state (parameters,
item tables, optimizer and schedule state, random generators, replay buffer),
the catalog's item ids (the meaning of each table row) and the log offset it
has learned up to, in the format of :mod:`freshrec.serialization` (safetensors
and JSON; signed with ``key`` when one is set); ``model-000007.json`` beside it
holds the same metadata in readable form. Both are written to a temporary file and renamed, the JSON
last, so a version is listed only once it is complete. ``CURRENT`` names the
version to resume from (the newest unless rolled back).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from freshrec import serialization
from freshrec.model.snapshot import Snapshot
from freshrec.settings import Settings

_NAME = re.compile(r"^model-(\d{6})\.json$")
SUFFIX = ".state"
LEGACY_SUFFIX = ".pt"
"""Pickled checkpoints of earlier versions: read only by :meth:`Checkpoints.migrate`."""


@dataclass(frozen=True)
class Version:
    version: int
    offset: int
    created: float
    events_learned: int
    loss: float | None
    note: str = ""
    store: str = ""
    """Identity of the store whose log ``offset`` counts in (:func:`~freshrec.storage.identity`);
    empty in versions written before it was recorded."""


class Fenced(RuntimeError):
    """A learner that lost the store's lease tried to write a checkpoint."""


SYNC_CHUNK = 16 << 20
"""Bytes written between two syncs of a large file (:func:`atomic_write`)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, sync it, then rename over ``path``.

    A large file is synced every :data:`SYNC_CHUNK` bytes, not once at the end. Why: a
    280 MB checkpoint version synced at once held the disk for the whole flush, and the
    store's commits beside it (each event post's, synced) waited: up to 100-130 ms against
    9-19 ms with 16 MB between syncs (a `/tmp` script: a SQLite commit of 10 rows every
    20 ms while 280 MB were written, two runs of each; the write took 0.2-1 s either way).
    On a million items, a request and an event post were caught stalled 100-120 ms in one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            view, sync = memoryview(data), getattr(os, "fdatasync", os.fsync)  # macOS lacks fdatasync
            for start in range(0, len(view), SYNC_CHUNK):
                fh.write(view[start : start + SYNC_CHUNK])
                fh.flush()
                if start + SYNC_CHUNK < len(view):
                    sync(fh.fileno())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpoints:
    """The versions in ``folder``; with ``mirror``, each new current version is also
    handed over as bytes, with ``urgent`` False, and each rewrite of it with ``urgent``
    True: ``serve --role learner`` keeps a copy in the shared store, so a learner
    started elsewhere resumes from it (:meth:`restore`)."""

    def __init__(
        self,
        folder: Path,
        keep: int = 20,
        mirror: Callable[[bytes, bool], object] | None = None,
        key: bytes | None = None,
        max_mb: float | None = None,
    ):
        self.folder = folder
        self.keep = keep
        self.max_bytes = None if max_mb is None else int(max_mb * (1 << 20))
        """Older versions go once the folder's versions together would exceed this."""
        self.mirror = mirror
        self.key = key
        """Signs what is written; a mirror's copy (:meth:`restore`) must carry a valid signature."""
        self.fence: Callable[[], bool] | None = None
        """While it returns false (a learner that lost the store's lease), :meth:`save`
        raises :class:`Fenced` and rewrites are not mirrored."""
        self._lock = threading.RLock()
        """Serialises saving, pruning and rewriting within a process."""
        folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, settings: Settings, mirror: Callable[[bytes, bool], object] | None = None) -> Checkpoints:
        """The data folder's checkpoints, kept and signed as ``settings`` say."""
        learn = settings.learn
        return cls(
            settings.data_dir / "checkpoints",
            keep=learn.checkpoints_keep,
            mirror=mirror,
            key=settings.cluster.key(),
            max_mb=learn.checkpoints_max_mb,
        )

    def list(self) -> list[Version]:
        out = []
        for path in sorted(self.folder.glob("model-*.json")):
            if _NAME.match(path.name) and path.with_suffix(SUFFIX).is_file():
                out.append(Version(**json.loads(path.read_text())))
        return out

    def current(self) -> Version | None:
        versions = {v.version: v for v in self.list()}
        pointer = self.folder / "CURRENT"
        if pointer.is_file():
            chosen = versions.get(int(pointer.read_text().strip() or 0))
            if chosen is not None:
                return chosen
        return versions[max(versions)] if versions else None

    def save(
        self,
        state: dict[str, Any],
        offset: int,
        events_learned: int,
        loss: float | None,
        note: str = "",
        store: str = "",
    ) -> Version:
        if self.fence is not None and not self.fence():
            raise Fenced("this learner does not hold the store's lease: no checkpoint written")
        with self._lock:
            latest = max((v.version for v in self.list()), default=0)
            version = Version(latest + 1, offset, time.time(), events_learned, loss, note, store)
            stem = self.folder / f"model-{version.version:06d}"
            data = serialization.dumps({"state": state, "meta": asdict(version)}, self.key)
            atomic_write(stem.with_suffix(SUFFIX), data)
            atomic_write(stem.with_suffix(".json"), json.dumps(asdict(version)).encode())
            atomic_write(self.folder / "CURRENT", str(version.version).encode())
            self._prune()
            if self.mirror is not None:
                self.mirror(data, False)
            return version

    def restore(self, data: bytes) -> Version:
        """Adopt a checkpoint written elsewhere (a mirror's bytes) as the current version."""
        with self._lock:
            version = _version(serialization.loads(data, self.key))
            stem = self.folder / f"model-{version.version:06d}"
            atomic_write(stem.with_suffix(SUFFIX), data)
            atomic_write(stem.with_suffix(".json"), json.dumps(asdict(version)).encode())
            atomic_write(self.folder / "CURRENT", str(version.version).encode())
            return version

    def load(self, version: int) -> tuple[Version, dict[str, Any]]:
        path = self.folder / f"model-{version:06d}{SUFFIX}"
        if not path.is_file():
            if path.with_suffix(LEGACY_SUFFIX).is_file():
                raise FileNotFoundError(
                    f"checkpoint version {version} in {self.folder} is in the old pickled format: "
                    "run `freshrec model migrate` once"
                )
            raise FileNotFoundError(f"no checkpoint version {version} in {self.folder}")
        data = serialization.load(path)
        return _version(data), data["state"]

    def served(self, settings: Settings) -> Snapshot | None:
        """The current version's network as the snapshot serving would get (``None``
        without a version); :class:`~freshrec.serialization.Malformed` if the settings
        no longer fit it (another ``[model]`` than it was trained with)."""
        version = self.current()
        if version is None:
            return None
        _, state = self.load(version.version)
        net = state["model"]["trainer"]["net"]
        model = state["model"]
        blend = None
        if settings.model.blend.enabled and "signals" in model and "gate" in model:
            blend = {"weight": model["gate"]["weight"], "counted": [], "signals": model["signals"]}
        snapshot = Snapshot(
            checkpoint=version.version,
            updates=0,
            offset=version.offset,
            item_ids=list(state["item_ids"]),
            user_ids=list(state.get("user_ids") or []) if "user_id.weight" in net else [],
            state={name: tensor for name, tensor in net.items() if name != "text"},
            settings=settings.model,
            rating_scale=settings.ingest.rating_max,
            loss=version.loss,
            blend=blend,
        )
        snapshot.validate()
        return snapshot

    def rewrite(self, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
        """Apply ``change`` to the state of every stored version, rewriting (atomically)
        those it returns a new state for; returns how many were rewritten. For erasure:
        a deleted user's data must not survive in the versions one could roll back to."""
        rewritten = 0
        with self._lock:
            current = self.current()
            for v in self.list():
                path = self.folder / f"model-{v.version:06d}{SUFFIX}"
                data = serialization.load(path)
                state = change(data["state"])
                if state is not None:
                    blob = serialization.dumps({"state": state, "meta": data["meta"]}, self.key)
                    atomic_write(path, blob)
                    rewritten += 1
                    fenced = self.fence is not None and not self.fence()
                    if self.mirror is not None and current is not None and v.version == current.version and not fenced:
                        self.mirror(blob, True)  # urgent: the old copy holds erased data
        return rewritten

    def rollback(self, version: int) -> Version:
        """Resume from ``version`` from now on; newer versions stay listed until pruned."""
        chosen = {v.version: v for v in self.list()}.get(version)
        if chosen is None:
            raise FileNotFoundError(f"no checkpoint version {version} in {self.folder}")
        atomic_write(self.folder / "CURRENT", str(version).encode())
        return chosen

    def _prune(self) -> None:
        """At most ``keep`` versions and, with ``max_mb``, as many of the newest as fit in
        it; the newest and the current one always stay."""
        versions = self.list()  # under the lock, from save
        current = self.current()
        kept, size = 0, 0
        for v in reversed(versions):
            stem = self.folder / f"model-{v.version:06d}"
            size += stem.with_suffix(SUFFIX).stat().st_size
            kept += 1
            fits = kept <= self.keep and (self.max_bytes is None or size <= self.max_bytes)
            if fits or kept == 1 or (current is not None and v.version == current.version):
                continue
            stem.with_suffix(".json").unlink(missing_ok=True)
            stem.with_suffix(SUFFIX).unlink(missing_ok=True)

    def migrate(self) -> tuple[int, ...]:
        """Rewrite every pickled checkpoint of an earlier version (``.pt``) in the
        current format, once; the current one is handed to the mirror again, so the
        store's copy is republished. Returns the versions rewritten."""
        done = []
        with self._lock:
            for old in sorted(self.folder.glob(f"model-*{LEGACY_SUFFIX}")):
                data = serialization.load_legacy(old)
                if not isinstance(data, dict) or "state" not in data or "meta" not in data:
                    raise serialization.Malformed(f"{old} is not a freshrec checkpoint")
                version = _version(data)
                new = old.with_suffix(SUFFIX)
                atomic_write(new, serialization.dumps({"state": data["state"], "meta": data["meta"]}, self.key))
                if not old.with_suffix(".json").is_file():
                    atomic_write(old.with_suffix(".json"), json.dumps(asdict(version)).encode())
                old.unlink()
                done.append(version.version)
            current = self.current()
            if done and self.mirror is not None and current is not None and current.version in done:
                self.mirror((self.folder / f"model-{current.version:06d}{SUFFIX}").read_bytes(), True)
        return tuple(done)


def _version(data: Any) -> Version:
    """The metadata of a loaded checkpoint, validated."""
    if not isinstance(data, dict) or not isinstance(data.get("meta"), dict) or not isinstance(data.get("state"), dict):
        raise serialization.Malformed("not a checkpoint: no state and meta")
    try:
        return Version(**data["meta"])
    except TypeError as exc:
        raise serialization.Malformed(f"checkpoint metadata: {exc}") from exc
