"""What every long-running process shares: its log on stderr (``freshrec --log-level``)."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from freshrec import runtime
from tests.cli.test_cli import run


@pytest.fixture
def freshrec_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[logging.Logger]:
    """The ``freshrec`` logger, as it was again after the test (handlers, level, the variable)."""
    monkeypatch.delenv(runtime.LOG_LEVEL, raising=False)
    logger = logging.getLogger("freshrec")
    handlers, level = list(logger.handlers), logger.level
    yield logger
    logger.handlers[:], logger.level = handlers, level
    os.environ.pop(runtime.LOG_LEVEL, None)  # log_to_stderr exports it


def test_a_log_level_writes_freshrecs_records_to_stderr_and_passes_to_the_processes_started_later(
    freshrec_logger: logging.Logger, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    runtime.log_to_stderr("debug")
    runtime.log_to_stderr("DEBUG")  # once: no second handler
    assert sum(isinstance(h, runtime._Stderr) for h in freshrec_logger.handlers) == 1
    logging.getLogger("freshrec.serve.watchdog").debug("the event loop has not run for %d ms", 120)
    err = capsys.readouterr().err
    assert re.search(r"\d+ MainThread freshrec\.serve\.watchdog DEBUG the event loop has not run for 120 ms", err)
    assert os.environ[runtime.LOG_LEVEL] == "debug"  # a spawned learner reads it (learner_main)
    assert "log_level" not in run("--data", str(tmp_path), "stats")  # the settings take the variable as a top-level one


def test_a_process_started_with_the_variable_takes_its_level(
    freshrec_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime.log_to_stderr()
    assert freshrec_logger.level == logging.NOTSET and not any(
        isinstance(h, runtime._Stderr) for h in freshrec_logger.handlers
    )  # without either, Python's default stays
    monkeypatch.setenv(runtime.LOG_LEVEL, "info")
    runtime.log_to_stderr()
    assert freshrec_logger.level == logging.INFO


def test_an_unknown_log_level_is_refused_with_the_levels_named(freshrec_logger: logging.Logger, tmp_path: Path) -> None:
    out = run("--data", str(tmp_path), "--log-level", "loud", "stats", code=2)
    assert "unknown log level 'loud'" in out and "debug, info, warning, error" in out
    with pytest.raises(ValueError, match="unknown log level"):
        runtime.log_to_stderr("verbose")


@pytest.mark.skipif(sys.platform != "linux", reason="niceness per thread is Linux's")
def test_a_background_thread_is_nicer_than_the_main_thread_and_its_own_threads_no_nicer() -> None:
    """Background work (snapshots parsed and built, index steps) yields the processor to the
    requests' threads; a thread it starts inherits its niceness, and does not add more."""

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    seen: dict[str, int] = {}

    def inner() -> None:
        runtime.in_background()
        seen["inner"] = nice()

    def outer() -> None:
        runtime.in_background()
        seen["outer"] = nice()
        thread = threading.Thread(target=inner)
        thread.start()
        thread.join()

    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    thread = threading.Thread(target=outer)
    thread.start()
    thread.join()
    assert seen == {"outer": min(19, main + runtime.BACKGROUND_NICE), "inner": min(19, main + runtime.BACKGROUND_NICE)}
    assert nice() == main  # the calling thread's own is left as it was
