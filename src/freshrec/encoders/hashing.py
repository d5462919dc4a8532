"""A tiny, dependency-free text encoder: hashed bag of words and bigrams.

It has no notion of meaning (synonyms land far apart), so it is no substitute
for a language model; it exists for unit tests and smoke runs that must not
spend seconds loading one. Deterministic across processes and platforms.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from freshrec.encoders.base import HASHING, normalise

_TOKEN = re.compile(r"\w+", re.UNICODE)


class HashingEncoder:
    def __init__(self, dim: int = 256):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.name = f"{HASHING}-{dim}"

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower())
            features = tokens + [a + " " + b for a, b in pairwise(tokens)]
            for feature in features or ["<empty>"]:
                digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                index = int.from_bytes(digest[:4], "little") % self.dim
                out[row, index] += 1.0 if digest[4] & 1 else -1.0
        out[~out.any(axis=1), 0] = 1.0
        return normalise(out)
