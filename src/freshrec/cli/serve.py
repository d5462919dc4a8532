"""``freshrec serve``: the HTTP service, with the online learner beside it.

This module is the composition root: it wires the learner (training code,
in its own process: :mod:`freshrec.cli.learner_process`) to the service
(serving code) through model snapshots, so neither imports the other.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing as mp
import signal
import socket
import threading
from enum import StrEnum
from typing import Annotated, Any

import typer
import uvicorn

from freshrec.bus import BusError, RedisBus
from freshrec.cli.context import app_of, console, fail
from freshrec.cli.learner_process import (
    SNAPSHOT,
    end_past_stuck_threads,
    learner_main,
    learner_role_main,
    limit_threads,
)
from freshrec.learn.lease import LeaseHeld
from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys, is_loopback
from freshrec.serve.replica import Replica
from freshrec.serve.service import Service
from freshrec.settings import Settings
from freshrec.storage import redact
from freshrec.storage.base import Store

log = logging.getLogger("freshrec")


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
    ):
        if settings.store_url.endswith(":memory:"):
            raise ValueError("freshrec serve needs a store file or database: the learner process opens it too")
        limit_threads(settings.serve.torch_threads)
        self.settings = settings
        self.service = Service(store, settings)
        self.replica: Replica | None = None
        self.process: Any = None
        if role == "api":
            self.replica = Replica(self.service, store, RedisBus(settings.cluster), settings.cluster.poll_ms / 1000)
        else:
            ctx = mp.get_context("spawn")
            self.updates, self._send_end = ctx.Pipe(duplex=False)
            self.commands: Any = ctx.Queue()
            self.halt = ctx.Event()
            self.process = ctx.Process(
                target=learner_main,
                args=(settings, self._send_end, self.commands, self.halt),
                name="freshrec-learner",
            )
            self.service.forget_hooks.append(lambda user_id: self.commands.put(("erase",)))
            self.receiver = threading.Thread(target=self._receive, name="freshrec-receiver", daemon=True)
        config = uvicorn.Config(
            create_app(self.service, keys), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.socket = shared_socket(host, port) if reuse_port else None

    def _receive(self) -> None:
        """Snapshots and state from the learner process, until it closes the pipe."""
        while True:
            try:
                data = self.updates.recv_bytes()
            except (EOFError, OSError):
                return
            if data.startswith(SNAPSHOT):
                self.service.receive(data[len(SNAPSHOT) :], "learner")
                continue
            try:
                message = json.loads(data)
                if message[0] == "hygiene" and isinstance(message[1], dict):
                    self.service.hygiene = message[1]
                elif message[0] == "erasures" and isinstance(message[1], int):
                    self.service.erasures_pending = message[1]
                elif message[0] == "state" and isinstance(message[1], str):
                    self.service.learner_state, self.service.model_wanted = message[1], bool(message[2])
                else:
                    raise ValueError("unknown message")
            except (ValueError, IndexError, TypeError) as exc:
                log.warning("ignored a malformed message from the learner: %s", exc)

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
            signal.signal(signal.SIGTERM, _exit_cleanly)
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


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


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


class Role(StrEnum):
    all = "all"
    api = "api"
    learner = "learner"


def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: [serve] host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: [serve] port, 8000).")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="No API keys at all; only on a loopback address.")
    ] = False,
    role: Annotated[
        Role,
        typer.Option(
            help="all: API and learner in one service; api: a stateless API replica (any number); "
            "learner: the one learner of API replicas. api and learner need [cluster] bus_url."
        ),
    ] = Role.all,
    reuse_port: Annotated[
        bool,
        typer.Option(
            "--reuse-port",
            help="Let several API replicas on this machine listen on the same port (SO_REUSEPORT): "
            "the kernel spreads connections over them. With --role api.",
        ),
    ] = False,
) -> None:
    """Serve the API and the dashboard, and learn online from every event."""
    state = app_of(ctx)
    settings = state.settings
    if role is not Role.all:
        if not settings.cluster.bus_url:
            fail(f"--role {role.value} needs the Redis bus: set cluster.bus_url or FRESHREC_CLUSTER__BUS_URL", 2)
        if settings.store_url.endswith(":memory:"):
            fail(f"--role {role.value} needs a shared store (postgresql://... or a SQLite file)", 2)
    if reuse_port and role is not Role.api:
        fail("--reuse-port is for --role api: a learner beside each server would train one model each", 2)
    if role is Role.learner:
        run_learner_role(settings)
        return
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    keys = make_keys(settings, host, insecure_no_auth)
    with state.store() as store:
        try:
            engine = Engine(store, settings, keys, host, port, role.value, reuse_port)
        except (ValueError, BusError) as exc:
            fail(str(exc), 2)
        what = "an API replica of" if role is Role.api else "freshrec serving"
        console.print(f"{what} {redact(settings.store_url)} on http://{host}:{port} (dashboard at /, API at /docs)")
        engine.run()


def run_learner_role(settings: Settings) -> None:
    """The learner in the foreground until SIGTERM or Ctrl-C, then a last checkpoint."""
    halt = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        halt.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    console.print(f"freshrec learner on {redact(settings.store_url)}, bus {redact(settings.cluster.bus_url)}")
    try:
        learner_role_main(settings, halt)
    except (BusError, LeaseHeld) as exc:
        fail(str(exc), 2)
    end_past_stuck_threads(0)


def make_keys(settings: Settings, host: str, insecure_no_auth: bool) -> Keys:
    if insecure_no_auth and not is_loopback(host):
        fail(f"--insecure-no-auth is refused on {host}: it is only allowed on a loopback address (127.0.0.1, ::1)", 2)
    try:
        return Keys(settings.serve, open=insecure_no_auth)
    except ValueError as exc:
        fail(str(exc), 2)
