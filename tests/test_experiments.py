from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshrec.experiments import ArmCounts, assign, difference, report, wilson
from freshrec.settings import ExperimentSettings, Settings


def experiment(**shares: float) -> ExperimentSettings:
    return ExperimentSettings(name="colours", arms={arm: {"share": share} for arm, share in shares.items()})


def test_users_stay_in_their_arm_and_arms_get_their_shares() -> None:
    config = experiment(control=0.7, blue=0.2, red=0.1)
    arms = [assign(config, f"user-{n}") for n in range(20_000)]
    assert arms == [assign(config, f"user-{n}") for n in range(20_000)]  # stable
    counts = Counter(arms)
    for arm, share in (("control", 0.7), ("blue", 0.2), ("red", 0.1)):
        sd = math.sqrt(share * (1 - share) / 20_000)
        assert abs(counts[arm] / 20_000 - share) < 4 * sd, counts
    # another experiment's name draws independently: about half of control stays control
    other = ExperimentSettings(name="sizes", arms=config.arms)
    moved = sum(assign(other, f"user-{n}") != arm for n, arm in enumerate(arms))
    assert 0.3 * 20_000 < moved < 0.6 * 20_000


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998), table I: 81/263 -> 0.2553-0.3662; 0/10 -> 0-0.2775
    a = wilson(81, 263)
    assert (round(a.low, 4), round(a.high, 4)) == (0.2553, 0.3662)
    b = wilson(0, 10)
    assert (round(b.low, 4), round(b.high, 4)) == (0.0, 0.2775)
    assert wilson(0, 0).low == 0.0 and wilson(0, 0).high == 1.0
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe (1998), table II, example (a): 56/70 - 48/80 = 0.2, method 10: 0.0524 to 0.3339
    d, interval = difference(56, 70, 48, 80)
    assert d == pytest.approx(0.2)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.0524, 0.3339)


@given(st.integers(0, 10_000), st.integers(1, 10_000))
def test_wilson_interval_holds_the_estimate_inside_zero_one(successes: int, trials: int) -> None:
    successes = min(successes, trials)
    interval = wilson(successes, trials)
    assert 0.0 <= interval.low <= successes / trials <= interval.high <= 1.0
    wider = wilson(successes * 4, trials * 4)  # four times the data: a narrower interval
    assert wider.high - wider.low <= interval.high - interval.low + 1e-12


@given(st.integers(0, 500), st.integers(1, 500), st.integers(0, 500), st.integers(1, 500))
def test_the_difference_interval_holds_the_difference(s1: int, n1: int, s2: int, n2: int) -> None:
    s1, s2 = min(s1, n1), min(s2, n2)
    d, interval = difference(s1, n1, s2, n2)
    assert -1.0 <= interval.low <= d <= interval.high <= 1.0


def test_report_flags_a_significant_difference_only_when_the_interval_excludes_zero() -> None:
    arms = {"a": ArmCounts(lists=1_000, clicked=100), "b": ArmCounts(lists=1_000, clicked=160)}
    rows = report(arms, "a")
    assert rows["b"]["significant"] is True and "difference" not in rows["a"]
    assert rows["b"]["difference"] == pytest.approx(0.06)
    close = report({"a": ArmCounts(lists=100, clicked=10), "b": ArmCounts(lists=100, clicked=12)}, "a")
    assert close["b"]["significant"] is False
    empty = report({"a": ArmCounts(), "b": ArmCounts()}, "a")
    assert empty["a"]["click_through"] is None and empty["b"]["significant"] is False


def test_counts_read_back_are_validated() -> None:
    assert ArmCounts.of({"lists": 3, "clicked": 1}).clicked == 1
    for bad in ({"lists": -1}, {"lists": 1, "clicked": 2}, {"hits": "3"}, {"trials": True}):
        with pytest.raises(ValueError):
            ArmCounts.of(bad)


def test_experiment_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="at least two arms"):
        experiment(only=1.0)
    with pytest.raises(ValueError, match="add up to"):
        experiment(a=0.5, b=0.6)
    with pytest.raises(ValueError, match="must match"):
        experiment(default=0.5, b=0.5)
    with pytest.raises(ValueError, match="history_lengthh"):
        Settings(
            experiment={
                "name": "x",
                "arms": {"a": {"share": 0.5}, "b": {"share": 0.5, "model": {"history_lengthh": 3}}},
            }
        )
    s = Settings(
        experiment={
            "name": "x",
            "arms": {"a": {"share": 0.5}, "b": {"share": 0.5, "model": {"history_length": 5, "blend": {"lr": 0.1}}}},
        }
    )
    assert not s.arm_differs("a") and s.arm_differs("b")
    b = s.for_arm("b")
    assert b.model.history_length == 5 and b.model.blend.lr == 0.1
    assert b.model.blend.window == s.model.blend.window  # nested tables merge key by key
    assert b.store_url == s.store_url and b.data_dir == s.data_dir / "arms" / "b"
