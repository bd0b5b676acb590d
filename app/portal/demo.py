"""The portal in `backbone demo --keep-running`: served on its own thread beside the console (port
8091, or a free one when that is taken), with a one-time sign-in link printed for the demo's citizen
(the person whose consent withdrawal the demo shows), so the portal can be tried at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

DEMO_PORT = 8091


def start_portal(runner: Any, subject: str, say: Callable[[str], None]) -> Callable[[], None] | None:
    """Serve the portal over the demo's stack; returns its stopper (None, said why, when it cannot start)."""
    from app.portal.links import issue, link_key, link_url
    from app.portal.server import start
    from backbone.stack.embedded import port_in_use

    settings = runner.settings
    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["runner"], started["url"] = loop.run_until_complete(start(
                settings, "127.0.0.1", 0 if port_in_use(DEMO_PORT) else DEMO_PORT, oversight=getattr(runner, "oversight_settings", None)))
        except Exception as exc:  # noqa: BLE001 - the demo goes on without its portal, saying why
            started["error"] = exc
            ready.set()
            return
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, name="portal", daemon=True).start()
    ready.wait(30)
    if "url" not in started:
        say(f"portal not started: {started.get('error', 'timed out')}")
        return None
    say(f"  citizen's portal: {started['url']}")
    if subject:
        url = link_url(started["url"], issue(link_key(settings.data_dir), subject))
        say(f"    the demo citizen's sign-in link (once, 15 minutes; more: backbone portal link --subject {subject}): {url}")

    def stop() -> None:
        try:
            asyncio.run_coroutine_threadsafe(started["runner"].cleanup(), loop).result(15)
        except TimeoutError:
            say("the portal did not stop in time; leaving it to the process exit")
        finally:
            loop.call_soon_threadsafe(loop.stop)

    return stop
