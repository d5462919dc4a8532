"""The server's wiring: the service, the HTTP server and, beside them, the learner
in a process of its own or, for an API replica, the link to the shared store.

Serving never imports training code: the learner's entry point is handed in
(:func:`freshrec.learn.worker.learner_main`, by the ``freshrec serve`` command),
and model snapshots come back through a pipe as bytes.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing as mp
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import uvicorn

from freshrec.bus import RedisBus
from freshrec.runtime import ARM_SNAPSHOT, SNAPSHOT, SWITCH_INTERVAL_S, exit_cleanly, limit_threads, widen
from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys
from freshrec.serve.replica import Replica
from freshrec.serve.service import Service
from freshrec.settings import Settings
from freshrec.storage.base import Store

log = logging.getLogger("freshrec")

FULL_COLLECT_S = 3600.0
"""How often :class:`Refreeze` also collects what the frozen objects left as garbage."""


class Refreeze:
    """Collect, then freeze what is left out of the collector's later scans; called after
    each whole snapshot's build.

    Why: a model build on a million items leaves long-lived objects the collector scans
    at every full collection (the learner's item list, the catalog laid out anew: lists
    of a million entries); under 200 requests/s and 500 events/s full collections came
    every few seconds, each holding the interpreter lock for 70 to 160 ms, and found
    nothing to free. Frozen after each whole snapshot's build (one per ``[serve]
    snapshot_full_s`` at the most), the full collections under that load took 8 to 23 ms.

    The frozen objects themselves are collected too (unfrozen first) the first time (the
    whole snapshot a server starts with, before its traffic) and then at most once per
    ``full_every_s``: that scan of every object of the server held the interpreter lock
    300 to 450 ms on a million items (requests wait that long) and freed 15 objects;
    what it misses in between is what cycles among frozen objects left, which that
    count says is little."""

    def __init__(self, full_every_s: float = FULL_COLLECT_S, clock: Callable[[], float] = time.monotonic):
        self.full_every_s = full_every_s
        self.clock = clock
        self._last_full = -math.inf

    def __call__(self) -> None:
        now = self.clock()
        if now - self._last_full >= self.full_every_s:
            self._last_full = now
            gc.unfreeze()
        gc.collect()
        gc.freeze()


class Engine:
    """Service and HTTP server over one store, with the learner in a process beside
    it (``role="all"``) or, for an API replica (``role="api"``), elsewhere: then the
    replica takes the learner's snapshots from the bus and the shared store
    (:mod:`freshrec.serve.replica`).

    ``run()`` blocks until the server stops (Ctrl-C, SIGTERM or ``stop()``);
    a learner beside it then writes a final checkpoint and exits.
    """

    def __init__(
        self,
        store: Store,
        settings: Settings,
        keys: Keys,
        host: str,
        port: int,
        role: str = "all",
        reuse_port: bool = False,
        learner: Callable[[Settings, Connection, Any, Any], None] | None = None,
    ):
        if settings.store_url.endswith(":memory:"):
            raise ValueError("freshrec serve needs a store file or database: the learner process opens it too")
        limit_threads(settings.serve.torch_threads)
        self.settings = settings
        self.service = Service(store, settings)
        self.replica: Replica | None = None
        self.process: Any = None
        own = settings.own_arms()
        if own and role != "all":
            raise ValueError(
                f"experiment {settings.experiment.name!r} has arms with models of their own ({', '.join(own)}): "
                "these are learned beside the server (--role all); API replicas and a separate learner "
                "do not serve them yet"
            )
        if role == "api":
            self.replica = Replica(self.service, store, RedisBus(settings.cluster), settings.cluster.poll_ms / 1000)
        else:
            if learner is None:
                raise ValueError("role 'all' needs the learner's process entry point")
            ctx = mp.get_context("spawn")
            self.updates, self._send_end = ctx.Pipe(duplex=False)
            widen(self.updates)
            self.commands: Any = ctx.Queue()
            self.halt = ctx.Event()
            self.process = ctx.Process(
                target=learner,
                args=(settings, self._send_end, self.commands, self.halt),
                name="freshrec-learner",
            )
            self.service.forget_hooks.append(lambda user_id: self.commands.put(("erase",)))
            self.service.models.on_whole = self._whole_served
            self._prefetched = False
            for arm, models in (self.service.experiment.arm_models if self.service.experiment else {}).items():
                models.on_whole = lambda seconds, arm=arm: self.commands.put(("served", seconds, arm))
            self.receiver = threading.Thread(target=self._receive, name="freshrec-receiver", daemon=True)
        config = uvicorn.Config(
            create_app(self.service, keys), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.socket = shared_socket(host, port) if reuse_port else None

    def _whole_served(self, seconds: float) -> None:
        """Tell the learner what a whole snapshot cost to serve; after the first one (the
        server is ready then: traffic comes now) have the store's file read into memory in
        the background (:meth:`~freshrec.storage.sqlite.SQLiteStore.prefetch`): pages the
        startup read may be gone by then, and the first requests would queue on the disk."""
        self.commands.put(("served", seconds, None))
        if not self._prefetched:
            self._prefetched = True
            store = self.service.store
            threading.Thread(target=store.prefetch, name="freshrec-prefetch", daemon=True).start()

    def _receive(self) -> None:
        """Snapshots and state from the learner process, until it closes the pipe. Not niced
        (:func:`~freshrec.runtime.in_background`): it parses a delta in Python four times a
        second, and a niced thread that the scheduler leaves waiting while it holds the
        interpreter lock holds the requests up with it. Beside two busy processes on a million
        items (``benchmarks/publish_lag.py`` with the deltas taken in on a thread of their
        own), niced: the lock's waits p99 5.5-7.1 ms, longest 212-254 ms; not niced: 4.6-4.8 ms,
        longest 44-61 ms."""
        while True:
            try:
                data = self.updates.recv_bytes()
            except (EOFError, OSError):
                return
            if data.startswith(SNAPSHOT):  # a view, not a copy: a whole one is 150 MB on a million items
                self.service.models.receive(memoryview(data)[len(SNAPSHOT) :], "learner")
                continue
            if data.startswith(ARM_SNAPSHOT):
                self._arm_snapshot(data[len(ARM_SNAPSHOT) :])
                continue
            try:
                message = json.loads(data)
                if message[0] == "arm" and self.service.experiment is not None and message[2] == "state":
                    self.service.experiment.arm_states[str(message[1])] = str(message[3])
                elif message[0] == "arm":
                    pass  # an arm's other figures are the default learner's concern
                elif message[0] == "hygiene" and isinstance(message[1], dict):
                    self.service.figures.hygiene = message[1]
                elif message[0] == "erasures" and isinstance(message[1], int):
                    self.service.figures.erasures_pending = message[1]
                elif message[0] == "state" and isinstance(message[1], str):
                    self.service.figures.learner_state, self.service.figures.model_wanted = message[1], bool(message[2])
                else:
                    raise ValueError("unknown message")
            except (ValueError, IndexError, TypeError) as exc:
                log.warning("ignored a malformed message from the learner: %s", exc)

    def _arm_snapshot(self, data: bytes) -> None:
        arm, _, snapshot = data.partition(b"\n")
        experiment = self.service.experiment
        models = experiment.arm_models.get(arm.decode("utf-8", "replace")) if experiment is not None else None
        if models is None:
            log.warning("ignored a snapshot for an experiment arm this server does not serve: %r", arm[:64])
            return
        models.receive(snapshot, "learner")

    @property
    def started(self) -> bool:
        """True once the HTTP server listens."""
        return bool(self.server.started)

    @property
    def url(self) -> str:
        """Base URL once started (with the port the system chose for port 0)."""
        host = self.server.config.host
        port = self.server.servers[0].sockets[0].getsockname()[1] if self.server.servers else self.server.config.port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        if threading.current_thread() is threading.main_thread():
            # uvicorn stops on SIGTERM, then raises it again with the handler found before
            # it started: the default one would end the process before the learner's last
            # checkpoint (the ``finally`` below); this one ends it through that
            signal.signal(signal.SIGTERM, exit_cleanly)
            sys.setswitchinterval(SWITCH_INTERVAL_S)  # the process is the server's own
            arms = self.service.experiment.arm_models if self.service.experiment else {}
            refreeze = Refreeze()
            for models in (self.service.models, *arms.values()):
                models.settle = refreeze
        if self.replica is not None:
            self.replica.start()
        else:
            self.process.start()
            self._send_end.close()  # the child holds it now; its exit ends the receiver
            self.receiver.start()
        gc.freeze()  # the catalog and the app are long-lived: keep them out of the collector's scans
        try:
            self.server.run(sockets=[self.socket] if self.socket is not None else None)
        finally:
            if self.replica is not None:
                self.replica.close()
            else:
                self._stop_learner()
            self.service.close()

    def _stop_learner(self) -> None:
        self.halt.set()
        self.commands.put(None)  # after the deletions already asked for
        self.process.join(timeout=120)
        if self.process.is_alive():
            log.error("the learner did not stop within two minutes; terminating it")
            self.process.terminate()
        self.receiver.join(timeout=10)

    def stop(self) -> None:
        self.server.should_exit = True


def shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket that other processes may bind too (``SO_REUSEPORT``): the
    kernel then spreads new connections over the API replicas on one machine."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("--reuse-port needs SO_REUSEPORT, which this system lacks")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot bind {host}:{port}: {exc}") from exc
    sock.set_inheritable(True)
    return sock
