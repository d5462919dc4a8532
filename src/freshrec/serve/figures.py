"""Live figures: what the learner last reported, sampled once a second into the
gauges of ``/metrics`` and the dashboard's series, and the ``/v1/status`` body."""

from __future__ import annotations

from typing import Any

from freshrec.serve.intake import Intake
from freshrec.serve.live import Live
from freshrec.serve.metrics import Metrics
from freshrec.serve.ranker import Ranker

COUNTED = ("reverted_spikes", "skipped_batches")
"""The learner's running counts that ``/metrics`` exports as counters."""


class Figures:
    def __init__(self, ranker: Ranker, intake: Intake, live: Live, metrics: Metrics):
        self.ranker = ranker
        self.intake = intake
        self.live = live
        self.metrics = metrics
        self.hygiene: dict[str, int] = {
            "quarantined_users": 0,
            "quarantined_events": 0,
            "reverted_spikes": 0,
            "skipped_batches": 0,
        }
        """The learner's figures as it last reported them (``Learner.figures`` in
        :mod:`freshrec.learn.online`)."""
        self._counted = dict.fromkeys(COUNTED, 0)
        """How much of the learner's running counts the Prometheus counters hold already."""
        self.learner_state = "starting"
        self.model_wanted = True
        """False while there is nothing to train on (the service is ready without a model)."""
        self._erasures_pending = 0

    @property
    def erasures_pending(self) -> int:
        """Deletions recorded in the store that the learner has not yet carried out, as
        the learner last reported (an API replica counts them in the store)."""
        return self._erasures_pending

    @erasures_pending.setter
    def erasures_pending(self, value: int) -> None:
        self._erasures_pending = value
        self.metrics.erasures_pending.set(value)  # at once: /metrics agrees with /v1/status

    def tick(self) -> dict[str, Any]:
        """Sample the gauges (called once a second while the service runs)."""
        scoring = self.ranker.scoring
        snapshot = scoring.snapshot
        lag, lag_s = self.intake.lag(snapshot.offset if snapshot is not None else None)
        hit_rate = self.live.hit_rate()
        m = self.metrics
        m.lag_events.set(lag)
        m.lag_seconds.set(lag_s)
        if hit_rate is not None:
            m.hit_rate.set(hit_rate)
        hygiene = self.hygiene
        m.quarantined_users.set(hygiene.get("quarantined_users", 0))
        m.quarantined_events.set(hygiene.get("quarantined_events", 0))
        for name, counter in zip(COUNTED, (m.reverted_spikes, m.skipped_batches), strict=True):
            now_at = int(hygiene.get(name, 0))
            if now_at > self._counted[name]:  # the learner's running count: a counter goes by the difference
                counter.inc(now_at - self._counted[name])
            self._counted[name] = max(self._counted[name], now_at)
        gauges: dict[str, Any] = {
            "lag_events": lag,
            "lag_seconds": round(lag_s, 3),
            "loss": snapshot.loss if snapshot is not None else None,
            "model_version": scoring.version,
            "hit_rate": hit_rate,
            "erasures_pending": self.erasures_pending,
            **hygiene,
        }
        self.live.gauges(gauges)
        return gauges

    def status(self) -> dict[str, Any]:
        scoring = self.ranker.scoring
        snap = scoring.snapshot
        return {
            "model_version": scoring.version,
            "model_created": snap.created if snap is not None else None,
            "learned_offset": snap.offset if snap is not None else 0,
            "log_offset": self.intake.head,
            "learner": self.learner_state,
            "catalog_items": int(scoring.view.alive.sum()),
            "model_served": snap is not None,
            "model_wanted": self.model_wanted,
            "hit_rate": self.live.hit_rate(),
            "hits_total": self.live.hits_total,
            "trials_total": self.live.trials_total,
            "erasures_pending": self.erasures_pending,
            **self.hygiene,
        }
