"""One typed settings object, layered: defaults < TOML file < environment.

Every component receives only its own section (``settings.storage`` for the
store, ``settings.encoder`` for the text encoder, ...), so a component cannot
grow hidden dependencies on unrelated knobs.

The layers are pydantic-settings sources. Environment variables use the
``FRESHREC_`` prefix and ``__`` between a section and a key, e.g.
``FRESHREC_ENCODER__BATCH_SIZE=32``; values of list and mapping settings are
JSON. ``FRESHREC_DATA`` (the data directory) and
``FRESHREC_CONFIG`` (the TOML file) are the two top-level exceptions.
Unknown keys are errors rather than silently ignored: a typo in a config file
must not fall back to a default unnoticed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from freshrec.settings.experiment import ArmSettings, ExperimentSettings
from freshrec.settings.sections import (
    BlendSettings,
    ClusterSettings,
    EncoderSettings,
    FeedbackSettings,
    IngestSettings,
    LearnSettings,
    ModelSettings,
    OptimizerSettings,
    PrivacySettings,
    RetrievalSettings,
    Section,
    ServeSettings,
    StorageSettings,
)

__all__ = [
    "ArmSettings",
    "BlendSettings",
    "ClusterSettings",
    "EncoderSettings",
    "ExperimentSettings",
    "FeedbackSettings",
    "IngestSettings",
    "LearnSettings",
    "ModelSettings",
    "OptimizerSettings",
    "PrivacySettings",
    "RetrievalSettings",
    "Section",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "StorageSettings",
    "load_settings",
]

ENV_PREFIX = "FRESHREC_"
TOP_LEVEL = ("FRESHREC_DATA", "FRESHREC_CONFIG", "FRESHREC_LOG_LEVEL")
"""Variables that are not ``<SECTION>__<KEY>``: the data directory, the TOML file and the
log level (:func:`freshrec.runtime.log_to_stderr`)."""


class SettingsError(ValueError):
    """A configuration that cannot be used; the message names each bad key."""


class Settings(BaseSettings):
    """All settings. ``Settings()`` is the defaults alone; :func:`load_settings` layers
    the TOML file, the environment and explicit arguments over them."""

    model_config = SettingsConfigDict(
        extra="forbid", frozen=True, env_prefix=ENV_PREFIX, env_nested_delimiter="__", case_sensitive=False
    )

    data_dir: Path = Path("freshrec-data")
    storage: StorageSettings = StorageSettings()
    encoder: EncoderSettings = EncoderSettings()
    ingest: IngestSettings = IngestSettings()
    feedback: FeedbackSettings = FeedbackSettings()
    model: ModelSettings = ModelSettings()
    learn: LearnSettings = LearnSettings()
    serve: ServeSettings = ServeSettings()
    cluster: ClusterSettings = ClusterSettings()
    experiment: ExperimentSettings = ExperimentSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Explicit arguments, then the environment, then the TOML file: only those
        :func:`load_settings` hands over (``Settings()`` reads neither)."""
        environ, toml = _LAYERS.get()
        return init_settings, _Environment(settings_cls, environ), _Layer(settings_cls, toml)

    @model_validator(mode="after")
    def _neutral_in_scale(self) -> Settings:
        lo, hi = self.ingest.rating_min, self.ingest.rating_max
        if not lo <= self.feedback.rating_neutral <= hi:
            raise ValueError(
                f"feedback.rating_neutral ({self.feedback.rating_neutral}) must lie on the rating scale [{lo}, {hi}]"
            )
        return self

    @model_validator(mode="after")
    def _arms_valid(self) -> Settings:
        for arm in self.experiment.arms:
            try:
                self.for_arm(arm)
            except ValidationError as exc:
                raise ValueError(f"experiment arm {arm!r}: {exc}") from None
        return self

    @property
    def store_url(self) -> str:
        return self.storage.url or f"sqlite:///{self.data_dir / 'freshrec.db'}"

    def for_arm(self, arm: str) -> Settings:
        """These settings with experiment arm ``arm``'s model and learning settings, and a
        data folder of its own (``<data_dir>/arms/<arm>``, for its checkpoints) on the
        same store."""
        overrides = self.experiment.arms[arm]
        model = ModelSettings.model_validate(_merged(self.model.model_dump(), overrides.model))
        learn = LearnSettings.model_validate(_merged(self.learn.model_dump(), overrides.learn))
        return self.model_copy(
            update={
                "model": model,
                "learn": learn,
                "data_dir": self.data_dir / "arms" / arm,
                "storage": self.storage.model_copy(update={"url": self.store_url}),
            }
        )

    def arm_differs(self, arm: str) -> bool:
        """Whether arm ``arm`` learns a model of its own (its settings are not the defaults')."""
        other = self.for_arm(arm)
        return (other.model, other.learn) != (self.model, self.learn)

    def own_arms(self) -> list[str]:
        """The experiment's arms that learn models of their own, in their order."""
        return [arm for arm in self.experiment.arms if self.arm_differs(arm)]


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it, nested tables key by key."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


SECTIONS = ", ".join(name for name in Settings.model_fields if name != "data_dir")
_LAYERS: ContextVar[tuple[Mapping[str, str], dict[str, Any]]] = ContextVar("layers", default=({}, {}))
"""The environment and TOML values of the :func:`load_settings` call in progress."""


class _Environment(EnvSettingsSource):
    """``FRESHREC_<SECTION>__<KEY>`` variables of a given mapping (not always ``os.environ``)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        self._environ = {k: v for k, v in environ.items() if k not in TOP_LEVEL}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k if self.case_sensitive else k.lower(): v for k, v in self._environ.items()}


class _Layer(PydanticBaseSettingsSource):
    """Values already read (the TOML file's)."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]):
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self.values)


def load_settings(
    config: Path | None = None,
    data_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults, then the TOML file, then ``FRESHREC_*``
    variables, then explicit arguments (command-line flags), then validation."""
    env = os.environ if environ is None else environ
    for name in env:
        keys = name[len(ENV_PREFIX) :].split("__")
        if name.startswith(ENV_PREFIX) and name not in TOP_LEVEL and (len(keys) < 2 or not all(keys)):
            raise SettingsError(f"{name}: expected FRESHREC_<SECTION>__<KEY>, e.g. FRESHREC_ENCODER__BATCH_SIZE")
        if name.startswith(ENV_PREFIX) and name not in TOP_LEVEL and keys[0].lower() not in Settings.model_fields:
            raise SettingsError(f"{name}: no settings section {keys[0].lower()!r}; the sections are {SECTIONS}")
    path = config or (Path(env["FRESHREC_CONFIG"]) if env.get("FRESHREC_CONFIG") else None)
    toml: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                toml = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise SettingsError(f"config file not found: {path}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    arguments: dict[str, Any] = {}
    if data_dir is not None or env.get("FRESHREC_DATA"):
        arguments["data_dir"] = data_dir if data_dir is not None else env["FRESHREC_DATA"]
    token = _LAYERS.set((env, toml))
    try:
        return Settings(**arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings ({path or 'no config file'}): {problems}") from exc
    except SettingsError:
        raise
    except ValueError as exc:  # pydantic-settings' own, e.g. a variable that is not valid JSON
        raise SettingsError(f"invalid settings in the environment: {exc}") from exc
    finally:
        _LAYERS.reset(token)
