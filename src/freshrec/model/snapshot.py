"""What the learner hands to serving: the network's parameters at one moment.

Training and serving never share a live network: the learner publishes an
immutable snapshot after each update and serving builds its own inference
copy from it, so a request never sees a half-applied optimizer step and
serving code never imports training code.

The frozen text embeddings are not part of a snapshot: serving reads them
from its own catalog (which may already hold items the learner has not met
yet), and maps the learner's item rows onto it by item id.

Between full snapshots the learner's pipe carries deltas, the rows that
changed (:mod:`freshrec.model.deltas`): a snapshot's ``serial`` names it, and
one made by applying a delta names its ``parent`` and the rows it ``changed``.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from freshrec import serialization
from freshrec.model.blend import check_part, raw_part
from freshrec.model.sequence import SequenceNet
from freshrec.settings import ModelSettings


@dataclass(frozen=True)
class Snapshot:
    checkpoint: int
    """The checkpoint version these parameters descend from (0: none saved yet)."""
    updates: int
    """Online updates since that checkpoint."""
    offset: int
    """Log offset of the newest event learned."""
    item_ids: list[str]
    """Item id of each row of the ID tables."""
    user_ids: list[str | None]
    """User id of each row of the user table (``None``: deleted); empty without user IDs."""
    state: dict[str, Tensor]
    settings: ModelSettings
    rating_scale: float
    loss: float | None = None
    created: float = field(default_factory=time.time)
    serial: int = field(default_factory=lambda: secrets.randbits(62))
    """This snapshot's name, random: a delta applies only to the snapshot it names."""
    parent: int = 0
    """The serial of the snapshot a delta turned into this one (0: it came whole)."""
    changed: Tensor | None = None
    """The item rows that delta changed (``None``: it came whole). Serving recomputes
    only these rows of its item table."""
    blend: dict[str, Any] | None = None
    """The blend (:meth:`freshrec.model.freshrec.FreshRec.blend_part`): its weights, the
    counts taken in since the snapshot before and, in a whole one, the counts
    themselves; ``None`` for the network alone."""

    @property
    def version(self) -> str:
        """``"<checkpoint>.<updates>"``: checkpoint 3 plus 120 online updates is ``"3.120"``."""
        return f"{self.checkpoint}.{self.updates}"

    @classmethod
    def of(cls, net: SequenceNet, item_ids: list[str], user_ids: list[str | None], **info: Any) -> Snapshot:
        state = {k: v.detach().clone() for k, v in net.state_dict().items() if k != "text"}
        users = list(user_ids) if net.user_id is not None else []
        return cls(
            item_ids=list(item_ids),
            user_ids=users,
            state=state,
            settings=net.settings,
            rating_scale=net.rating_scale,
            **info,
        )

    def to_bytes(self, key: bytes | None = None) -> bytes:
        """One blob (:mod:`freshrec.serialization`) for the pipe, Redis or the store;
        signed with ``key`` when one is set."""
        whole = {**self.__dict__, "parent": 0, "changed": None}  # what a delta made is whole now
        whole["blend"] = raw_part(self.blend)
        return serialization.dumps({**whole, "settings": self.settings.model_dump(mode="json")}, key)

    @classmethod
    def from_bytes(cls, data: bytes, key: bytes | None = None, max_bytes: int = serialization.MAX_BYTES) -> Snapshot:
        """A snapshot from :meth:`to_bytes`, validated: the fields and their types,
        the settings, every tensor's shape against the settings and the id lists,
        and that its values are finite. Anything else raises
        :class:`~freshrec.serialization.Malformed`."""
        raw = serialization.loads(data, key, max_bytes)
        return cls.from_raw(raw)

    @classmethod
    def from_raw(cls, raw: object) -> Snapshot:
        """:meth:`from_bytes` after the blob is parsed."""
        optional = {"serial", "parent", "changed", "blend"}  # blobs before 2026-12-03 lack them
        fields = set(cls.__dataclass_fields__)
        if not isinstance(raw, dict) or not fields - optional <= set(raw) <= fields:
            raise serialization.Malformed("not a model snapshot: unexpected fields")
        if raw.get("parent", 0) != 0 or raw.get("changed") is not None:
            raise serialization.Malformed("a whole snapshot names no parent and no changed rows")
        try:
            snapshot = cls(**{**raw, "settings": ModelSettings.model_validate(raw["settings"])})
        except ValueError as exc:
            raise serialization.Malformed(f"snapshot settings: {exc}") from exc
        snapshot.validate()
        return snapshot

    def validate(self) -> None:
        """Raise :class:`~freshrec.serialization.Malformed` unless the fields hold what
        a learner publishes (see :meth:`from_bytes`)."""
        bad = serialization.Malformed
        for name in ("checkpoint", "updates", "offset", "serial", "parent"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(f"snapshot {name} must be a non-negative integer")
        if not all(isinstance(x, (int, float)) for x in (self.rating_scale, self.created)) or not (
            self.loss is None or isinstance(self.loss, (int, float))
        ):
            raise bad("snapshot rating_scale, created and loss must be numbers")
        problem = CHECKED_IDS.problem(self.item_ids)
        if problem is not None:
            raise bad(f"snapshot item_ids {problem}")
        if not isinstance(self.user_ids, list) or not all(u is None or isinstance(u, str) for u in self.user_ids):
            raise bad("snapshot user_ids must be a list of strings or nulls")
        state = self.state
        if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
            raise bad("snapshot state must map names to tensors")
        if "item_id.weight" not in state:
            raise bad("snapshot state lacks item_id.weight")
        n_users = len(self.user_ids) if "user_id.weight" in state else 0
        expected = expected_state(state, len(self.item_ids), n_users, self.settings)
        for name, tensor in state.items():
            want = expected.get(name)
            if want is None or name == "text":
                raise bad(f"snapshot state has an unexpected tensor {name!r}")
            check_tensor("snapshot", name, tensor, tuple(want.shape), want.dtype)
        if self.blend is not None:
            try:
                check_part(self.blend, self.settings)
            except ValueError as exc:
                raise bad(f"snapshot {exc}") from exc


def _hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=len(ids))


def _repeats(ids: list[str], hashes: np.ndarray) -> tuple[bool, np.ndarray]:
    """Whether an id occurs twice in ``ids`` (whose hashes are ``hashes``), and the hashes
    sorted: the ids of any hash that occurs twice are compared. Why not ``len(set(ids))``:
    growing a set of a million strings holds the interpreter lock 110 ms, and 47 ms for its
    last resize alone when filled in pieces; NumPy sorts without it."""
    ordered = np.sort(hashes)
    twice = ordered[1:] == ordered[:-1]
    if not twice.any():
        return False, ordered
    shared = [ids[r] for r in np.flatnonzero(np.isin(hashes, ordered[1:][twice])).tolist()]
    return len(set(shared)) != len(shared), ordered


class CheckedIds:
    """Checks item id lists (strings, none repeated) and remembers the last one found
    valid, with its ids' hashes sorted: that list again is valid as it is, and a list that
    starts with it (the same string objects, as :class:`~freshrec.serialization.StringLists`
    hands back) needs only its new ids checked.

    Why: checking a million ids held the interpreter lock 150 ms per whole snapshot (their
    types 36 ms, their hashes 115 ms) while a server's requests waited. Lists are never
    changed in place (:func:`freshrec.serve.catalog.starts_with`); the length is compared
    all the same."""

    def __init__(self) -> None:
        self._last: tuple[list[str], int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def problem(self, ids: object) -> str | None:
        """What is wrong with ``ids`` (``None``: a list of distinct strings)."""
        if not isinstance(ids, list):
            return "must be a list of strings"
        with self._lock:
            last = self._last
            if last is not None and 0 < last[1] <= len(ids) and (ids is last[0] or ids[: last[1]] == last[0]):
                if len(ids) == last[1]:
                    return None
                checked = _added(ids, last[1], last[2])
            else:
                checked = _whole(ids)
            if isinstance(checked, str):
                return checked
            self._last = (ids, len(ids), checked)
            return None


def _whole(ids: list[Any]) -> str | np.ndarray:
    """What is wrong with ``ids``, or their hashes sorted."""
    if not all(isinstance(i, str) for i in ids):
        return "must be a list of strings"
    repeated, ordered = _repeats(ids, _hashes(ids))
    return "repeat an id" if repeated else ordered


def _added(ids: list[Any], known: int, ordered: np.ndarray) -> str | np.ndarray:
    """:func:`_whole`, where the first ``known`` ids are distinct strings whose hashes,
    sorted, are ``ordered``."""
    new = ids[known:]
    if not all(isinstance(i, str) for i in new):
        return "must be a list of strings"
    hashes = _hashes(new)
    if bool((ordered[np.searchsorted(ordered, hashes).clip(max=known - 1)] == hashes).any()):
        return _whole(ids)  # a new id shares its hash with a known one: compared whole
    repeated, added = _repeats(new, hashes)
    return "repeat an id" if repeated else np.sort(np.concatenate([ordered, added]))


CHECKED_IDS = CheckedIds()
"""The checker every snapshot's validation shares (the last valid list is the one the next
whole snapshot most likely repeats)."""


def prepare_validation() -> None:
    """Build the expected state of a small network once, which imports what the meta
    device needs (``sympy`` among them): 1.7 s with the interpreter lock held. Called as a
    server starts; without it the first snapshot checked under traffic paused requests
    by 100-360 ms at a time while the modules loaded."""
    _expected(1, 1, 0, ModelSettings().model_dump_json())


def expected_state(state: dict[str, Tensor], n_items: int, n_users: int, settings: ModelSettings) -> dict[str, Tensor]:
    """The state a network of these sizes has, on the meta device (shapes and dtypes only);
    the text width is read off ``state``'s text bias. Do not modify what it returns: the
    last few are kept (building the network, even on the meta device, took a tenth of a
    server's time when two models each published four times a second)."""
    width = state["text_bias.weight"].shape[-1] if "text_bias.weight" in state else 1
    return _expected(n_items, int(width), n_users, settings.model_dump_json())


@functools.lru_cache(maxsize=8)
def _expected(n_items: int, width: int, n_users: int, settings_json: str) -> dict[str, Tensor]:
    settings = ModelSettings.model_validate_json(settings_json)
    with torch.device("meta"):
        text = torch.empty(n_items, width) if settings.use_text else None
        return SequenceNet(n_items, text, settings, n_users=n_users).state_dict()


def check_tensor(what: str, name: str, tensor: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """Raise :class:`~freshrec.serialization.Malformed` unless ``tensor`` has this shape
    and dtype and finite values (``last_seen`` may be minus infinity: an item never seen)."""
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise serialization.Malformed(
            f"{what} tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {dtype}"
        )
    if tensor.is_floating_point():
        values = tensor.masked_fill(tensor == float("-inf"), 0.0) if name == "last_seen" else tensor
        if not bool(torch.isfinite(values).all()):
            raise serialization.Malformed(f"{what} tensor {name!r} holds values that are not finite")
