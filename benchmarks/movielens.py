"""The prequential benchmark on MovieLens, written into benchmarks/RESULTS.md.

    python benchmarks/movielens.py [--dataset ../shared/data/ml-100k] [--models pop,...] [--section prequential]

Runs the replay of ``../shared/BENCHMARK.md`` (the same code as ``freshrec
evaluate``), each model in its own process, then replaces the section between
the ``<!-- SECTION:begin -->`` and ``<!-- SECTION:end -->`` markers in RESULTS.md
with a table, the reference figures of the protocol, and the NDCG@10 plot
(``benchmarks/ml100k-SECTION.png``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

from freshrec.evaluate.log import load_log
from freshrec.evaluate.report import plot_png, to_json, write_json
from freshrec.evaluate.runner import MODELS, NEEDS_TEXT, Inputs, catalog_text, evaluate
from freshrec.settings import load_settings
from harness import HERE, write_section

DEFAULT = HERE.parents[1] / "shared" / "data" / "ml-100k"
REFERENCE = {"pop": (0.0765, 0.0365), "recent-pop": (0.0748, 0.0376), "transitions": (0.1602, 0.0825)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--section", default="prequential", help="Which marked section of RESULTS.md to replace.")
    args = parser.parse_args()
    if not args.dataset.is_dir():
        raise SystemExit(f"{args.dataset}: no MovieLens folder there; nothing to benchmark")
    log = load_log(args.dataset)
    names = args.models.split(",")
    settings = load_settings()
    text = catalog_text(log, settings) if NEEDS_TEXT & set(names) else None
    started = time.perf_counter()
    runs = evaluate(names, log, progress=True, inputs=Inputs(settings, text))
    total = time.perf_counter() - started
    write_json(HERE / "out" / f"{log.name}.json", to_json(log, runs, 0.2, 10))
    png = HERE / f"{log.name.replace('movielens-', 'ml')}-{args.section}.png"
    png.write_bytes(plot_png(runs, f"prequential-v1 on {log.name}"))
    today = dt.date.today().isoformat()
    command = f"python benchmarks/movielens.py --dataset {os.path.relpath(args.dataset)}"
    if args.models != ",".join(MODELS):
        command += f" --models {args.models} --section {args.section}"
    lines = [
        f"`{command}`, run on {today}: {log.name}, "
        f"{len(log):,} events, {log.n_users:,} users, {log.n_items:,} items, {runs[0].summary.scored:,} scored. "
        f"All models together: {total:.1f} s (each in its own process, warm-up included).",
        "",
        "| model | HR@10 | NDCG@10 | reference HR@10 / NDCG@10 | cold-item HR@10 | cold-user HR@10 | MRR "
        "| coverage@10 | events/s | peak RSS MB | date |",
        "|" + " --- |" * 11,
    ]
    for run in runs:
        s = run.summary
        ref = REFERENCE.get(run.name)
        ref_text = f"{ref[0]:.4f} / {ref[1]:.4f}" if ref and log.name == "movielens-100k" else "-"
        cold_item = "n/a" if s.cold_item_hr_at_10 is None else f"{s.cold_item_hr_at_10:.4f}"
        cold_user = "n/a" if s.cold_user_hr_at_10 is None else f"{s.cold_user_hr_at_10:.4f}"
        lines.append(
            f"| {run.name} | {s.hr_at_10:.4f} | {s.ndcg_at_10:.4f} | {ref_text} | {cold_item} | {cold_user} "
            f"| {s.mrr:.4f} | {s.coverage_at_k:.3f} | {run.events_per_s:,.0f} | {run.peak_rss_mb:,.0f} | {today} |"
        )
    lines += ["", f"![NDCG@10 along the stream]({png.name})"]
    section = "\n".join(lines)
    write_section(args.section, args.section, section)
    print(section)


if __name__ == "__main__":
    main()
