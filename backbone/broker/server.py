"""The disk broker's server: asyncio on one port of 127.0.0.1, one task per connection reading size-
prefixed requests and answering them in order (a long-polling Fetch or a JoinGroup waiting for its
rebalance holds only its own connection). A housekeeping task flushes committed offsets, expires
silent group members and applies retention every `RETENTION_CHECK_S`.

Run: `python -m backbone.broker --data-dir DIR --port N` (what `EmbeddedBroker` does with
`BACKBONE_EMBEDDED_BROKER=disk`). It stops on SIGTERM or SIGINT, writing what it holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from backbone.broker.admin import AdminApis
from backbone.broker.data import DataApis
from backbone.broker.state import BrokerState
from backbone.broker.wire import (
    API_VERSIONS,
    WireError,
    api_versions_body,
    encode_response,
    read_request,
    unsupported_api_versions,
)
from backbone.files.private import private_umask

RETENTION_CHECK_S = 10.0
HOUSEKEEPING_S = 0.25
MAX_REQUEST = 100 * 1024 * 1024
log = logging.getLogger("backbone.broker")


class DiskBroker:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int = 9092, retention_check_s: float = RETENTION_CHECK_S,
                 retention_ms: int | None = None) -> None:
        self.state = BrokerState(data_dir, retention_ms)
        self.host, self.port = host, port
        self.data = DataApis(self.state)
        self.admin = AdminApis(self.state, host, port)
        self.retention_check_s = retention_check_s
        self.handlers: dict[int, Callable[..., Any]] = {
            0: self.data.produce, 1: self.data.fetch, 2: self.data.list_offsets, 3: self.admin.metadata,
            8: self.admin.offset_commit, 9: self.admin.offset_fetch, 10: self.admin.find_coordinator,
            12: self.admin.heartbeat, 13: self.admin.leave_group, 14: self.admin.sync_group,
            15: self.admin.describe_groups, 16: self.admin.list_groups, 19: self.admin.create_topics,
            20: self.admin.delete_topics, 21: self.data.delete_records, 22: self.data.init_producer_id,
            32: self.admin.describe_configs, 33: self.admin.alter_configs, 37: self.admin.create_partitions,
            44: self.admin.incremental_alter_configs, 60: self.admin.describe_cluster,
        }

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._connection, self.host, self.port, limit=MAX_REQUEST)
        self.port = self.admin.port = server.sockets[0].getsockname()[1]
        log.info("disk broker on %s:%d, data in %s", self.host, self.port, self.state.root)
        housekeeping = asyncio.create_task(self._housekeeping(stop))
        async with server:
            await stop.wait()
        housekeeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await housekeeping
        self.state.close()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        last_retention = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(HOUSEKEEPING_S)
            self.state.flush()
            self.admin.groups.expire()
            if time.monotonic() - last_retention >= self.retention_check_s:
                last_retention = time.monotonic()
                try:
                    deleted, removed = self.state.enforce_retention()
                except OSError as exc:  # a full disk, a file gone: said, and tried again next time
                    log.error("retention or compaction failed: %s", exc)
                    continue
                if deleted or removed:
                    log.info("retention deleted %d old segments; compaction removed %d records", deleted, removed)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = f"/{peer[0]}" if peer else ""
        try:
            while True:
                head = await reader.readexactly(4)
                (size,) = struct.unpack(">i", head)
                if not 0 < size <= MAX_REQUEST:
                    raise WireError(f"request of {size} bytes")
                frame = await reader.readexactly(size)
                try:
                    answer = await self._answer(frame, host)
                except (WireError, asyncio.CancelledError):
                    raise
                except Exception:  # a bug in a handler: the connection goes, the broker stays
                    api_key, version = struct.unpack_from(">hh", frame, 0)
                    log.exception("request api %d v%d failed", api_key, version)
                    return
                if answer:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, WireError):
            pass
        finally:
            writer.close()

    async def _answer(self, frame: bytes, host: str) -> bytes | None:
        api_key, version, correlation, request = read_request(frame)
        if api_key == API_VERSIONS:
            if request is None:
                return unsupported_api_versions(correlation)
            return encode_response(api_key, version, correlation, api_versions_body())
        if request is None:
            raise WireError(f"api {api_key} v{version} is not supported")
        if api_key == 11:
            body = await self.admin.join_group(request, _client_id(frame), host)
        else:
            body = self.handlers[api_key](request)
            if isinstance(body, Awaitable):
                body = await body
        if api_key == 0 and request.acks == 0:
            return None
        return encode_response(api_key, version, correlation, body)


def _client_id(frame: bytes) -> str:
    (length,) = struct.unpack_from(">h", frame, 8)
    return frame[10:10 + length].decode(errors="replace") if length > 0 else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backbone.broker", description="The backbone's disk broker (Kafka protocol)")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--retention-check-s", type=float, default=RETENTION_CHECK_S)
    hours = os.environ.get("BACKBONE_EMBEDDED_BROKER_RETENTION_HOURS")
    parser.add_argument("--retention-hours", type=float, default=float(hours) if hours else None,
                        help="retention of topics that set no retention.ms (default BACKBONE_EMBEDDED_BROKER_RETENTION_HOURS, "
                             "else 168: a week, as Kafka's)")
    args = parser.parse_args(argv)
    private_umask()  # segments, offsets and state files: 0600, whatever umask started the broker
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        retention_ms = None if args.retention_hours is None else int(args.retention_hours * 3_600_000)
        await DiskBroker(args.data_dir, args.host, args.port, args.retention_check_s, retention_ms).serve(stop)

    asyncio.run(run())
