"""`python -m backbone.registry --port P [--host H] [--bootstrap B] [--topic T]`.

Bootstrap servers come from `BACKBONE_KAFKA_BOOTSTRAP` unless `--bootstrap` is given; the port
defaults to `BACKBONE_SCHEMA_REGISTRY_PORT`. Binds 127.0.0.1 unless `--host` says otherwise.
Logs as `BACKBONE_LOG_LEVEL` and `BACKBONE_LOG_FORMAT` say, like every backbone process.
Authenticates every request with HTTP Basic against `BACKBONE_SCHEMA_REGISTRY_USERS_FILE` (manage it
with `backbone registry users ...`); refuses to start without it unless
`BACKBONE_SCHEMA_REGISTRY_AUTH=none` says explicitly to serve anyone as admin.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
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


async def serve(registry: SchemaRegistry, guard: Guard, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = web.AppRunner(make_app(registry, guard), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise BackboneError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port") from None
    log.info("schema registry listening on http://%s:%s", host, port)
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
        metrics.serve(settings)
        log.info("schema registry reading %s from Kafka at %s", args.topic, settings.kafka_bootstrap)
        schema_log = SchemaLog(settings, args.topic)
        schema_log.start()
        try:
            asyncio.run(serve(SchemaRegistry(schema_log), guard, args.host, port))
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
