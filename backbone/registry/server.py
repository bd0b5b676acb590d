"""The Confluent Schema Registry REST API over `SchemaRegistry`, on aiohttp.

Reads answer from memory; a read that misses catches up with the topic once and tries again, so a
schema another registry process just registered is found. Writes run in a thread. Every request
passes the guard (`auth.py`); each route declares the access it needs in `ROUTES`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from backbone.registry import errors
from backbone.registry.auth import Guard, guard_middleware
from backbone.registry.compatibility import AvroText, parse_avro, parse_references
from backbone.registry.negotiation import negotiation_middleware
from backbone.registry.roles import Access
from backbone.registry.service import SchemaRegistry, check_level, check_mode
from backbone.registry.state import Version

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
REGISTRY_KEY = web.AppKey("registry", SchemaRegistry)
log = logging.getLogger("backbone.registry")
T = TypeVar("T")


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type=CONTENT_TYPE, headers=headers)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() == "true"


def _int_param(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError:
        raise errors.ApiError(400, 400, f"query parameter {name} must be an integer") from None


@web.middleware
async def _errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return _json(exc.body(), exc.status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error_code": exc.status, "message": exc.reason}, exc.status)
    except Exception:  # noqa: BLE001 - never crash on a request; the log has the traceback
        log.exception("request %s %s failed", request.method, request.path)
        return _json(errors.store_error("internal error; see the registry log").body(), 500)


class Api:
    """Route handlers."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry

    async def _blocking(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, call)

    async def _read(self, query: Callable[[], T]) -> T:
        """Answer from memory; on a not-found, catch up with the topic and ask once more."""
        try:
            with self.registry.log.lock:
                return query()
        except errors.ApiError as exc:
            if exc.status != 404:
                raise
        await self._blocking(self.registry.sync)
        with self.registry.log.lock:
            return query()

    @staticmethod
    async def _schema_body(request: web.Request) -> AvroText:
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise errors.invalid_schema("request body is not JSON") from None
        if not isinstance(body, dict):
            raise errors.invalid_schema("request body must be a JSON object with a 'schema' field")
        schema_type = body.get("schemaType") or "AVRO"
        if schema_type != "AVRO":
            raise errors.invalid_schema(
                f"schemaType {str(schema_type)[:40]!r} is not supported: this registry stores AVRO schemas only "
                "(JSON Schema and Protobuf are out of scope)"
            )
        return parse_avro(body.get("schema"), parse_references(body.get("references")))

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise errors.ApiError(422, errors.INVALID_SCHEMA, "request body is not JSON") from None
        if not isinstance(body, dict):
            raise errors.ApiError(422, errors.INVALID_SCHEMA, "request body must be a JSON object")
        return body

    def _version_body(self, entry: Version) -> dict[str, Any]:
        return {
            "subject": entry.subject,
            "version": entry.version,
            "id": entry.schema_id,
            **self._schema_fields(self.registry.state.schemas[entry.schema_id]),
        }

    @staticmethod
    def _schema_fields(schema: AvroText) -> dict[str, Any]:
        """`schema` and, when it has any, `references`, as Confluent answers them (AVRO is the default type)."""
        fields: dict[str, Any] = {"schema": schema.text}
        if schema.references:
            fields["references"] = [r.body() for r in schema.references]
        return fields

    # -- root, types, contexts, mode ---------------------------------------------------------

    async def root(self, request: web.Request) -> web.Response:
        return _json({})

    async def schema_types(self, request: web.Request) -> web.Response:
        return _json(["AVRO"])

    async def contexts(self, request: web.Request) -> web.Response:
        return _json(["."])

    async def mode(self, request: web.Request) -> web.Response:
        with self.registry.log.lock:
            return _json({"mode": self.registry.state.mode})

    async def put_mode(self, request: web.Request) -> web.Response:
        mode = check_mode((await self._body(request)).get("mode"))
        await self._blocking(lambda: self.registry.set_mode(mode))
        return _json({"mode": mode})

    # -- subjects ------------------------------------------------------------------------

    async def list_subjects(self, request: web.Request) -> web.Response:
        prefix = request.query.get("subjectPrefix", "")
        deleted = _flag(request, "deleted")
        with self.registry.log.lock:
            names = self.registry.state.subject_names(deleted)
        return _json([name for name in names if name.startswith(prefix)])

    async def list_versions(self, request: web.Request) -> web.Response:
        subject, deleted = request.match_info["subject"], _flag(request, "deleted")
        found = await self._read(lambda: self.registry.versions(subject, deleted))
        return _json([v.version for v in found])

    async def get_version(self, request: web.Request) -> web.Response:
        subject, raw, deleted = request.match_info["subject"], request.match_info["version"], _flag(request, "deleted")
        return _json(await self._read(lambda: self._version_body(self.registry.version(subject, raw, deleted))))

    async def get_version_schema(self, request: web.Request) -> web.Response:
        subject, raw, deleted = request.match_info["subject"], request.match_info["version"], _flag(request, "deleted")
        text = await self._read(lambda: self._version_body(self.registry.version(subject, raw, deleted))["schema"])
        return web.Response(text=text, content_type=CONTENT_TYPE)

    async def register(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        candidate = await self._schema_body(request)
        entry = await self._blocking(lambda: self.registry.register(subject, candidate))
        return _json({"id": entry.schema_id, "version": entry.version})

    async def lookup(self, request: web.Request) -> web.Response:
        subject, deleted = request.match_info["subject"], _flag(request, "deleted")
        candidate = await self._schema_body(request)
        return _json(await self._read(lambda: self._version_body(self.registry.lookup(subject, candidate, deleted))))

    async def delete_subject(self, request: web.Request) -> web.Response:
        subject, permanent = request.match_info["subject"], _flag(request, "permanent")
        return _json(await self._blocking(lambda: self.registry.delete_subject(subject, permanent)))

    async def delete_version(self, request: web.Request) -> web.Response:
        subject, raw, permanent = request.match_info["subject"], request.match_info["version"], _flag(request, "permanent")
        return _json(await self._blocking(lambda: self.registry.delete_version(subject, raw, permanent)))

    # -- schemas by id -------------------------------------------------------------------

    @staticmethod
    def _schema_id(request: web.Request) -> int:
        try:
            return int(request.match_info["id"])
        except ValueError:
            raise errors.schema_not_found(f"Schema {request.match_info['id'][:20]!r} not found") from None

    async def get_schema(self, request: web.Request) -> web.Response:
        schema_id = self._schema_id(request)
        return _json(self._schema_fields(await self._read(lambda: self.registry.schema(schema_id))))

    async def list_schemas(self, request: web.Request) -> web.Response:
        """`GET /schemas`: every subject version (live ones unless `deleted`), by subject then version."""
        prefix, deleted, latest_only = request.query.get("subjectPrefix", ""), _flag(request, "deleted"), _flag(request, "latestOnly")
        offset, limit = _int_param(request, "offset", 0), _int_param(request, "limit", -1)
        with self.registry.log.lock:
            found = []
            for subject in self.registry.state.subject_names(deleted):
                if subject.startswith(prefix):
                    versions = self.registry.state.versions(subject, deleted)
                    found += [self._version_body(v) for v in (versions[-1:] if latest_only else versions)]
        found = found[offset:]
        return _json(found if limit < 0 else found[:limit])

    async def referenced_by(self, request: web.Request) -> web.Response:
        subject, raw = request.match_info["subject"], request.match_info["version"]
        return _json(await self._read(lambda: self.registry.state.referenced_by(self.registry.version(subject, raw))))

    async def get_schema_text(self, request: web.Request) -> web.Response:
        schema_id = self._schema_id(request)
        text = (await self._read(lambda: self.registry.schema(schema_id))).text
        return web.Response(text=text, content_type=CONTENT_TYPE)

    def _usages(self, schema_id: int, deleted: bool) -> list[Version]:
        self.registry.schema(schema_id)
        return self.registry.state.usages(schema_id, deleted)

    async def get_schema_subjects(self, request: web.Request) -> web.Response:
        schema_id, deleted = self._schema_id(request), _flag(request, "deleted")
        usages = await self._read(lambda: self._usages(schema_id, deleted))
        return _json(sorted({v.subject for v in usages}))

    async def get_schema_versions(self, request: web.Request) -> web.Response:
        schema_id, deleted = self._schema_id(request), _flag(request, "deleted")
        usages = await self._read(lambda: self._usages(schema_id, deleted))
        return _json([{"subject": v.subject, "version": v.version} for v in usages])

    # -- config --------------------------------------------------------------------------

    async def get_config(self, request: web.Request) -> web.Response:
        with self.registry.log.lock:
            return _json({"compatibilityLevel": self.registry.state.level(None)})

    async def get_subject_config(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        with self.registry.log.lock:
            level = self.registry.state.levels.get(subject)
            if level is None and _flag(request, "defaultToGlobal"):
                level = self.registry.state.level(None)
        if level is None:
            raise errors.ApiError(
                404, errors.SUBJECT_CONFIG_NOT_FOUND,
                f"Subject '{subject}' does not have subject-level compatibility configured",
            )
        return _json({"compatibilityLevel": level})

    async def put_config(self, request: web.Request) -> web.Response:
        subject = request.match_info.get("subject")
        body = await self._body(request)
        level = check_level(body.get("compatibility", body.get("compatibilityLevel")))
        await self._blocking(lambda: self.registry.set_level(subject, level))
        return _json({"compatibility": level})

    async def delete_subject_config(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        previous = await self._blocking(lambda: self.registry.delete_level(subject))
        return _json({"compatibilityLevel": previous})

    # -- compatibility -------------------------------------------------------------------

    async def compatibility(self, request: web.Request) -> web.Response:
        subject, raw = request.match_info["subject"], request.match_info.get("version")
        candidate = await self._schema_body(request)
        await self._blocking(self.registry.sync)
        with self.registry.log.lock:
            reasons = self.registry.compatibility(subject, candidate, raw)
        body: dict[str, Any] = {"is_compatible": not reasons}
        if _flag(request, "verbose"):
            body["messages"] = reasons
        return _json(body)


# (method, path, handler, route name, access needed). Looking a schema up and checking
# compatibility are POSTs that change nothing, but they reveal whether a schema is registered under
# a subject, so they are scoped like registering.
ROUTES: list[tuple[str, str, str, str, Access]] = [
    ("GET", "/", "root", "read_root", Access.READ),
    ("GET", "/schemas/types", "schema_types", "list_schema_types", Access.READ),
    ("GET", "/schemas", "list_schemas", "list_schemas", Access.READ),
    ("GET", "/contexts", "contexts", "list_contexts", Access.READ),
    ("GET", "/mode", "mode", "read_mode", Access.READ),
    ("PUT", "/mode", "put_mode", "set_mode", Access.ADMIN),
    ("GET", "/subjects", "list_subjects", "list_subjects", Access.READ),
    ("POST", "/subjects/{subject}/versions", "register", "register", Access.SUBJECT),
    ("GET", "/subjects/{subject}/versions", "list_versions", "list_versions", Access.READ),
    ("GET", "/subjects/{subject}/versions/{version}", "get_version", "read_version", Access.READ),
    ("GET", "/subjects/{subject}/versions/{version}/schema", "get_version_schema", "read_version_schema", Access.READ),
    ("DELETE", "/subjects/{subject}/versions/{version}", "delete_version", "delete_version", Access.ADMIN),
    ("GET", "/subjects/{subject}/versions/{version}/referencedby", "referenced_by", "read_referenced_by", Access.READ),
    ("POST", "/subjects/{subject}", "lookup", "look_up_schema", Access.SUBJECT),
    ("DELETE", "/subjects/{subject}", "delete_subject", "delete_subject", Access.ADMIN),
    ("GET", "/schemas/ids/{id}", "get_schema", "read_schema", Access.READ),
    ("GET", "/schemas/ids/{id}/schema", "get_schema_text", "read_schema_text", Access.READ),
    ("GET", "/schemas/ids/{id}/subjects", "get_schema_subjects", "read_schema_subjects", Access.READ),
    ("GET", "/schemas/ids/{id}/versions", "get_schema_versions", "read_schema_versions", Access.READ),
    ("GET", "/config", "get_config", "read_config", Access.READ),
    ("PUT", "/config", "put_config", "set_global_compatibility", Access.ADMIN),
    ("GET", "/config/{subject}", "get_subject_config", "read_subject_config", Access.READ),
    ("PUT", "/config/{subject}", "put_config", "set_compatibility", Access.SUBJECT),
    ("DELETE", "/config/{subject}", "delete_subject_config", "delete_compatibility", Access.ADMIN),
    ("POST", "/compatibility/subjects/{subject}/versions/{version}", "compatibility", "check_compatibility", Access.SUBJECT),
    ("POST", "/compatibility/subjects/{subject}/versions", "compatibility", "check_compatibility_with_every_version", Access.SUBJECT),
]


def make_app(registry: SchemaRegistry, guard: Guard) -> web.Application:
    """The aiohttp application serving `registry`; every request passes `guard` first."""
    access = {name: needed for _, _, _, name, needed in ROUTES}
    from backbone.telemetry.metrics import registry_metrics

    # outermost: it counts the status the client got, after errors became JSON answers
    app = web.Application(middlewares=[
        registry_metrics().middleware(), negotiation_middleware(), _errors, guard_middleware(guard, access),
    ])
    app[REGISTRY_KEY] = registry
    api = Api(registry)
    app.add_routes([web.route(method, _pattern(path), getattr(api, handler), name=name) for method, path, handler, name, _ in ROUTES])
    return app


def _pattern(path: str) -> str:
    """The route's path as aiohttp matches it: a trailing slash optional (`GET /config/` is `GET
    /config`, as in Confluent's registry) and a subject any text but `/` (`{` and `}` included,
    percent-encoded by clients)."""
    if path == "/":
        return path
    return path.replace("{subject}", "{subject:[^/]+}") + "{trailing_slash:/?}"
