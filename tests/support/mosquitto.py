"""A PRIVATE Mosquitto for one test, and a recording MQTT subscriber.

``MosquittoBroker`` writes its own config into a temporary folder, listens on a free loopback
port (never 1883: the shared broker on this machine must not be touched), keeps its
persistence file in that folder, can be stopped and started again on the same port (persistent
sessions and their queued messages survive, as in the field), and is killed at teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from support import wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = "/usr/bin/mosquitto_passwd"
SHARED_BROKER_PORT = 1883


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (never the shared 1883)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port != SHARED_BROKER_PORT:
            return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def make_self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1/localhost; the certificate is its own CA file."""
    cert, key = folder / "broker.crt", folder / "broker.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key


class MosquittoBroker:
    """A private ``mosquitto`` process; ``users`` creates a password file (no anonymous access),
    ``acl`` is the text of an ACL file (``reload()`` re-reads it), ``tls`` = (cert, key),
    ``extra`` more config lines.

    ``config`` is a complete config file's text instead (e.g. the shipped
    deploy/mosquitto/cacao-dryer.conf with its paths and ports replaced): written as is, and
    ``port`` (required with it) is the listener ``start()`` waits for. The other options are
    then ignored, and ``log_tail`` reads ``log_file`` (pass the file the config logs to)."""

    def __init__(self, folder: Path, *, users: dict[str, str] | None = None,
                 acl: str | None = None, tls: tuple[Path, Path] | None = None,
                 extra: tuple[str, ...] = (), config: str | None = None,
                 port: int | None = None, log_file: Path | None = None) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None
        if config is not None:
            assert port is not None, "a complete config needs the port to wait for"
            self.port = port
            self.tls = tls is not None
            self.log_file = log_file or folder / "mosquitto.log"
            self.acl_file = None
            self.config_file = folder / "mosquitto.conf"
            self.config_file.write_text(config, encoding="utf-8")
            return
        self.port = free_port()
        self.tls = tls is not None
        self.log_file = folder / "mosquitto.log"
        self.acl_file = folder / "acl" if acl is not None else None
        if self.acl_file is not None and acl is not None:
            self.acl_file.write_text(acl, encoding="utf-8")
        lines = [
            "# Private broker for one test run; never the shared one on port 1883.",
            f"listener {self.port} 127.0.0.1",
            # Only matters when the tests run as root: keep privileges so the broker can write
            # its persistence file into this root-owned temporary folder.
            "user root",
            "persistence true",
            f"persistence_location {folder}/",
            # Mosquitto's default max_queued_messages is 1000 per client: beyond that it
            # SILENTLY DROPS QoS 1 messages queued for a persistent subscriber that is offline
            # or slow (see shared/reference/infrastructure.md). These tests queue more than
            # that for the test subscriber while the broker restarts or the subscriber
            # reconnects; a "loses nothing" test must not be defeated by the broker's own
            # queue limit, so the limit is raised on purpose (0 bytes = no byte limit).
            "max_queued_messages 100000",
            "max_queued_bytes 0",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if tls is not None:
            lines += [f"certfile {tls[0]}", f"keyfile {tls[1]}"]
        if users:
            password_file = folder / "passwords"
            password_file.touch()
            for user, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(password_file), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines += extra
        self.config_file = folder / "mosquitto.conf"
        self.config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        assert not self.running, "broker already running"
        self._process = subprocess.Popen([MOSQUITTO, "-c", str(self.config_file)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: _accepts_connections(self.port) or self._process.poll() is not None,
                     timeout, f"mosquitto to listen on port {self.port}")
        finally:
            if self._process.poll() is not None:
                stderr = self._process.stderr.read().decode(errors="replace") \
                    if self._process.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self._process.returncode}: "
                                   f"{stderr.strip()} {self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file on the way out."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_pipes()
        self._process = None

    def kill(self) -> None:
        """SIGKILL: whatever arrived since the last persistence save is lost by the broker."""
        if self._process is None:
            return
        if self._process.poll() is None:
            os.kill(self._process.pid, signal.SIGKILL)  # also ends a paused (SIGSTOPped) broker
            self._process.wait()
        self._close_pipes()
        self._process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its connections open but answers nothing."""
        assert self._process is not None and self.running, "broker not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None, "broker not started"
        self._process.send_signal(signal.SIGCONT)

    def write_acl(self, acl: str) -> None:
        assert self.acl_file is not None, "broker was created without an ACL"
        self.acl_file.write_text(acl, encoding="utf-8")

    def reload(self) -> None:
        """SIGHUP: re-read the password and ACL files."""
        assert self._process is not None and self.running, "broker not running"
        self._process.send_signal(signal.SIGHUP)

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def _close_pipes(self) -> None:
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


class Subscriber:
    """Records every message on ``topic`` (QoS 1) in arrival order.

    ``persistent=True`` uses a persistent session (MQTT v5 clean_start=False with a session
    expiry; v3.1.1 clean_session=False), so messages published while this subscriber is
    disconnected — e.g. during a broker restart — are queued for it by the broker.
    """

    def __init__(self, broker: MosquittoBroker, topic: str, client_id: str, *,
                 persistent: bool = True, protocol: str = "5",
                 username: str | None = None, password: str | None = None) -> None:
        self.topic = topic
        self._broker = broker
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes, bool]] = []
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._persistent = persistent
        v5 = protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else not persistent)
        self._v5 = v5
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.reconnect_delay_set(0.05, 0.5)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object,
                    reason: object, properties: object) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()
            client.subscribe(self.topic, qos=1)

    def _on_disconnect(self, *args: object) -> None:
        self._connected.clear()

    def _on_subscribe(self, *args: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def start(self, timeout: float = 10.0) -> Subscriber:
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 3600 if self._persistent else 0
        self._client.connect_async(
            "127.0.0.1", self._broker.port, keepalive=10,
            clean_start=not self._persistent if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties)
        self._client.loop_start()
        wait_for(self._subscribed.is_set, timeout, f"subscriber on {self.topic} to subscribe")
        return self

    def wait_connected(self, timeout: float = 10.0) -> None:
        wait_for(self._connected.is_set, timeout, "subscriber to reconnect")

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish from this client and wait for the broker's acknowledgement."""
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(10)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def messages(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self._messages)

    def payloads(self) -> list[bytes]:
        return [payload for _, payload, _ in self.messages()]

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
