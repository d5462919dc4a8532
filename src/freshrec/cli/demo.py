"""``freshrec demo``: a synthetic shop, the server, and simulated users clicking.

The shop comes from the synthetic generator: a catalog and a week of history.
Then simulated users (:mod:`freshrec.datasets.shoppers`) ask the server for
recommendations and act according to their hidden tastes, which drift during
the demo; the dashboard's online hit rate shows how fast the model follows.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
import typer

from freshrec.cli.context import app_of, console, out
from freshrec.datasets.files import read_records
from freshrec.datasets.shoppers import Shoppers, run_with_shoppers
from freshrec.datasets.synthetic import GeneratorSettings, World, generate
from freshrec.ingest.importer import import_events, import_items
from freshrec.learn.worker import learner_main
from freshrec.serve.auth import Keys
from freshrec.serve.engine import Engine
from freshrec.settings import ArmSettings, ExperimentSettings

DEMO_EXPERIMENT = ExperimentSettings(
    name="demo",
    arms={
        "online": ArmSettings(share=0.5),
        "static": ArmSettings(share=0.5, model={"blend": {"enabled": False}}, learn={"online": False}),
    },
)
"""``demo --experiment`` without an ``[experiment]`` in the settings: does learning from the
stream pay? Against the network alone, frozen after its warm start: what a model retrained
every night serves in between. (The blend frozen too follows a drift in part: its text and
sequence features read each shopper's latest items.)"""


def experiment_lines(summary: dict[str, Any]) -> str:
    """An experiment's figures per arm, as ``demo --experiment`` prints them at the end."""
    lines = [f"experiment {summary['name']!r} ({summary['status']}), control {summary['control']!r}:"]
    for arm, row in summary["arms"].items():
        ctr = row["click_through"]
        low, high = row["click_through_interval"]
        line = f"  {arm}: {row['lists']:,} lists, click-through " + (
            f"{ctr:.3f} [{low:.3f}, {high:.3f}]" if ctr is not None else "-"
        )
        if row.get("difference") is not None:
            d_low, d_high = row["difference_interval"]
            verdict = "significant" if row["significant"] else "not significant"
            line += f", difference {row['difference']:+.3f} [{d_low:+.3f}, {d_high:+.3f}] ({verdict})"
        lines.append(line)
    return "\n".join(lines)


def demo_cmd(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="Port of the server (0: any free port).")] = 8000,
    items: Annotated[int, typer.Option(help="Catalog size.")] = 500,
    users: Annotated[
        int,
        typer.Option(
            help="Number of simulated users. With few, each has seen most items of their topics and "
            "the hit rate falls as they run out of unseen ones."
        ),
    ] = 200,
    history: Annotated[
        int,
        typer.Option(
            help="Events of history generated before the demo starts. With a few thousand the model "
            "learns little more than popularity and the hit rate stays flat; the default gives it enough to rise."
        ),
    ] = 20_000,
    rate: Annotated[float, typer.Option(help="Simulated user actions per second.")] = 20.0,
    drift_after: Annotated[
        float, typer.Option(help="Seconds before users' tastes drift to new ones (all within a sixth of that).")
    ] = 90.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop this many seconds after the shoppers start (default: Ctrl-C).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    experiment: Annotated[
        bool,
        typer.Option(
            "--experiment",
            help="Run an A/B experiment: the [experiment] of the settings, or else the model learning "
            "online against a static one (the network alone, frozen after its warm start), half the shoppers each.",
        ),
    ] = False,
) -> None:
    """Run a simulated shop against a live server: open the printed URL to watch it learn."""
    state = app_of(ctx)
    settings = state.settings
    if experiment and not settings.experiment.name:
        settings = settings.model_copy(update={"experiment": DEMO_EXPERIMENT})
    gen = GeneratorSettings(
        items=items, users=users, events=history, seed=seed, days=7.0, start=time.time() - 7 * 86_400
    )
    folder = settings.data_dir / "demo"
    paths = generate(gen, folder)
    console.print(f"generated {items:,} items, {users:,} users and {history:,} events of history in {folder}")
    with state.store() as store:
        validator = state.validator()
        for report in (
            import_items(store, read_records(paths["items"]), validator),
            import_events(store, read_records(paths["events"]), validator),
        ):
            console.print(report.summary())
        state.embed(store)
        engine = Engine(store, settings, Keys(settings.serve, open=True), "127.0.0.1", port, learner=learner_main)
        window = 30.0
        shoppers = Shoppers(World(gen), drift_after, drift_after / 10, seed)

        def announce(url: str) -> None:
            out.print(f"\nfreshrec demo running at {url}/ (try {url}/?user=u00000); Ctrl-C to stop\n", highlight=False)

        tally = run_with_shoppers(engine, shoppers, rate, window, duration, on_url=announce)
    for summary in tally.experiments:
        out.print(experiment_lines(summary), highlight=False)
    rates = ", ".join("–" if np.isnan(r) else f"{r:.2f}" for r in tally.rates(window))
    errors = f"{tally.errors} errors" + (f", the last: {tally.last_error}" if tally.errors else "")
    out.print(
        f"share of clicks on recommended items, per {window:.0f} s: {rates or 'none yet'}"
        f" ({sum(tally.clicks):,} clicks, {errors})",
        highlight=False,
    )
