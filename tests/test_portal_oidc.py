"""Sign-in to the portal with OpenID Connect against a real OpenID provider started here on 127.0.0.1
(`oidc-provider-mock`: authlib's provider, client registration and nonces required): the person's id
comes from the configured claim; a callback from another browser, a replayed one, and ID tokens
signed by another key, for another client or with another nonce are refused."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from app.portal.links import LinkDesk
from app.portal.oidc import STATE_COOKIE, OidcClient, OidcConfig, OidcRefused
from app.portal.server import SESSIONS, make_app
from app.portal.sessions import COOKIE
from backbone.events.catalog import load_catalog
from backbone.settings import PROJECT_ROOT

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
NATIONAL_ID = "123456782"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    users = [oidc_provider_mock.User(sub="person-1", claims={"national_id": NATIONAL_ID})]
    with oidc_provider_mock.run_server_in_thread(require_client_registration=True, require_nonce=True, user_claims=users) as server:
        yield f"http://localhost:{server.server_port}"


def portal_with(provider: str, tmp_path: Path) -> tuple[object, OidcClient, int]:
    port = free_port()
    redirect = f"http://127.0.0.1:{port}/oidc/callback"
    registered = requests.post(f"{provider}/oauth2/clients", json={"redirect_uris": [redirect]}, timeout=10).json()
    client = OidcClient(OidcConfig(provider, registered["client_id"], registered["client_secret"], redirect, claim="national_id"))
    app = make_app(None, LinkDesk(Fernet.generate_key()), load_catalog(PROJECT_ROOT / "schemas"), lambda s, p: "", oidc=client)  # type: ignore[arg-type]
    return app, client, port


def test_a_person_signs_in_with_the_provider_and_the_session_carries_the_configured_claim(provider: str, tmp_path: Path) -> None:
    app, _, port = portal_with(provider, tmp_path)

    async def go() -> None:
        async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as portal:
            started = await portal.get("/oidc/login", allow_redirects=False)
            assert started.status == 302 and STATE_COOKIE in started.cookies
            # the person authenticates at the provider (its own form), which redirects back with a code
            at_provider = requests.post(started.headers["Location"], data={"sub": "person-1"}, allow_redirects=False, timeout=10)
            callback = at_provider.headers["Location"]
            assert callback.startswith(f"http://127.0.0.1:{port}/oidc/callback?")
            path = callback.split(f"{port}", 1)[1]
            portal.session.cookie_jar.clear()
            elsewhere = await portal.get(path, allow_redirects=False)  # another browser: no state cookie
            assert elsewhere.status == 403
            portal.session.cookie_jar.update_cookies({STATE_COOKIE: started.cookies[STATE_COOKIE].value})
            done = await portal.get(path, allow_redirects=False)
            assert done.status == 302 and done.headers["Location"] == "/"
            session = app[SESSIONS].get(done.cookies[COOKIE].value)
            assert session is not None and session.subject == NATIONAL_ID
            portal.session.cookie_jar.update_cookies({STATE_COOKIE: started.cookies[STATE_COOKIE].value})
            assert (await portal.get(path, allow_redirects=False)).status == 403  # replayed: the state is used up

    asyncio.run(go())


def token(key: RSAKey, **claims: object) -> str:
    now = int(time.time())
    return jwt.encode({"alg": "RS256", "kid": key.kid}, {"iat": now, "exp": now + 60, **claims}, key)


def test_id_tokens_of_another_key_client_nonce_or_issuer_or_without_the_claim_are_refused() -> None:
    key, other = RSAKey.generate_key(2048, auto_kid=True), RSAKey.generate_key(2048, auto_kid=True)
    keys = KeySet([key])
    client = OidcClient(OidcConfig("http://op.example", "portal", "s", "http://p/oidc/callback", claim="national_id"))
    good = {"iss": "http://op.example", "aud": "portal", "nonce": "n1", "sub": "x", "national_id": NATIONAL_ID}
    assert client.subject(token(key, **good), keys, "n1") == NATIONAL_ID
    for bad, nonce in ((token(other, **good), "n1"), (token(key, **{**good, "aud": "someone-else"}), "n1"),
                       (token(key, **good), "n2"), (token(key, **{**good, "iss": "http://evil.example"}), "n1"),
                       (token(key, **{k: v for k, v in good.items() if k != "national_id"}), "n1"),
                       (token(key, **{**good, "exp": int(time.time()) - 120}), "n1")):
        with pytest.raises(OidcRefused):
            client.subject(bad, keys, nonce)
    unsigned = jwt.encode({"alg": "HS256"}, good, __import__("joserfc.jwk", fromlist=["OctKey"]).OctKey.generate_key(256))
    with pytest.raises(OidcRefused):
        client.subject(unsigned, keys, "n1")
