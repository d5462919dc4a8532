"""``freshrec train``, ``freshrec learn`` and ``freshrec model ...``: the model's life cycle."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from freshrec import serialization
from freshrec.cli.context import App, app_of, console, fail, out
from freshrec.learn.checkpoints import Checkpoints
from freshrec.learn.items import NoCatalog
from freshrec.learn.lease import Lease, LeaseHeld
from freshrec.learn.online import Learner
from freshrec.learn.worker import follow_until_signalled
from freshrec.model.snapshot import Snapshot
from freshrec.storage.base import Store

model_app = typer.Typer(help="Model versions: list them, roll back, migrate old files.", no_args_is_help=True)


def _checkpoints(state: App) -> Checkpoints:
    return Checkpoints.of(state.settings)


@contextmanager
def _lease(store: Store, state: App) -> Iterator[Checkpoints]:
    """The checkpoints, written under the store's learner lease (held until the end);
    exits with status 3 while another learner holds it."""
    lease = Lease(store, state.settings.learn.lease_s)
    try:
        lease.take()
    except LeaseHeld as exc:
        fail(f"{exc}; stop it first, or wait {state.settings.learn.lease_s:.0f} s after it died", 3)
    checkpoints = _checkpoints(state)
    checkpoints.fence = lambda: lease.valid
    try:
        yield checkpoints
    finally:
        lease.release()


def train_cmd(
    ctx: typer.Context,
    epochs: Annotated[int | None, typer.Option(help="Warm-start epochs at most (default: [learn] epochs).")] = None,
) -> None:
    """Warm-start the model on the whole stored log and save a new version."""
    state = app_of(ctx)
    if epochs is not None:
        if epochs < 1:
            fail("--epochs must be positive", 2)
        learn = state.settings.learn.model_copy(update={"epochs": epochs})
        state = App(state.settings.model_copy(update={"learn": learn}))
    started = time.perf_counter()
    with state.store() as store, _lease(store, state) as checkpoints:
        try:
            version = Learner(store, state.settings, checkpoints, progress=True).train()
        except NoCatalog as exc:
            fail(str(exc))
    console.print(
        f"model version {version.version}: learned {version.events_learned:,} events up to offset "
        f"{version.offset:,} in {time.perf_counter() - started:.1f} s (last loss {version.loss})"
    )


def learn_cmd(
    ctx: typer.Context,
    follow: Annotated[bool, typer.Option("--follow", help="Keep learning new events until interrupted.")] = False,
) -> None:
    """Resume from the current version and learn every event logged since; save a new version."""
    state = app_of(ctx)
    with state.store() as store, _lease(store, state) as checkpoints:
        learner = Learner(store, state.settings, checkpoints)
        try:
            start = learner.resume()
            learned = learner.catch_up()
            if follow:
                console.print(f"following the log from offset {learner.state.offset:,}; Ctrl-C to stop")
                learned += follow_until_signalled(learner)  # finishes the batch and checkpoints
        except (FileNotFoundError, NoCatalog) as exc:
            fail(str(exc))
    current = _checkpoints(state).current()
    if not learned or current is None:
        console.print(f"nothing new after offset {start.offset:,}; model version {start.version} is current")
        return
    skipped = learner.state.skipped_unknown_items
    note = (
        f" ({skipped:,} events for items outside the model's catalog skipped; retrain to add them)" if skipped else ""
    )
    console.print(f"learned {learned:,} events; model version {current.version} at offset {current.offset:,}{note}")


@model_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """Every saved version, the current one marked."""
    checkpoints = _checkpoints(app_of(ctx))
    current = checkpoints.current()
    table = Table(title=f"model versions in {checkpoints.folder}")
    for column in ("", "version", "created (UTC)", "log offset", "events learned", "last loss", "note"):
        table.add_column(column)
    for v in checkpoints.list():
        created = dt.datetime.fromtimestamp(v.created, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        mark = "*" if current is not None and v.version == current.version else ""
        loss = "" if v.loss is None else f"{v.loss:.4f}"
        table.add_row(mark, str(v.version), created, f"{v.offset:,}", f"{v.events_learned:,}", loss, v.note)
    out.print(table)


@model_app.command("rollback")
def rollback_cmd(
    ctx: typer.Context, version: Annotated[int, typer.Argument(help="The version to go back to.")]
) -> None:
    """Make an earlier version current; the learner resumes from it and replays the log after its offset."""
    try:
        chosen = _checkpoints(app_of(ctx)).rollback(version)
    except FileNotFoundError as exc:
        fail(str(exc))
    console.print(f"model version {chosen.version} is current (log offset {chosen.offset:,})")


@model_app.command("migrate")
def migrate_cmd(ctx: typer.Context) -> None:
    """Rewrite checkpoints and the store's published model copies saved by earlier
    versions (pickled) in the current format (safetensors and JSON, signed with
    ``[cluster] snapshot_key`` when set). The one command that reads pickles, with
    torch's restricted unpickler; run it once after upgrading."""
    state = app_of(ctx)
    checkpoints = _checkpoints(state)
    key = state.settings.cluster.key()
    with state.store() as store:
        try:
            versions = checkpoints.migrate()
            republished = []
            for name in ("checkpoint", "snapshot"):
                got = store.published(name)
                if got is None or got[1].startswith(serialization.MAGIC):
                    continue
                legacy = serialization.load_legacy(got[1])
                if name == "snapshot":
                    blob = Snapshot.from_bytes(serialization.dumps(legacy)).to_bytes(key)
                else:
                    blob = serialization.dumps({"state": legacy["state"], "meta": legacy["meta"]}, key)
                store.publish(name, blob)
                republished.append(name)
        except (serialization.Malformed, KeyError, TypeError) as exc:
            fail(f"could not migrate: {exc}")
    console.print(
        f"rewrote {len(versions)} checkpoint version(s) {list(versions) or ''} in {checkpoints.folder}; "
        f"republished in the store: {', '.join(republished) or 'nothing'}"
    )
