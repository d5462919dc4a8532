"""The event loop's pauses: measured into a histogram, reported with the stack that held the loop."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Histogram

from freshrec.serve.metrics import LATENCY_BUCKETS
from freshrec.serve.watchdog import LoopWatch


def held_up(seconds: float) -> None:
    time.sleep(seconds)  # the loop's thread is busy: no callback runs


def run(watch: LoopWatch, pause_s: float) -> None:
    async def main() -> None:
        beat = asyncio.create_task(watch.beat())
        watch.start()
        await asyncio.sleep(0.1)
        held_up(pause_s)
        await asyncio.sleep(0.1)
        beat.cancel()

    try:
        asyncio.run(main())
    finally:
        watch.close()


def lag() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("lag_seconds", "lag", buckets=LATENCY_BUCKETS, registry=registry)


def test_a_pause_of_the_loop_is_measured_and_reported_with_the_stack_that_held_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, histogram = lag()
    watch = LoopWatch(histogram, period_s=0.01, report_s=0.15)
    caplog.set_level(logging.DEBUG, logger="freshrec.serve.watchdog")
    run(watch, 0.5)
    assert registry.get_sample_value("lag_seconds_count") >= 10  # the beat ran before and after
    assert registry.get_sample_value("lag_seconds_bucket", {"le": "0.25"}) < registry.get_sample_value(
        "lag_seconds_count"
    )  # one sleep ended 0.5 s late
    assert registry.get_sample_value("lag_seconds_sum") >= 0.45
    reports = [r.getMessage() for r in caplog.records if "event loop has not run" in r.getMessage()]
    assert watch.reports == len(reports) == 1, reports
    assert "MainThread: held_up (test_watchdog.py" in reports[0], reports
    held_ms = float(reports[0].split(" for ")[1].split(" ms")[0])
    assert 480 <= held_ms <= 700, reports  # the whole pause, not the 150 ms at which it was first seen
    assert reports[0].count("MainThread: held_up") == 2, reports  # looked at 150 ms and at 300 ms


def test_without_debug_logging_only_the_histogram_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    registry, histogram = lag()
    watch = LoopWatch(histogram, period_s=0.01, report_s=0.15)
    caplog.set_level(logging.INFO, logger="freshrec.serve.watchdog")
    run(watch, 0.3)
    assert watch.reports == 0 and not caplog.records
    assert registry.get_sample_value("lag_seconds_sum") >= 0.25


def slow_pass(requests: list[object]) -> None:
    time.sleep(0.4)  # the model's thread is busy: the requests wait, not the loop


def test_a_slow_model_pass_is_reported_with_the_model_threads_stack(caplog: pytest.LogCaptureFixture) -> None:
    """The requests of a batch wait for its pass in the model's thread while the loop runs
    on: the watch reports a pass that runs past ``report_s`` too, with that thread's stack."""
    from types import SimpleNamespace

    from freshrec.serve.batching import Batcher

    watch = LoopWatch(lag()[1], period_s=0.01, report_s=0.15)
    batcher = Batcher(run=slow_pass, finish=lambda r: ["ranked"], watched=watch.busy)
    caplog.set_level(logging.DEBUG, logger="freshrec.serve.watchdog")

    async def main() -> list[object]:
        beat = asyncio.create_task(watch.beat())
        watch.start()
        ranked = await asyncio.gather(*(batcher.rank(SimpleNamespace(result=None)) for _ in range(2)))  # type: ignore[arg-type]
        beat.cancel()
        return ranked

    try:
        assert asyncio.run(main()) == [["ranked"], ["ranked"]]
    finally:
        watch.close()
        batcher.close()
    reports = [r.getMessage() for r in caplog.records]
    passes = [r for r in reports if r.startswith("the model pass of 2 requests has run for")]
    assert len(passes) == 1 and "freshrec-model_0: slow_pass (test_watchdog.py" in passes[0], reports
    assert 380 <= float(passes[0].split(" for ")[1].split(" ms")[0]) <= 600, passes
    assert not [r for r in reports if "event loop" in r]  # the loop ran on meanwhile
    assert watch._running == {}  # nothing left watched after the pass
