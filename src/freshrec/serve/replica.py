"""An API replica (``freshrec serve --role api``): a service with no learner beside it.

Everything a replica holds in memory is derived from the shared store, so any
number of them can run behind a load balancer:

* user histories are read from the store on every request, so an event posted
  to one replica is in the next recommendation served by any other;
* the model comes from the snapshots the learner puts on the bus's snapshots
  stream: every ``cluster.poll_ms`` a replica reads what was added since it last
  looked, in order, from the newest start on when it has nothing yet (whole
  snapshots, deltas between them, and the blend's counts: the same chain as the
  pipe of the server beside the learner, so replicas rank with the blend too), and
  swaps in the newest while requests go on with the old one. The learner's whole
  copy in the store (``published("snapshot")``, at most every 30 s) serves a
  replica that starts while Redis has none, or cannot reach Redis;
* an item written or deleted through one replica bumps ``published("catalog")``,
  and the others read the catalog again;
* new events are announced to the learner on the bus, deletions queued for it.
"""

from __future__ import annotations

import json
import logging
import threading

import redis

from freshrec.bus import BusError, RedisBus
from freshrec.serve.models import Models
from freshrec.serve.service import Service
from freshrec.storage.base import Store

log = logging.getLogger(__name__)

SNAPSHOTS_PER_READ = 100


class Replica:
    def __init__(self, service: Service, store: Store, bus: RedisBus, poll_s: float):
        self.service = service
        self.store = store
        self.bus = bus
        self.poll_s = poll_s
        self.versions = {"stored-snapshot": 0, "learner": 0, "catalog": 0}
        self.read_to: str | None = None
        """The id of the last entry read from the bus's snapshots stream (``None``: from
        the newest start on, next time)."""
        catalog = store.published("catalog")
        if catalog is not None:  # the service has just read this catalog
            self.versions["catalog"] = catalog[0]
        service.figures.learner_state = "no learner has published a state yet"
        service.intake.append_hooks.append(bus.announce)
        service.forget_hooks.append(self._forget)
        service.items.hooks.append(lambda: store.publish("catalog", b""))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="freshrec-replica", daemon=True)

    def _forget(self, user_id: str) -> None:
        """Wake the learner: the erasure is recorded in the store, where the learner also
        looks for it every few seconds, so a bus that is away only delays it."""
        try:
            self.bus.command("erase", "")  # no user id: Redis holds no personal data
        except BusError as exc:
            log.warning("could not wake the learner for an erasure (%s); it finds it in the store", exc)

    def start(self) -> None:
        self.tick()  # serve the newest model from the first request on
        self._thread.start()

    def _run(self) -> None:
        # not niced, as the server's receiver is not (:meth:`freshrec.serve.engine.Engine._receive`)
        while not self._stop.wait(self.poll_s):
            try:
                self.tick()
            except Exception:  # the store may be briefly away; keep serving what we have
                log.exception("could not follow the shared store; retrying")

    def tick(self) -> None:
        """Take whatever the learner and the other replicas published since the last look."""
        service, store = self.service, self.store
        try:
            self.read_to = follow(self.bus, self.service.models, self.read_to)
        except redis.RedisError as exc:
            log.debug("no snapshot from the bus: %s", exc)
            self.read_to = None  # Redis may come back empty
        if self.read_to is None:  # nothing from the bus (yet): the store's copy, if newer
            stored = store.published("snapshot", self.versions["stored-snapshot"])
            if stored is not None:
                self.versions["stored-snapshot"] = stored[0]
                self._stored_snapshot(stored[1])
        if (got := store.published("learner", self.versions["learner"])) is not None:
            self.versions["learner"] = got[0]
            state = json.loads(got[1])
            service.figures.learner_state = state.get("state", service.figures.learner_state)
            service.figures.model_wanted = bool(state.get("wanted", True))
            service.figures.hygiene = state.get("hygiene", service.figures.hygiene)
        if (got := store.published("catalog", self.versions["catalog"])) is not None:
            self.versions["catalog"] = got[0]
            service.items.reload()
        service.figures.erasures_pending = len(store.pending_erasures())
        service.intake.observe_head(store.last_offset())

    def _stored_snapshot(self, data: bytes) -> None:
        """The store's copy, if it is newer than the model served."""
        snapshot = self.service.models.parse(data, "store")
        current = self.service.ranker.scoring.snapshot
        if snapshot is not None and (current is None or snapshot.created > current.created):
            self.service.models.publish(snapshot)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.bus.close()


def follow(bus: RedisBus, models: Models, read_to: str | None) -> str | None:
    """Take the snapshots the bus got after entry ``read_to`` (``None``: from the newest
    start) each in turn, as the server beside the learner takes those of its pipe:
    deltas and the blend's counts apply in order, and the publisher builds only the
    newest. Returns the id of the last entry read."""
    while True:
        entries = bus.snapshots(read_to, SNAPSHOTS_PER_READ)
        for entry, data in entries:
            read_to = entry
            models.receive(data, "bus")
        if len(entries) < SNAPSHOTS_PER_READ:
            return read_to
