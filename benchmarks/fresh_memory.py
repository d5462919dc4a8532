"""Whether a thread copying large tables slows the threads that need the interpreter lock.

    python benchmarks/fresh_memory.py [--seconds 10]

Three threads, as in a server taking in a whole snapshot of a million items: one asks for
the interpreter lock every millisecond (the event loop) and records how late it gets it,
one computes in Python (requests), and one copies a 1,000,000 x 65 table (the item
table's size) in a loop, either into new memory each time (``clone``, then freed) or into
one kept table (``copy_``); and, for comparison, nothing copying. Prints the late wakes'
p50, p99 and longest for each. The copies themselves let the lock go; new memory is
touched page by page as it is first written, and given back to the system when freed.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import torch

from freshrec.runtime import SWITCH_INTERVAL_S


def run(mode: str, seconds: float) -> str:
    stop, late = threading.Event(), []
    table = torch.randn(1_000_000, 65)

    def ask() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - started - 0.001)

    def compute() -> None:
        blob = json.dumps([{"item_id": f"i{j}", "score": j * 0.5} for j in range(200)])
        while not stop.is_set():
            json.loads(blob)

    def copy() -> None:
        kept = torch.empty_like(table)
        while not stop.is_set():
            if mode == "into a kept table":
                kept.copy_(table)
            else:
                fresh = table.clone()
                del fresh

    threads = [threading.Thread(target=ask), threading.Thread(target=compute)]
    if mode != "nothing copying":
        threads.append(threading.Thread(target=copy))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    x = sorted(late)
    return (
        f"{mode}: {len(x)} wakes, late p50 {x[len(x) // 2] * 1e3:.2f} ms, p99 {x[int(len(x) * 0.99)] * 1e3:.2f} ms, "
        f"longest {x[-1] * 1e3:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)  # as the server sets it
    torch.set_num_threads(1)
    for mode in ("nothing copying", "into new memory", "into a kept table", "into new memory"):
        print(run(mode, args.seconds), flush=True)


if __name__ == "__main__":
    main()
