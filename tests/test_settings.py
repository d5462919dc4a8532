from __future__ import annotations

from pathlib import Path

import pytest

from freshrec.domain import EventType
from freshrec.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    s = load_settings(environ={})
    assert s == Settings()
    assert s.store_url == "sqlite:///freshrec-data/freshrec.db"
    assert s.feedback.weights[EventType.PURCHASE] > s.feedback.weights[EventType.CLICK]


def test_layers_file_then_environment_then_arguments(tmp_path: Path) -> None:
    cfg = tmp_path / "f.toml"
    cfg.write_text(
        'data_dir = "from-file"\n[encoder]\nbatch_size = 8\nmodel = "hashing"\n[feedback.weights]\nview = 0.1\n'
    )
    env = {"FRESHREC_CONFIG": str(cfg), "FRESHREC_ENCODER__BATCH_SIZE": "16", "FRESHREC_DATA": "from-env"}
    s = load_settings(environ=env)
    assert (s.encoder.batch_size, s.encoder.model, s.data_dir) == (16, "hashing", Path("from-env"))
    assert s.feedback.weights[EventType.VIEW] == 0.1 and s.feedback.weights[EventType.CLICK] == 0.5
    assert load_settings(data_dir=Path("cli"), environ=env).data_dir == Path("cli")
    json_env = {"FRESHREC_FEEDBACK__WEIGHTS": '{"dislike": -2}'}
    assert load_settings(environ=json_env).feedback.weights[EventType.DISLIKE] == -2


@pytest.mark.parametrize(
    ("toml", "env", "fragment"),
    [
        ("[encoder]\nbatch_sise = 8\n", {}, "encoder.batch_sise: Extra inputs are not permitted"),
        ("[storage]\nsynchronous = 'sometimes'\n", {}, "storage.synchronous"),
        ("[ingest]\nrating_min = 5\nrating_max = 1\n", {}, "rating_min (5.0) must be below rating_max (1.0)"),
        ("[feedback]\nrating_neutral = 9\n", {}, "rating_neutral (9.0) must lie on the rating scale"),
        ("[feedback.weights]\nlike = 1\n", {}, "feedback.weights.like"),
        ("", {"FRESHREC_ENCODER__BATCH_SIZE": "many"}, "encoder.batch_size"),
        ("", {"FRESHREC_BATCH": "1"}, "expected FRESHREC_<SECTION>__<KEY>"),
        ("", {"FRESHREC_ENCODR__BATCH_SIZE": "8"}, "no settings section 'encodr'"),
        ("", {"FRESHREC_ENCODER__BATCH_SISE": "8"}, "encoder.batch_sise: Extra inputs are not permitted"),
        ("not = [toml", {}, "not valid TOML"),
    ],
)
def test_invalid_settings_are_explained(tmp_path: Path, toml: str, env: dict[str, str], fragment: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(SettingsError) as info:
        load_settings(config=cfg, environ=env)
    assert fragment in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(config=Path("/nonexistent.toml"), environ={})


def test_the_shipped_sample_config_is_valid_and_matches_the_defaults() -> None:
    assert load_settings(config=ROOT / "freshrec.toml", environ={}) == Settings()
