"""What the learner hands to serving: the network's parameters at one moment.

Training and serving never share a live network: the learner publishes an
immutable snapshot after each update and serving builds its own inference
copy from it, so a request never sees a half-applied optimizer step and
serving code never imports training code.

The frozen text embeddings are not part of a snapshot: serving reads them
from its own catalog (which may already hold items the learner has not met
yet), and maps the learner's item rows onto it by item id.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from freshrec import serialization
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

    def to_bytes(self) -> bytes:
        """One buffer for a pipe: pickling the tensors one by one would make
        torch share each through a file descriptor and a handshake of its own."""
        buffer = io.BytesIO()
        torch.save({**self.__dict__, "settings": self.settings.model_dump()}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        raw = serialization.load(data)
        return cls(**{**raw, "settings": ModelSettings.model_validate(raw["settings"])})
