"""Serving the web apps (`app.serving`): `backbone console` and `backbone portal` bind the same way and
say in one line when their port is taken; the demo's servers run on a thread of their own, answer,
stop when asked, and a server that cannot start is reported to the caller instead of hanging it."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from app.serving import bind, serve_on_thread
from backbone.errors import BackboneError
from backbone.keys.keyring import OVERSIGHT_DOMAIN, Keyring
from backbone.keys.master import encode_master_key, new_master_key


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize(("command", "fix"), [("console", "set BACKBONE_CONSOLE_PORT"), ("portal", "choose another --port")])
def test_a_server_whose_port_is_taken_says_so_in_one_line(command: str, fix: str, taken_port: int, tmp_path: Path,
                                                          backbone_cli) -> None:  # noqa: ANN001
    master = new_master_key()
    Keyring.generate(domains=[OVERSIGHT_DOMAIN]).save(tmp_path / "keyring.json", master)  # the portal reads the oversight domain
    result = backbone_cli(command, "--port", str(taken_port), BACKBONE_MASTER_KEY=encode_master_key(master),
                          BACKBONE_KEYRING_PATH=str(tmp_path / "keyring.json"), BACKBONE_KAFKA_BOOTSTRAP="127.0.0.1:1",
                          BACKBONE_KAFKA_TIMEOUT_S="1", BACKBONE_CONSOLE_OPERATOR_PASSWORD="operator-password-1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot serve the {command} on 127.0.0.1:{taken_port}: ") and line.endswith(f"; {fix}"), line


def _hello() -> web.Application:
    app = web.Application()
    app.router.add_get("/", lambda request: web.Response(text="hello"))
    return app


def test_a_server_on_its_own_thread_answers_and_stops_when_asked() -> None:
    served = serve_on_thread("hello", lambda: bind(_hello(), "127.0.0.1", 0, "hello app", "pick a port", 3.0))
    with urllib.request.urlopen(served.url, timeout=30) as answer:
        assert answer.read() == b"hello"
    assert served.stop(30)
    with pytest.raises(OSError):
        urllib.request.urlopen(served.url, timeout=5)


def test_a_server_that_cannot_start_on_its_thread_hands_the_reason_to_the_caller(taken_port: int) -> None:
    with pytest.raises(BackboneError, match=f"cannot serve the hello app on 127.0.0.1:{taken_port}: .*; pick a port"):
        serve_on_thread("hello", lambda: bind(_hello(), "127.0.0.1", taken_port, "hello app", "pick a port", 3.0))
