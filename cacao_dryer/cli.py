"""The ``cacao-dryer`` command line.

Standard-library argparse rather than typer/click: a node on a Pi Zero 2 W must stay under
40 MB resident, and typer (with rich) alone costs about 5.5 MB (bench/RESULTS.md). Heavy
modules are imported inside each command so ``node run`` loads only what a node needs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cacao_dryer.errors import CacaoDryerError


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _with_broker(settings: Any, broker: str | None) -> Any:
    """Node or gateway settings with ``--broker`` in place of the config's broker."""
    if not broker:
        return settings
    from firmware.config import parse_broker_url

    try:
        parse_broker_url(broker)
    except ValueError as exc:
        raise CacaoDryerError(f"--broker: {exc}") from None
    return settings.model_copy(
        update={"mqtt": settings.mqtt.model_copy(update={"broker": broker})})


def _load_node_settings(config: Path, broker: str | None):  # type: ignore[no-untyped-def]
    from firmware.config import load_node_config

    return _with_broker(load_node_config(config), broker)


def node_run(args: argparse.Namespace) -> None:
    _setup_logging(args.log_level)
    settings = _load_node_settings(args.config, args.broker)
    from firmware.node import run_node

    run_node(settings)


def node_check_config(args: argparse.Namespace) -> None:
    settings = _load_node_settings(args.config, None)
    kinds = ", ".join(f"{s.type} {s.name!r}" for s in settings.sensors) or "none"
    print(f"{args.config}: OK — node {settings.site_id}/{settings.node_id}, "
          f"{'simulated' if settings.simulated else 'hardware'}; sensors: {kinds}; "
          f"fans: {len(settings.fans)}; vents: {len(settings.vents)}")


def gateway_run(args: argparse.Namespace) -> None:
    _setup_logging(args.log_level)
    from gateway.config import load_gateway_config

    settings = _with_broker(load_gateway_config(args.config), args.broker)
    from gateway.service import run_gateway

    run_gateway(settings)


def dashboard_run(args: argparse.Namespace) -> None:
    _setup_logging(args.log_level)
    from gateway.config import load_gateway_config

    settings = _with_broker(load_gateway_config(args.config), args.broker)
    changes = {name: value for name, value in (("host", args.host), ("port", args.port))
               if value is not None}
    if changes:
        settings = settings.model_copy(
            update={"api": settings.api.model_copy(update=changes)})
    from gateway.service import run_dashboard

    run_dashboard(settings)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65535")
    return port


def schema_export(args: argparse.Namespace) -> None:
    from cacao_dryer.schemas import export_schemas

    for path in export_schemas(args.out):
        print(f"wrote {path}")


def demo(args: argparse.Namespace) -> None:
    _setup_logging("warning")
    import signal

    from cacao_dryer.demo import run_demo

    # SIGTERM (a service manager, `kill`) stops the demo as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    run_demo(nodes=args.nodes, speed=args.speed, broker=args.broker,
             duration_s=args.duration, workdir=args.workdir,
             embedded_broker=args.embedded_broker, host=args.host, port=args.port,
             watch=args.watch)


def watch(args: argparse.Namespace) -> None:
    from cacao_dryer.watch import watch_site

    watch_site(args.broker, site=args.site, duration_s=args.duration)


def user_add(args: argparse.Namespace) -> None:
    from gateway.auth import admin

    print(admin.add(args.config, args.username, args.role, args.language, args.password_file))


def user_list(args: argparse.Namespace) -> None:
    from gateway.auth import admin

    print("\n".join(admin.list_users(args.config)))


def user_passwd(args: argparse.Namespace) -> None:
    from gateway.auth import admin

    print(admin.passwd(args.config, args.username, args.password_file))


def user_disable(args: argparse.Namespace) -> None:
    from gateway.auth import admin

    print(admin.set_disabled(args.config, args.username, True))


def user_enable(args: argparse.Namespace) -> None:
    from gateway.auth import admin

    print(admin.set_disabled(args.config, args.username, False))


def _user_commands(commands: argparse._SubParsersAction) -> None:
    user = commands.add_parser("user", help="logins for the gateway's dashboard and API")
    user_commands = user.add_subparsers(title="user commands", required=True,
                                        metavar="COMMAND")
    add = _command(user_commands, "add", user_add, "Add a user (the first admin, too); asks "
                   "for the password twice unless --password-file is given.")
    listing = _command(user_commands, "list", user_list, "List users, their roles and state.")
    passwd = _command(user_commands, "passwd", user_passwd,
                      "Set a user's password; ends their sessions.")
    disable = _command(user_commands, "disable", user_disable,
                       "Disable a user; ends their sessions at once.")
    enable = _command(user_commands, "enable", user_enable, "Enable a disabled user.")
    for sub in (add, listing, passwd, disable, enable):
        sub.add_argument("--config", "-c", type=Path, required=True,
                         help="gateway config file (TOML): names the metadata database")
    for sub in (add, passwd, disable, enable):
        sub.add_argument("--username", "-u", required=True)
    add.add_argument("--role", required=True,
                     help="operator, technician, manager or admin (docs/security.md)")
    add.add_argument("--language", default="es", help="dashboard language (default es)")
    for sub in (add, passwd):
        sub.add_argument("--password-file", metavar="FILE",
                         help="read the password from the first line of FILE (- = standard "
                         "input) instead of asking")


def _command(sub: argparse._SubParsersAction, name: str, handler: Callable[..., None],
             help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cacao-dryer", description="Solar cacao/coffee dryer: nodes, gateway, dashboard.")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    node = commands.add_parser("node", help="the agent on each dryer's Raspberry Pi")
    node_commands = node.add_subparsers(title="node commands", required=True, metavar="COMMAND")
    run = _command(node_commands, "run", node_run,
                   "Run a dryer node until stopped (SIGTERM / Ctrl-C).")
    check = _command(node_commands, "check-config", node_check_config,
                     "Validate a node config file and summarise it.")
    for sub in (run, check):
        sub.add_argument("--config", "-c", type=Path, required=True,
                         help="node config file (TOML)")
    run.add_argument("--broker", help="override the config's broker, e.g. "
                     "mqtt://192.168.1.10:1883")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning",
                                                             "error"])
    # Run on the gateway: broker login, ACL and config bundle for a new node (stdlib only).
    from gateway.provision import add_provision_parser

    add_provision_parser(node_commands)

    gateway = commands.add_parser("gateway", help="the collection center's server")
    gateway_commands = gateway.add_subparsers(title="gateway commands", required=True,
                                              metavar="COMMAND")
    gateway_run_parser = _command(gateway_commands, "run", gateway_run,
                                  "Ingest every node's readings until stopped.")
    gateway_run_parser.add_argument("--config", "-c", type=Path, required=True,
                                    help="gateway config file (TOML)")
    gateway_run_parser.add_argument("--broker", help="override the config's broker")
    gateway_run_parser.add_argument("--log-level", default="info",
                                    choices=["debug", "info", "warning", "error"])
    from gateway.backup import add_backup_parsers  # backup / restore (docs/deploy.md)

    add_backup_parsers(gateway_commands)

    dashboard = commands.add_parser("dashboard", help="the web dashboard on its own")
    dashboard_commands = dashboard.add_subparsers(title="dashboard commands", required=True,
                                                  metavar="COMMAND")
    dashboard_run_parser = _command(
        dashboard_commands, "run", dashboard_run,
        "Serve the HTTP API and dashboard alone (no ingest, no alert or threshold jobs: those "
        "run in `gateway run`, which serves the dashboard too), on the same metadata database "
        "and readings store as the gateway, with its own live subscription to the broker.")
    dashboard_run_parser.add_argument("--config", "-c", type=Path, required=True,
                                      help="the gateway's config file (TOML)")
    dashboard_run_parser.add_argument("--host", help="listen on this address instead of the "
                                      "config's api.host (0.0.0.0: the whole LAN)")
    dashboard_run_parser.add_argument("--port", type=_port,
                                      help="listen on this port instead of api.port")
    dashboard_run_parser.add_argument("--broker", help="override the config's broker")
    dashboard_run_parser.add_argument("--log-level", default="info",
                                      choices=["debug", "info", "warning", "error"])

    _user_commands(commands)

    schema = commands.add_parser("schema", help="the MQTT message contract")
    schema_commands = schema.add_subparsers(title="schema commands", required=True,
                                            metavar="COMMAND")
    export = _command(schema_commands, "export", schema_export,
                      "Write one JSON Schema per MQTT channel.")
    export.add_argument("--out", type=Path, default=Path("docs/schemas"),
                        help="folder for the JSON Schemas (default: docs/schemas)")

    demo_parser = _command(commands, "demo", demo, "A whole collection center on this "
                           "machine: a broker, simulated dryers on accelerated time, the "
                           "gateway (SQLite) and the dashboard, one login per role printed "
                           "here, and a batch drying within the first minute. Ctrl-C stops "
                           "everything.")
    demo_parser.add_argument("--nodes", type=int, default=3, help="simulated dryers (1-50)")
    demo_parser.add_argument("--speed", type=float, default=600.0,
                             help="simulated seconds per real second (default 600: one "
                             "minute is 10 hours)")
    demo_parser.add_argument("--broker", help="use this broker instead of starting one")
    demo_parser.add_argument("--duration", type=float, default=0.0,
                             help="stop after this many real seconds (0 = until Ctrl-C)")
    demo_parser.add_argument("--embedded-broker", action="store_true",
                             help="use the pure-Python amqtt broker (MQTT 3.1.1) even when "
                             "Mosquitto is installed: dryers and terminal table only (the "
                             "gateway needs MQTT 5)")
    demo_parser.add_argument("--workdir", type=Path, default=Path("var/demo"),
                             help="where the dryers', the gateway's and the broker's data, "
                             "configs and logs go; emptied of an earlier demo's files at "
                             "start (default var/demo)")
    demo_parser.add_argument("--port", type=_port, default=8080,
                             help="dashboard port (default 8080; the next free one if taken)")
    demo_parser.add_argument("--host", default="127.0.0.1",
                             help="dashboard address (default 127.0.0.1; 0.0.0.0 to open it "
                             "from a phone on the same network)")
    demo_parser.add_argument("--watch", action="store_true",
                             help="show the live table of every dryer in the terminal instead "
                             "of a status line")

    watch_parser = _command(commands, "watch", watch,
                            "Live table of every node's latest telemetry and status.")
    watch_parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    watch_parser.add_argument("--site", default="+", help="site id, or + for all")
    watch_parser.add_argument("--duration", type=float, default=0.0,
                              help="stop after N s (0 = never)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "nodes", 1) not in range(1, 51):
        parser.error("--nodes must be between 1 and 50")
    if not 0 < getattr(args, "speed", 1.0) <= 100_000:
        parser.error("--speed must be above 0 and at most 100000")
    try:
        args.handler(args)
    except CacaoDryerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
