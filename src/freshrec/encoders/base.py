"""The text encoder interface and how one is chosen from settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from freshrec.settings import EncoderSettings

DEFAULT_MODEL = "all-MiniLM-L6-v2"
HASHING = "hashing"


class TextEncoder(Protocol):
    """Maps texts to L2-normalised float32 vectors of a fixed dimension."""

    name: str
    """Stable identity; embeddings cached under another name are not reused."""
    dim: int

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return an ``(len(texts), dim)`` float32 array with unit-norm rows."""
        ...


def encoder_key(settings: EncoderSettings) -> str:
    """The cache key for the configured encoder, known without loading it."""
    if settings.model == HASHING:
        return f"{HASHING}-{settings.hashing_dim}"
    return settings.model


def build_encoder(settings: EncoderSettings) -> TextEncoder:
    """Instantiate the encoder named by the ``[encoder]`` section."""
    if settings.model == HASHING:
        from freshrec.encoders.hashing import HashingEncoder

        return HashingEncoder(dim=settings.hashing_dim)
    from freshrec.encoders.sentence import SentenceEncoder

    return SentenceEncoder(settings.model, batch_size=settings.batch_size, device=settings.device)


def normalise(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    out = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.asarray(out / np.maximum(norms, 1e-12), dtype=np.float32)
