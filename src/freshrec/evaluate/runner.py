"""Run models through the replay and measure them: accuracy, speed, memory.

Each model runs in a fresh child process by default, so that its peak
resident memory is its own and one model's caches cannot flatter another's
speed. The child receives the already loaded log.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from freshrec.evaluate.log import EventLog
from freshrec.evaluate.metrics import Summary, summarise
from freshrec.evaluate.replay import Step, replay, warmup_size
from freshrec.evaluate.retrain import PeriodicRetrain
from freshrec.model.base import Recommender
from freshrec.model.baselines import Popularity, RecentPopularity, Transitions
from freshrec.runtime import die_with_parent
from freshrec.settings import BlendSettings, OptimizerSettings, Settings


@dataclass(frozen=True)
class Inputs:
    """What a model may need besides the log: settings and the catalog's text vectors."""

    settings: Settings
    text: np.ndarray | None = None


def catalog_text(log: EventLog, settings: Settings) -> np.ndarray:
    """The catalog's text vectors from the configured encoder, cached in the data directory."""
    from freshrec.encoders import build_encoder, encoder_key
    from freshrec.encoders.cache import encode_cached

    return encode_cached(
        log.catalog.texts,
        encoder_key(settings.encoder),
        lambda: build_encoder(settings.encoder),
        settings.data_dir / "cache",
    )


def _freshrec(**overrides: Any) -> Callable[[EventLog, Inputs], Recommender]:
    """The freshrec model with some settings changed (for ablations)."""

    def build(log: EventLog, inputs: Inputs) -> Recommender:
        from freshrec.learn.recommender import build_freshrec

        s = inputs.settings
        model = s.model.model_copy(update=overrides.get("model", {}))
        learn = s.learn.model_copy(update=overrides.get("learn", {}))
        if overrides.get("private"):
            learn = learn.model_copy(update={"privacy": learn.privacy.model_copy(update={"enabled": True})})
        text = inputs.text if model.use_text else None
        return build_freshrec(log.n_items, text, model, learn, s.feedback, s.ingest)

    return build


def _without(*features: str) -> Callable[[EventLog, Inputs], Recommender]:
    """The freshrec model whose blend leaves ``features`` out."""

    def build(log: EventLog, inputs: Inputs) -> Recommender:
        blend = inputs.settings.model.blend.model_copy(update={"exclude": features})
        return _freshrec(model={"blend": blend})(log, inputs)

    return build


BLEND_ABLATIONS = {
    "network": ("network",),
    "transitions": ("transitions",),
    "co-occurrence": ("co-occurrence",),
    "text-similarity": ("text-similarity", "text-nearest"),
    "learned-nearest": ("learned-nearest",),
    "popularity": (
        *(f"popularity-{int(h)}" for h in BlendSettings().half_lives),
        *(f"recency-{int(h // 86_400)}d" for h in BlendSettings().time_half_lives),
    ),
    "age": ("untouched", "age"),
}
"""Ablations of the blend: ``freshrec-no-NAME`` leaves these features out."""

MODELS: dict[str, Callable[[EventLog, Inputs], Recommender]] = {
    "pop": lambda log, _: Popularity(log.n_items),
    "recent-pop": lambda log, _: RecentPopularity(log.n_items),
    "transitions": lambda log, _: Transitions(log.n_items),
    "freshrec": _freshrec(),
}
ABLATIONS: dict[str, Callable[[EventLog, Inputs], Recommender]] = {
    "freshrec-frozen": _freshrec(learn={"online": False}),
    "freshrec-retrain": lambda log, inputs: PeriodicRetrain(lambda: _freshrec()(log, inputs), len(log)),
    "freshrec-net": _freshrec(model={"blend": BlendSettings(enabled=False)}),
    **{f"freshrec-no-{name}": _without(*features) for name, features in BLEND_ABLATIONS.items()},
    "freshrec-no-seed": _freshrec(model={"new_item_seed": 0.0}),
    "freshrec-no-last-item": _freshrec(model={"last_item_weight": None}),
    "freshrec-ids-only": _freshrec(model={"use_text": False}),
    "freshrec-text-only": _freshrec(model={"use_ids": False}),
    "freshrec-user-ids": _freshrec(model={"use_user_ids": True}),
    "freshrec-ftrl": _freshrec(learn={"embeddings": OptimizerSettings(name="ftrl", lr=0.05)}),
    "freshrec-adam": _freshrec(learn={"embeddings": OptimizerSettings(name="adam", lr=0.002)}),
    "freshrec-adamw": _freshrec(learn={"dense": OptimizerSettings(name="adamw", lr=0.002, weight_decay=0.01)}),
    "freshrec-adagrad": _freshrec(learn={"dense": OptimizerSettings(name="adagrad", lr=0.05)}),
    # DP-SGD online updates; the noise comes from [learn.privacy] (FRESHREC_LEARN__PRIVACY__NOISE_MULTIPLIER)
    "freshrec-dp": _freshrec(private=True),
}
NEEDS_TEXT = {"freshrec", *ABLATIONS}
EXPERIMENT = "experiment:"
"""``experiment:NAME`` names the configured experiment's arms, each the freshrec model
with its arm's settings: ``experiment:NAME/ARM`` (:func:`expand_experiments`)."""


class UnknownModel(ValueError):
    pass


def expand_experiments(names: list[str], settings: Settings) -> list[str]:
    """``names`` with ``experiment:NAME`` replaced by one ``experiment:NAME/ARM`` per arm of
    the configured experiment ``[experiment]``, so that its variants are replayed under
    the protocol beside the baselines, as they are compared on live traffic."""
    out = []
    for name in names:
        if name.startswith(EXPERIMENT) and "/" not in name:
            wanted = name[len(EXPERIMENT) :]
            if wanted != settings.experiment.name or not wanted:
                configured = settings.experiment.name or "none"
                raise UnknownModel(f"no experiment {wanted!r} in the settings ([experiment] name: {configured})")
            out += [f"{name}/{arm}" for arm in settings.experiment.arms]
        else:
            out.append(name)
    return out


def needs_text(name: str) -> bool:
    return name in NEEDS_TEXT or name.startswith(EXPERIMENT)


def _arm(name: str) -> Callable[[EventLog, Inputs], Recommender]:
    """The freshrec model with the settings of experiment arm ``experiment:NAME/ARM``."""
    experiment, _, arm = name[len(EXPERIMENT) :].partition("/")

    def build(log: EventLog, inputs: Inputs) -> Recommender:
        if experiment != inputs.settings.experiment.name or arm not in inputs.settings.experiment.arms:
            raise UnknownModel(f"{name!r} is not an arm of the configured experiment")
        return _freshrec()(log, Inputs(inputs.settings.for_arm(arm), inputs.text))

    return build


def builder(name: str) -> Callable[[EventLog, Inputs], Recommender]:
    if name.startswith(EXPERIMENT) and "/" in name:
        return _arm(name)
    return {**MODELS, **ABLATIONS}[name]


def check_models(names: list[str]) -> None:
    for name in names:
        if name not in MODELS and name not in ABLATIONS and not (name.startswith(EXPERIMENT) and "/" in name):
            raise UnknownModel(
                f"unknown model {name!r}; available: {', '.join([*MODELS, *ABLATIONS])}, experiment:NAME"
            )


@dataclass(frozen=True)
class ModelRun:
    name: str
    summary: Summary
    wall_s: float
    events_per_s: float
    peak_rss_mb: float
    params: dict[str, Any]


def run_model(
    name: str, log: EventLog, inputs: Inputs, warmup: float = 0.2, k: int = 10, progress: bool = False
) -> ModelRun:
    """Replay ``log`` through a freshly built model, in this process."""
    check_models([name])
    start = time.perf_counter()
    model = builder(name)(log, inputs)
    steps = replay(model, log, warmup=warmup, k=k)
    scored = len(log) - warmup_size(len(log), warmup)
    summary = summarise(_progress(steps, scored, name, progress), log.n_items, k=k)
    wall = time.perf_counter() - start
    return ModelRun(name, summary, wall, len(log) / wall, peak_rss_mb(), model.params())


def peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MiB.

    ``VmHWM`` rather than ``ru_maxrss``: across fork and exec Linux carries
    ``ru_maxrss`` over from the parent, so a child started by ``spawn``
    would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _progress(steps: Iterator[Step], total: int, name: str, enabled: bool) -> Iterator[Step]:
    with tqdm(total=total, unit="event", desc=f"replay {name}", disable=not enabled, smoothing=0.1) as bar:
        for step in steps:
            bar.update(len(step.events))
            yield step


def evaluate(
    names: list[str],
    log: EventLog,
    warmup: float = 0.2,
    k: int = 10,
    isolate: bool = True,
    progress: bool = False,
    inputs: Inputs | None = None,
) -> list[ModelRun]:
    """Run each model on the same log, one after the other."""
    check_models(names)
    warmup_size(len(log), warmup)  # validates the share before any work
    inputs = inputs or Inputs(Settings())
    if any(needs_text(name) for name in names) and inputs.text is None and inputs.settings.model.use_text:
        raise ValueError("the freshrec models need the catalog's text vectors (Inputs.text)")
    if not isolate:
        return [run_model(name, log, inputs, warmup, k, progress) for name in names]
    runs = []
    context = multiprocessing.get_context("spawn")
    for name in names:
        # the worker dies with this process, also when it is killed and cannot shut the pool down
        with ProcessPoolExecutor(max_workers=1, mp_context=context, initializer=die_with_parent) as pool:
            runs.append(pool.submit(run_model, name, log, inputs, warmup, k, progress).result())
    return runs
