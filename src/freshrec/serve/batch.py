"""Recommendations for many stored users at once, outside the server: campaigns,
e-mails, caches. The ranking is the server's (the same ranker, exclusions and
fallbacks); users are encoded in chunks, one model pass per chunk."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from itertools import islice

from freshrec.domain import UserId
from freshrec.encoders import encoder_key
from freshrec.ingest.validate import Validator
from freshrec.model.snapshot import Snapshot
from freshrec.serve.catalog import Catalog
from freshrec.serve.explain import Ranked
from freshrec.serve.fallback import Popularity
from freshrec.serve.ranker import Options, Ranker
from freshrec.serve.request import encode, finish
from freshrec.serve.service import MODEL_LESS_HISTORY, SEEN_WINDOW, latest_histories
from freshrec.settings import Settings
from freshrec.storage.base import Store

CHUNK = 256
"""Users encoded in one model pass."""


def recommend_users(
    store: Store, settings: Settings, snapshot: Snapshot | None, users: Iterable[UserId], options: Options
) -> Iterator[tuple[UserId, str | None, list[Ranked]]]:
    """``(user id, model version, list)`` for each of ``users``, in order; with no
    ``snapshot``, the fallbacks rank (text similarity, popularity), as the server does
    before its first model."""
    catalog = Catalog()
    catalog.load(store, encoder_key(settings.encoder))
    ranker = Ranker(
        catalog, settings.serve.retrieval, lambda n, length: (latest_histories(store, n, length), time.time())
    )
    ranker.publish(snapshot)
    ranker.retrieval.wait()  # a large catalog's candidate index, started by the publish
    popularity = Popularity()
    popularity.seed(store)
    validator = Validator(settings.ingest)
    length = snapshot.settings.history_length if snapshot is not None else MODEL_LESS_HISTORY
    seen_window = SEEN_WINDOW if options.exclude_seen else 0
    users = iter(users)
    while chunk := list(islice(users, CHUNK)):
        requests = []
        for user_id in chunk:
            history, seen = store.user_context(validator.user_key(user_id), length, seen_window)
            asked = replace(options, exclude=(*options.exclude, *seen)) if seen else options
            requests.append(ranker.plan(history, time.time(), asked, popularity.top))
        encode(requests)
        for user_id, request in zip(chunk, requests, strict=True):
            yield user_id, request.scoring.version, finish(request)
