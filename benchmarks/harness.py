"""What the benchmark scripts share: the freshrec command line, a free port, waiting
for a server to be ready, a server's snapshot intake of a large catalog in this process,
and writing a marked section of RESULTS.md."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from freshrec.client import Client, FreshrecError

if TYPE_CHECKING:
    from freshrec.model.sequence import SequenceNet
    from freshrec.model.snapshot import Snapshot
    from freshrec.serve.models import Models
    from freshrec.serve.ranker import Ranker

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"


def freshrec(data: Path, *args: str) -> list[str]:
    """The command line of ``freshrec --data DATA ARGS`` from this interpreter's environment."""
    return [str(Path(sys.executable).parent / "freshrec"), "--data", str(data), *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def large_intake(n: int, learned: float) -> tuple[list[str], SequenceNet, Ranker, Models]:
    """A network of ``n`` items (``learned`` of them with ID rows learned, at random), their
    catalog, and a server's snapshot intake of it (publisher not started), with the switch
    interval and the validation a server sets as it starts; seeded. Imported here: the load
    generators' processes import the benchmark that starts them, and need none of this."""
    import torch

    from freshrec.domain import Item
    from freshrec.model.sequence import SequenceNet
    from freshrec.model.snapshot import prepare_validation
    from freshrec.runtime import SWITCH_INTERVAL_S
    from freshrec.serve.catalog import Catalog
    from freshrec.serve.metrics import Metrics
    from freshrec.serve.models import Models
    from freshrec.serve.ranker import Ranker
    from freshrec.settings import ClusterSettings, ModelSettings

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    torch.manual_seed(0)
    settings = ModelSettings()
    ids = [f"i{j:07d}" for j in range(n)]
    text = torch.randn(n, 384)
    net = SequenceNet(n, text, settings)
    with torch.no_grad():
        rows = torch.randperm(n)[: round(n * learned)]
        net.item_id.weight[rows] = torch.randn(len(rows), settings.dim) * 0.1
        net.active[rows] = True
    catalog = Catalog()
    catalog.put([Item(i, title=f"title {i}", categories=("c",)) for i in ids], text.numpy())
    ranker = Ranker(catalog)
    prepare_validation()
    return ids, net, ranker, Models(ranker, ClusterSettings(), Metrics())


def serve_whole(net: SequenceNet, ids: list[str], ranker: Ranker, models: Models) -> Snapshot:
    """Start ``models``' publisher, hand it a whole snapshot of ``net``, and return the snapshot
    once it is served and the candidate index's first build is done (tens of seconds on a
    million items)."""
    from freshrec.model.snapshot import Snapshot

    models.start()
    whole = Snapshot.of(net, ids, [], checkpoint=1, updates=0, offset=0)
    models.receive(whole.to_bytes(), "learner")
    while ranker.scoring.snapshot is None:
        time.sleep(0.05)
    ranker.retrieval.wait()
    return whole


def lock_waits(stop: threading.Event) -> list[float]:
    """How late (s) a thread that asks for the interpreter lock every millisecond, as the event
    loop does, gets it, until ``stop`` is set: what requests would wait."""
    late: list[float] = []

    def ask() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            time.sleep(0.001)
            late.append(time.perf_counter() - started - 0.001)

    threading.Thread(target=ask, daemon=True).start()
    return late


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
