"""Work spaced by its own cost (:class:`freshrec.pacing.Paced`) or held to a share of the
time (:class:`freshrec.pacing.Budgeted`)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from freshrec.pacing import Budgeted, Paced


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cheap_work_is_due_at_its_interval_and_costly_work_at_its_cost_over_its_share() -> None:
    clock = Clock()
    paced = Paced(60.0, 0.02, due_now=False, clock=clock)
    assert not paced.due()
    clock.now += 60.0
    assert paced.due()
    paced.ran(0.5)  # a fiftieth of 60 s is 1.2 s: the interval governs
    clock.now += 59.9
    assert not paced.due()
    clock.now += 0.1
    assert paced.due()
    paced.ran(3.6)  # 3.6 s at a share of 0.02: due 180 s later
    clock.now += 179.0
    assert not paced.due()
    clock.now += 1.0
    assert paced.due()


def test_without_an_interval_it_is_due_at_once_and_then_by_cost_alone() -> None:
    clock = Clock()
    paced = Paced(0.0, 0.05, clock=clock)
    assert paced.due()
    paced.ran(0.0)
    assert paced.due()
    paced.ran(5.0)
    clock.now += 99.0
    assert not paced.due() and paced.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert paced.due() and paced.wait_s() == 0.0


@pytest.mark.parametrize(("every_s", "share"), [(-1.0, 0.5), (1.0, 0.0), (1.0, 1.5)])
def test_a_pace_that_means_nothing_is_refused(every_s: float, share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Paced(every_s, share)


def test_runs_within_the_budget_are_due_at_once_and_the_one_that_spends_it_waits_for_its_share() -> None:
    clock = Clock()
    budget = Budgeted(0.1, 0.1, clock=clock)
    for _ in range(3):  # 90 ms of a 100 ms burst: the next is due at once
        assert budget.due()
        budget.ran(0.03)
    assert budget.due()
    budget.ran(0.03)  # 20 ms over: 200 ms at a tenth of the time
    assert not budget.due() and budget.wait_s() == pytest.approx(0.2)
    clock.now += 0.2
    assert budget.due()
    clock.now += 3600.0  # a quiet hour gives back the burst, no more
    for _ in range(3):
        budget.ran(0.03)
    assert budget.due()
    budget.ran(0.03)
    assert not budget.due()


def test_a_costly_run_puts_the_next_off_by_at_most_the_longest_wait() -> None:
    clock = Clock()
    budget = Budgeted(0.1, 0.0, longest_s=1.0, clock=clock)
    budget.ran(0.05)  # cheap: its cost over its share governs
    clock.now += 0.49
    assert not budget.due()
    clock.now += 0.01
    assert budget.due()
    budget.ran(0.5)  # 5 s by its share, but never more than a second
    assert budget.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert budget.due()


@given(
    st.lists(st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 0.3)), max_size=60),
    st.floats(0.01, 1.0),
    st.floats(0.0, 0.5),
)
def test_runs_as_they_come_take_at_most_their_share_of_the_time_beyond_the_burst_and_the_last_run(
    runs: list[tuple[float, float]], share: float, burst_s: float
) -> None:
    """Work arriving after ``gap`` seconds and taking ``cost`` runs when it is due, else waits."""
    clock = Clock()
    budget = Budgeted(share, burst_s, clock=clock)
    started, spent = clock.now, 0.0
    for gap, cost in runs:
        clock.now += gap
        if not budget.due():
            clock.now += budget.wait_s()
            assert budget.due()
        clock.now += cost
        budget.ran(cost)
        spent += cost
        assert spent <= share * (clock.now - started) + burst_s + cost + 1e-9


@pytest.mark.parametrize(
    ("share", "burst_s", "longest_s"), [(0.0, 0.1, 1.0), (1.5, 0.1, 1.0), (0.1, -1.0, 1.0), (0.1, 0.1, 0.0)]
)
def test_a_budget_that_means_nothing_is_refused(share: float, burst_s: float, longest_s: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Budgeted(share, burst_s, longest_s)
