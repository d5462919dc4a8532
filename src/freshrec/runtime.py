"""What every long-running role needs of its process: thread limits, the pipe's
framing, dying with the parent, last steps within a deadline, and an exit past
threads blocked on a store or bus that went away.

Shared by the learner (:mod:`freshrec.learn.worker`) and the server
(:mod:`freshrec.serve.engine`), which never import each other.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger("freshrec")

SNAPSHOT = b"snapshot\n"
"""On the pipe to the server, what starts a model snapshot's bytes; other messages
are JSON arrays. Nothing on the pipe is pickled (see :mod:`freshrec.serialization`)."""
ARM_SNAPSHOT = b"arm-snapshot\n"
"""What starts the snapshot of an experiment arm's model: then the arm's name, a
newline, and the snapshot's bytes."""


PARENT_WATCH = "freshrec-parent-watch"
LOG_LEVEL = "FRESHREC_LOG_LEVEL"
"""The environment variable of ``freshrec --log-level``: the processes a command starts read it too."""
LEVELS = ("debug", "info", "warning", "error")
LOG_FORMAT = "%(asctime)s %(process)d %(threadName)s %(name)s %(levelname)s %(message)s"


def log_to_stderr(level: str | None = None) -> None:
    """Write freshrec's log records of ``level`` and above to stderr, each with its time,
    process, thread and logger, and export the level to the processes started from here
    (``freshrec --log-level``; ``None``: :data:`LOG_LEVEL`'s, if set). Without either,
    Python's default stays: warnings and errors, bare. Why: what the server does in the
    background (index builds and checks, snapshots taken in, the event loop's pauses with
    the threads that held it, :mod:`freshrec.serve.watchdog`) is logged at info and debug."""
    level = (level or os.environ.get(LOG_LEVEL) or "").lower()
    if not level:
        return
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; the levels are {', '.join(LEVELS)}")
    os.environ[LOG_LEVEL] = level
    logger = logging.getLogger("freshrec")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`log_to_stderr` adds (once)."""


BACKGROUND_NICE = 10
"""How much less the scheduler favours a server's background threads than its others."""


def in_background() -> None:
    """Have the scheduler favour the process's other threads over the calling one, for as
    long as it runs: :data:`BACKGROUND_NICE` nicer than the main thread (on Linux, where
    niceness is per thread, and threads inherit their starter's; elsewhere nothing).

    Why: on two cores the server's background work (the candidate index's builds: 20-55 s
    on a million items; bulk imports) competes with the requests' threads (the event loop's,
    the model's) for the processor. Niced, the index's build thread took p99 under 200
    requests/s and 500 events/s from 263-367 ms to 30-82 ms. The background still gets the
    processor whenever the requests leave it, and they use about half of it.

    Not for work that holds the interpreter lock often and must keep pace: taking the model
    in (:meth:`~freshrec.serve.models.Models._publisher`,
    :meth:`~freshrec.serve.engine.Engine._receive`). A niced thread that the scheduler leaves
    waiting while it holds the lock holds every other thread up with it; niced, those threads
    had gained requests nothing beyond the runs' spread (a round with a whole snapshot p99
    98.7 ms against 103.2 and 106.1 ms), and beside busy processes their lock waits ran to
    212-254 ms (``benchmarks/publish_lag.py``).
    """
    if sys.platform != "linux":
        return
    me = threading.get_native_id()
    try:
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + BACKGROUND_NICE)
        if os.getpriority(os.PRIO_PROCESS, me) < wanted:
            os.setpriority(os.PRIO_PROCESS, me, wanted)
    except OSError as exc:  # a sandbox that forbids it: the thread runs as it is
        log.debug("could not lower the priority of thread %s: %s", threading.current_thread().name, exc)


SWITCH_INTERVAL_S = 0.0005
"""How long a thread of the server or of the learner beside it may hold the interpreter
lock while another waits for it (Python's default: 5 ms). A request's store reads and model
pass each give the lock up and wait to take it back; with a model build or event posts in
other threads, each such wait took up to the whole interval, several per request. On a
million items under 200 requests/s and 500 events/s requests then queued for seconds (p50
15 s); with 0.5 ms, p50 83 ms in the same run otherwise. In the learner, the sender's thread
encodes each snapshot while the micro-batches go on (``benchmarks/scale.py``: the publish
lag's part before the build): beside a thread busy half the time, encoding a million items'
delta took 4.4 ms on average instead of 6.2 (a ``/tmp`` script)."""

PIPE_BYTES = 4 << 20
"""The room asked for in the pipe from the learner to the server (Linux caps it at
``/proc/sys/fs/pipe-max-size``, 1 MiB by default). Why: a pipe holds 64 KiB unless asked, so
a model delta of 1.4 MB on a million items crossed in 22 turns of the writer and the reader,
each of which must be scheduled and take its interpreter's lock; beside a busy process and a
busy thread (a ``/tmp`` script) that took 5.0 ms on average, p99 9-12 ms, and with 1 MiB
2.9 ms, p99 6.2 ms. In the million-item scale run, this and the learner's switch interval
moved the publish lag by less than the runs' spread (RESULTS.md, "Where the publish lag goes")."""


def widen(pipe: Connection) -> None:
    """Give the pipe under ``pipe`` (either end) :data:`PIPE_BYTES` of room, or as much as the
    system allows; elsewhere than on Linux, or where it refuses, it stays as it is."""
    if sys.platform != "linux":
        return
    try:
        most = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(PIPE_BYTES, most))
    except (OSError, ValueError) as exc:
        log.debug("could not widen the learner's pipe: %s", exc)


def limit_threads(n: int) -> None:
    """``n`` threads for torch and for NumPy's BLAS alike. The server and the learner
    share the cores; OpenBLAS by default starts a thread per core and, when one is
    busy elsewhere, a small matrix product waits for it: under load, scoring one
    user against 10,000 items took 1.6 ms instead of 0.05 ms."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


PR_SET_PDEATHSIG = 1


def die_with_parent(poll_s: float = 1.0) -> None:
    """End this process when the server that started it dies, even by SIGKILL (the OOM
    killer's way), which gives the server no chance to stop it: an orphan learner would
    go on writing checkpoints beside the next server's. On Linux the kernel sends
    SIGKILL at the parent's death (``prctl(PR_SET_PDEATHSIG)``); everywhere, a thread
    watches for this process being handed to another parent. Nothing is lost: every
    acknowledged event is in the store, and the next learner resumes from the last
    checkpoint."""
    started_by = multiprocessing.parent_process()
    parent = started_by.pid if started_by is not None and started_by.pid else os.getppid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            log.debug("prctl is not available; the parent is watched instead")
    if os.getppid() != parent:  # died before the kernel was told
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name=PARENT_WATCH, daemon=True).start()


def last_steps(steps: list[tuple[str, Callable[[], object]]], within_s: float = 5.0) -> bool:
    """Run a stopping process's last steps, all of them within ``within_s`` seconds:
    with the store or the bus away, each would otherwise wait for its own timeout and
    a SIGTERM would take minutes. Those that fail or are cut short are named in one log
    line (what is acknowledged is in the store, and the checkpoint on disk is current,
    so nothing is lost). True if all completed."""
    deadline = time.monotonic() + within_s
    missed = []
    for what, step in steps:
        failed: list[BaseException] = []

        def run(step: Callable[[], object] = step, failed: list[BaseException] = failed) -> None:
            try:
                step()
            except Exception as exc:
                failed.append(exc)

        worker = threading.Thread(target=run, name="freshrec-last-step", daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive() or failed:
            reason = "timed out"
            if failed:  # the message's first line: the log line stays one line
                said = str(failed[0]).strip().splitlines() or [""]
                reason = f"{type(failed[0]).__name__}: {said[0]}"
            missed.append(f"{what} ({reason})")
    if missed:
        log.warning("stopped without being able to %s; nothing acknowledged is lost", "; ".join(missed))
    return not missed


def end_past_stuck_threads(code: int = 0) -> None:
    """End the process at once when threads it started are still blocked, on a store or
    bus that went away: Python's own shutdown would wait for them or, with a daemon
    thread holding a lock the interpreter needs at exit (stderr's, a connection
    pool's), abort with SIGABRT. Called once the last steps are done, so what is
    acknowledged is in the store and the checkpoint on disk is current."""
    stuck = [
        t.name
        for t in threading.enumerate()
        if t.name.startswith("freshrec-") and t.name != PARENT_WATCH and t.is_alive()
    ]
    if not stuck:
        return
    log.warning("leaving %d blocked thread(s) behind: %s", len(stuck), ", ".join(sorted(set(stuck))))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def exit_cleanly(signum: int, frame: Any) -> None:
    """A SIGTERM handler that ends the process through ``finally`` blocks (``SystemExit``)."""
    raise SystemExit(0)
