"""The shipped Mosquitto config (deploy/mosquitto/) on a REAL broker: no anonymous access, one
login per node, ACLs so a node publishes only its own topics and reads only its own config and
commands, TLS for nodes, provisioning and revoking nodes (gateway/provision.py) on the live
broker, and the real node agent and gateway ingest talking through it.

The broker runs the shipped cacao-dryer.conf with ONLY these lines replaced (asserted by the
first test): ``user`` (root in the tests), ``pid_file``, ``log_dest file``, ``include_dir``,
``password_file``, ``acl_file``, ``persistence_location``, ``cafile``/``certfile``/``keyfile``
(paths into the test's folder) and the two ``listener`` lines (free ports on 127.0.0.1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from support import wait_for
from support.mosquitto import MOSQUITTO_PASSWD, MosquittoBroker, free_port

from cacao_dryer.contract import (
    Channel,
    EventType,
    NodeConfig,
    NodeState,
    Thresholds,
    decode,
    encode,
    topic,
)
from cacao_dryer.errors import CacaoDryerError, ConfigError
from firmware.config import load_node_config
from gateway import provision
from gateway.config import parse_gateway_config
from gateway.ingest import Ingest
from gateway.provision import (
    ProvisionError,
    acl_block,
    node_config_text,
    node_username,
    provision_node,
    reload_broker,
    replace_acl_block,
    revoke_node,
    set_broker_password,
)
from gateway.stores.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
SHIPPED_CONFIG = DEPLOY / "cacao-dryer.conf"
SHIPPED_ACL = DEPLOY / "acl"
MAKE_CERTS = DEPLOY / "make-certs.sh"
SIMULATED = ROOT / "firmware" / "examples" / "simulated.toml"
HARDWARE = ROOT / "firmware" / "examples" / "pi-dht22-probe-pwm.toml"
SITE, OTHER_SITE = "coop-norte", "otra-coop"
NOT_AUTHORIZED = 0x87
BAD_LOGIN = 0x86
SUBSTITUTED = ("user ", "pid_file ", "log_dest file ", "include_dir ", "password_file ",
               "acl_file ", "persistence_location ", "cafile ", "certfile ", "keyfile ",
               "listener ")


# --- the shipped config, with paths and ports substituted ----------------------------------------

def render_config(folder: Path, certs: Path, gateway_port: int, node_port: int) -> str:
    """The shipped config for a private test broker: only SUBSTITUTED lines change."""
    listeners = {"listener 1883 127.0.0.1": f"listener {gateway_port} 127.0.0.1",
                 "listener 8883": f"listener {node_port} 127.0.0.1"}
    replacements = {
        "user ": "user root",  # the tests run as root: keep it (mosquitto would drop to
        #                        'mosquitto', who cannot read the test's root-owned files)
        "pid_file ": f"pid_file {folder / 'mosquitto.pid'}",
        "log_dest file ": f"log_dest file {folder / 'mosquitto.log'}",
        "include_dir ": f"include_dir {folder / 'conf.d'}",
        "password_file ": f"password_file {folder / 'passwd'}",
        "acl_file ": f"acl_file {folder / 'acl'}",
        "persistence_location ": f"persistence_location {folder / 'data'}/",
        "cafile ": f"cafile {certs / 'ca.crt'}",
        "certfile ": f"certfile {certs / 'broker.crt'}",
        "keyfile ": f"keyfile {certs / 'broker.key'}",
    }
    out = []
    for line in SHIPPED_CONFIG.read_text().splitlines():
        key = next((k for k in replacements if line.startswith(k)), None)
        out.append(listeners.get(line) or (replacements[key] if key else line))
    return "\n".join(out) + "\n"


@dataclass
class Node:
    site: str
    node: str
    username: str
    password: str
    bundle: Path


@dataclass
class Site:
    folder: Path
    broker: MosquittoBroker
    certs: Path
    gateway_port: int
    node_port: int
    passwords: dict[str, str]
    nodes: dict[str, Node]

    @property
    def password_file(self) -> Path:
        return self.folder / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.folder / "acl"

    @property
    def pid_file(self) -> Path:
        return self.folder / "mosquitto.pid"

    def provision(self, site: str, node: str, template: Path = SIMULATED) -> Node:
        done = provision_node(site, node, broker=f"mqtts://127.0.0.1:{self.node_port}",
                              template=template, out=self.folder / "bundles",
                              password_file=self.password_file, acl_file=self.acl_file,
                              ca_file=self.certs / "ca.crt",
                              node_folder=self.folder / "bundles" / f"{site}.{node}",
                              data_dir=str(self.folder / "node-data" / f"{site}.{node}"))
        password = done.password_file.read_text().strip()
        self.nodes[done.username] = Node(site, node, done.username, password, done.bundle)
        return self.nodes[done.username]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site CA and a broker certificate for 127.0.0.1, made by the shipped script."""
    folder = tmp_path_factory.mktemp("certs")
    result = subprocess.run([str(MAKE_CERTS), str(folder), "IP:127.0.0.1", "DNS:localhost"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert oct((folder / "ca.key").stat().st_mode & 0o777) == "0o600"
    return folder


@pytest.fixture
def site(tmp_path: Path, certs: Path) -> Iterator[Site]:
    folder = tmp_path / "broker"
    (folder / "conf.d").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "acl").write_text(SHIPPED_ACL.read_text())
    passwords = {"cacao-gateway": "gateway-secret-123", "cacao-viewer": "viewer-secret-123"}
    for user, password in passwords.items():
        set_broker_password(folder / "passwd", user, password)
    gateway_port, node_port = free_port(), free_port()
    while node_port == gateway_port:
        node_port = free_port()
    broker = MosquittoBroker(folder, config=render_config(folder, certs, gateway_port,
                                                          node_port),
                             port=node_port, log_file=folder / "mosquitto.log")
    state = Site(folder, broker, certs, gateway_port, node_port, passwords, {})
    state.provision(SITE, "secador-01")
    state.provision(SITE, "secador-02")
    state.provision(OTHER_SITE, "secador-01")  # same node id, another site
    broker.start()
    yield state
    broker.kill()


# --- a test MQTT client that reports what the broker answered ------------------------------------

class Client:
    """paho client, TLS to the node listener or plain to the gateway listener; records the
    CONNACK, every PUBACK reason code and every message received."""

    def __init__(self, site: Site, username: str | None, password: str | None = None, *,
                 gateway_listener: bool = False, v5: bool = True, client_id: str = "",
                 will: tuple[str, bytes] | None = None, ca: Path | bool | None = True) -> None:
        self.site = site
        self.port = site.gateway_port if gateway_listener else site.node_port
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                   protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if username is not None:
            self._client.username_pw_set(username, password)
        if not gateway_listener and ca is not False:
            self._client.tls_set(ca_certs=str(site.certs / "ca.crt") if ca is True else ca)
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self.acks: dict[int, ReasonCode] = {}
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._answered = threading.Event()
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: ReasonCode, properties: object) -> None:
        self.connack = reason
        self._answered.set()

    def _on_disconnect(self, *args: object) -> None:
        self.disconnected.set()
        self._answered.set()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int,
                    reason: ReasonCode, properties: Properties) -> None:
        with self._lock:
            self.acks[mid] = reason

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int,
                      reasons: list[ReasonCode], properties: Properties) -> None:
        with self._lock:
            self._subacks[mid] = reasons

    def connect(self) -> ReasonCode | None:
        """Connect and wait for the broker's answer: its CONNACK reason, or None when it
        closed the connection without one."""
        self._client.connect("127.0.0.1", self.port, keepalive=10)
        self._client.loop_start()
        wait_for(self._answered.is_set, 10, "the broker's answer to CONNECT")
        return self.connack

    def connected(self) -> Client:
        reason = self.connect()
        assert reason is not None and not reason.is_failure, f"refused: {reason}"
        return self

    def subscribe(self, *filters: str) -> None:
        for name in filters:
            _, mid = self._client.subscribe(name, qos=1)
            wait_for(lambda mid=mid: mid in self._subacks, 10, f"SUBACK for {name}")

    def publish(self, name: str, payload: bytes, retain: bool = False) -> ReasonCode | None:
        """QoS 1; the PUBACK's reason code (under MQTT 3.1.1 always a success)."""
        info = self._client.publish(name, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        return self.acks.get(info.mid)

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [(name, payload) for name, payload, _ in self.messages]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def node_client(site: Site, clients: list[Client], username: str, **options: object) -> Client:
    password = site.nodes[username].password
    client = Client(site, username, password, **options)  # type: ignore[arg-type]
    clients.append(client)
    return client


def gateway_client(site: Site, clients: list[Client], user: str = "cacao-gateway",
                   **options: object) -> Client:
    client = Client(site, user, site.passwords[user], gateway_listener=True,
                    **options)  # type: ignore[arg-type]
    clients.append(client)
    return client


A, B, C = f"{SITE}.secador-01", f"{SITE}.secador-02", f"{OTHER_SITE}.secador-01"


def accepted(reason: ReasonCode | None) -> bool:
    """The broker took the message (success, or v5's 'no matching subscribers')."""
    return reason is not None and not reason.is_failure


def own(channel: Channel, username: str = A) -> str:
    site_id, node_id = username.split(".")
    return topic(site_id, node_id, channel)


# --- the config itself ---------------------------------------------------------------------------

def test_the_test_broker_runs_the_shipped_config_with_only_paths_ports_and_user_replaced(
        tmp_path):
    shipped = SHIPPED_CONFIG.read_text().splitlines()
    rendered = render_config(tmp_path, tmp_path / "certs", 12001, 12002).splitlines()
    assert len(rendered) == len(shipped)
    changed = [(old, new) for old, new in zip(shipped, rendered, strict=True) if old != new]
    assert all(old.startswith(SUBSTITUTED) for old, _ in changed), changed
    assert sorted(old.split()[0] for old, _ in changed) == sorted(
        ["user", "pid_file", "log_dest", "include_dir", "password_file", "acl_file",
         "persistence_location", "cafile", "certfile", "keyfile", "listener", "listener"])
    settings = {line.split()[0]: line.split(None, 1)[1] for line in shipped
                if line.strip() and not line.startswith("#") and len(line.split()) > 1}
    assert settings["allow_anonymous"] == "false"
    assert settings["use_username_as_clientid"] == "true"
    assert int(settings["max_queued_messages"]) >= 1_000_000
    assert "listener 1883 127.0.0.1" in shipped  # the plain listener is loopback only
    assert shipped.index("listener 8883") < shipped.index("certfile /etc/mosquitto/certs/"
                                                          "broker.crt")


def test_nobody_gets_in_without_the_right_password_or_without_tls(site, clients):
    anonymous = Client(site, None)
    clients.append(anonymous)
    assert anonymous.connect().value == NOT_AUTHORIZED
    wrong = Client(site, A, "not-the-password")
    clients.append(wrong)
    assert wrong.connect().value in (BAD_LOGIN, NOT_AUTHORIZED)
    other_node = Client(site, A, site.nodes[B].password)  # B's password does not open A
    clients.append(other_node)
    assert other_node.connect().is_failure
    anonymous_gateway = Client(site, None, gateway_listener=True)
    clients.append(anonymous_gateway)
    assert anonymous_gateway.connect().value == NOT_AUTHORIZED
    # plain MQTT to the TLS port: the broker never answers with a CONNACK
    plain = Client(site, A, site.nodes[A].password, ca=False)
    clients.append(plain)
    with contextlib.suppress(OSError):  # or the connection is reset while sending CONNECT
        assert plain.connect() is None
    # a node that does not trust the site's CA refuses the broker (no impostor broker)
    untrusting = Client(site, A, site.nodes[A].password, ca=None)  # system CAs only
    clients.append(untrusting)
    with pytest.raises(ssl.SSLCertVerificationError):
        untrusting.connect()
    assert node_client(site, clients, A).connect().value == 0


def test_a_node_publishes_its_own_topics_and_the_gateway_shared_subscription_gets_them(
        site, clients):
    gateway = gateway_client(site, clients).connected()
    gateway.subscribe(*(f"$share/cacao-gateway/cacao/v1/{SITE}/+/{c.value}"
                        for c in (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT)))
    node = node_client(site, clients, A).connected()
    for channel in (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT):
        assert accepted(node.publish(own(channel), channel.value.encode()))
    wait_for(lambda: len(gateway.received()) == 3, 10, "the node's three messages")
    assert gateway.received() == [(own(c), c.value.encode())
                                  for c in (Channel.TELEMETRY, Channel.STATUS, Channel.EVENT)]


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt3.1.1"])
def test_a_node_cannot_publish_as_another_node_nor_send_itself_configs(site, clients, v5):
    gateway = gateway_client(site, clients).connected()
    gateway.subscribe("cacao/v1/#")
    node = node_client(site, clients, A, v5=v5).connected()
    forged = [own(Channel.TELEMETRY, B), own(Channel.STATUS, B), own(Channel.EVENT, B),
              own(Channel.TELEMETRY, C),  # the same node id at another site
              own(Channel.CONFIG), own(Channel.COMMAND),  # its own thresholds or commands
              f"cacao/v1/{SITE}/secador-01/alert/over_temperature", "cacao/v1/x", "otro/tema"]
    for name in forged:
        reason = node.publish(name, b"forged")
        if v5:  # MQTT v5: the broker says so in the PUBACK; the node's outbox keeps it
            assert reason is not None and reason.value == NOT_AUTHORIZED, name
        else:   # MQTT 3.1.1 has no way to say it: acknowledged as usual, silently dropped
            assert reason is not None and not reason.is_failure
    node.publish(own(Channel.TELEMETRY), b"genuine")
    wait_for(lambda: (own(Channel.TELEMETRY), b"genuine") in gateway.received(), 10,
             "the genuine reading")
    # the broker keeps one client's messages in order: everything forged would be before it
    assert gateway.received() == [(own(Channel.TELEMETRY), b"genuine")]
    assert node.connected  # refused publishes do not cost the node its connection


def test_a_node_cannot_read_another_nodes_commands_or_configs(site, clients):
    spy = node_client(site, clients, A).connected()
    spy.subscribe(own(Channel.COMMAND, B), own(Channel.CONFIG, B), "cacao/v1/#", "#")
    target = node_client(site, clients, B).connected()
    target.subscribe(own(Channel.COMMAND, B), own(Channel.CONFIG, B))
    gateway = gateway_client(site, clients).connected()
    assert accepted(gateway.publish(own(Channel.CONFIG, B), b"config for B", retain=True))
    assert accepted(gateway.publish(own(Channel.COMMAND, B), b"command for B"))
    assert accepted(gateway.publish(own(Channel.COMMAND, A), b"command for A"))
    wait_for(lambda: len(target.received()) == 2, 10, "B's config and command")
    assert sorted(target.received()) == [(own(Channel.COMMAND, B), b"command for B"),
                                         (own(Channel.CONFIG, B), b"config for B")]
    wait_for(lambda: spy.received() != [], 10, "A's own command")
    # one copy per matching subscription ('cacao/v1/#' and '#'), and nothing else
    assert set(spy.received()) == {(own(Channel.COMMAND, A), b"command for A")}
    # nor B's retained config later, nor another node's telemetry
    late = node_client(site, clients, A).connected()
    late.subscribe(own(Channel.CONFIG, B), own(Channel.TELEMETRY, B), own(Channel.COMMAND))
    target.publish(own(Channel.TELEMETRY, B), b"B's reading")
    gateway.publish(own(Channel.COMMAND, A), b"second for A")
    wait_for(lambda: late.received() != [], 10, "A's second command")
    assert set(late.received()) == {(own(Channel.COMMAND, A), b"second for A")}


def test_a_nodes_retained_config_waits_for_it_and_a_viewer_reads_but_cannot_command(
        site, clients):
    gateway = gateway_client(site, clients).connected()
    config = encode(NodeConfig(version=3, issued_at="2026-01-10T15:00:00Z",
                               thresholds=Thresholds()))
    assert accepted(gateway.publish(own(Channel.CONFIG), config, retain=True))
    alert = f"cacao/v1/{SITE}/secador-01/alert/over_temperature"
    assert accepted(gateway.publish(alert, b"{}", retain=True))
    # the gateway cannot forge readings either
    assert gateway.publish(own(Channel.TELEMETRY), b"forged").value == NOT_AUTHORIZED
    node = node_client(site, clients, A).connected()
    node.subscribe(own(Channel.CONFIG))
    wait_for(lambda: node.messages != [], 10, "the retained config")
    assert node.messages == [(own(Channel.CONFIG), config, True)]

    viewer = gateway_client(site, clients, "cacao-viewer").connected()
    viewer.subscribe("cacao/v1/#")
    assert viewer.publish(own(Channel.COMMAND), b"{}").value == NOT_AUTHORIZED
    assert viewer.publish(own(Channel.CONFIG), b"{}").value == NOT_AUTHORIZED
    gateway.publish(own(Channel.COMMAND), b"not for viewers")
    node.publish(own(Channel.TELEMETRY), b"reading")
    wait_for(lambda: (own(Channel.TELEMETRY), b"reading") in viewer.received(), 10,
             "the reading at the viewer")
    assert sorted(name for name, _ in viewer.received()) == sorted(
        [own(Channel.CONFIG), alert, own(Channel.TELEMETRY)])


def _mosquitto_sub(site: Site, username: str, will_topic: str, payload: str,
                   log: Path) -> subprocess.Popen[bytes]:
    """A separate client process with a Last Will (SIGKILL = a node losing power)."""
    return subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(site.node_port), "--cafile",
         str(site.certs / "ca.crt"), "-u", username, "-P", site.nodes[username].password,
         "-t", own(Channel.COMMAND, username), "-q", "1", "-V", "5", "-k", "5",
         "--will-topic", will_topic, "--will-payload", payload, "--will-qos", "1",
         "--will-retain"], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_the_last_will_reaches_the_gateway_and_a_forged_one_does_not(site, clients, tmp_path):
    gateway = gateway_client(site, clients).connected()
    gateway.subscribe(f"cacao/v1/{SITE}/+/status")
    genuine = _mosquitto_sub(site, A, own(Channel.STATUS, A), "A offline", tmp_path / "a.log")
    forger = _mosquitto_sub(site, B, own(Channel.STATUS, A), "forged offline",
                            tmp_path / "b.log")
    try:
        wait_for(lambda: site.broker.log_tail(50).count("as coop-norte.secador-0") >= 2, 10,
                 "both clients to connect")
        os.kill(forger.pid, signal.SIGKILL)
        forger.wait()
        os.kill(genuine.pid, signal.SIGKILL)
        genuine.wait()
        wait_for(lambda: gateway.received() != [], 15, "A's Last Will")
        wait_for(lambda: "secador-01 disconnected" in site.broker.log_tail(50)
                 or "secador-01 closed" in site.broker.log_tail(50), 10, "A's disconnect")
        assert gateway.received() == [(own(Channel.STATUS, A), b"A offline")]
    finally:
        for process in (genuine, forger):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_node_cannot_take_over_another_nodes_session_by_its_client_id(site, clients):
    victim = node_client(site, clients, A, client_id=A).connected()
    victim.subscribe(own(Channel.COMMAND))
    # B connects with A's client id (A's username, and the id the node agent would use)
    for client_id in (A, f"node-{SITE}-secador-01"):
        node_client(site, clients, B, client_id=client_id).connected()
    gateway = gateway_client(site, clients).connected()
    gateway.publish(own(Channel.COMMAND), b"still here?")
    wait_for(lambda: victim.received() != [], 10, "A's command")
    assert not victim.disconnected.is_set()


def test_a_packet_larger_than_the_limit_disconnects_the_node(site, clients):
    node = node_client(site, clients, A).connected()
    node._client.publish(own(Channel.TELEMETRY), b"x" * 200_000, qos=1)
    wait_for(node.disconnected.is_set, 10, "the broker to disconnect the node")


# --- provisioning on the live broker -------------------------------------------------------------

def acl_users(site: Site) -> list[str]:
    return [line.split()[1] for line in site.acl_file.read_text().splitlines()
            if line.startswith("user ")]


def test_a_provisioned_node_connects_after_the_reload_and_a_revoked_one_cannot(site, clients):
    gateway = gateway_client(site, clients).connected()
    gateway.subscribe(f"cacao/v1/{SITE}/+/telemetry")
    new = site.provision(SITE, "secador-03")
    before = Client(site, new.username, new.password)
    clients.append(before)
    assert before.connect().is_failure  # not yet: the broker has not re-read its files
    assert reload_broker(site.pid_file) == int(site.pid_file.read_text())
    wait_for(lambda: "Reloading config" in site.broker.log_tail(50), 10, "the reload")
    node = node_client(site, clients, new.username).connected()
    assert accepted(node.publish(own(Channel.TELEMETRY, new.username), b"hola"))
    assert node.publish(own(Channel.TELEMETRY), b"forged").value == NOT_AUTHORIZED
    wait_for(lambda: gateway.received() != [], 10, "the new node's reading")
    assert gateway.received() == [(own(Channel.TELEMETRY, new.username), b"hola")]

    # re-provisioning: a new password, the same single ACL block
    again = site.provision(SITE, "secador-03")
    assert again.password != new.password
    assert acl_users(site).count(new.username) == 1
    reload_broker(site.pid_file)
    wait_for(node.disconnected.is_set, 10, "the old login to be disconnected at the reload")
    old = Client(site, new.username, new.password)
    clients.append(old)
    assert old.connect().is_failure
    node_client(site, clients, new.username).connected()

    assert revoke_node(SITE, "secador-03", password_file=site.password_file,
                       acl_file=site.acl_file)
    assert new.username not in acl_users(site)
    assert new.username not in site.password_file.read_text()
    assert acl_users(site) == ["cacao-gateway", "cacao-viewer", A, B, C]
    reload_broker(site.pid_file)
    wait_for(clients[-1].disconnected.is_set, 10, "the revoked node to be disconnected")
    revoked = node_client(site, clients, new.username)
    assert revoked.connect().is_failure
    assert not revoke_node(SITE, "secador-03", password_file=site.password_file,
                           acl_file=site.acl_file)  # nothing left to revoke


def test_the_real_node_agent_and_gateway_ingest_work_through_tls_and_acls(site, tmp_path):
    """The best single proof: `cacao-dryer node run` with its provisioned config (TLS, its own
    login) and the gateway's own ingest (its login, shared subscription) store readings; a
    config pushed by the gateway user is applied and acknowledged."""
    node = site.nodes[A]
    (node.bundle / "node.toml").write_text(
        (node.bundle / "node.toml").read_text().replace("speed = 60 ", "speed = 100 "))
    settings = parse_gateway_config({
        "sites": [SITE], "data_dir": str(tmp_path / "gw"),
        "storage": {"kind": "sqlite", "path": str(tmp_path / "gw" / "readings.sqlite3")},
        "mqtt": {"broker": f"mqtt://127.0.0.1:{site.gateway_port}",
                 "username": "cacao-gateway", "password_file": str(tmp_path / "gw-password"),
                 "client_id": "cacao-gateway", "shared_group": "cacao-gateway"},
        "batch_max_latency_s": 0.05})
    settings.data_dir.mkdir(parents=True)
    (tmp_path / "gw-password").write_text(site.passwords["cacao-gateway"] + "\n")
    ingest = Ingest(settings, SqliteStore(settings.storage.path))
    ingest.start()
    log = tmp_path / "node.log"
    process = subprocess.Popen([sys.executable, "-m", "cacao_dryer.cli", "node", "run",
                                "--config", str(node.bundle / "node.toml")],
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    events = gateway_client(site, [])
    try:
        wait_for(lambda: ingest.connected, 10, "the gateway ingest to connect")
        assert all(name.startswith("$share/cacao-gateway/") for name in ingest.subscriptions())
        events.connected().subscribe(own(Channel.EVENT), own(Channel.STATUS))
        wait_for(lambda: ingest.store.seq_ranges(SITE, "secador-01") != [], 60,
                 f"stored readings of the node; node log: {log.read_text()[-2000:]}")
        config = NodeConfig(version=5, issued_at="2026-01-10T15:00:00Z",
                            issued_by="tecnico", thresholds=Thresholds(air_temp_warn_c=50.0))
        assert accepted(events.publish(own(Channel.CONFIG), encode(config), retain=True))

        def applied() -> bool:
            return any(decode(Channel.EVENT, p).type is EventType.CONFIG_APPLIED
                       and decode(Channel.EVENT, p).data["version"] == 5
                       for name, p in events.received() if name.endswith("/event"))

        wait_for(applied, 30, "config_applied for version 5")
        statuses = [json.loads(p)["state"] for name, p in events.received()
                    if name.endswith("/status")]
        assert NodeState.ONLINE.value in statuses
        process.terminate()
        assert process.wait(30) == 0
        wait_for(lambda: json.loads([p for name, p in events.received()
                                     if name.endswith("/status")][-1])["state"]
                 == NodeState.OFFLINE.value, 10, "the offline status")
        ranges = ingest.store.seq_ranges(SITE, "secador-01")
        assert ranges[0][0] == 1 and len(ranges) == 1, ranges  # nothing lost, nothing refused
        assert "refused" not in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        events.close()
        ingest.stop()
        ingest.store.close()


# --- provisioning: the pure parts and the command ------------------------------------------------

def test_the_acl_block_names_exactly_the_nodes_own_topics():
    assert acl_block(SITE, "secador-01").splitlines() == [
        "# BEGIN node coop-norte/secador-01",
        "user coop-norte.secador-01",
        "topic write cacao/v1/coop-norte/secador-01/telemetry",
        "topic write cacao/v1/coop-norte/secador-01/status",
        "topic write cacao/v1/coop-norte/secador-01/event",
        "topic read cacao/v1/coop-norte/secador-01/config",
        "topic read cacao/v1/coop-norte/secador-01/command",
        "# END node coop-norte/secador-01",
    ]


def test_re_provisioning_replaces_the_block_and_revoking_removes_only_that_node():
    shipped = SHIPPED_ACL.read_text()
    one, found = replace_acl_block(shipped, SITE, "secador-01", acl_block(SITE, "secador-01"))
    assert not found
    two, _ = replace_acl_block(one, SITE, "secador-02", acl_block(SITE, "secador-02"))
    again, found = replace_acl_block(two, SITE, "secador-01", acl_block(SITE, "secador-01"))
    assert found and again.count("user coop-norte.secador-01") == 1
    assert again.count("user coop-norte.secador-02") == 1
    removed, found = replace_acl_block(again, SITE, "secador-01", None)
    assert found and "secador-01" not in removed and "user coop-norte.secador-02" in removed
    back, _ = replace_acl_block(removed, SITE, "secador-02", None)
    assert back == shipped
    with pytest.raises(ProvisionError, match="has no"):
        replace_acl_block(shipped + "# BEGIN node coop-norte/secador-01\n", SITE,
                          "secador-01", None)
    with pytest.raises(ProvisionError, match="outside its provisioning block"):
        replace_acl_block(shipped + "user coop-norte.secador-01\n", SITE, "secador-01", None)


@pytest.mark.parametrize("site_id, node_id", [("Coop", "secador-01"), ("coop", "secador.01"),
                                              ("coop", ""), ("coop", "-x"), ("a" * 41, "x")])
def test_ids_that_are_not_contract_ids_are_refused_in_one_line(site_id, node_id):
    with pytest.raises(ProvisionError, match="lowercase letters") as error:
        node_username(site_id, node_id)
    assert "\n" not in str(error.value)


def test_the_node_config_keeps_the_templates_hardware_and_comments():
    template = HARDWARE.read_text()
    text = node_config_text(template, site=SITE, node="secador-07",
                            broker="mqtts://gateway.local:8883", username=f"{SITE}.secador-07",
                            password_file=Path("/etc/cacao-dryer/mqtt-password"),
                            ca_file=Path("/etc/cacao-dryer/ca.crt"))
    assert text.count("[mqtt]") == 1
    assert 'node_id = "secador-07"          # lowercase letters' in text
    assert "PWM-controlled fans" in text  # the template's comments stay
    kept = [line for line in template.splitlines() if line.startswith(("[[", "pin ="))]
    assert kept == [line for line in text.splitlines() if line.startswith(("[[", "pin ="))]
    with pytest.raises(ConfigError, match="node config: not valid TOML"):
        node_config_text("node_id = ", site=SITE, node="x", broker="mqtts://h:8883",
                         username="u", password_file=Path("p"), ca_file=Path("c"),
                         source="node config")
    with pytest.raises(ConfigError, match=r"broken\.toml: sample_interval_s"):
        node_config_text(template.replace("sample_interval_s = 10", "sample_interval_s = 0"),
                         site=SITE, node="x", broker="mqtts://h:8883", username="u",
                         password_file=Path("p"), ca_file=Path("c"), source="broken.toml")


def test_the_bundle_is_a_valid_private_node_config(site):
    node = site.nodes[A]
    config = node.bundle / "node.toml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    assert oct((node.bundle / "mqtt-password").stat().st_mode & 0o777) == "0o600"
    assert oct(node.bundle.stat().st_mode & 0o777) == "0o700"
    assert node.password not in config.read_text()
    assert len(node.password) >= 32
    settings = load_node_config(config)
    assert (settings.site_id, settings.node_id) == (SITE, "secador-01")
    assert settings.mqtt.username == A
    assert settings.mqtt.password_file == node.bundle / "mqtt-password"
    assert settings.mqtt.tls_ca_file == node.bundle / "ca.crt"
    assert settings.mqtt.broker == f"mqtts://127.0.0.1:{site.node_port}"
    assert settings.simulated  # from the simulated template


def test_provisioning_keeps_the_broker_files_owner_and_mode(tmp_path, certs):
    acl, passwd = tmp_path / "acl", tmp_path / "passwd"
    acl.write_text(SHIPPED_ACL.read_text())
    passwd.touch()
    os.chmod(acl, 0o640)
    os.chmod(passwd, 0o640)
    group = 65534 if os.getuid() == 0 else os.getgid()  # e.g. root:nogroup → mosquitto's
    os.chown(acl, os.getuid(), group)
    provision_node(SITE, "secador-01", broker="mqtts://gateway.local:8883", template=HARDWARE,
                   out=tmp_path / "out", password_file=passwd, acl_file=acl,
                   ca_file=certs / "ca.crt")
    assert (acl.stat().st_mode & 0o777, acl.stat().st_gid) == (0o640, group)
    assert passwd.stat().st_mode & 0o777 == 0o640
    result = subprocess.run([MOSQUITTO_PASSWD, "-U", str(passwd)], capture_output=True,
                            check=False)  # a hashed file: nothing to convert, still valid
    assert result.returncode == 0


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The command a technician types: ``cacao-dryer node provision ...``."""
    return subprocess.run([sys.executable, "-m", "cacao_dryer.cli", "node", "provision", *argv],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def test_the_command_provisions_revokes_and_explains_errors_in_one_line(tmp_path, certs):
    acl, passwd = tmp_path / "acl", tmp_path / "passwd"
    acl.write_text(SHIPPED_ACL.read_text())
    files = ["--acl-file", str(acl), "--password-file", str(passwd),
             "--ca-file", str(certs / "ca.crt")]
    done = run_cli("--site", SITE, "--node", "secador-09", "--broker",
                   "mqtts://gateway.local:8883", "--template", str(HARDWARE),
                   "--out", str(tmp_path / "out"), *files)
    assert done.returncode == 0, done.stderr
    password = (tmp_path / "out" / f"{SITE}.secador-09" / "mqtt-password").read_text().strip()
    assert password not in done.stdout + done.stderr  # never printed
    assert "provisioned node coop-norte/secador-09 as MQTT user coop-norte.secador-09" \
        in done.stdout
    assert "systemctl reload mosquitto" in done.stdout
    again = run_cli("--site", SITE, "--node", "secador-09", "--broker",
                    "mqtts://gateway.local:8883", "--template", str(HARDWARE),
                    "--out", str(tmp_path / "out"), *files)
    assert again.stdout.startswith("re-provisioned")
    revoked = run_cli("--site", SITE, "--node", "secador-09", "--revoke", *files)
    assert revoked.returncode == 0 and "revoked MQTT user coop-norte.secador-09" in revoked.stdout
    assert acl.read_text() == SHIPPED_ACL.read_text()

    for argv, message in [
        (["--broker", "mqtt://gateway.local:1883", "--template", str(HARDWARE)],
         "nodes connect over TLS"),
        (["--broker", "mqtts://gateway.local:8883"], "--template is needed"),
        (["--template", str(HARDWARE)], "--broker is needed"),
        (["--broker", "mqtts://gateway.local:8883", "--template", str(tmp_path / "no.toml")],
         "no.toml: file not found"),
        (["--broker", "mqtts://gateway.local:8883", "--template", str(HARDWARE),
          "--ca-file", str(HARDWARE)], "not a PEM certificate"),
        (["--reload", "--revoke", "--pid-file", str(tmp_path / "none.pid")],
         "none.pid: not found"),
    ]:
        failed = run_cli("--site", SITE, "--node", "secador-09", "--out", str(tmp_path / "o"),
                         *files, *argv)
        assert failed.returncode == 2, (argv, failed.stderr)
        assert failed.stderr.startswith("error: ") and message in failed.stderr, failed.stderr
        assert failed.stderr.count("\n") == 1


def test_the_cli_wiring_adds_node_provision(tmp_path, certs):
    """What cacao_dryer/cli.py adds: ``add_provision_parser(node_commands)``."""
    parser = argparse.ArgumentParser(prog="cacao-dryer node")
    add = provision.add_provision_parser(parser.add_subparsers())
    assert add.prog.endswith("provision")
    args = parser.parse_args(["provision", "--site", SITE, "--node", "secador-04", "--revoke",
                              "--acl-file", str(tmp_path / "acl"), "--password-file",
                              str(tmp_path / "passwd")])
    (tmp_path / "acl").write_text(SHIPPED_ACL.read_text())
    assert args.handler is provision.run_provision
    args.handler(args)  # nothing to revoke: no error
    bad = parser.parse_args(["provision", "--site", "Coop", "--node", "x", "--revoke"])
    with pytest.raises(CacaoDryerError, match="site id 'Coop'"):
        bad.handler(bad)


def test_reloading_a_broker_that_is_not_running_says_so(tmp_path):
    stale = tmp_path / "stale.pid"
    process = subprocess.Popen(["true"])
    process.wait()
    stale.write_text(f"{process.pid}\n")
    with pytest.raises(ProvisionError, match="is not running"):
        reload_broker(stale)
    stale.write_text("garbage")
    with pytest.raises(ProvisionError, match="does not hold a process id"):
        reload_broker(stale)


def test_the_gateways_publisher_reports_a_publish_the_acl_refuses(site, tmp_path):
    """MQTT v5 answers a refused publish with PUBACK 0x87: the gateway's publisher must say
    False (so a config push is not recorded as sent), and True where its ACL allows."""
    from gateway.config import GatewayMqttConfig
    from gateway.mqtt_out import MqttPublisher

    (tmp_path / "gw-password").write_text(site.passwords["cacao-gateway"] + "\n")
    publisher = MqttPublisher(GatewayMqttConfig(
        broker=f"mqtt://127.0.0.1:{site.gateway_port}", username="cacao-gateway",
        password_file=tmp_path / "gw-password", client_id="cacao-gateway"))
    publisher.start()
    try:
        assert publisher.wait_connected(10)
        assert publisher.publish(f"cacao/v1/{SITE}/secador-01/config", b"{}", retain=True)
        assert not publisher.publish(f"cacao/v1/{SITE}/secador-01/telemetry", b"{}")
        assert publisher.publish(f"cacao/v1/{SITE}/secador-01/command", b"{}")  # still usable
    finally:
        publisher.stop()
