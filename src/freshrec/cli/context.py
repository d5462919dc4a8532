"""What every command shares: the settings and how to open the store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

import typer
from rich.console import Console

from freshrec.datasets.files import DataFileError
from freshrec.encoders import TextEncoder, build_encoder, embed_items, encoder_key
from freshrec.ingest.importer import ImportAborted
from freshrec.ingest.validate import Validator
from freshrec.settings import Settings
from freshrec.storage import Store, open_store

console = Console(stderr=True)
out = Console()


@dataclass
class App:
    settings: Settings

    @contextmanager
    def store(self) -> Iterator[Store]:
        """The configured store, closed on exit; import errors end the command cleanly."""
        store = open_store(self.settings.store_url, self.settings.storage)
        try:
            yield store
        except (DataFileError, ImportAborted) as exc:
            fail(str(exc))
        finally:
            store.close()

    def validator(self) -> Validator:
        return Validator(self.settings.ingest)

    def encoder(self) -> TextEncoder:
        with console.status(f"loading text encoder {self.settings.encoder.model} ..."):
            return build_encoder(self.settings.encoder)

    @property
    def encoder_key(self) -> str:
        return encoder_key(self.settings.encoder)

    def embed(self, store: Store) -> None:
        """Encode the item texts that have no cached embedding yet, with a progress bar."""
        if not store.items_to_embed(self.encoder_key):
            console.print("embeddings: all item texts already encoded")
            return
        result = embed_items(store, self.encoder(), progress=True)
        console.print(
            f"embeddings: encoded {result.encoded:,} item texts in {result.seconds:.1f} s "
            f"({result.per_second:,.0f} items/s)"
        )


def app_of(ctx: typer.Context) -> App:
    state = ctx.find_root().obj
    assert isinstance(state, App)
    return state


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
