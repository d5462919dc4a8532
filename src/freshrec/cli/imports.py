"""``freshrec import ...``: items, events and MovieLens folders."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from freshrec.cli.context import App, app_of, console, fail
from freshrec.datasets.files import DataFileError, Format, read_records
from freshrec.datasets.movielens import load_movielens
from freshrec.encoders import embed_items
from freshrec.ingest.importer import ImportAborted, ImportReport, import_events, import_items

app = typer.Typer(help="Import items and events from files.", no_args_is_help=True)

FormatOpt = Annotated[str | None, typer.Option("--format", help="csv, jsonl or parquet; default: from the file name.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Abort on the first bad record; nothing is stored.")]
EmbedOpt = Annotated[bool, typer.Option("--embed/--no-embed", help="Encode new or changed item texts.")]


def _format(value: str | None) -> Format | None:
    if value is None:
        return None
    if value not in ("csv", "jsonl", "parquet"):
        fail(f"--format must be csv, jsonl or parquet, got {value!r}", 2)
    return value  # type: ignore[return-value]


def _report(report: ImportReport) -> None:
    console.print(report.summary(), highlight=False)
    for line in report.errors:
        console.print(f"  [yellow]skipped[/] {line}", highlight=False, soft_wrap=True)
    if report.skipped > len(report.errors):
        console.print(f"  ... and {report.skipped - len(report.errors):,} more skipped records")


def _embed(state: App) -> None:
    store = state.store()
    try:
        if not store.items_to_embed(state.encoder_key):
            console.print("embeddings: all item texts already encoded")
            return
        result = embed_items(store, state.encoder(), progress=True)
        console.print(
            f"embeddings: encoded {result.encoded:,} item texts in {result.seconds:.1f} s "
            f"({result.per_second:,.0f} items/s)"
        )
    finally:
        store.close()


@app.command("items")
def items_cmd(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="Items file: item_id, title, description, categories, attributes, vector.")
    ],
    fmt: FormatOpt = None,
    strict: StrictOpt = False,
    embed: EmbedOpt = True,
) -> None:
    """Insert or update catalog items, then encode their text."""
    state = app_of(ctx)
    store = state.store()
    try:
        _report(import_items(store, read_records(file, _format(fmt)), state.validator(), strict=strict, progress=True))
    except (DataFileError, ImportAborted) as exc:
        fail(str(exc))
    finally:
        store.close()
    if embed:
        _embed(state)


@app.command("events")
def events_cmd(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="Events file: user_id, item_id, type, value, timestamp, event_id, context.")
    ],
    fmt: FormatOpt = None,
    strict: StrictOpt = False,
    derive_ids: Annotated[
        bool,
        typer.Option(
            "--derive-ids/--no-derive-ids",
            help="Give events without event_id one derived from their content, so re-imports add nothing.",
        ),
    ] = True,
) -> None:
    """Append feedback events to the log."""
    state = app_of(ctx)
    store = state.store()
    try:
        report = import_events(
            store,
            read_records(file, _format(fmt)),
            state.validator(),
            strict=strict,
            derive_ids=derive_ids,
            progress=True,
        )
        _report(report)
    except (DataFileError, ImportAborted) as exc:
        fail(str(exc))
    finally:
        store.close()


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
    store = state.store()
    try:
        data = load_movielens(folder)
        console.print(f"MovieLens layout: {data.layout}")
        validator = state.validator()
        with store.transaction():
            _report(import_items(store, data.items, validator, strict=strict))
            _report(import_events(store, data.events, validator, strict=strict, progress=True))
    except (DataFileError, ImportAborted) as exc:
        fail(str(exc))
    finally:
        store.close()
    if embed:
        _embed(state)
    console.print(f"done in {time.perf_counter() - started:.1f} s")
