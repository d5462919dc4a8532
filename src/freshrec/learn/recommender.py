"""The freshrec model wired from settings: the network (seeded without touching
torch's global generator), its trainer, the replay buffer and, with privacy on,
the private steps, handed to :class:`~freshrec.model.freshrec.FreshRec`."""

from __future__ import annotations

import numpy as np
import torch

from freshrec.ingest.feedback import FeedbackWeights
from freshrec.learn.buffer import ReplayBuffer
from freshrec.learn.trainer import Trainer
from freshrec.model.freshrec import FreshRec, PrivateTraining
from freshrec.model.sequence import SequenceNet
from freshrec.settings import FeedbackSettings, IngestSettings, LearnSettings, ModelSettings


def build_freshrec(
    n_items: int,
    text: np.ndarray | None,
    model: ModelSettings | None = None,
    learn: LearnSettings | None = None,
    feedback: FeedbackSettings | None = None,
    scale: IngestSettings | None = None,
    progress: bool = False,
) -> FreshRec:
    """A new model over ``n_items`` items (codes ``0 .. n_items - 1``) with ``text``,
    their ``(n_items, width)`` frozen text embeddings, or ``None`` (IDs only)."""
    model = model or ModelSettings()
    learn = learn or LearnSettings()
    scale = scale or IngestSettings()
    text_tensor = torch.from_numpy(np.asarray(text, dtype=np.float32)) if text is not None else None
    with torch.random.fork_rng(devices=[]):  # the same seed gives the same network; the caller's RNG is untouched
        torch.manual_seed(model.seed)
        net = SequenceNet(n_items, text_tensor, model, rating_scale=scale.rating_max)
    trainer = Trainer(net, learn, FeedbackWeights(feedback or FeedbackSettings(), scale), model.seed)
    private: PrivateTraining | None = None
    if learn.privacy.enabled:
        from freshrec.learn.privacy import PrivateSteps  # Opacus takes seconds to import

        private = PrivateSteps(trainer, learn.privacy, learn.batch_size)
    buffer = ReplayBuffer(learn.replay_capacity, seed=model.seed)
    return FreshRec(net, trainer, buffer, model, learn, text, private, progress)
