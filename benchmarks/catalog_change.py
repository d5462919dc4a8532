"""What adding items to a large catalog costs the server that serves it.

    python benchmarks/catalog_change.py [--items 1000000] [--adds 5] [--batch 1] [--writers 1]

Builds a network of ``--items`` items, their catalog and the server's snapshot intake
(:class:`~freshrec.serve.models.Models`) with its candidate index, as ``publish_lag.py``
does, and serves a whole snapshot. Then ``--adds`` times, a second apart, adds ``--batch``
new items as a server does after embedding them (``POST /v1/items``: the catalog takes them,
:meth:`~freshrec.serve.catalog.Catalog.put`, then every ranker builds its scoring on the new
view, :meth:`~freshrec.serve.ranker.Ranker.refresh`), and times each step (wall and this
thread's processor time). Meanwhile a thread asks for the interpreter lock every
millisecond, as the event loop does, and records how late it gets it: what requests wait.
With ``--writers N`` (more than one), each add is N writers at once, each adding
``--batch`` items and refreshing, as N requests posting items together do: the time until
the last has returned and the process's processor time meanwhile are reported. Writes the
``catalog-change`` section of RESULTS.md (``catalog-change-writers`` with several writers).

Why: a shop adds items all day, and each must be recommendable at once; on a large catalog
what one item's write costs bounds how often the catalog may change.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import subprocess
import threading
import time

import numpy as np

from freshrec.domain import Item
from harness import large_intake, lock_waits, serve_whole, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--adds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--writers", type=int, default=1)
    args = parser.parse_args()
    ids, net, ranker, models = large_intake(args.items, learned=1.0)
    serve_whole(net, ids, ranker, models)
    stop = threading.Event()
    late = lock_waits(stop)
    rng, width = np.random.default_rng(0), ranker.catalog.view.text.shape[1]
    put: list[tuple[float, float]] = []
    refresh: list[tuple[float, float]] = []
    for add in range(args.adds):
        puts = []
        for writer in range(args.writers):
            items = [Item(f"new{add}-{writer}-{j}", title=f"new {j}", categories=("c",)) for j in range(args.batch)]
            vectors = rng.standard_normal((args.batch, width)).astype(np.float32)
            puts.append(functools.partial(ranker.catalog.put, items, vectors))
        if args.writers == 1:
            for step, timings in ((puts[0], put), (ranker.refresh, refresh)):
                started, cpu = time.perf_counter(), time.thread_time()
                step()
                timings.append((time.perf_counter() - started, time.thread_time() - cpu))
        else:
            writers = [threading.Thread(target=lambda w=write: (w(), ranker.refresh())) for write in puts]
            started, cpu = time.perf_counter(), time.process_time()
            for writer in writers:
                writer.start()
            for writer in writers:
                writer.join()
            refresh.append((time.perf_counter() - started, time.process_time() - cpu))
        time.sleep(1.0)
    stop.set()
    models.close()
    ranker.retrieval.wait()  # an index step still running in C++ would abort the interpreter's exit
    report(args, put, refresh, late)


def report(
    args: argparse.Namespace, put: list[tuple[float, float]], refresh: list[tuple[float, float]], late: list[float]
) -> None:
    def each(timings: list[tuple[float, float]]) -> str:
        return ", ".join(f"{wall * 1e3:,.0f} ({cpu * 1e3:,.0f})" for wall, cpu in timings)

    waits = np.asarray(late) * 1e3
    steps = (
        f"the catalog's put {each(put)} ms, the ranker's refresh {each(refresh)} ms (wall, and in brackets the "
        "processor's)"
        if args.writers == 1
        else f"until the last writer returned {each(refresh)} ms (wall, and in brackets the process's processor time)"
    )
    figures = f"{steps}; lock waits meanwhile p99 {np.percentile(waits, 99):.1f} ms, longest {waits.max():,.0f} ms"
    print(figures)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    writers = "" if args.writers == 1 else f" --writers {args.writers}"
    body = (
        f"`python benchmarks/catalog_change.py --items {args.items} --adds {args.adds} --batch {args.batch}{writers}`"
        f", run on {dt.date.today()} at {commit}: {args.adds} adds of {args.batch} item(s) "
        f"{'each' if args.writers == 1 else f'by each of {args.writers} writers at once'}: {figures}.\n"
    )
    name = "catalog-change" if args.writers == 1 else "catalog-change-writers"
    title = "Adding items to a large catalog (issue 18)" + ("" if args.writers == 1 else ", several writers at once")
    write_section(name, title, body)


if __name__ == "__main__":
    main()
