"""Catalog writes: items stored, embedded by the text encoder (at once, or in a
background job for large batches) and put into the serving catalog, so that a
new item is recommendable before anyone touched it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from freshrec.domain import Item, ItemId
from freshrec.encoders import TextEncoder, build_encoder, embed_items, encoder_key
from freshrec.ingest.validate import Validator
from freshrec.serve.catalog import Catalog
from freshrec.serve.fallback import ItemCounts
from freshrec.serve.intake import Problem, problems
from freshrec.serve.jobs import Job, Jobs
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Ranker
from freshrec.settings import Settings
from freshrec.storage.base import Store

log = logging.getLogger(__name__)


class CatalogWriter:
    """Item writes and deletions, and the text encoder they need (loaded once, by
    :meth:`start` ahead of the first write: a language model takes seconds)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        validator: Validator,
        catalog: Catalog,
        rankers: Sequence[Ranker],
        counts: Sequence[ItemCounts],
        metrics: Metrics,
    ):
        self.store = store
        self.settings = settings
        self.validator = validator
        self.catalog = catalog
        self.rankers = rankers
        """The default model's ranker and an experiment's arms': each follows the catalog."""
        self.counts = counts
        self.metrics = metrics
        self.encoder_key = encoder_key(settings.encoder)
        self.jobs = Jobs()
        self.hooks: list[Callable[[], object]] = []
        """Called after each item write or deletion (other replicas reload their catalog)."""
        self._encoder: TextEncoder | None = None
        self._encoder_lock = threading.Lock()
        self.metrics.catalog_items.set(int(self.catalog.view.alive.sum()))

    def start(self) -> None:
        """Load the text encoder in the background."""
        threading.Thread(target=self._preload_encoder, name="freshrec-encoder", daemon=True).start()

    def encoder(self) -> TextEncoder:
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = build_encoder(self.settings.encoder)
            return self._encoder

    def _preload_encoder(self) -> None:
        try:
            self.encoder()
        except Exception:  # reported again, with its cause, by the first item write
            log.exception("could not load the text encoder %s", self.settings.encoder.model)

    def write(self, payload: Any) -> tuple[int, Job | None]:
        """Store items at once; embed them now, or in a background job for large batches."""
        raw = payload if isinstance(payload, list) else [payload]
        items, errors = problems(raw, self.validator.item)
        if errors:
            raise Problem(
                422, f"{len(raw) - len(items)} of {len(raw)} items are invalid; nothing was stored", tuple(errors)
            )
        width = self.catalog.view.text.shape[1] if len(self.catalog.view) else None
        wrong = [
            {
                "index": n,
                "field": "vector",
                "message": f"has {len(i.vector)} numbers; the catalog's vectors have {width}",
            }
            for n, i in enumerate(items)
            if i.vector is not None and width is not None and len(i.vector) != width
        ]
        if wrong:
            raise Problem(422, f"{len(wrong)} items have a vector of the wrong size; nothing was stored", tuple(wrong))
        if not items:
            return 0, None
        self.store.upsert_items(items)
        if len(items) > self.settings.serve.background_items:
            return len(items), self.jobs.start(f"embed {len(items):,} items", lambda job: self._embed(items, job))
        try:
            self._embed(items, None)
        except Exception as exc:  # the items are stored; the next write embeds them
            log.exception("embedding failed")
            raise Problem(
                503,
                f"{len(items)} items stored but not embedded yet: text encoder failed ({type(exc).__name__}: {exc})",
            ) from None
        return len(items), None

    def _embed(self, items: Sequence[Item], job: Job | None) -> None:
        def report(done: int, total: int) -> None:
            if job is not None:
                job.done, job.total = done, total

        embed_items(self.store, self.encoder(), chunk=self.settings.encoder.batch_size * 4, report=report)
        latest = {i.item_id: i for i in items}
        ids, vectors = self.store.item_vectors(self.encoder_key, list(latest))
        self.catalog.put([latest[i] for i in ids], vectors)
        self._changed()

    def delete(self, item_id: ItemId) -> bool:
        found = self.store.delete_item(item_id)
        if self.catalog.remove(item_id):
            self._changed()
        for counts in self.counts:
            counts.forget(item_id)
        return found

    def reload(self) -> None:
        """Read the catalog again from the store: another API replica changed it."""
        self.catalog.load(self.store, self.encoder_key)
        self._reloaded()

    def _changed(self) -> None:
        self._reloaded()
        for hook in self.hooks:
            hook()

    def _reloaded(self) -> None:
        for ranker in self.rankers:
            ranker.refresh()
        self.metrics.catalog_items.set(int(self.catalog.view.alive.sum()))


def item_dict(item: Item) -> dict[str, Any]:
    """An item as the API returns it."""
    return {
        "item_id": item.item_id,
        "title": item.title,
        "description": item.description,
        "categories": list(item.categories),
        "attributes": item.attributes,
        "has_vector": item.vector is not None,
        "created_at": item.created_at,
        "updated_at": item.updated_at,
    }
