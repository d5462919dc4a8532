from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from freshrec.cli.app import app
from freshrec.datasets.synthetic import GeneratorSettings, generate
from freshrec.evaluate.log import load_log
from freshrec.evaluate.report import ReportJSON, to_json, write_report
from freshrec.evaluate.runner import UnknownModel, evaluate

RESULT_KEYS = {
    "model", "hr_at_10", "ndcg_at_10", "scored", "cold_item_hr_at_10", "cold_user_hr_at_10",
    "wall_s", "events_per_s", "peak_rss_mb", "params",
}  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(GeneratorSettings(items=80, users=30, events=3_000, seed=5), tmp_path_factory.mktemp("gen"))


def test_cli_writes_json_with_exactly_the_documented_keys_and_a_report(
    generated: dict[str, Path], tmp_path: Path
) -> None:
    out, report = tmp_path / "r.json", tmp_path / "r.md"
    args = ["evaluate", "--dataset", str(generated["events"]), "--items", str(generated["items"])]
    args += ["--out", str(out), "--report", str(report), "--limit", "2000", "--in-process"]
    args += ["--models", "pop,recent-pop,transitions"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert set(data) == {"protocol", "dataset", "events", "warmup_events", "k", "results"}
    assert (data["protocol"], data["events"], data["warmup_events"], data["k"]) == ("prequential-v1", 2000, 400, 10)
    assert [r["model"] for r in data["results"]] == ["pop", "recent-pop", "transitions"]
    for r in data["results"]:
        assert set(r) == RESULT_KEYS
        assert r["scored"] == 1600 and 0 <= r["hr_at_10"] <= 1 and r["peak_rss_mb"] > 0
    ReportJSON.model_validate(data)
    text = report.read_text()
    assert "| transitions |" in text and "![NDCG@10 along the stream](r.png)" in text
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")


def test_html_report_inlines_the_plot(generated: dict[str, Path], tmp_path: Path) -> None:
    log = load_log(generated["events"], generated["items"]).head(1_500)
    runs = evaluate(["pop"], log, isolate=False)
    write_report(tmp_path / "r.html", log, runs, 0.2, 10)
    html = (tmp_path / "r.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html


def test_isolated_runs_measure_their_own_memory(generated: dict[str, Path]) -> None:
    log = load_log(generated["events"], generated["items"]).head(1_000)
    (run,) = evaluate(["transitions"], log, isolate=True)
    report = to_json(log, [run], 0.2, 10)
    assert report.results[0].scored == 800 and 0 < report.results[0].peak_rss_mb < 2_000


def test_unknown_models_are_a_clear_error(generated: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="unknown model 'nope'"):
        evaluate(["nope"], load_log(generated["events"], generated["items"]))
    args = ["evaluate", "--dataset", str(generated["events"]), "--items", str(generated["items"])]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x.json"), "--models", "pop,nope"])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    assert not (tmp_path / "x.json").exists()


def test_cli_runs_freshrec_with_its_text_vectors(generated: dict[str, Path], tmp_path: Path) -> None:
    env = {
        "FRESHREC_ENCODER__MODEL": "hashing",
        "FRESHREC_MODEL__DIM": "16",
        "FRESHREC_MODEL__HISTORY_LENGTH": "5",
        "FRESHREC_LEARN__EPOCHS": "1",
    }
    args = ["--data", str(tmp_path), "evaluate", "--dataset", str(generated["events"]), "--items"]
    args += [str(generated["items"]), "--out", str(tmp_path / "f.json"), "--limit", "1500", "--in-process"]
    result = CliRunner().invoke(app, [*args, "--models", "freshrec,freshrec-frozen"], env=env)
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "f.json").read_text())["results"]
    assert [r["model"] for r in results] == ["freshrec", "freshrec-frozen"]
    assert results[0]["params"]["model"]["dim"] == 16 and results[1]["params"]["learn"]["online"] is False
    assert list((tmp_path / "cache").glob("text-*.npy"))  # the text vectors are cached for the next run


def test_an_experiments_arms_are_replayed_under_the_protocol(generated: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "freshrec.toml"
    config.write_text(
        "[encoder]\nmodel = 'hashing'\n[model]\ndim = 16\nhistory_length = 5\n[learn]\nepochs = 1\n"
        "[experiment]\nname = 'lengths'\n"
        "[experiment.arms.control]\nshare = 0.5\n"
        "[experiment.arms.short]\nshare = 0.5\nmodel = { history_length = 2 }\n"
    )
    args = ["--config", str(config), "--data", str(tmp_path), "evaluate", "--dataset", str(generated["events"])]
    args += ["--items", str(generated["items"]), "--out", str(tmp_path / "e.json"), "--limit", "1200", "--in-process"]
    result = CliRunner().invoke(app, [*args, "--models", "transitions,experiment:lengths"])
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "e.json").read_text())["results"]
    assert [r["model"] for r in results] == ["transitions", "experiment:lengths/control", "experiment:lengths/short"]
    assert [r["params"]["model"]["history_length"] for r in results[1:]] == [5, 2]
    result = CliRunner().invoke(app, [*args, "--models", "experiment:other"])
    assert result.exit_code == 2 and "no experiment 'other'" in result.output
