"""Work spaced by its own cost (:class:`freshrec.pacing.Paced`)."""

from __future__ import annotations

import pytest

from freshrec.pacing import Paced


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


def test_a_costly_run_puts_the_next_off_by_at_most_the_longest_wait() -> None:
    clock = Clock()
    paced = Paced(0.0, 0.1, clock=clock, longest_s=1.0)
    paced.ran(0.05)  # cheap: its cost over its share governs
    clock.now += 0.49
    assert not paced.due()
    clock.now += 0.01
    assert paced.due()
    paced.ran(0.5)  # 5 s by its share, but never more than a second
    assert paced.wait_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert paced.due()


@pytest.mark.parametrize(
    ("every_s", "share", "longest_s"), [(-1.0, 0.5, 9.0), (1.0, 0.0, 9.0), (1.0, 1.5, 9.0), (2.0, 0.5, 1.0)]
)
def test_a_pace_that_means_nothing_is_refused(every_s: float, share: float, longest_s: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Paced(every_s, share, longest_s=longest_s)
