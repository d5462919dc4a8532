"""End to end with the real pretrained model (all-MiniLM-L6-v2, loaded offline)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.encoders import build_encoder, embed_items
from freshrec.encoders.hashing import HashingEncoder
from freshrec.settings import EncoderSettings
from freshrec.storage import SQLiteStore
from tests.conftest import make_item


@pytest.fixture(scope="module")
def minilm():  # type: ignore[no-untyped-def]
    return build_encoder(EncoderSettings())


def test_semantically_close_titles_are_closer_than_unrelated_ones(minilm) -> None:  # type: ignore[no-untyped-def]
    v = minilm.encode(
        [
            "Star Wars: a space opera about rebels fighting an evil galactic empire",
            "Star Trek: the starship Enterprise explores distant galaxies",
            "Grandma's chocolate cake: an easy baking recipe",
            "Sourdough bread baking for beginners",
        ]
    )
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.1 and sim[0, 1] > sim[0, 3] + 0.1
    assert sim[2, 3] > sim[2, 0] + 0.1 and sim[2, 3] > sim[2, 1] + 0.1


def test_meaning_without_shared_words(minilm) -> None:  # type: ignore[no-untyped-def]
    texts = ["Alien space invasion movie", "Science fiction film about extraterrestrials", "Italian pasta cookbook"]
    sim = minilm.encode(texts) @ minilm.encode(texts).T
    assert sim[0, 1] > sim[0, 2] + 0.4
    # a bag-of-words encoder cannot see it: the two related texts share no word
    bag = HashingEncoder(dim=4096).encode(texts)
    assert abs(float(bag[0] @ bag[1])) < 0.2


def test_catalog_embedding_through_the_store(minilm) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(":memory:")
    store.upsert_items(
        [
            make_item("toy", "Toy Story (1995)", categories=("Animation", "Children's", "Comedy")),
            make_item("lion", "Lion King, The (1994)", categories=("Animation", "Children's", "Musical")),
            make_item("alien", "Alien (1979)", categories=("Horror", "Sci-Fi")),
        ]
    )
    assert embed_items(store, minilm).encoded == 3
    ids, vectors = store.item_vectors(minilm.name)
    sim = dict(zip(ids, vectors @ vectors[ids.index("toy")], strict=True))
    assert sim["lion"] > sim["alien"]
