"""What a trending list costs on a large catalog: one ranking of a window's list.

    python benchmarks/trending.py [--items 1000000] [--rankings 20]

Counts one click on each of ``--items`` items (as a shop's server has counted after a
while), a few hundred clicks on a few hundred of them, then ranks the day's list once
(every counted item looked at, as after a start) and ``--rankings`` times more, each after
500 more clicks on random items (a second of a shop's events), as the endpoint does when
its list is a second old. Reports the time of the first ranking and the median and
longest of the later ones: the interpreter lock is held throughout, while requests wait.
Writes the ``trending`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import subprocess
import time

from freshrec.domain import Event, EventType
from freshrec.serve.trending import Trending
from harness import write_section


def clicks(items: list[str]) -> list[Event]:
    return [Event("u", item_id, EventType.CLICK, 0.0) for item_id in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rankings", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(0)
    ids = [f"i{j:07d}" for j in range(args.items)]
    trending = Trending()
    trending.refresh_s = 0.0  # every call ranks
    for start in range(0, len(ids), 10_000):
        trending.add(clicks(ids[start : start + 10_000]))
    trending.add(clicks([rng.choice(ids[:300]) for _ in range(600)]))
    started = time.perf_counter()
    first = trending.top("day")
    whole = time.perf_counter() - started
    later = []
    for _ in range(args.rankings):
        trending.add(clicks(rng.choices(ids, k=500)))
        started = time.perf_counter()
        trending.top("day")
        later.append(time.perf_counter() - started)
    print(f"first ranking {whole * 1e3:.1f} ms ({len(first)} items trending); later ones: median "
          f"{statistics.median(later) * 1e3:.2f} ms, longest {max(later) * 1e3:.2f} ms")  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    body = (
        f"`python benchmarks/trending.py --items {args.items} --rankings {args.rankings}`, run on "
        f"{dt.date.today()} at {commit}: {args.items:,} items counted, the day's trending list ranked once "
        f"(every counted item looked at) and then {args.rankings} times, each after 500 more clicks.\n\n"
        "| ranking | time |\n| --- | --- |\n"
        f"| the first | {whole * 1e3:.1f} ms |\n"
        f"| the later ones: median / longest | {statistics.median(later) * 1e3:.2f} / {max(later) * 1e3:.2f} ms |\n"
    )
    write_section("trending", "A trending list on a large catalog (issue 18)", body)


if __name__ == "__main__":
    main()
