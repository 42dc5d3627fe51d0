"""The browser demo at ``/``: static files shipped inside the package, so it works with no network at all."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["DEMO_DIR", "mount_demo"]

DEMO_DIR = Path(__file__).parent / "static" / "demo"

demo_router = APIRouter(include_in_schema=False)


@demo_router.get("/")
async def demo_page() -> FileResponse:
    """The page; its script and style load from ``/demo/`` relative to it."""
    return FileResponse(DEMO_DIR / "index.html", media_type="text/html")


def mount_demo(app: FastAPI) -> None:
    """``/`` and its assets under ``/demo``; other unknown paths keep the API's JSON 404."""
    app.include_router(demo_router)
    app.mount("/demo", StaticFiles(directory=DEMO_DIR), name="demo")
