"""What every command shares: the settings and how to open the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import typer
from rich.console import Console

from freshrec.encoders import TextEncoder, build_encoder, encoder_key
from freshrec.ingest.validate import Validator
from freshrec.settings import Settings
from freshrec.storage import Store, open_store

console = Console(stderr=True)
out = Console()


@dataclass
class App:
    settings: Settings

    def store(self) -> Store:
        return open_store(self.settings.store_url, self.settings.storage)

    def validator(self) -> Validator:
        return Validator(self.settings.ingest)

    def encoder(self) -> TextEncoder:
        with console.status(f"loading text encoder {self.settings.encoder.model} ..."):
            return build_encoder(self.settings.encoder)

    @property
    def encoder_key(self) -> str:
        return encoder_key(self.settings.encoder)


def app_of(ctx: typer.Context) -> App:
    state = ctx.find_root().obj
    assert isinstance(state, App)
    return state


def fail(message: str, code: int = 1) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
