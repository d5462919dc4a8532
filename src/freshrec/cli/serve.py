"""``freshrec serve``: the HTTP service and the online learner in one process.

This module is the composition root: it wires the learner (training code)
to the service (serving code) through model snapshots, so neither imports
the other.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from typing import Annotated

import torch
import typer
import uvicorn

from freshrec.cli.context import app_of, console, fail
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.online import Learner, NoCatalog
from freshrec.serve.api import create_app
from freshrec.serve.auth import Keys, is_loopback
from freshrec.serve.service import Service
from freshrec.settings import Settings
from freshrec.storage.base import Store

log = logging.getLogger("freshrec")


class Engine:
    """Service, learner thread and HTTP server over one store.

    ``run()`` blocks until the server stops (Ctrl-C, SIGTERM or ``stop()``);
    the learner then writes a final checkpoint.
    """

    def __init__(self, store: Store, settings: Settings, keys: Keys, host: str, port: int):
        torch.set_num_threads(settings.serve.torch_threads)
        # Request handlers, the learner and the publisher share one interpreter; a
        # shorter switch interval hands the GIL to a waiting request sooner.
        sys.setswitchinterval(0.001)
        self.settings = settings
        self.service = Service(store, settings)
        self.checkpoints = Checkpoints(settings.data_dir / "checkpoints")
        self.learner = Learner(store, settings, self.checkpoints, on_update=self.service.publish)
        self.service.forget_hooks.append(self.learner.forget_user)
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._learn, name="freshrec-learner", daemon=True)
        config = uvicorn.Config(
            create_app(self.service, keys), host=host, port=port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)

    def _learn(self) -> None:
        service, learner = self.service, self.learner
        while not self.halt.is_set():
            try:
                if learner.model is None:
                    if self.checkpoints.current() is None:
                        service.model_wanted = True
                        service.learner_state = "warm start"
                        learner.train()
                    else:
                        service.learner_state = "loading checkpoint"
                        learner.resume()
                service.learner_state = "following"
                gc.freeze()  # the model and catalog are long-lived: keep them out of the collector's scans
                learner.follow(self.halt)
            except NoCatalog as exc:
                service.model_wanted = False
                service.learner_state = f"waiting: {exc}"
                self.halt.wait(2.0)
            except Exception as exc:  # keep serving; the learner retries from its checkpoint
                log.exception("learner failed")
                service.learner_state = f"failed ({type(exc).__name__}: {exc}); retrying"
                learner.model = None
                self.halt.wait(5.0)

    @property
    def url(self) -> str:
        """Base URL once started (with the port the system chose for port 0)."""
        host = self.server.config.host
        port = self.server.servers[0].sockets[0].getsockname()[1] if self.server.servers else self.server.config.port
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def run(self) -> None:
        self.thread.start()
        try:
            self.server.run()
        finally:
            self.halt.set()
            self.thread.join()
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
        engine = Engine(store, settings, keys, host, port)
        console.print(f"freshrec serving {settings.store_url} on http://{host}:{port} (dashboard at /, API at /docs)")
        engine.run()


def make_keys(settings: Settings, host: str, insecure_no_auth: bool) -> Keys:
    if insecure_no_auth and not is_loopback(host):
        fail(f"--insecure-no-auth is refused on {host}: it is only allowed on a loopback address (127.0.0.1, ::1)", 2)
    try:
        return Keys(settings.serve, open=insecure_no_auth)
    except ValueError as exc:
        fail(str(exc), 2)
