"""The portal in `backbone demo --keep-running`: served on its own thread beside the console (port
8091, or a free one when that is taken), with a one-time sign-in link printed for the demo's citizen
(the person whose consent withdrawal the demo shows), so the portal can be tried at once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DEMO_PORT = 8091


def start_portal(runner: Any, subject: str, say: Callable[[str], None]) -> Callable[[], None] | None:
    """Serve the portal over the demo's stack; returns its stopper (None, said why, when it cannot start)."""
    from app.portal.links import issue, link_key, link_url
    from app.portal.server import start
    from app.serving import serve_on_thread
    from backbone.stack.embedded import port_in_use

    settings = runner.settings
    port = 0 if port_in_use(DEMO_PORT) else DEMO_PORT
    try:
        served = serve_on_thread("portal", lambda: start(settings, "127.0.0.1", port, oversight=getattr(runner, "oversight_settings", None)))
    except Exception as exc:  # noqa: BLE001 - the demo goes on without its portal, saying why
        say(f"portal not started: {exc}")
        return None
    say(f"  citizen's portal: {served.url}")
    if subject:
        url = link_url(served.url, issue(link_key(settings.data_dir), subject))
        say(f"    the demo citizen's sign-in link (once, 15 minutes; more: backbone portal link --subject {subject}): {url}")

    def stop() -> None:
        if not served.stop(15):
            say("the portal did not stop in time; leaving it to the process exit")

    return stop
