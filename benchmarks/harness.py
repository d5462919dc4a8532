"""What the benchmark scripts share: the freshrec command line, a free port, waiting
for a server to be ready, and writing a marked section of RESULTS.md."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from freshrec.client import Client, FreshrecError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def freshrec(data: Path, *args: str) -> list[str]:
    """The command line of ``freshrec --data DATA ARGS`` from this interpreter's environment."""
    return [str(Path(sys.executable).parent / "freshrec"), "--data", str(data), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 300.0, model: bool = True) -> None:
    """Poll ``/health/ready`` until it answers 200 and, with ``model``, a learned model is
    served (``model_served``); fail if ``process`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    with Client(url, timeout=2.0) as c:
        while True:
            try:
                if c.readiness().get("model_served") or not model:
                    return
            except (FreshrecError, httpx.TransportError):  # not listening yet, or not ready (503)
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not become ready")
            time.sleep(0.05)


def write_section(name: str, heading: str, body: str) -> None:
    """Put ``body`` between the ``<!-- name:begin -->`` and ``<!-- name:end -->``
    markers of RESULTS.md, or append it under ``## heading`` if they are not there."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body}\n{end}"
    text = RESULTS.read_text()
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text += f"\n## {heading}\n\n{section}\n"
    RESULTS.write_text(text)
    print(f"wrote the {name} section of {RESULTS}")
