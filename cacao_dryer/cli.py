"""The ``cacao-dryer`` command line. Heavy modules are imported inside each command so a node
(Pi Zero 2 W) only loads what ``node run`` needs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from cacao_dryer.errors import CacaoDryerError

app = typer.Typer(help="Solar cacao/coffee dryer: nodes, gateway and dashboard.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
node_app = typer.Typer(help="The agent running on each dryer's Raspberry Pi.",
                       no_args_is_help=True)
schema_app = typer.Typer(help="The MQTT message contract.", no_args_is_help=True)
app.add_typer(node_app, name="node")
app.add_typer(schema_app, name="schema")

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="Node config file (TOML)",
                                            dir_okay=False)]
BrokerOption = Annotated[str | None, typer.Option(
    "--broker", help="Override the config's broker, e.g. mqtt://192.168.1.10:1883")]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _load(config: Path, broker: str | None):  # type: ignore[no-untyped-def]
    from firmware.config import load_node_config, parse_broker_url

    settings = load_node_config(config)
    if broker:
        try:
            parse_broker_url(broker)
        except ValueError as exc:
            raise CacaoDryerError(f"--broker: {exc}") from None
        settings = settings.model_copy(
            update={"mqtt": settings.mqtt.model_copy(update={"broker": broker})})
    return settings


@node_app.command("run")
def node_run(config: ConfigOption, broker: BrokerOption = None,
             log_level: LogLevel = "info") -> None:
    """Run a dryer node until stopped (SIGTERM / Ctrl-C)."""
    _setup_logging(log_level)
    try:
        settings = _load(config, broker)
        from firmware.node import run_node

        run_node(settings)
    except CacaoDryerError as exc:
        _fail(exc)


@node_app.command("check-config")
def node_check_config(config: ConfigOption) -> None:
    """Validate a node config file and summarise it."""
    try:
        settings = _load(config, None)
    except CacaoDryerError as exc:
        _fail(exc)
        return
    kinds = ", ".join(f"{s.type} {s.name!r}" for s in settings.sensors) or "none"
    typer.echo(f"{config}: OK — node {settings.site_id}/{settings.node_id}, "
               f"{'simulated' if settings.simulated else 'hardware'}; sensors: {kinds}; "
               f"fans: {len(settings.fans)}; vents: {len(settings.vents)}")


@schema_app.command("export")
def schema_export(out: Annotated[Path, typer.Option(help="Folder for the JSON Schemas")]
                  = Path("docs/schemas")) -> None:
    """Write one JSON Schema per MQTT channel (docs/schemas/<channel>.schema.json)."""
    from cacao_dryer.schemas import export_schemas

    for path in export_schemas(out):
        typer.echo(f"wrote {path}")


@app.command("demo")
def demo(
    nodes: Annotated[int, typer.Option(min=1, max=50, help="Simulated dryers")] = 3,
    speed: Annotated[float, typer.Option(help="Simulated seconds per real second")] = 600.0,
    broker: BrokerOption = None,
    duration: Annotated[float, typer.Option(help="Stop after this many real seconds "
                                            "(0 = until Ctrl-C)")] = 0.0,
    workdir: Annotated[Path, typer.Option(help="Where node data and configs go")]
    = Path("var/demo"),
) -> None:
    """A simulated site: a broker, several simulated dryers and a live view in the terminal."""
    _setup_logging("warning")
    from cacao_dryer.demo import run_demo

    try:
        run_demo(nodes=nodes, speed=speed, broker=broker, duration_s=duration, workdir=workdir)
    except CacaoDryerError as exc:
        _fail(exc)


@app.command("watch")
def watch(broker: Annotated[str, typer.Option(help="Broker to watch")] = "mqtt://127.0.0.1:1883",
          site: Annotated[str, typer.Option(help="Site id, or + for all")] = "+",
          duration: Annotated[float, typer.Option(help="Stop after N s (0 = never)")] = 0.0
          ) -> None:
    """Live table of every node's latest telemetry and status."""
    from cacao_dryer.watch import watch_site

    try:
        watch_site(broker, site=site, duration_s=duration)
    except CacaoDryerError as exc:
        _fail(exc)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
