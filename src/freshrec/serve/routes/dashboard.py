"""The dashboard: one page and its static files, reading ``/v1/stats``."""

from importlib import resources

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = resources.files("freshrec.serve") / "static"


def install(app: FastAPI) -> None:
    routes = APIRouter()

    @routes.get("/", include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    app.include_router(routes)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
