"""``freshrec serve``: the HTTP service, with the online learner beside it.

This module is the composition root: it wires the learner (training code,
in its own process: :mod:`freshrec.cli.learner_process`) to the service
(serving code) through model snapshots, so neither imports the other.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import threading
from typing import Annotated, Any

import typer
import uvicorn

from freshrec.cli.context import app_of, console, fail
from freshrec.cli.learner_process import learner_main, limit_threads
from freshrec.model.snapshot import Snapshot
from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys, is_loopback
from freshrec.serve.service import Service
from freshrec.settings import Settings
from freshrec.storage.base import Store

log = logging.getLogger("freshrec")


class Engine:
    """Service, HTTP server and learner process over one store file.

    ``run()`` blocks until the server stops (Ctrl-C, SIGTERM or ``stop()``);
    the learner then writes a final checkpoint and exits.
    """

    def __init__(self, store: Store, settings: Settings, keys: Keys, host: str, port: int):
        if settings.store_url.endswith(":memory:"):
            raise ValueError("freshrec serve needs a store file: the learner process opens it too")
        limit_threads(settings.serve.torch_threads)
        self.settings = settings
        self.service = Service(store, settings)
        ctx = mp.get_context("spawn")
        self.updates, self._send_end = ctx.Pipe(duplex=False)
        self.commands: Any = ctx.Queue()
        self.halt = ctx.Event()
        self.process = ctx.Process(
            target=learner_main, args=(settings, self._send_end, self.commands, self.halt), name="freshrec-learner"
        )
        self.service.forget_hooks.append(lambda user_id: self.commands.put(("forget", user_id)))
        self.receiver = threading.Thread(target=self._receive, name="freshrec-receiver", daemon=True)
        config = uvicorn.Config(
            create_app(self.service, keys), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)

    def _receive(self) -> None:
        """Snapshots and state from the learner process, until it closes the pipe."""
        while True:
            try:
                message = self.updates.recv()
            except (EOFError, OSError):
                return
            if message[0] == "snapshot":
                self.service.publish(Snapshot.from_bytes(message[1]))
            elif message[0] == "hygiene":
                self.service.hygiene = message[1]
            elif message[0] == "state":
                self.service.learner_state, self.service.model_wanted = message[1], message[2]

    @property
    def url(self) -> str:
        """Base URL once started (with the port the system chose for port 0)."""
        host = self.server.config.host
        port = self.server.servers[0].sockets[0].getsockname()[1] if self.server.servers else self.server.config.port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        self.process.start()
        self._send_end.close()  # the child holds it now; its exit ends the receiver
        self.receiver.start()
        gc.freeze()  # the catalog and the app are long-lived: keep them out of the collector's scans
        try:
            self.server.run()
        finally:
            self.halt.set()
            self.commands.put(None)  # after the deletions already asked for
            self.process.join(timeout=120)
            if self.process.is_alive():
                log.error("the learner did not stop within two minutes; terminating it")
                self.process.terminate()
            self.receiver.join(timeout=10)
            self.service.close()

    def stop(self) -> None:
        self.server.should_exit = True


def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (default: [serve] host, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: [serve] port, 8000).")] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="No API keys at all; only on a loopback address.")
    ] = False,
) -> None:
    """Serve the API and the dashboard, and learn online from every event."""
    state = app_of(ctx)
    settings = state.settings
    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    keys = make_keys(settings, host, insecure_no_auth)
    with state.store() as store:
        try:
            engine = Engine(store, settings, keys, host, port)
        except ValueError as exc:
            fail(str(exc), 2)
        console.print(f"freshrec serving {settings.store_url} on http://{host}:{port} (dashboard at /, API at /docs)")
        engine.run()


def make_keys(settings: Settings, host: str, insecure_no_auth: bool) -> Keys:
    if insecure_no_auth and not is_loopback(host):
        fail(f"--insecure-no-auth is refused on {host}: it is only allowed on a loopback address (127.0.0.1, ::1)", 2)
    try:
        return Keys(settings.serve, open=insecure_no_auth)
    except ValueError as exc:
        fail(str(exc), 2)
