"""Stores behind one protocol, chosen by URL."""

from __future__ import annotations

from freshrec.settings import StorageSettings
from freshrec.storage.base import AppendResult, Counts, Store, UpsertResult, identity, iter_log, redact
from freshrec.storage.sqlite import SQLiteStore

__all__ = [
    "AppendResult",
    "Counts",
    "SQLiteStore",
    "Store",
    "UpsertResult",
    "identity",
    "iter_log",
    "open_store",
    "redact",
]


def open_store(url: str, settings: StorageSettings | None = None) -> Store:
    """Open the store a URL names: ``sqlite:///path/to/file.db``, ``sqlite:///:memory:``
    or ``postgresql://user@host:port/database[?schema=name]``."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"), settings)
    if url.startswith(("postgresql://", "postgres://")):
        from freshrec.storage.postgres import PostgresStore  # psycopg is loaded only when used

        return PostgresStore(url, settings)
    scheme = url.split("://", 1)[0] if "://" in url else url
    raise ValueError(f"unsupported store URL scheme {scheme!r}; expected sqlite:///PATH or postgresql://HOST/DATABASE")
