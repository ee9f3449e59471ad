"""Provision a dryer node on the site's Mosquitto: its own MQTT login, its ACL, its config.

``provision_node`` (run on the gateway, as root or the broker's owner):

1. makes a strong random password (192 bits) and adds or replaces the node's user
   ``<site>.<node>`` in Mosquitto's password file with ``mosquitto_passwd`` (the password
   goes to the tool on standard input, never on a command line other users can see);
2. writes the node's block into the ACL file: publish its own telemetry, status and event
   topics, read its own config and command topics, nothing else. Re-provisioning replaces
   the block (never a second one); ``revoke_node`` removes the block and the login;
3. writes a bundle for the node: ``node.toml`` (from a template such as
   ``firmware/examples/pi-dht22-probe-pwm.toml``: ids, ``mqtts://`` broker, username, the
   paths of the password and CA files ON THE NODE), ``mqtt-password`` and ``ca.crt``; the
   config and the password are mode 0600;
4. the broker takes the change on SIGHUP (``reload_broker`` or ``systemctl reload mosquitto``).

Passwords are never logged or printed. The shipped broker config and ACL are in
``deploy/mosquitto/``; the design is in docs/security.md ("MQTT: credentials, ACLs and TLS").
The command line is ``cacao-dryer node provision`` (``add_provision_parser``) or
``python -m gateway.provision``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cacao_dryer.contract import ID_PATTERN, Channel, topic
from cacao_dryer.errors import CacaoDryerError, ConfigError
from firmware.config import parse_broker_url, parse_node_config

log = logging.getLogger("cacao_dryer.gateway.provision")

PASSWORD_BYTES = 24  # 192 random bits → 32 URL-safe characters
NODE_WRITES = (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT)
NODE_READS = (Channel.CONFIG, Channel.COMMAND)
DEFAULT_PASSWORD_FILE = Path("/etc/mosquitto/passwd")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/acl")
DEFAULT_CA_FILE = Path("/etc/mosquitto/certs/ca.crt")
DEFAULT_PID_FILE = Path("/run/mosquitto/mosquitto.pid")
DEFAULT_NODE_FOLDER = Path("/etc/cacao-dryer")  # where the bundle's files go on the node
CONFIG_NAME, PASSWORD_NAME, CA_NAME = "node.toml", "mqtt-password", "ca.crt"
RELOAD_HINT = "sudo systemctl reload mosquitto"


class ProvisionError(CacaoDryerError, RuntimeError):
    """Provisioning could not be done (message: one line, what and where)."""


@dataclass(frozen=True)
class Provisioned:
    """What ``provision_node`` wrote. ``bundle`` holds the files to copy to the node."""

    username: str
    bundle: Path
    config_file: Path
    password_file: Path
    ca_file: Path
    replaced: bool  # the node had been provisioned before (its old password no longer works)


# --- pure parts --------------------------------------------------------------------------------

def check_ids(site: str, node: str) -> None:
    """ProvisionError unless both are contract ids (lowercase letters, digits, dashes)."""
    for what, value in (("site", site), ("node", node)):
        if not re.fullmatch(ID_PATTERN, value):
            raise ProvisionError(f"{what} id {value!r}: use 1-40 lowercase letters, digits and "
                                 "dashes, starting with a letter or digit (e.g. secador-03)")


def node_username(site: str, node: str) -> str:
    """``<site>.<node>``: ids never contain a dot, so the name is unique across sites."""
    check_ids(site, node)
    return f"{site}.{node}"


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def _markers(site: str, node: str) -> tuple[str, str]:
    return f"# BEGIN node {site}/{node}", f"# END node {site}/{node}"


def acl_block(site: str, node: str) -> str:
    """The node's ACL lines: write its own telemetry/status/event, read its config/command.
    The status topic is also where its Last Will goes (the broker checks the will's topic
    against ``write`` when it publishes it)."""
    begin, end = _markers(site, node)
    lines = [begin, f"user {node_username(site, node)}"]
    lines += [f"topic write {topic(site, node, channel)}" for channel in NODE_WRITES]
    lines += [f"topic read {topic(site, node, channel)}" for channel in NODE_READS]
    return "\n".join([*lines, end]) + "\n"


def replace_acl_block(acl: str, site: str, node: str, block: str | None) -> tuple[str, bool]:
    """``acl`` with the node's block replaced by ``block`` (None: removed), and whether the
    node had a block. A new block goes at the end, after one blank line."""
    begin, end = _markers(site, node)
    lines = acl.splitlines()
    kept: list[str] = []
    found = False
    inside = False
    for line in lines:
        if line.strip() == begin:
            if inside:
                raise ProvisionError(f"ACL: {begin!r} twice without {end!r}: fix it by hand")
            inside, found = True, True
            continue
        if inside:
            if line.strip() == end:
                inside = False
            continue
        kept.append(line)
    if inside:
        raise ProvisionError(f"ACL: {begin!r} has no {end!r}: fix the file by hand")
    user = f"user {node_username(site, node)}"
    if any(line.strip() == user for line in kept):
        raise ProvisionError(f"ACL: {user!r} appears outside its provisioning block: "
                             "remove it by hand first")
    while kept and not kept[-1].strip():
        kept.pop()
    text = "\n".join(kept) + "\n" if kept else ""
    if block is not None:
        text += ("\n" if text else "") + block
    return text, found


_TABLE = re.compile(r"^\s*\[")


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string


def _set_top_level(lines: list[str], key: str, value: str) -> list[str]:
    """Set a top-level ``key = "value"`` (before the first table), keeping its comment."""
    pattern = re.compile(rf"^{key}\s*=\s*(\"[^\"]*\"|'[^']*')")
    first_table = next((i for i, line in enumerate(lines) if _TABLE.match(line)), len(lines))
    for index in range(first_table):
        if pattern.match(lines[index]):
            lines[index] = pattern.sub(lambda _: f"{key} = {_toml_string(value)}", lines[index])
            return lines
    return [*lines[:first_table], f"{key} = {_toml_string(value)}", *lines[first_table:]]


def node_config_text(template: str, *, site: str, node: str, broker: str, username: str,
                     password_file: Path, ca_file: Path, data_dir: str | None = None,
                     source: str = "template") -> str:
    """The node's config: ``template`` (its sensors, pins, comments kept) with this node's ids
    and an ``[mqtt]`` section for TLS with its own login. ConfigError if the result is not a
    valid node config."""
    try:
        old = tomllib.loads(template)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None
    old_mqtt = old.get("mqtt", {})
    lines = template.splitlines()
    lines = _set_top_level(lines, "node_id", node)
    lines = _set_top_level(lines, "site_id", site)
    if data_dir is not None:
        lines = _set_top_level(lines, "data_dir", data_dir)
    start = next((i for i, line in enumerate(lines) if line.strip() == "[mqtt]"), None)
    if start is None:
        stop = start = len(lines)
        lines.append("")
    else:
        stop = next((i for i in range(start + 1, len(lines)) if _TABLE.match(lines[i])),
                    len(lines))
        while stop > start + 1 and (not lines[stop - 1].strip()
                                    or lines[stop - 1].lstrip().startswith("#")):
            stop -= 1  # comments just above the next table belong to it
    section = [
        "[mqtt]",
        f"# Written by `cacao-dryer node provision` for {site}/{node}: TLS to the site's broker,",
        "# this node's own login (the ACL lets it publish only its own topics).",
        f"broker = {_toml_string(broker)}",
        f"protocol = {_toml_string(str(old_mqtt.get('protocol', '5')))}",
        f"username = {_toml_string(username)}",
        f"password_file = {_toml_string(str(password_file))}"
        "   # one line, readable only by the service",
        f"tls_ca_file = {_toml_string(str(ca_file))}   # the site's CA (not secret)",
    ]
    for key in ("keepalive_s", "max_inflight"):
        if key in old_mqtt:
            section.append(f"{key} = {int(old_mqtt[key])}")
    lines[start:stop] = section
    text = "\n".join(lines).rstrip("\n") + "\n"
    settings = parse_node_config(tomllib.loads(text), source)
    if (settings.site_id, settings.node_id, settings.mqtt.username) != (site, node, username):
        raise ConfigError(f"{source}: could not set node_id/site_id (write them as "
                          f'node_id = "..." at the top of the file)')
    return text


# --- files (the edge) --------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One provisioning at a time per broker folder (an flock on the folder itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _keep_owner(path: Path, mode: int, uid: int, gid: int) -> None:
    os.chmod(path, mode)
    if (os.stat(path).st_uid, os.stat(path).st_gid) != (uid, gid):
        try:
            os.chown(path, uid, gid)
        except PermissionError:
            raise ProvisionError(f"{path}: cannot give it back to its owner (uid {uid}): run "
                                 "as root (the broker could not read it)") from None


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never half a file); an
    existing file keeps its owner and mode (the broker, running as mosquitto, must read it)."""
    uid, gid = os.getuid(), os.getgid()
    if path.exists():
        info = path.stat()
        mode, uid, gid = info.st_mode & 0o7777, info.st_uid, info.st_gid
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        _keep_owner(Path(temporary), mode, uid, gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _mosquitto_passwd() -> str:
    tool = shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd", "/usr/sbin/mosquitto_passwd")
         if os.access(p, os.X_OK)), None)
    if tool is None:
        raise ProvisionError("mosquitto_passwd not found: install Mosquitto on the gateway "
                             "(sudo apt install mosquitto mosquitto-clients)")
    return tool


def password_users(password_file: Path) -> set[str]:
    """Usernames in a Mosquitto password file."""
    if not password_file.exists():
        return set()
    return {line.split(":", 1)[0] for line in password_file.read_text(encoding="utf-8")
            .splitlines() if ":" in line and not line.startswith("#")}


def set_broker_password(password_file: Path, username: str, password: str) -> None:
    """Add or replace ``username`` in the broker's password file (PBKDF2-SHA512 hash, by
    ``mosquitto_passwd``, the password on its standard input). Owner and mode are kept."""
    if "\n" in password or not password:
        raise ProvisionError("a broker password must be one non-empty line")
    if not password_file.exists():
        _write_atomic(password_file, "", 0o600)
    info = password_file.stat()
    result = subprocess.run([_mosquitto_passwd(), str(password_file), username],
                            input=f"{password}\n{password}\n", text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
        problem = (result.stderr or result.stdout).strip().splitlines()
        raise ProvisionError(f"mosquitto_passwd {password_file}: "
                             f"{problem[-1] if problem else f'exit {result.returncode}'}")
    _keep_owner(password_file, info.st_mode & 0o7777, info.st_uid, info.st_gid)


def remove_broker_password(password_file: Path, username: str) -> bool:
    """Remove ``username`` from the password file; False if it was not there."""
    if username not in password_users(password_file):
        return False
    info = password_file.stat()
    result = subprocess.run([_mosquitto_passwd(), "-D", str(password_file), username],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ProvisionError(f"mosquitto_passwd -D {password_file}: "
                             f"{(result.stderr or result.stdout).strip()}")
    _keep_owner(password_file, info.st_mode & 0o7777, info.st_uid, info.st_gid)
    return True


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProvisionError(f"{what} {path}: file not found") from None
    except OSError as exc:
        raise ProvisionError(f"{what} {path}: cannot read ({exc.strerror})") from None


def provision_node(site: str, node: str, *, broker: str, template: Path, out: Path,
                   password_file: Path = DEFAULT_PASSWORD_FILE,
                   acl_file: Path = DEFAULT_ACL_FILE, ca_file: Path = DEFAULT_CA_FILE,
                   node_folder: Path = DEFAULT_NODE_FOLDER,
                   data_dir: str | None = None) -> Provisioned:
    """Give node ``site``/``node`` a new login and ACL on the broker and write its bundle to
    ``out/<site>.<node>/``. Doing it again replaces the password (the old one stops working
    at the broker's next reload) and the ACL block. The broker needs a reload afterwards."""
    username = node_username(site, node)
    try:
        _host, _port, tls = parse_broker_url(broker)
    except ValueError as exc:
        raise ProvisionError(str(exc)) from None
    if not tls:
        raise ProvisionError(f"broker {broker!r}: nodes connect over TLS, use "
                             "mqtts://<gateway>:8883")
    ca_text = _read(ca_file, "CA certificate")
    if "BEGIN CERTIFICATE" not in ca_text:
        raise ProvisionError(f"CA certificate {ca_file}: not a PEM certificate")
    config = node_config_text(
        _read(template, "template"), site=site, node=node, broker=broker, username=username,
        password_file=node_folder / PASSWORD_NAME, ca_file=node_folder / CA_NAME,
        data_dir=data_dir, source=str(template))
    for broker_file in (password_file, acl_file):
        if not broker_file.parent.is_dir():
            raise ProvisionError(f"{broker_file.parent}: folder not found (is Mosquitto "
                                 "installed? see deploy/mosquitto/README.md)")
    password = new_password()
    bundle = out / username
    bundle.mkdir(parents=True, exist_ok=True)
    os.chmod(bundle, 0o700)
    with _locked(acl_file.parent):
        acl, replaced = replace_acl_block(_read(acl_file, "ACL"), site, node,
                                          acl_block(site, node))
        replaced = replaced or username in password_users(password_file)
        set_broker_password(password_file, username, password)
        _write_atomic(acl_file, acl, 0o600)
    bundle_password = bundle / PASSWORD_NAME
    _write_private(bundle_password, password + "\n")
    bundle_config = bundle / CONFIG_NAME
    _write_private(bundle_config, config)
    bundle_ca = bundle / CA_NAME
    bundle_ca.write_text(ca_text, encoding="utf-8")
    os.chmod(bundle_ca, 0o644)
    log.info("provisioned node %s/%s as MQTT user %s%s", site, node, username,
             " (replaced the previous login)" if replaced else "")
    return Provisioned(username, bundle, bundle_config, bundle_password, bundle_ca, replaced)


def _write_private(path: Path, text: str) -> None:
    """Create or replace ``path`` with mode 0600 from the start (never readable by others)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def revoke_node(site: str, node: str, *, password_file: Path = DEFAULT_PASSWORD_FILE,
                acl_file: Path = DEFAULT_ACL_FILE) -> bool:
    """Remove the node's login and ACL block; False if it had neither. After the broker's
    reload the node cannot connect (a connected one is disconnected)."""
    username = node_username(site, node)
    with _locked(acl_file.parent):
        acl, had_block = replace_acl_block(_read(acl_file, "ACL"), site, node, None)
        had_login = remove_broker_password(password_file, username)
        if had_block:
            _write_atomic(acl_file, acl, 0o600)
    if had_block or had_login:
        log.info("revoked node %s/%s (MQTT user %s)", site, node, username)
    return had_block or had_login


def reload_broker(pid_file: Path = DEFAULT_PID_FILE) -> int:
    """SIGHUP to the broker named in ``pid_file``: it re-reads the password and ACL files.
    Returns the pid."""
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except FileNotFoundError:
        raise ProvisionError(f"{pid_file}: not found (is Mosquitto running?); reload it with "
                             f"`{RELOAD_HINT}`") from None
    except ValueError:
        raise ProvisionError(f"{pid_file}: does not hold a process id") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ProvisionError(f"{pid_file}: process {pid} is not running (stale pid file); "
                             "start Mosquitto") from None
    except PermissionError:
        raise ProvisionError(f"not allowed to signal Mosquitto (pid {pid}): run as root or "
                             f"`{RELOAD_HINT}`") from None
    return pid


# --- command line ------------------------------------------------------------------------------

HELP = ("Give a dryer node its own MQTT login (password + ACL on this gateway's Mosquitto) "
        "and write its config bundle; --revoke takes them away. Reload the broker afterwards "
        "(--reload, or " + RELOAD_HINT + ").")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site id, e.g. coop-norte")
    parser.add_argument("--node", required=True, help="node id, e.g. secador-03")
    parser.add_argument("--revoke", action="store_true",
                        help="remove the node's login and ACL instead")
    parser.add_argument("--broker", help="URL the node uses for the broker, TLS: "
                        "mqtts://gateway.local:8883 (needed unless --revoke)")
    parser.add_argument("--template", type=Path, help="node config to start from (its "
                        "sensors and pins), e.g. firmware/examples/pi-dht22-probe-pwm.toml "
                        "(needed unless --revoke)")
    parser.add_argument("--out", type=Path, default=Path("provisioned"),
                        help="the bundle goes to OUT/<site>.<node>/ (default ./provisioned)")
    parser.add_argument("--data-dir", help="data_dir on the node (default: the template's)")
    parser.add_argument("--node-folder", type=Path, default=DEFAULT_NODE_FOLDER,
                        help=f"where the bundle's files go on the node (default "
                        f"{DEFAULT_NODE_FOLDER})")
    parser.add_argument("--password-file", type=Path, default=DEFAULT_PASSWORD_FILE,
                        help=f"Mosquitto's password file (default {DEFAULT_PASSWORD_FILE})")
    parser.add_argument("--acl-file", type=Path, default=DEFAULT_ACL_FILE,
                        help=f"Mosquitto's ACL file (default {DEFAULT_ACL_FILE})")
    parser.add_argument("--ca-file", type=Path, default=DEFAULT_CA_FILE,
                        help=f"the site CA's certificate (default {DEFAULT_CA_FILE})")
    parser.add_argument("--reload", action="store_true",
                        help="send SIGHUP to the broker afterwards (needs root)")
    parser.add_argument("--pid-file", type=Path, default=DEFAULT_PID_FILE,
                        help=f"the broker's pid file for --reload (default {DEFAULT_PID_FILE})")


def add_provision_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``provision`` to ``cacao-dryer node``'s subcommands."""
    parser = subparsers.add_parser("provision", help=HELP, description=HELP)
    _add_arguments(parser)
    parser.set_defaults(handler=run_provision)
    return parser


def run_provision(args: argparse.Namespace) -> None:
    """Do what the arguments say and print it (never the password); errors are raised as
    CacaoDryerError with one line."""
    if args.revoke:
        found = revoke_node(args.site, args.node, password_file=args.password_file,
                            acl_file=args.acl_file)
        username = node_username(args.site, args.node)
        print(f"revoked MQTT user {username}" if found
              else f"MQTT user {username} was not provisioned: nothing to revoke")
    else:
        if not args.broker:
            raise ProvisionError("--broker is needed, e.g. --broker mqtts://gateway.local:8883")
        if not args.template:
            raise ProvisionError("--template is needed, e.g. --template "
                                 "firmware/examples/pi-dht22-probe-pwm.toml")
        done = provision_node(
            args.site, args.node, broker=args.broker, template=args.template, out=args.out,
            password_file=args.password_file, acl_file=args.acl_file, ca_file=args.ca_file,
            node_folder=args.node_folder, data_dir=args.data_dir)
        folder = args.node_folder
        print(f"{'re-' if done.replaced else ''}provisioned node {args.site}/{args.node} "
              f"as MQTT user {done.username}; copy to the node:")
        print(f"  {done.config_file} -> {folder / CONFIG_NAME}")
        print(f"  {done.password_file} -> {folder / PASSWORD_NAME}  (secret, mode 0600, owner "
              "cacao-dryer; delete it here once copied)")
        print(f"  {done.ca_file} -> {folder / CA_NAME}")
    if args.reload:
        print(f"broker reloaded (SIGHUP to pid {reload_broker(args.pid_file)})")
    else:
        print(f"now reload the broker: {RELOAD_HINT}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.provision", description=HELP)
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_provision(args)
    except CacaoDryerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
