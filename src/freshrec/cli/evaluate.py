"""``freshrec evaluate``: the prequential replay benchmark."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from freshrec.cli.context import app_of, console, fail, out
from freshrec.datasets.files import DataFileError
from freshrec.evaluate.log import load_log
from freshrec.evaluate.report import table, to_json, write_json, write_report
from freshrec.evaluate.runner import (
    MODELS,
    Inputs,
    UnknownModel,
    catalog_text,
    check_models,
    evaluate,
    expand_experiments,
    needs_text,
)


def evaluate_cmd(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Option(help="A MovieLens folder (100K, 1M, latest) or an events file.")],
    out_path: Annotated[Path, typer.Option("--out", help="Where to write the JSON results.")],
    items: Annotated[Path | None, typer.Option(help="Items file, when --dataset is an events file.")] = None,
    models: Annotated[
        str,
        typer.Option(
            help="Comma-separated models; ablations: freshrec-frozen, freshrec-ids-only, ...; "
            "experiment:NAME replays each arm of the configured experiment"
        ),
    ] = ",".join(MODELS),
    warmup: Annotated[float, typer.Option(help="Share of the log used for warm-up, not scored.")] = 0.2,
    k: Annotated[int, typer.Option(help="Cut-off of HR@K, NDCG@K and coverage@K in the report.")] = 10,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N events of the time-ordered log.")] = None,
    report: Annotated[Path | None, typer.Option(help="Also write a Markdown (.md) or HTML (.html) report.")] = None,
    isolate: Annotated[
        bool, typer.Option("--isolate/--in-process", help="Run each model in a fresh process (own peak memory).")
    ] = True,
) -> None:
    """Replay a log event by event, test then learn (protocol prequential-v1), for each model."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not 0 <= warmup < 1:
        fail(f"--warmup must be in [0, 1), got {warmup}", 2)
    if k < 1 or (limit is not None and limit < 1):
        fail("--k and --limit must be positive", 2)
    try:
        names = expand_experiments(names, app_of(ctx).settings)
        check_models(names)
        with console.status(f"loading {dataset} ..."):
            log = load_log(dataset, items, app_of(ctx).settings.ingest)
    except (UnknownModel, DataFileError) as exc:
        fail(str(exc), 2)
    if limit is not None:
        log = log.head(min(limit, len(log)))
    console.print(f"{log.name}: {len(log):,} events, {log.n_users:,} users, {log.n_items:,} items")
    settings = app_of(ctx).settings
    text = None
    if any(needs_text(name) for name in names):
        with console.status(f"encoding {log.n_items:,} item texts with {settings.encoder.model} ..."):
            started = time.perf_counter()
            text = catalog_text(log, settings)
        console.print(
            f"item text vectors ready in {time.perf_counter() - started:.1f} s (cached in the data directory)"
        )
    inputs = Inputs(settings, text)
    runs = evaluate(names, log, warmup=warmup, k=k, isolate=isolate, progress=True, inputs=inputs)
    write_json(out_path, to_json(log, runs, warmup, k))
    console.print(f"wrote {out_path}")
    if report is not None:
        write_report(report, log, runs, warmup, k)
        console.print(f"wrote {report}")
    out.print("\n".join(table(log, runs, k)), highlight=False, soft_wrap=True)
