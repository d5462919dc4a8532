"""Entry point of the ``freshrec`` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from freshrec.cli import imports
from freshrec.cli.context import App, app_of, console, fail, out
from freshrec.cli.demo import demo_cmd
from freshrec.cli.evaluate import evaluate_cmd
from freshrec.cli.recommend import recommend_cmd
from freshrec.cli.serve import serve_cmd
from freshrec.cli.train import learn_cmd, model_app, train_cmd
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.domain import iso
from freshrec.runtime import LEVELS, LOG_LEVEL, log_to_stderr
from freshrec.settings import SettingsError, load_settings

app = typer.Typer(
    help="freshrec: a real-time recommender that learns from every event.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(imports.app, name="import")
app.command("evaluate")(evaluate_cmd)
app.command("train")(train_cmd)
app.command("learn")(learn_cmd)
app.command("serve")(serve_cmd)
app.command("demo")(demo_cmd)
app.command("recommend")(recommend_cmd)
app.add_typer(model_app, name="model")


@app.callback()
def root(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            envvar="FRESHREC_DATA",
            help="Data directory: store, caches, checkpoints. [default: ./freshrec-data]",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", envvar="FRESHREC_CONFIG", help="TOML settings file (see freshrec.toml).")
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            envvar=LOG_LEVEL,
            help=f"Log freshrec's records of this level and above to stderr ({', '.join(LEVELS)}). "
            "[default: warnings and errors]",
        ),
    ] = None,
) -> None:
    try:
        log_to_stderr(log_level)
        ctx.obj = App(load_settings(config=config, data_dir=data))
    except (SettingsError, ValueError) as exc:
        fail(str(exc), 2)


@app.command()
def stats(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Counts of items, embeddings, users and events in the store."""
    state = app_of(ctx)
    with state.store() as store:
        c = store.counts(state.encoder_key)
    report = {
        "items": c.items,
        "items_embedded": c.items_embedded,
        "users": c.users,
        "events": c.events,
        "events_by_type": c.events_by_type,
        "first_timestamp": iso(c.first_timestamp),
        "last_timestamp": iso(c.last_timestamp),
    }
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"freshrec store {state.settings.store_url}", show_header=False)
    for key in ("items", "items_embedded", "users", "events"):
        table.add_row(key.replace("_", " "), f"{report[key]:,}")
    for kind, n in c.events_by_type.items():
        table.add_row(f"  {kind}", f"{n:,}")
    table.add_row("first event", str(report["first_timestamp"]))
    table.add_row("last event", str(report["last_timestamp"]))
    out.print(table)


@app.command()
def config(ctx: typer.Context) -> None:
    """Print the effective settings (defaults, file and environment combined) as JSON."""
    out.print_json(app_of(ctx).settings.model_dump_json())


@app.command()
def embed(ctx: typer.Context) -> None:
    """Encode every item text that has no cached embedding for the configured encoder."""
    state = app_of(ctx)
    with state.store() as store:
        state.embed(store)


@app.command()
def compact(ctx: typer.Context) -> None:
    """Rewrite the store without deleted data (after deleting users: no trace of them left)."""
    state = app_of(ctx)
    with state.store() as store:
        store.compact()
    console.print(f"compacted {state.settings.store_url}")


def _generator(items: int, users: int, events: int, seed: int, days: float) -> GeneratorSettings:
    try:
        return GeneratorSettings(items=items, users=users, events=events, seed=seed, days=days)
    except ValueError as exc:
        fail(str(exc), 2)


@app.command("generate")
def generate_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for items.jsonl, events.jsonl, users.jsonl.")],
    items: Annotated[int, typer.Option(help="Catalog size.")] = 1_000,
    users: Annotated[int, typer.Option(help="Number of simulated users.")] = 200,
    events: Annotated[int, typer.Option(help="Number of events.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 0,
    days: Annotated[float, typer.Option(help="Time span of the event stream.")] = 30.0,
) -> None:
    """Write a synthetic catalog and an event stream from users whose tastes drift."""
    paths = generate(_generator(items, users, events, seed, days), out_dir)
    for name, path in paths.items():
        console.print(f"wrote {name}: {path}")


def main() -> None:
    app()
