"""`python -m backbone.registry --port P [--host H] [--bootstrap B] [--topic T]`.

Bootstrap servers come from `BACKBONE_KAFKA_BOOTSTRAP` unless `--bootstrap` is given; the port
defaults to `BACKBONE_SCHEMA_REGISTRY_PORT`. Binds 127.0.0.1 unless `--host` says otherwise.
Logs as `BACKBONE_LOG_LEVEL` and `BACKBONE_LOG_FORMAT` say, like every backbone process.
Authenticates every request with HTTP Basic against `BACKBONE_SCHEMA_REGISTRY_USERS_FILE` (manage it
with `backbone registry users ...`); refuses to start without it unless
`BACKBONE_SCHEMA_REGISTRY_AUTH=none` says explicitly to serve anyone as admin. With
`BACKBONE_SCHEMA_REGISTRY_TLS_PORT` (and `_TLS_CERT_FILE`, `_TLS_KEY_FILE`) it serves the same API
over HTTPS (TLS 1.2 or newer) on that port too: the door for agencies outside the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys

from aiohttp import web

from backbone.errors import BackboneError
from backbone.files.private import private_umask
from backbone.kafka.topics import SCHEMAS_TOPIC
from backbone.registry.auth import Anonymous, BasicAuth, Guard
from backbone.registry.errors import UsersFileError
from backbone.registry.kafka_log import SchemaLog
from backbone.registry.server import make_app
from backbone.registry.service import SchemaRegistry
from backbone.registry.users import UsersFile
from backbone.settings import Settings, load_settings
from backbone.telemetry import metrics
from backbone.telemetry.logs import configure_logging

log = logging.getLogger("backbone.registry")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m backbone.registry", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default BACKBONE_SCHEMA_REGISTRY_PORT)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers (default BACKBONE_KAFKA_BOOTSTRAP)")
    parser.add_argument("--topic", default=SCHEMAS_TOPIC, help=f"compacted topic holding the schemas (default {SCHEMAS_TOPIC})")
    return parser.parse_args(argv)


def guard_for(settings: Settings) -> Guard:
    """The request guard `settings` ask for; raises naming the setting when basic auth has no users."""
    if settings.schema_registry_auth == "none":
        log.warning("schema registry is anonymous (BACKBONE_SCHEMA_REGISTRY_AUTH=none): anyone who reaches it is admin")
        return Anonymous()
    assert settings.schema_registry_users_file is not None  # defaulted by the settings
    try:
        guard = BasicAuth(UsersFile(settings.schema_registry_users_file))
    except UsersFileError as exc:
        raise UsersFileError(
            f"BACKBONE_SCHEMA_REGISTRY_AUTH is basic, so the registry needs users: {exc} "
            "(BACKBONE_SCHEMA_REGISTRY_AUTH=none serves anyone as admin: only on a trusted network)"
        ) from None
    log.info("schema registry authenticates with HTTP Basic: %d users in %s", guard.count, settings.schema_registry_users_file)
    return guard


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS port's server context, or None without `BACKBONE_SCHEMA_REGISTRY_TLS_PORT`."""
    if settings.schema_registry_tls_port is None:
        return None
    cert, key = settings.schema_registry_tls_cert_file, settings.schema_registry_tls_key_file
    if cert is None or key is None:
        raise BackboneError("BACKBONE_SCHEMA_REGISTRY_TLS_PORT is set: set BACKBONE_SCHEMA_REGISTRY_TLS_CERT_FILE and "
                            "BACKBONE_SCHEMA_REGISTRY_TLS_KEY_FILE to the PEM certificate and key it presents")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise BackboneError(f"cannot load the registry's TLS certificate {cert} and key {key} "
                            f"({type(exc).__name__}); point the settings at PEM files this user can read") from None
    return context


async def serve(registry: SchemaRegistry, guard: Guard, host: str, port: int,
                tls: tuple[int, ssl.SSLContext] | None = None) -> None:
    """Serve until SIGTERM or SIGINT: HTTP on `port`, and HTTPS on `tls`'s port when given."""
    runner = web.AppRunner(make_app(registry, guard), access_log=None)
    await runner.setup()
    listeners = [(port, None), *([tls] if tls else [])]
    for at, context in listeners:
        try:
            await web.TCPSite(runner, host, at, ssl_context=context).start()
        except OSError as exc:
            await runner.cleanup()
            raise BackboneError(f"cannot listen on {host}:{at}: {exc.strerror}; choose another port") from None
        log.info("schema registry listening on %s://%s:%s", "https" if context else "http", host, at)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    private_umask()  # the users file and its temporary copies are this user's only
    args = _arguments(argv)
    logging_ready = False
    try:
        overrides = {"kafka_bootstrap": args.bootstrap} if args.bootstrap else {}
        settings = load_settings(**overrides)
        configure_logging(settings)
        logging_ready = True
        port = settings.schema_registry_port if args.port is None else args.port
        guard = guard_for(settings)  # before Kafka: a missing users file is the quicker error
        context = tls_context(settings)
        tls = (settings.schema_registry_tls_port, context) if context is not None else None
        metrics.serve(settings)
        log.info("schema registry reading %s from Kafka at %s", args.topic, settings.kafka_bootstrap)
        schema_log = SchemaLog(settings, args.topic)
        schema_log.start()
        try:
            asyncio.run(serve(SchemaRegistry(schema_log), guard, args.host, port, tls))
        finally:
            schema_log.stop()
    except BackboneError as exc:
        if logging_ready:  # in the configured format, like the rest of this process's lines
            log.error("%s", exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
