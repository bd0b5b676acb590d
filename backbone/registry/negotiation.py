"""Content negotiation as Confluent's registry does it: answers in the registry's media type, or in
the one the client's `Accept` header prefers among those it serves; 406 when it accepts none."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from backbone.registry import errors

V1 = "application/vnd.schemaregistry.v1+json"
# What the registry answers in, its preferred first (Confluent: v1, then the unversioned type, then plain JSON).
SERVED = (V1, "application/vnd.schemaregistry+json", "application/json")


def _accepted(header: str) -> list[tuple[float, int, str]]:
    """(quality, position, media range) of each entry of an Accept header, best first."""
    ranges = []
    for position, part in enumerate(header.split(",")):
        media, *params = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((quality, position, media.lower()))
    return sorted(ranges, key=lambda item: (-item[0], item[1]))


def choose(header: str | None) -> str | None:
    """The media type to answer in for an `Accept` header (no header: the registry's own); None: 406."""
    if not header or not header.strip():
        return V1
    for quality, _, media in _accepted(header):
        if quality <= 0:
            continue
        if media in ("*/*", "application/*"):
            return V1
        if media in SERVED:
            return media
    return None


def negotiation_middleware() -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]]:
    """Refuse (406) a request whose `Accept` names none of `SERVED`; otherwise answer in its choice."""

    @web.middleware
    async def negotiate(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        media = choose(request.headers.get("Accept"))
        if media is None:
            refusal = errors.ApiError(406, errors.NOT_ACCEPTABLE, f"HTTP 406 Not Acceptable: the registry answers in {', '.join(SERVED)}")
            return web.json_response(refusal.body(), status=406, content_type=V1)
        response = await handler(request)  # error answers too: this middleware is outside the one making them
        if isinstance(response, web.Response) and response.content_type in SERVED:
            response.content_type = media
        return response

    return negotiate
