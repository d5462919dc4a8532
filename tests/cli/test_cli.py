"""The command line, run in-process through Typer's runner on real files and a real store."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from freshrec.cli.app import app
from tests.datasets.test_movielens import ml100k

HASHING = {"FRESHREC_ENCODER__MODEL": "hashing"}


def run(*args: str, env: dict[str, str] | None = None, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env={**HASHING, **(env or {})})
    assert result.exit_code == code, result.output
    return result.output


def stats(data: Path) -> dict[str, object]:
    return json.loads(run("--data", str(data), "stats", "--json"))


def test_stats_of_an_empty_store_has_exactly_the_documented_keys(tmp_path: Path) -> None:
    assert stats(tmp_path) == {
        "items": 0, "items_embedded": 0, "users": 0, "events": 0,
        "events_by_type": {}, "first_timestamp": None, "last_timestamp": None,
    }  # fmt: skip


def test_import_movielens_twice_adds_nothing(tmp_path: Path) -> None:
    folder = ml100k(tmp_path / "ml")
    data = tmp_path / "data"
    first = run("--data", str(data), "import", "movielens", str(folder))
    assert "u.data:3: value: 7.0 is outside the rating scale" in first
    s = stats(data)
    assert (s["items"], s["items_embedded"], s["events"], s["users"]) == (2, 2, 2, 1)
    assert s["first_timestamp"] == "1997-12-04T15:55:49Z" and s["events_by_type"] == {"rating": 2}
    second = run("--data", str(data), "import", "movielens", str(folder))
    assert "stored 0" in second and "all item texts already encoded" in second
    assert stats(data) == s


def test_strict_import_fails_and_leaves_the_store_unchanged(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text('{"user_id": "u", "item_id": "i", "type": "click", "timestamp": 1}\n{"user_id": "u"}\n')
    out = run("--data", str(tmp_path), "import", "events", str(events), "--strict", code=1)
    assert "events.jsonl:2: item_id: is required" in out
    assert stats(tmp_path)["events"] == 0
    run("--data", str(tmp_path), "import", "events", str(events))
    assert stats(tmp_path)["events"] == 1


def test_import_items_and_events_from_generated_data(tmp_path: Path) -> None:
    gen = tmp_path / "gen"
    run("generate", "--out", str(gen), "--items", "50", "--users", "5", "--events", "300", "--seed", "1")
    data = tmp_path / "data"
    run("--data", str(data), "import", "items", str(gen / "items.jsonl"))
    run("--data", str(data), "import", "events", str(gen / "events.jsonl"))
    s = stats(data)
    assert (s["items"], s["items_embedded"], s["events"]) == (50, 50, 300)


def demo(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``freshrec demo`` as a real process (the hashing encoder); it must end cleanly."""
    freshrec = Path(sys.executable).parent / "freshrec"
    done = subprocess.run(
        [str(freshrec), "--data", str(data), "demo", *args],
        env={**os.environ, **HASHING},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_demo_serves_simulated_shoppers(tmp_path: Path) -> None:
    """The README's first command, as a real process, for a few seconds."""
    args = ["--items", "80", "--users", "15", "--history", "600", "--port", "0", "--duration", "8", "--rate", "25"]
    done = demo(tmp_path, *args)
    assert re.search(r"freshrec demo running at http://127\.0\.0\.1:\d+/", done.stdout)
    clicks = re.search(r"\(([\d,]+) clicks, 0 errors\)", done.stdout)
    assert clicks and int(clicks.group(1).replace(",", "")) > 20, done.stdout
    assert stats(tmp_path)["events"] > 600  # the simulated clicks were stored
    assert list((tmp_path / "checkpoints").glob("model-*.state"))  # the learner checkpointed on the way out


def test_a_demo_experiment_finds_the_better_variant_with_a_significant_difference(tmp_path: Path) -> None:
    """``demo --experiment``: half the shoppers get the model learning online, half a static
    one (the network alone, frozen after its warm start); their tastes drift after 10 s,
    which the online arm follows. The experiment must find it better, significantly."""
    args = ["--items", "300", "--users", "150", "--history", "8000", "--port", "0", "--duration", "30"]
    done = demo(tmp_path, *args, "--drift-after", "10", "--rate", "25", "--experiment")
    text = " ".join(done.stdout.split())
    online = re.search(r"online: ([\d,]+) lists, click-through ([\d.]+)", text)
    frozen = re.search(r"static: ([\d,]+) lists, click-through ([\d.]+) .*?, difference (-[\d.]+) .*?\((\w+)\)", text)
    assert online and frozen, text
    assert int(frozen.group(1).replace(",", "")) > 100 and float(frozen.group(3)) < 0, text
    assert frozen.group(4) == "significant", text


def test_serve_refuses_to_run_open_or_without_keys(tmp_path: Path) -> None:
    out = run("--data", str(tmp_path), "serve", "--host", "0.0.0.0", "--insecure-no-auth", code=2)
    assert "only allowed on a loopback address" in out
    assert "no API key is configured" in run("--data", str(tmp_path), "serve", code=2)


def test_bad_settings_and_arguments_are_clear(tmp_path: Path) -> None:
    out = run("--data", str(tmp_path), "stats", env={"FRESHREC_ENCODER__BATCH_SIZE": "0"}, code=2)
    assert "encoder.batch_size" in out
    assert "no such file" in run("--data", str(tmp_path), "import", "items", str(tmp_path / "nope.csv"), code=1)
    assert "not a MovieLens folder" in run("--data", str(tmp_path), "import", "movielens", str(tmp_path), code=1)
    assert "items must be at least 1" in run("generate", "--out", str(tmp_path), "--items", "0", code=2)


def test_console_script_is_installed() -> None:
    result = subprocess.run(["freshrec", "--help"], capture_output=True, text=True, check=True)
    assert "import" in result.stdout and "stats" in result.stdout
    module = subprocess.run(
        [sys.executable, "-c", "import freshrec; print(freshrec.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert module.stdout.strip()


def test_learn_and_train_refuse_while_another_learner_holds_the_store(tmp_path: Path) -> None:
    from freshrec.learn.lease import NAME
    from freshrec.storage import SQLiteStore

    gen, data = tmp_path / "gen", tmp_path / "data"
    run("generate", "--out", str(gen), "--items", "30", "--users", "5", "--events", "200", "--seed", "1")
    run("--data", str(data), "import", "items", str(gen / "items.jsonl"))
    run("--data", str(data), "import", "events", str(gen / "events.jsonl"))
    store = SQLiteStore(data / "freshrec.db")
    try:
        store.take_lease(NAME, "elsewhere:42:abc", ttl_s=30)
        for command in (["train"], ["learn"], ["learn", "--follow"]):
            started = time.monotonic()
            out = run("--data", str(data), *command, code=3)
            assert "elsewhere:42:abc" in out and "renewed" in out and time.monotonic() - started < 10
        assert not list((data / "checkpoints").glob("model-*"))
        store.release_lease(NAME, "elsewhere:42:abc", 1)
        assert "model version 1" in run("--data", str(data), "train", env={"FRESHREC_MODEL__DIM": "16"})
    finally:
        store.close()


def test_model_migrate_rewrites_pickled_checkpoints_and_the_stores_copies(tmp_path: Path) -> None:
    import numpy as np
    import torch

    from freshrec import serialization
    from freshrec.model.sequence import SequenceNet
    from freshrec.model.snapshot import Snapshot
    from freshrec.settings import ModelSettings
    from freshrec.storage import SQLiteStore

    data = tmp_path / "data"
    folder = data / "checkpoints"
    folder.mkdir(parents=True)
    meta = {"version": 1, "offset": 5, "created": 0.0, "events_learned": 5, "loss": None, "note": "", "store": ""}
    legacy = {"state": {"w": torch.ones(2), "ids": ["a", "b"], "rng": np.arange(3)}, "meta": meta}
    torch.save(legacy, folder / "model-000001.pt")
    (folder / "model-000001.json").write_text(json.dumps(meta))
    snap = Snapshot.of(SequenceNet(3, None, ModelSettings(dim=8, use_text=False)), ["x", "y", "z"], [], checkpoint=1,
                       updates=0, offset=5)  # fmt: skip
    store = SQLiteStore(data / "freshrec.db")
    try:
        old_snapshot = {**snap.__dict__, "settings": snap.settings.model_dump()}
        for name, obj in (("checkpoint", legacy), ("snapshot", old_snapshot)):
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            store.publish(name, buffer.getvalue())
        out = run("--data", str(data), "model", "migrate", env={"FRESHREC_CLUSTER__SNAPSHOT_KEY": "k"})
        assert "rewrote 1 checkpoint version(s) [1]" in out and "republished in the store: checkpoint, snapshot" in out
        assert not list(folder.glob("*.pt")) and (folder / "model-000001.state").is_file()
        shared = store.published("checkpoint")
        assert shared is not None and serialization.loads(shared[1], b"k")["state"]["ids"] == ["a", "b"]
        stored = store.published("snapshot")
        assert stored is not None and Snapshot.from_bytes(stored[1], b"k").item_ids == ["x", "y", "z"]
        assert "rewrote 0" in run("--data", str(data), "model", "migrate")  # once
        assert "version" in run("--data", str(data), "model", "list")
    finally:
        store.close()


def test_recommend_writes_one_list_per_user_with_the_current_model(tmp_path: Path) -> None:
    gen, data = tmp_path / "gen", tmp_path / "data"
    run("generate", "--out", str(gen), "--items", "60", "--users", "6", "--events", "400", "--seed", "2")
    run("--data", str(data), "import", "items", str(gen / "items.jsonl"))
    run("--data", str(data), "import", "events", str(gen / "events.jsonl"))
    users = tmp_path / "users.txt"
    users.write_text("# campaign\nu00001\n\nu00003\nnobody-knows-me\n", encoding="utf-8")
    out = tmp_path / "recs" / "out.jsonl"
    run("--data", str(data), "recommend", "--users", str(users), "--out", str(out), "--k", "4")  # no model yet
    before = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["model_version"] for r in before] == [None, None, None]
    run("--data", str(data), "train")
    run("--data", str(data), "recommend", "--users", str(users), "--out", str(out), "--k", "4", "--categories", "")
    lists = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in lists] == ["u00001", "u00003", "nobody-knows-me"]
    assert all(len(r["items"]) == 4 and r["model_version"] == "1.0" for r in lists)
    events = [json.loads(line) for line in (gen / "events.jsonl").read_text().splitlines()]
    seen = {e["item_id"] for e in events if e["user_id"] == "u00001"}
    assert not seen & {i["item_id"] for i in lists[0]["items"]}  # what they touched is left out, as served
    cheap = ["--filter", "attributes.price < 40", "--boost", 'attributes.format == "paperback":0.5']
    run("--data", str(data), "recommend", "--users", str(users), "--out", str(out), "--k", "3", *cheap)
    prices = {
        json.loads(line)["item_id"]: json.loads(line)["attributes"]["price"] for line in (gen / "items.jsonl").open()
    }
    filtered = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(prices[i["item_id"]] < 40 for r in filtered for i in r["items"])
    run("--data", str(data), "recommend", "--users", str(users), "--out", str(out), "--filter", "price <", code=2)
    run("--data", str(data), "recommend", "--users", str(users), "--out", str(out), "--k", "0", code=2)
    run("--data", str(data), "recommend", "--users", str(tmp_path / "none.txt"), "--out", str(out), code=2)
