"""A/B experiments between model variants: who gets which arm, and how sure a difference is.

Users are assigned to arms by a hash of the experiment's name and their id, so a
user stays in one arm across requests, replicas and restarts, and the same user
lands independently in the arms of two experiments. Nothing is stored per user.

The figures compared are proportions (lists that led to a click, events that hit
the last list served), so their uncertainty is given as Wilson score intervals,
which stay inside [0, 1] and keep their coverage at the small counts of an
experiment's first hours, where the textbook normal interval does not; the
difference between two arms is given with Newcombe's hybrid score interval built
from the two Wilson intervals (Newcombe 1998, method 10).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass

from freshrec.settings import ExperimentSettings

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95% interval."""
DEFAULT_VARIANT = "default"
"""The variant of lists served by the default model (no experiment running, or not in one)."""


def assign(experiment: ExperimentSettings, user_id: str) -> str:
    """The arm ``user_id`` belongs to: the arms' shares laid end to end over [0, 1),
    in the order they are configured, and a point drawn by hashing."""
    digest = hashlib.blake2b(f"{experiment.name}\x1f{user_id}".encode("utf-8", "surrogatepass"), digest_size=8)
    point = int.from_bytes(digest.digest(), "big") / 2**64
    edge = 0.0
    arms = list(experiment.arms.items())
    for name, arm in arms:
        edge += arm.share
        if point < edge:
            return name
    return arms[-1][0]  # the shares' rounding left the last sliver of [0, 1)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """The Wilson score interval of a proportion; [0, 1] when nothing was tried."""
    if trials <= 0:
        return Interval(0.0, 1.0)
    if not 0 <= successes <= trials:
        raise ValueError(f"successes ({successes}) must lie in [0, trials ({trials})]")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    # at 0 or all successes a bound is exactly 0 or 1, which rounding would miss
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(low, high)


def difference(s1: int, n1: int, s2: int, n2: int, z: float = Z95) -> tuple[float, Interval]:
    """``p1 - p2`` and Newcombe's hybrid score interval for it."""
    p1 = s1 / n1 if n1 else 0.0
    p2 = s2 / n2 if n2 else 0.0
    a, b = wilson(s1, n1, z), wilson(s2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - a.low) ** 2 + (b.high - p2) ** 2)
    high = d + math.sqrt((a.high - p1) ** 2 + (p2 - b.low) ** 2)
    return d, Interval(max(-1.0, low), min(1.0, high))


@dataclass
class ArmCounts:
    """What one arm served and what came of it."""

    lists: int = 0
    """Lists served by the arm."""
    clicked: int = 0
    """Lists with at least one attributed event."""
    attributed: int = 0
    """Events that named a list of the arm and counted for it."""
    hits: int = 0
    """Positive events of the arm's users on an item of the last list served to them."""
    trials: int = 0
    """Positive events of the arm's users who had been served a list."""

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, data: Mapping[str, object]) -> ArmCounts:
        """Counts read back from JSON; anything but non-negative integers is refused."""
        values = {}
        for name in (f.name for f in dataclasses.fields(cls)):
            value = data.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"experiment count {name!r} must be a non-negative integer, got {value!r}")
            values[name] = value
        counts = cls(**values)
        if counts.clicked > counts.lists or counts.hits > counts.trials:
            raise ValueError("experiment counts: more clicked lists than lists, or more hits than trials")
        return counts


def report(arms: Mapping[str, ArmCounts], control: str) -> dict[str, dict[str, object]]:
    """Per arm: the counts, click-through and online hit rate with 95% Wilson intervals,
    and (for the arms other than ``control``) the click-through difference from the
    control with its 95% interval and whether that interval excludes zero."""
    out: dict[str, dict[str, object]] = {}
    base = arms[control]
    for name, c in arms.items():
        ctr, hit = wilson(c.clicked, c.lists), wilson(c.hits, c.trials)
        row: dict[str, object] = {
            **c.as_dict(),
            "click_through": c.clicked / c.lists if c.lists else None,
            "click_through_interval": [ctr.low, ctr.high],
            "hit_rate": c.hits / c.trials if c.trials else None,
            "hit_rate_interval": [hit.low, hit.high],
        }
        if name != control:
            d, interval = difference(c.clicked, c.lists, base.clicked, base.lists)
            row["difference"] = d
            row["difference_interval"] = [interval.low, interval.high]
            row["significant"] = bool(c.lists and base.lists and (interval.low > 0 or interval.high < 0))
        out[name] = row
    return out
