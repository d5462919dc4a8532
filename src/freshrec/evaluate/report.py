"""The evaluation's outputs: the JSON file of the protocol, and a Markdown or
HTML report with a table and a plot of NDCG@10 along the stream."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from freshrec.evaluate.log import EventLog
from freshrec.evaluate.metrics import CURVE_WINDOW
from freshrec.evaluate.replay import warmup_size
from freshrec.evaluate.runner import ModelRun

PROTOCOL = "prequential-v1"


class ResultJSON(BaseModel):
    """One model's result, with exactly the keys of ``BENCHMARK.md``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str
    hr_at_10: float
    ndcg_at_10: float
    scored: int
    cold_item_hr_at_10: float | None
    cold_user_hr_at_10: float | None
    wall_s: float
    events_per_s: float
    peak_rss_mb: float
    params: dict[str, Any]


class ReportJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")

    protocol: str
    dataset: str
    events: int
    warmup_events: int
    k: int
    results: list[ResultJSON]


def to_json(log: EventLog, runs: list[ModelRun], warmup: float, k: int) -> ReportJSON:
    return ReportJSON(
        protocol=PROTOCOL,
        dataset=log.name,
        events=len(log),
        warmup_events=warmup_size(len(log), warmup),
        k=k,
        results=[
            ResultJSON(
                model=r.name,
                hr_at_10=r.summary.hr_at_10,
                ndcg_at_10=r.summary.ndcg_at_10,
                scored=r.summary.scored,
                cold_item_hr_at_10=r.summary.cold_item_hr_at_10,
                cold_user_hr_at_10=r.summary.cold_user_hr_at_10,
                wall_s=round(r.wall_s, 3),
                events_per_s=round(r.events_per_s, 1),
                peak_rss_mb=round(r.peak_rss_mb, 1),
                params=r.params,
            )
            for r in runs
        ],
    )


def write_json(path: Path, report: ReportJSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.model_dump(), indent=2) + "\n")


def plot_png(runs: list[ModelRun], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    colors = plt.get_cmap("tab20")  # distinct colours for up to 20 models: dark shades first
    for n, run in enumerate(runs):
        color = colors((2 * n) % 20 if n < 10 else (2 * n + 1) % 20)
        ax.plot(run.summary.curve_x, run.summary.curve_ndcg_at_10, label=run.name, linewidth=1.4, color=color)
    ax.set_xlabel("position in the stream (events)")
    ax.set_ylabel(f"NDCG@10, moving mean over {CURVE_WINDOW:,} events")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(log: EventLog, runs: list[ModelRun], k: int) -> list[str]:
    s0 = runs[0].summary
    at_k = [f"HR@{k}", f"NDCG@{k}"] if k != 10 else []
    header = ["model", "HR@10", "NDCG@10", *at_k, "MRR", f"coverage@{k}", "cold-item HR@10", "cold-user HR@10"]
    header += ["events/s", "wall s", "peak RSS MB"]
    rows = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in runs:
        s = r.summary
        cells = [r.name, _fmt(s.hr_at_10), _fmt(s.ndcg_at_10)]
        cells += [_fmt(s.hr_at_k), _fmt(s.ndcg_at_k)] if k != 10 else []
        cells += [_fmt(s.mrr), _fmt(s.coverage_at_k, 3), _fmt(s.cold_item_hr_at_10), _fmt(s.cold_user_hr_at_10)]
        cells += [f"{r.events_per_s:,.0f}", f"{r.wall_s:.1f}", f"{r.peak_rss_mb:,.0f}"]
        rows.append("| " + " | ".join(cells) + " |")
    rows += [
        "",
        f"{len(log):,} events, {log.n_users:,} users, {log.n_items:,} items; {s0.scored:,} scored "
        f"({s0.cold_item_scored:,} on cold items, {s0.cold_user_scored:,} for cold users: fewer than 5 earlier "
        "interactions).",
    ]
    if log.problems:
        rows.append("Left out while loading: " + ", ".join(f"{n:,} {why}" for why, n in log.problems.items()) + ".")
    return rows


def write_report(path: Path, log: EventLog, runs: list[ModelRun], warmup: float, k: int) -> None:
    """Markdown (``.md``, the plot saved beside it) or HTML (plot inlined)."""
    title = f"{PROTOCOL} on {log.name}"
    png = plot_png(runs, title)
    intro = [
        f"# {title}",
        "",
        f"Warm-up: the first {warmup:.0%} of the time-ordered log ({warmup_size(len(log), warmup):,} events). "
        "Every later event is scored against the whole catalog, seen items removed, ties counted against the "
        "model, parameters at most 256 events behind, histories current.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".html", ".htm"):
        from markdown_it import MarkdownIt

        body = MarkdownIt("commonmark").enable("table").render("\n".join(intro + table(log, runs, k)))
        image = base64.b64encode(png).decode()
        path.write_text(
            f"<!doctype html><meta charset='utf-8'><title>{title}</title>\n{body}\n"
            f"<img alt='NDCG@10 along the stream' src='data:image/png;base64,{image}'>\n"
        )
        return
    png_path = path.with_suffix(".png")
    png_path.write_bytes(png)
    lines = [*intro, *table(log, runs, k), "", f"![NDCG@10 along the stream]({png_path.name})", ""]
    path.write_text("\n".join(lines))
