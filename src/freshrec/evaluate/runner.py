"""Run models through the replay and measure them: accuracy, speed, memory.

Each model runs in a fresh child process by default, so that its peak
resident memory is its own and one model's caches cannot flatter another's
speed. The child receives the already loaded log.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from freshrec.evaluate.log import EventLog
from freshrec.evaluate.metrics import Summary, summarise
from freshrec.evaluate.replay import Step, replay, warmup_size
from freshrec.model.base import Recommender
from freshrec.model.baselines import Popularity, RecentPopularity, Transitions

MODELS: dict[str, Callable[[EventLog], Recommender]] = {
    "pop": lambda log: Popularity(log.n_items),
    "recent-pop": lambda log: RecentPopularity(log.n_items),
    "transitions": lambda log: Transitions(log.n_items),
}
NOT_YET: dict[str, str] = {
    "freshrec": "the online freshrec model does not exist yet (issue 4); available: " + ", ".join(MODELS),
}


class UnknownModel(ValueError):
    pass


def check_models(names: list[str]) -> None:
    for name in names:
        if name in NOT_YET:
            raise UnknownModel(f"model {name!r}: {NOT_YET[name]}")
        if name not in MODELS:
            raise UnknownModel(f"unknown model {name!r}; available: {', '.join(MODELS)}")


@dataclass(frozen=True)
class ModelRun:
    name: str
    summary: Summary
    wall_s: float
    events_per_s: float
    peak_rss_mb: float
    params: dict[str, Any]


def run_model(name: str, log: EventLog, warmup: float = 0.2, k: int = 10, progress: bool = False) -> ModelRun:
    """Replay ``log`` through a freshly built model, in this process."""
    check_models([name])
    start = time.perf_counter()
    model = MODELS[name](log)
    steps = replay(model, log, warmup=warmup, k=k)
    scored = len(log) - warmup_size(len(log), warmup)
    summary = summarise(_progress(steps, scored, name, progress), log.n_items, k=k)
    wall = time.perf_counter() - start
    return ModelRun(name, summary, wall, len(log) / wall, peak_rss_mb(), model.params())


def peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MiB.

    ``VmHWM`` rather than ``ru_maxrss``: across fork and exec Linux carries
    ``ru_maxrss`` over from the parent, so a child started by ``spawn``
    would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(steps: Iterator[Step], total: int, name: str, enabled: bool) -> Iterator[Step]:
    with tqdm(total=total, unit="event", desc=f"replay {name}", disable=not enabled, smoothing=0.1) as bar:
        for step in steps:
            bar.update(len(step.events))
            yield step


def evaluate(
    names: list[str],
    log: EventLog,
    warmup: float = 0.2,
    k: int = 10,
    isolate: bool = True,
    progress: bool = False,
) -> list[ModelRun]:
    """Run each model on the same log, one after the other."""
    check_models(names)
    warmup_size(len(log), warmup)  # validates the share before any work
    if not isolate:
        return [run_model(name, log, warmup, k, progress) for name in names]
    runs = []
    context = multiprocessing.get_context("spawn")
    for name in names:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            runs.append(pool.submit(run_model, name, log, warmup, k, progress).result())
    return runs
