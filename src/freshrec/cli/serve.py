"""``freshrec serve``: the HTTP service with the online learner beside it, or one
role of a deployment (an API replica, the learner).

This module is the composition root: it hands the learner's entry point
(:mod:`freshrec.learn.worker`, training code) to the server's wiring
(:mod:`freshrec.serve.engine`, serving code), which meet only through model
snapshots, so neither imports the other.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from freshrec.bus import BusError
from freshrec.cli.context import app_of, console, fail
from freshrec.learn.lease import LeaseHeld
from freshrec.learn.role import run_role
from freshrec.learn.worker import learner_main
from freshrec.serve.auth import Keys, is_loopback
from freshrec.serve.engine import Engine
from freshrec.settings import Settings
from freshrec.storage import redact


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
            engine = Engine(store, settings, keys, host, port, role.value, reuse_port, learner_main)
        except (ValueError, BusError) as exc:
            fail(str(exc), 2)
        what = "an API replica of" if role is Role.api else "freshrec serving"
        console.print(f"{what} {redact(settings.store_url)} on http://{host}:{port} (dashboard at /, API at /docs)")
        engine.run()


def run_learner_role(settings: Settings) -> None:
    """The learner in the foreground until SIGTERM or Ctrl-C, then a last checkpoint."""
    console.print(f"freshrec learner on {redact(settings.store_url)}, bus {redact(settings.cluster.bus_url)}")
    try:
        run_role(settings)
    except (BusError, LeaseHeld) as exc:
        fail(str(exc), 2)


def make_keys(settings: Settings, host: str, insecure_no_auth: bool) -> Keys:
    if insecure_no_auth and not is_loopback(host):
        fail(f"--insecure-no-auth is refused on {host}: it is only allowed on a loopback address (127.0.0.1, ::1)", 2)
    try:
        return Keys(settings.serve, open=insecure_no_auth)
    except ValueError as exc:
        fail(str(exc), 2)
