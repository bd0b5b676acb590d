"""Sign-in with OpenID Connect (what national eID schemes speak): the authorization code flow, the ID
token validated with `joserfc` (signature against the provider's published keys, issuer, audience,
expiry, nonce), the person's id taken from a configured claim.

`/oidc/login` sends the browser to the provider with a fresh `state` and `nonce`, the state also in
a short-lived cookie (SameSite=Lax: the provider's redirect back is a cross-site navigation);
`/oidc/callback` accepts a code only with that state, once, exchanges it at the token endpoint with
the client's credentials (HTTP Basic), and opens a session as a link does. Nothing from the
provider is logged but why a sign-in was refused.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

STATE_COOKIE = "backbone_portal_oidc"
PENDING_S = 600
ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")  # asymmetric only: never `none`, never a shared-secret HS*


class OidcRefused(Exception):
    """A sign-in the portal does not accept (said to the person; nothing personal in it)."""


@dataclass(slots=True, frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str  # the portal's /oidc/callback as the provider knows it
    claim: str = "sub"  # the claim holding the person's national id
    scope: str = "openid"


@dataclass(slots=True)
class OidcClient:
    config: OidcConfig
    _metadata: dict[str, Any] | None = None
    _pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # state -> (nonce, expiry)

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http, http.get(url) as answer:
                answer.raise_for_status()
                found = await answer.json()
            if found.get("issuer", "").rstrip("/") != self.config.issuer.rstrip("/"):
                raise OidcRefused("the provider's metadata names another issuer")
            self._metadata = found
        return self._metadata

    async def start(self) -> tuple[str, str]:
        """(the provider's authorization URL, the state to bind to the browser)."""
        from urllib.parse import urlencode

        now = time.time()
        self._pending = {s: p for s, p in self._pending.items() if p[1] > now}
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        self._pending[state] = (nonce, now + PENDING_S)
        query = urlencode({"response_type": "code", "client_id": self.config.client_id, "redirect_uri": self.config.redirect_uri,
                           "scope": self.config.scope, "state": state, "nonce": nonce})
        return f"{(await self.metadata())['authorization_endpoint']}?{query}", state

    async def finish(self, code: str, state: str, bound_state: str | None) -> str:
        """The person's id from a valid callback; `OidcRefused` otherwise."""
        if not state or not bound_state or not secrets.compare_digest(state, bound_state):
            raise OidcRefused("this sign-in was not started in this browser: start again")
        pending = self._pending.pop(state, None)
        if pending is None or pending[1] < time.time():
            raise OidcRefused("this sign-in has expired or was used: start again")
        meta = await self.metadata()
        auth = aiohttp.BasicAuth(self.config.client_id, self.config.client_secret)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.post(meta["token_endpoint"], auth=auth, data={
                    "grant_type": "authorization_code", "code": code, "redirect_uri": self.config.redirect_uri}) as answer:
                if answer.status != 200:
                    raise OidcRefused(f"the provider refused the code (HTTP {answer.status})")
                tokens = await answer.json()
            async with http.get(meta["jwks_uri"]) as answer:
                answer.raise_for_status()
                keys = KeySet.import_key_set(await answer.json())
        return self.subject(tokens.get("id_token", ""), keys, pending[0])

    def subject(self, id_token: str, keys: KeySet, nonce: str) -> str:
        """Validate `id_token` (signature, iss, aud, exp, iat, nonce) and return the configured claim."""
        try:
            token = jwt.decode(id_token, keys, algorithms=list(ALGORITHMS))
            JWTClaimsRegistry(iss={"essential": True, "value": self.config.issuer.rstrip("/")},
                              aud={"essential": True, "value": self.config.client_id},
                              exp={"essential": True}, nonce={"essential": True, "value": nonce}).validate(token.claims)
        except (JoseError, ValueError) as exc:
            raise OidcRefused(f"the identity token does not hold ({type(exc).__name__})") from None
        value = token.claims.get(self.config.claim)
        if not isinstance(value, str) or not value.strip():
            raise OidcRefused(f"the identity token carries no {self.config.claim!r} claim")
        return value


def routes(client: OidcClient, open_session: Any, set_session_cookie: Any) -> list[web.RouteDef]:
    """`/oidc/login` and `/oidc/callback`; `open_session(subject) -> token`, `set_session_cookie(request, response, token)`."""

    async def login(request: web.Request) -> web.StreamResponse:
        url, state = await client.start()
        response = web.HTTPFound(url)
        response.set_cookie(STATE_COOKIE, state, httponly=True, samesite="Lax", secure=request.secure, path="/oidc/", max_age=PENDING_S)
        raise response

    async def callback(request: web.Request) -> web.StreamResponse:
        from app.portal import views

        try:
            subject = await client.finish(request.query.get("code", ""), request.query.get("state", ""),
                                          request.cookies.get(STATE_COOKIE))
        except OidcRefused as exc:
            return web.Response(text=views.message("Sign-in refused", str(exc)), status=403, content_type="text/html")
        response = web.HTTPFound("/")
        response.del_cookie(STATE_COOKIE, path="/oidc/")
        set_session_cookie(request, response, open_session(subject))
        raise response

    return [web.get("/oidc/login", login), web.get("/oidc/callback", callback)]
