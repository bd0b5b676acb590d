"""Serving the backbone's web apps (the console, the citizen's portal) with aiohttp: bind one to a
host and port, then either serve it until SIGTERM or Ctrl-C (`backbone console`, `backbone portal`)
or on a thread and event loop of its own beside other work (`backbone demo --keep-running`)."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from backbone.errors import BackboneError

START_TIMEOUT_S = 30.0

Start = Callable[[], Awaitable[tuple[web.AppRunner, str]]]


async def bind(app: web.Application, host: str, port: int, what: str, fix: str,
               shutdown_timeout_s: float) -> tuple[web.AppRunner, str]:
    """Serve `app` on host:port (0: a free port) in the running loop; returns the runner (its
    cleanup stops it) and the URL. A port that cannot be bound is a `BackboneError` naming `what`
    and how to fix it (`fix`)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BackboneError(f"cannot serve the {what} on {host}:{port}: {exc.strerror}; {fix}") from None
    bound = site._server.sockets[0].getsockname()[1] if site._server and site._server.sockets else port  # noqa: SLF001 - port 0
    return runner, f"http://{host}:{bound}/"


def serve_until_signalled(start: Start, started: Callable[[str], None]) -> None:
    """Start a server (`start`), tell its URL (`started`), serve until SIGTERM or SIGINT, then stop it."""

    async def serve() -> None:
        runner, url = await start()
        started(url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())


@dataclass(slots=True)
class Served:
    """A server running on a thread of its own (`serve_on_thread`)."""

    url: str
    _runner: web.AppRunner
    _loop: asyncio.AbstractEventLoop

    def stop(self, timeout_s: float) -> bool:
        """Stop serving (bounded: open event streams end at shutdown, a page in progress is cancelled);
        False when it did not stop within `timeout_s` (the thread is a daemon: the process exit ends it)."""
        try:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)


def serve_on_thread(name: str, start: Start) -> Served:
    """Start a server (`start`) on a daemon thread `name` with its own event loop; returns it once it
    serves. Raises what the start raised, or `TimeoutError` when it did not start in `START_TIMEOUT_S`."""
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["url"] = loop.run_until_complete(start())
        except Exception as exc:  # noqa: BLE001 - handed to the caller, which says why
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, name=name, daemon=True).start()
    ready.wait(START_TIMEOUT_S)
    if "url" not in started:
        raise started.get("error") or TimeoutError("timed out")
    return Served(started["url"], started["runner"], loop)
