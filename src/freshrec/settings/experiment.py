"""The ``[experiment]`` section: an A/B experiment between model variants (see
:mod:`freshrec.experiments`)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from freshrec.settings.sections import Section

ARM_NAME = r"^[a-z0-9][a-z0-9_-]{0,31}$"


class ArmSettings(Section):
    """One arm of an experiment: its share of users and how its model differs."""

    share: float = Field(gt=0, le=1)
    """The fraction of users served by this arm (the arms' shares add up to 1)."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Keys of ``[model]`` this arm sets otherwise (nested tables such as ``blend`` merge key by key)."""
    learn: dict[str, Any] = Field(default_factory=dict)
    """Keys of ``[learn]`` this arm sets otherwise."""


class ExperimentSettings(Section):
    """An A/B experiment between model variants on live traffic (see :mod:`freshrec.experiments`).

    Each arm whose model or learning settings differ from the defaults is learned by a
    model of its own beside the default one, from the same log; users are assigned to
    arms by a stable hash of their id and the experiment's name."""

    name: str = ""
    """The experiment's name; empty: no experiment."""
    arms: dict[str, ArmSettings] = Field(default_factory=dict)
    """The arms by name (at least two when ``name`` is set); the first is the control,
    the arm the others are compared with."""
    window_s: float = Field(default=1_800.0, gt=0)
    """A click, cart, purchase or good rating on an item of a served list counts for that
    list when it comes within this many seconds of the list and names it
    (``recommendation_id``)."""

    @model_validator(mode="after")
    def _arms(self) -> ExperimentSettings:
        if not self.name:
            if self.arms:
                raise ValueError("experiment.arms are set but experiment.name is empty")
            return self
        if not re.fullmatch(ARM_NAME, self.name):
            raise ValueError(f"experiment.name {self.name!r} must match {ARM_NAME}")
        if len(self.arms) < 2:
            raise ValueError(f"experiment {self.name!r} needs at least two arms, has {len(self.arms)}")
        for arm in self.arms:
            if not re.fullmatch(ARM_NAME, arm) or arm == "default":
                raise ValueError(f"experiment arm {arm!r} must match {ARM_NAME} and not be 'default'")
        total = sum(a.share for a in self.arms.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the shares of experiment {self.name!r}'s arms add up to {total:g}, not 1")
        return self
