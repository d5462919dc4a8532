"""Embedding the catalog, with the store as a cache keyed by text hash.

Re-importing unchanged items encodes nothing; editing one title re-encodes
that item only; items sharing the same text are encoded once.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from freshrec.encoders.base import TextEncoder
from freshrec.storage.base import Store


@dataclass(frozen=True, slots=True)
class EmbedReport:
    encoded: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


def embed_items(
    store: Store,
    encoder: TextEncoder,
    progress: bool = False,
    chunk: int = 256,
    report: Callable[[int, int], None] | None = None,
) -> EmbedReport:
    """Encode every catalog text that has no cached embedding for ``encoder``.

    Each chunk is committed as it is done, so an interrupted run keeps its work.
    ``report(done, total)`` is called before the first chunk and after each one
    (the server shows it as a job's progress).
    """
    todo = store.items_to_embed(encoder.name)
    start = time.perf_counter()
    if report is not None:
        report(0, len(todo))
    with tqdm(total=len(todo), unit="item", desc="encoding items", disable=not progress or not todo) as bar:
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            vectors = encoder.encode([text for _, text in part])
            store.put_embeddings(encoder.name, [h for h, _ in part], vectors)
            bar.update(len(part))
            if report is not None:
                report(i + len(part), len(todo))
    return EmbedReport(encoded=len(todo), seconds=time.perf_counter() - start)


def encode_cached(texts: list[str], key: str, make_encoder: Callable[[], TextEncoder], folder: Path) -> np.ndarray:
    """Encode a list of texts once: the result is kept in ``folder`` under a hash
    of the encoder key and every text, so a rerun of a benchmark reuses it."""
    digest = hashlib.sha256("\x1e".join([key, *texts]).encode("utf-8", "surrogatepass")).hexdigest()[:24]
    path = folder / f"text-{digest}.npy"
    if path.is_file():
        cached: np.ndarray = np.load(path)
        return cached
    vectors = make_encoder().encode(texts)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
