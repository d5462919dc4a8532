"""``freshrec import ...``: items, events and MovieLens folders."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from freshrec.cli.context import App, app_of, console, fail
from freshrec.datasets.files import Format, read_records
from freshrec.datasets.movielens import load_movielens
from freshrec.ingest.importer import ImportReport, import_events, import_items
from freshrec.storage.base import Store

app = typer.Typer(help="Import items and events from files.", no_args_is_help=True)

FormatOpt = Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet; default: from the file name.")]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Check every record before writing any: one bad record and nothing is stored.")
]
EmbedOpt = Annotated[bool, typer.Option("--embed/--no-embed", help="Encode new or changed item texts.")]
DeriveOpt = Annotated[
    bool,
    typer.Option(
        "--derive-ids/--no-derive-ids",
        help="Give events without event_id one derived from their content, so re-imports add nothing.",
    ),
]


def _format(value: str | None) -> Format | None:
    if value is None:
        return None
    if value not in ("csv", "jsonl", "parquet"):
        fail(f"--format must be csv, jsonl or parquet, got {value!r}", 2)
    return value  # type: ignore[return-value]


class _Stopped(Exception):
    """SIGTERM or Ctrl-C during an import."""


_deferred: list[None] = []
"""Non-empty inside :func:`signals_deferred` (main thread only: signal handlers run there)."""
_stopped: list[str] = []
"""The signal that arrived meanwhile."""


RERUN = "run it again to import the rest (what is stored adds nothing)"


@contextmanager
def interruptible(what: str, after: str | Callable[[], str] = f"its last chunk rolled back; {RERUN}") -> Iterator[None]:
    """Stop cleanly on SIGTERM or Ctrl-C: the transaction in progress rolls back (what
    was committed before stays, and event ids make a rerun add only the rest), one line
    says so, and the command exits with status 0 (it did what it was told: stop)."""

    def stop(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if _deferred:  # inside signals_deferred(): raised when it ends
            _stopped[:] = [name]
            return
        raise _Stopped(name)

    try:
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread, where alone signal handlers run
        previous = None
    if previous is None:
        yield
        return
    try:
        yield
    except _Stopped as exc:
        console.print(f"{what} interrupted by {exc}: {after() if callable(after) else after}")
        raise typer.Exit(0) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """A SIGTERM or Ctrl-C during the block takes effect when it ends (an import's chunk
    commits, and its count is noted, so what is reported as stored was stored)."""
    _deferred.append(None)
    try:
        yield
    finally:
        _deferred.pop()
        if not _deferred and _stopped:
            raise _Stopped(_stopped.pop())


def embed_interruptibly(state: App, store: Store) -> None:
    """Encode the catalog's new texts; an interruption keeps the stored items."""
    with interruptible("encoding the item texts", "the items are stored; the next import encodes the rest"):
        state.embed(store)


def sort_histories(store: Store) -> None:
    """Build what the store derives from the log to read a user's history fast (SQLite's
    sorted runs of its per-user index: a minute on 10,000,000 events), so a server
    started next reads in a few steps; an interruption keeps what is built."""
    started = time.perf_counter()
    with (
        interruptible("sorting the per-user index", "what is sorted is kept; the learner sorts the rest"),
        console.status("sorting the per-user index"),
    ):
        if not store.maintain(0.5):
            return
        while store.maintain(1.0):
            pass
    console.print(f"sorted the per-user index in {time.perf_counter() - started:.1f} s")


def report(result: ImportReport) -> None:
    console.print(result.summary(), highlight=False)
    for line in result.errors:
        console.print(f"  [yellow]skipped[/] {line}", highlight=False, soft_wrap=True)
    if result.skipped > len(result.errors):
        console.print(f"  ... and {result.skipped - len(result.errors):,} more skipped records")


@app.command("items")
def items_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Items: item_id, title, description, categories, attributes, vector.")],
    fmt: FormatOpt = None,
    strict: StrictOpt = False,
    embed: EmbedOpt = True,
) -> None:
    """Insert or update catalog items, then encode their text."""
    state = app_of(ctx)
    with state.store() as store:
        form = _format(fmt)
        with interruptible(f"the import of {file}"):
            report(
                import_items(store, lambda: read_records(file, form), state.validator(), strict=strict, progress=True)
            )
        if embed:
            embed_interruptibly(state, store)


@app.command("events")
def events_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Events: user_id, item_id, type, value, timestamp, event_id, context.")],
    fmt: FormatOpt = None,
    strict: StrictOpt = False,
    derive_ids: DeriveOpt = True,
) -> None:
    """Append feedback events to the log."""
    state = app_of(ctx)
    with state.store() as store:
        form = _format(fmt)
        stored = [0]

        def so_far() -> str:
            if not derive_ids:
                return "rolled back, nothing of it was stored; run it again"
            return f"{stored[0]:,} events stored; {RERUN}"

        def committed(progress: ImportReport) -> None:
            stored[0] = progress.stored

        with interruptible(f"the import of {file}", so_far):
            result = import_events(
                store,
                lambda: read_records(file, form),
                state.validator(),
                strict=strict,
                derive_ids=derive_ids,
                progress=True,
                committed=committed,
                chunk=signals_deferred,
            )
            report(result)
        sort_histories(store)


@app.command("movielens")
def movielens_cmd(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="A MovieLens folder: 100K, 1M or ml-latest layout.")],
    strict: StrictOpt = False,
    embed: EmbedOpt = True,
) -> None:
    """Import a MovieLens data set: movies as items, ratings as events."""
    state = app_of(ctx)
    started = time.perf_counter()
    with state.store() as store:
        data = load_movielens(folder)
        console.print(f"MovieLens layout: {data.layout}")
        validator = state.validator()
        with interruptible(f"the import of {folder}"):
            report(import_items(store, data.items, validator, strict=strict))
            report(import_events(store, data.events, validator, strict=strict, progress=True))
        sort_histories(store)
        if embed:
            embed_interruptibly(state, store)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
