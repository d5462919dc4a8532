"""Text to vectors: item text is understood through a language model."""

from __future__ import annotations

from freshrec.encoders.base import TextEncoder, build_encoder, encoder_key
from freshrec.encoders.cache import EmbedReport, embed_items

__all__ = ["EmbedReport", "TextEncoder", "build_encoder", "embed_items", "encoder_key"]
