"""The playground's HTTP routes on the entry service: `GET /graph` (the config's nodes and edges, typed) and
the page at `/playground` with its static files (services/playground/, no CDN: works offline).

A small Starlette app that services/graph.py mounts with `bentoml.asgi_app(..., path="/")`; BentoML's
PassiveMount hands it only the paths its routes match, so the API's own routes are untouched.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from graph.config import GraphConfig
from graph.entry.topology import describe

STATIC = Path(__file__).resolve().parent / "playground"
NO_CACHE = {"Cache-Control": "no-cache"}  # a rebuilt Bento's page is picked up at once


def playground_app(config: GraphConfig) -> Starlette:
    """`GET /graph` always; the page itself when the config's `playground.enabled` is true."""
    body = describe(config).model_dump_json()

    async def graph(_: Request) -> Response:
        return Response(body, media_type="application/json", headers=NO_CACHE)

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=NO_CACHE)

    async def slash(_: Request) -> Response:
        return RedirectResponse("../playground", status_code=308)

    routes: list[BaseRoute] = [Route("/graph", graph, methods=["GET"])]
    if config.playground.enabled:
        routes += [
            Route("/playground", page, methods=["GET"]),
            Route("/playground/", slash, methods=["GET"]),
            Mount("/playground/static", StaticFiles(directory=STATIC), name="playground-static"),
        ]
    return Starlette(routes=routes)
