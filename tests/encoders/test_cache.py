from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from freshrec.encoders import embed_items
from freshrec.encoders.hashing import HashingEncoder
from freshrec.storage import SQLiteStore
from tests.conftest import make_item


class CountingEncoder(HashingEncoder):
    """The hashing encoder, remembering every text it was asked to encode."""

    def __init__(self) -> None:
        super().__init__(dim=32)
        self.seen: list[str] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.seen.extend(texts)
        return super().encode(texts)


def test_unchanged_items_are_not_encoded_again_and_edits_only_once() -> None:
    store = SQLiteStore(":memory:")
    encoder = CountingEncoder()
    catalog = [make_item(f"i{n}", f"Title {n}", categories=("c",)) for n in range(600)]
    store.upsert_items(catalog)
    first = embed_items(store, encoder, chunk=256)
    assert first.encoded == 600 and len(encoder.seen) == 600

    store.upsert_items(catalog)  # a re-import of the same catalog
    assert embed_items(store, encoder).encoded == 0 and len(encoder.seen) == 600

    store.upsert_items([make_item("i7", "A new title for seven", categories=("c",))])
    assert embed_items(store, encoder).encoded == 1
    assert encoder.seen[-1] == "A new title for seven. c."

    ids, vectors = store.item_vectors(encoder.name)
    assert len(ids) == 600
    np.testing.assert_allclose(vectors[ids.index("i7")], encoder.encode(["A new title for seven. c."])[0], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_hashing_encoder_is_deterministic_and_normalised() -> None:
    enc = HashingEncoder(dim=64)
    a = enc.encode(["red running shoes", "", "red running shoes"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a[0], a[2])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)
    assert enc.encode([]).shape == (0, 64)
