"""`backbone up`: the embedded stack in the foreground until Ctrl-C."""

from __future__ import annotations

import signal
import threading

from app.cli import app, console, get_settings


@app.command()
def up() -> None:
    """Run the embedded stack (broker, registry) in the foreground and print its connection strings
    and the registry credentials every backbone client sends (fresh each start)."""
    from backbone.stack.embedded import EmbeddedStack  # when it runs, not for --help
    from backbone.stack.memory import BrokerMemoryWatch, broker_says, rss_mb

    settings = get_settings()
    stopping = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        with EmbeddedStack(
            settings.data_dir, broker_port=settings.broker_port, registry_port=settings.schema_registry_port,
            broker_engine=settings.embedded_broker, broker_retention_hours=settings.embedded_broker_retention_hours,
        ) as stack:
            console.print("[bold green]embedded stack is up[/bold green]; in another terminal:")
            for name, value in stack.environment().items():
                console.print(f"  export {name}={value}", highlight=False)
            console.print(f"  export BACKBONE_CLICKHOUSE_DSN={settings.clickhouse_dsn}", highlight=False)
            if stack.registry is not None and stack.registry.admin is not None:
                console.print(f"registry admin: user {stack.registry.admin.name}, password in "
                              f"{stack.registry.admin_password_path}; users in {stack.registry.users_path}", highlight=False)
            console.print(broker_says(stack.broker.engine, stack.broker.storage_dir, settings.embedded_broker_retention_hours),
                          highlight=False)
            console.print(f"logs in {settings.data_dir / 'logs'}; Ctrl-C stops everything")
            watch = BrokerMemoryWatch(lambda: rss_mb(stack.broker.pid))
            try:
                ticks = 0
                while not stopping.wait(0.5):
                    failed = stack.failed_part()
                    if failed:
                        console.print(f"[red]{failed} stopped; shutting down[/red]")
                        raise SystemExit(1)
                    ticks += 1
                    warning = watch.check() if ticks % 60 == 0 and stack.broker.engine == "tansu" else None  # every 30 s
                    if warning:
                        console.print(f"[yellow]{warning}[/yellow]", highlight=False)
            except KeyboardInterrupt:
                pass
            console.print("stopping ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print("stopped")
