"""Prometheus metrics of the service; every name starts with ``freshrec_``.

Each service has its own registry (two servers in one test process must not
share counters).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Histogram bounds in seconds of requests and of the event loop's pauses."""
PUBLISH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 10.0)
"""Histogram bounds in seconds of a publish's build and lag: 75 ms sits under the 100 ms a
lag should stay below, so that a p99 read from the buckets can show that it does; and between
100 ms and a second, where a million items' deltas are built under load, there are more
(with the requests' bounds a p99 read ``<= 500 ms`` whether it was 260 or 500)."""


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Histogram(
            "freshrec_http_request_duration_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.events = Counter("freshrec_events_ingested", "Events stored, by type", ["type"], registry=r)
        self.experiment_lists = Counter(
            "freshrec_experiment_lists", "Lists served by an experiment's arm", ["experiment", "variant"], registry=r
        )
        self.experiment_attributed = Counter(
            "freshrec_experiment_attributed_events",
            "Events that named a list of an experiment's arm and counted for it",
            ["experiment", "variant"],
            registry=r,
        )
        self.experiment_hits = Counter(
            "freshrec_experiment_positive_events",
            "Positive events of an arm's users, by whether the item was in the last list served to them",
            ["experiment", "variant", "hit"],
            registry=r,
        )
        self.duplicates = Counter("freshrec_events_duplicate", "Events skipped as already stored", registry=r)
        self.rejected = Counter("freshrec_events_rejected", "Events refused by validation", registry=r)
        self.recommendations = Counter(
            "freshrec_recommendations", "Recommendation lists served, by source", ["source"], registry=r
        )
        self.shed = Counter(
            "freshrec_recommendations_shed",
            "Recommendation requests answered 503 for waiting longer than serve.shed_after_ms (over capacity)",
            registry=r,
        )
        self.lag_events = Gauge(
            "freshrec_learner_lag_events", "Stored events the served model has not learned", registry=r
        )
        self.lag_seconds = Gauge(
            "freshrec_learner_lag_seconds",
            "Age of the oldest stored event the served model has not learned",
            registry=r,
        )
        self.rejected_models = Counter(
            "freshrec_models_rejected",
            "Model snapshots refused as malformed or unsigned (the current one stays served)",
            ["source"],
            registry=r,
        )
        self.snapshots_received = Counter(
            "freshrec_model_snapshots_received",
            "Model snapshots received, whole or as deltas (see [serve] snapshot_full_s)",
            ["kind"],
            registry=r,
        )
        self.snapshot_bytes = Counter(
            "freshrec_model_snapshot_bytes",
            "Bytes of the model snapshots received, whole or as deltas",
            ["kind"],
            registry=r,
        )
        self.skipped_deltas = Counter(
            "freshrec_model_deltas_skipped",
            "Model deltas skipped because they apply to a snapshot this server did not get",
            registry=r,
        )
        self.failed_builds = Counter(
            "freshrec_model_builds_failed",
            "Model snapshots whose serving copy could not be built (the one before stays served)",
            registry=r,
        )
        self.model_served = Gauge(
            "freshrec_model_served",
            "1 once a learned model ranks (before: the text and popularity fallback)",
            registry=r,
        )
        self.model_version = Gauge("freshrec_model_version", "Checkpoint version of the served model", registry=r)
        self.model_updates = Gauge(
            "freshrec_model_updates", "Online updates of the served model since its checkpoint", registry=r
        )
        self.training_loss = Gauge("freshrec_training_loss", "Loss of the learner's last micro-batch", registry=r)
        self.loop_lag = Histogram(
            "freshrec_event_loop_lag_seconds",
            "How much later than asked the server's event loop ran a 10 ms timer: its pauses",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_seconds = Histogram(
            "freshrec_model_publish_seconds",
            "Time to make a new model snapshot servable",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.publish_lag_seconds = Histogram(
            "freshrec_model_publish_lag_seconds",
            "From the learner's snapshot (the end of its micro-batch) to serving's swap",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.receive_lag_seconds = Histogram(
            "freshrec_model_receive_lag_seconds",
            "From the learner's snapshot to its parse by serving: the send and the parse, the part of the publish "
            "lag before the build",
            buckets=PUBLISH_BUCKETS,
            registry=r,
        )
        self.catalog_items = Gauge("freshrec_catalog_items", "Recommendable items", registry=r)
        self.candidate_index_items = Gauge(
            "freshrec_candidate_index_items",
            "Items in the candidate index that requests take candidates from (0: none yet, every item is scored)",
            registry=r,
        )
        self.candidate_index_recall = Gauge(
            "freshrec_candidate_index_recall",
            "Share of the exact top 10 the candidate index found among its candidates, measured at its build "
            "on the latest requests (NaN: not measured yet)",
            registry=r,
        )
        self.candidate_index_probes = Gauge(
            "freshrec_candidate_index_probes",
            "Share of the candidate index's lists a search scans, as its build calibrated it (0: no index): "
            "near 1, the served vectors have drifted apart and each request costs more",
            registry=r,
        )
        self.candidate_index_builds = Gauge(
            "freshrec_candidate_index_builds", "Candidate indexes built since the server started", registry=r
        )
        self.candidate_index_updated = Gauge(
            "freshrec_candidate_index_updated_rows",
            "Rows of the candidate index coded anew from the served vectors since the server started (the rows "
            "the learner moved further than the codes' error, between builds)",
            registry=r,
        )
        self.item_tower_age = Gauge(
            "freshrec_item_tower_age_seconds",
            "Seconds the item tower served (each item's text to its vector) has been served: kept while a "
            "candidate index is, up to [serve.retrieval] tower_s",
            registry=r,
        )
        self.quarantined_users = Gauge(
            "freshrec_quarantined_users", "Users above the event rate limit: stored, not trained on", registry=r
        )
        self.quarantined_events = Gauge(
            "freshrec_quarantined_events", "Events the learner did not train on (quarantined users)", registry=r
        )
        self.reverted_spikes = Counter(
            "freshrec_reverted_spikes",
            "Learner micro-batches whose loss spiked: the model went back to its last good state "
            "and learned the batches since again, without the spiking one",
            registry=r,
        )
        self.skipped_batches = Counter(
            "freshrec_skipped_batches",
            "Learner micro-batches skipped because their loss or gradients were not finite",
            registry=r,
        )
        self.erasures_pending = Gauge(
            "freshrec_erasures_pending",
            "Deleted users whose erasure from the learner's model and checkpoints is not yet done",
            registry=r,
        )
        self.hit_rate = Gauge(
            "freshrec_online_hit_rate", "Share of positive feedback on items just served (last 5 minutes)", registry=r
        )
