"""``freshrec recommend``: lists for many users at once, into a JSONL file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from freshrec import serialization
from freshrec.cli.context import app_of, console, fail
from freshrec.learn.checkpoints import Checkpoints
from freshrec.serve.batch import recommend_users
from freshrec.serve.http import valid_boost, valid_rule
from freshrec.serve.intake import Problem
from freshrec.serve.ranker import Options


def _users(path: Path) -> list[str]:
    """One user id per line (blank lines and ``#`` comments skipped); ``-``: standard input."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the users file {path}: {exc}", 2)
    users = [line.strip() for line in text.splitlines()]
    return [u for u in users if u and not u.startswith("#")]


def _split(values: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in values.split(",") if v.strip())


def recommend_cmd(
    ctx: typer.Context,
    users: Annotated[Path, typer.Option("--users", help="File with one user id per line ('-': standard input).")],
    out_path: Annotated[Path, typer.Option("--out", help="JSONL file to write, one list per user.")],
    k: Annotated[int, typer.Option("--k", min=1, help="Length of each list.")] = 10,
    categories: Annotated[str, typer.Option(help="Only items in any of these (comma-separated).")] = "",
    exclude: Annotated[str, typer.Option(help="Item ids never to return (comma-separated).")] = "",
    exclude_seen: Annotated[bool, typer.Option(help="Leave out what each user already touched.")] = True,
    rule: Annotated[
        str, typer.Option("--filter", help="A business rule every item satisfies, or a [serve] rules name.")
    ] = "",
    boost: Annotated[str, typer.Option(help="RULE:SHARE: places for the best items that satisfy RULE.")] = "",
) -> None:
    """Recommend for every user of a file, with the current model version, as the server
    would (for campaigns and caches): one JSON line per user with their list."""
    state = app_of(ctx)
    if k > state.settings.serve.max_k:
        fail(f"--k is {k}; at most [serve] max_k, {state.settings.serve.max_k}", 2)
    ids = _users(users)
    for user_id in ids:
        if len(user_id) > state.settings.ingest.max_id_length:
            fail(f"user id {user_id[:40]!r}... is longer than {state.settings.ingest.max_id_length} characters", 2)
    try:
        snapshot = Checkpoints.of(state.settings).served(state.settings)
    except serialization.Malformed as exc:
        fail(f"the current model version does not fit the settings: {exc}", 2)
    if snapshot is None:
        console.print("no model version yet (freshrec train makes one): ranking by text and popularity")
    try:
        named = state.settings.serve.rules
        options = Options(
            k,
            _split(exclude),
            _split(categories),
            exclude_seen,
            False,
            valid_rule(rule, named),
            valid_boost(boost, named),
        )
    except Problem as exc:
        fail(f"--{exc.errors[0]['field'] if exc.errors else 'filter'}: {exc.detail}", 2)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with state.store() as store, out_path.open("w", encoding="utf-8") as out:
        lists = recommend_users(store, state.settings, snapshot, ids, options)
        for user_id, version, items in tqdm(lists, total=len(ids), unit="user", desc="recommend", file=sys.stderr):
            line = {
                "user_id": user_id,
                "model_version": version,
                "items": [{"item_id": r.item_id, "score": r.score, "title": r.title} for r in items],
            }
            out.write(json.dumps(line) + "\n")
    console.print(f"wrote {len(ids):,} lists to {out_path}")
