"""Accuracy across data sets with one default configuration, written into benchmarks/RESULTS.md.

    python benchmarks/accuracy.py [--shared ../shared/data] [--no-ablations] [--sets ml-100k,steam-reviews,...]

Runs the prequential replay of ``../shared/BENCHMARK.md`` (the code of ``freshrec
evaluate``, each model in its own process) on MovieLens-100K, the MovieLens-1M part,
the Steam reviews and the generator grid (``freshrec generate --items {400,800}
--users {150,300} --events {2500,6000,20000} --seed {1,2}``), beside the three
baselines of the same run, with the default settings and nothing else. Then the
ablations that justify each part of the default on MovieLens-100K and Steam.
Writes the ``accuracy`` and ``accuracy-ablations`` sections of RESULTS.md and the
JSON of every run under ``benchmarks/out/accuracy/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.evaluate.log import EventLog, load_log
from freshrec.evaluate.report import to_json, write_json
from freshrec.evaluate.runner import BLEND_ABLATIONS, Inputs, ModelRun, catalog_text, evaluate
from freshrec.settings import load_settings
from harness import HERE, write_section

BASELINES = ("pop", "recent-pop", "transitions")
ABLATIONS = (
    "freshrec-net",
    "freshrec-frozen",
    "freshrec-retrain",
    *(f"freshrec-no-{name}" for name in BLEND_ABLATIONS),
)
OUT = HERE / "out" / "accuracy"


@dataclass(frozen=True)
class DataSet:
    name: str
    events: Path
    items: Path | None = None


def shared_sets(shared: Path) -> list[DataSet]:
    return [
        DataSet("ml-100k", shared / "ml-100k"),
        DataSet("ml-1m-part", shared / "ml-1m-part"),
        DataSet("steam-reviews", shared / "steam-reviews" / "events.jsonl", shared / "steam-reviews" / "items.jsonl"),
    ]


def generator_sets() -> list[DataSet]:
    sets = []
    for items, users, events, seed in itertools.product((400, 800), (150, 300), (2500, 6000, 20000), (1, 2)):
        name = f"gen-i{items}-u{users}-e{events}-s{seed}"
        folder = OUT / "gen" / name
        if not (folder / "events.jsonl").exists():
            generate(GeneratorSettings(items=items, users=users, events=events, seed=seed), folder)
        sets.append(DataSet(name, folder / "events.jsonl", folder / "items.jsonl"))
    return sets


def run(data: DataSet, names: list[str]) -> tuple[EventLog, list[ModelRun]]:
    settings = load_settings()
    log = load_log(data.events, data.items)
    text = catalog_text(log, settings)
    runs = evaluate(names, log, progress=True, inputs=Inputs(settings, text))
    write_json(OUT / f"{data.name}.json", to_json(log, runs, 0.2, 10))
    return log, runs


def best_baseline(runs: list[ModelRun]) -> ModelRun:
    return max((r for r in runs if r.name in BASELINES), key=lambda r: r.summary.ndcg_at_10)


def cold(run: ModelRun) -> float:
    return run.summary.cold_item_hr_at_10 if run.summary.cold_item_hr_at_10 is not None else float("nan")


def main_row(data: DataSet, log: EventLog, runs: list[ModelRun]) -> str:
    best = best_baseline(runs)
    ours = next(r for r in runs if r.name == "freshrec")
    ratio = ours.summary.ndcg_at_10 / best.summary.ndcg_at_10
    best_cold = max(cold(r) for r in runs if r.name in BASELINES)
    return (
        f"| {data.name} | {len(log):,} | {best.name} {best.summary.ndcg_at_10:.4f} | {ours.summary.ndcg_at_10:.4f} "
        f"| {ratio:.2f}x | {cold(ours):.4f} / {best_cold:.4f} | {ours.events_per_s:,.0f} | {ours.peak_rss_mb:,.0f} |"
    )


def ablation_rows(data: DataSet, runs: list[ModelRun]) -> list[str]:
    best = best_baseline(runs)
    top = best.summary.ndcg_at_10
    return [
        f"| {data.name} | {r.name} | {r.summary.ndcg_at_10:.4f} | {r.summary.ndcg_at_10 / top:.2f}x "
        f"| {r.summary.hr_at_10:.4f} | {cold(r):.4f} | {r.events_per_s:,.0f} | {r.peak_rss_mb:,.0f} |"
        for r in runs
    ]


def blend_section(names: list[str]) -> str:
    """What the blend learned on each data set (from the runs' JSON): the weights
    of its features by history length, the network's first."""
    lines = [
        "Weights the blend learned by the end of each replay (`params.blend` of the JSON in "
        "`benchmarks/out/accuracy/`), per history length; each context also adds a row by time since "
        "the previous event, not shown. Features: log-shares, so a weight is an exponent.",
        "",
    ]
    for name in names:
        path = OUT / f"{name}.json"
        if not path.exists():
            continue
        result = next(r for r in json.loads(path.read_text())["results"] if r["model"] == "freshrec")
        weights = {k: v for k, v in result["params"]["blend"].items() if k.startswith("history")}
        features = list(next(iter(weights.values())))
        lines += [f"**{name}**", "", "| history | " + " | ".join(features) + " |", "|" + " --- |" * (len(features) + 1)]
        lines += [f"| {k[8:]} | " + " | ".join(f"{v[f]:.2f}" for f in features) + " |" for k, v in weights.items()]
        lines.append("")
    return "\n".join(lines)


def write_blend() -> None:
    section = blend_section(["ml-100k", "ml-1m-part", "steam-reviews", "gen-i400-u150-e2500-s1"])
    write_section("accuracy-blend", "What the blend learned (issue 14)", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--no-ablations", action="store_true")
    parser.add_argument("--ablations-only", action="store_true", help="Only the ablations (MovieLens-100K, Steam).")
    parser.add_argument("--sets", default="", help="Only these data sets (comma-separated names).")
    parser.add_argument("--blend-only", action="store_true", help="Only rewrite the blend's weights from the JSON.")
    args = parser.parse_args()
    if args.blend_only:
        write_blend()
        return
    wanted = {s for s in args.sets.split(",") if s}
    sets = [d for d in [*shared_sets(args.shared), *generator_sets()] if not wanted or d.name in wanted]
    command = "python benchmarks/accuracy.py" + (f" --sets {args.sets}" if args.sets else "")
    today = dt.date.today().isoformat()
    if not args.ablations_only:
        main_table(sets, command + (" --no-ablations" if args.no_ablations else ""), today)
    if not args.no_ablations:
        ablations(sets, command + (" --ablations-only" if args.ablations_only else ""), today)


def main_table(sets: list[DataSet], command: str, today: str) -> None:
    started = time.perf_counter()
    rows = []
    for data in sets:
        if not data.events.exists():
            print(f"{data.events}: not there, skipped")
            continue
        log, runs = run(data, [*BASELINES, "freshrec"])
        rows.append(main_row(data, log, runs))
        print(rows[-1], flush=True)
    body = [
        f"`{command}`, run on {today} in {time.perf_counter() - started:,.0f} s, default settings. "
        "Best baseline: the highest NDCG@10 of pop, recent-pop and transitions in the same run; "
        "cold-item HR@10: freshrec / the highest of the three baselines'.",
        "",
        "| data set | events | best baseline NDCG@10 | freshrec NDCG@10 | ratio | cold-item HR@10 | events/s "
        "| peak RSS MB |",
        "|" + " --- |" * 8,
        *rows,
    ]
    write_section("accuracy", "Accuracy across data sets (issue 14)", "\n".join(body))
    write_blend()


def ablations(sets: list[DataSet], command: str, today: str) -> None:
    started = time.perf_counter()
    rows = []
    for data in sets:
        if data.name not in ("ml-100k", "steam-reviews"):
            continue
        _, runs = run(data, [*BASELINES, "freshrec", *ABLATIONS])
        rows += ablation_rows(data, runs)
    body = [
        f"`{command}`, run on {today}: the ablations, {time.perf_counter() - started:,.0f} s. "
        "`freshrec-net`: the network alone (no blend); `-frozen`: no learning after the warm start; "
        "`-retrain`: retrained from scratch at 30%, 40%, ..., 90% of the log and frozen in between; "
        "`-no-X`: the blend without feature X (`popularity`: every half-life, in events and in seconds; "
        "`text-similarity`: with text-nearest; `age`: item age and untouched).",
        "",
        "| data set | model | NDCG@10 | ratio to best baseline | HR@10 | cold-item HR@10 | events/s | peak RSS MB |",
        "|" + " --- |" * 8,
        *rows,
    ]
    write_section("accuracy-ablations", "Ablations of the default (issue 14)", "\n".join(body))


if __name__ == "__main__":
    main()
