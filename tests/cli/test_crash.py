"""Crash safety end to end: ``benchmarks/crash.py`` kills a real server with SIGKILL
while events stream in over HTTP, restarts it and checks that every acknowledged
event is stored, that a client re-posting every event gets each stored one back as a
duplicate (nothing stored twice, nothing missing after the retry), and that the learner
resumed from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "crash.py"


def test_sigkill_loses_no_acknowledged_event(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--runs",
            "1",
            "--seed",
            "3",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(out),
        ],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    run = result["runs"][0]
    assert run["acknowledged"] > 0, "the kill must come while events were being acknowledged"
    assert run["lost"] == 0 and run["stored_twice"] == 0 and run["missing_after_retry"] == 0
    assert run["resumed"], run
