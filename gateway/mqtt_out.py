"""The gateway's outgoing MQTT connection: threshold configs (retained), commands, alerts.

Separate from the ingest client so a burst of incoming telemetry never delays a config push,
and so the ingest's persistent session is not shared. ``publish`` waits for the broker's
acknowledgement (QoS 1) up to a timeout and says whether it came; callers record what was
confirmed (e.g. a config push's ``published_at``) and publish again what was not, so nothing
depends on paho's in-memory queue surviving a restart.
"""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from firmware.config import parse_broker_url
from gateway.config import GatewayMqttConfig

log = logging.getLogger("cacao_dryer.gateway")


def gateway_client(settings: GatewayMqttConfig, client_id: str
                   ) -> tuple[mqtt.Client, str, int]:
    """A paho MQTT v5 client with the gateway's login and TLS, reconnecting by itself (1 to
    30 s apart); returns it with the broker's host and port to connect to."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5)
    if settings.username:
        password = (settings.password_file.read_text(encoding="utf-8").strip()
                    if settings.password_file else None)
        client.username_pw_set(settings.username, password)
    host, port, tls = parse_broker_url(settings.broker)
    if tls:
        client.tls_set(ca_certs=str(settings.tls_ca_file) if settings.tls_ca_file else None)
    client.reconnect_delay_set(1, 30)
    return client, host, port


class MqttPublisher:
    def __init__(self, settings: GatewayMqttConfig, client_id: str | None = None) -> None:
        self._client, self._host, self._port = gateway_client(
            settings, client_id or f"{settings.client_id}-out")
        self._keepalive = settings.keepalive_s
        self._connected = threading.Event()
        # mid → reason of a PUBACK the broker sent with a failure code (MQTT v5: 0x87 "not
        # authorized" when the ACL refuses the topic). paho calls on_publish before it marks
        # the message published, so ``publish`` finds the reason here once it is acked.
        self._refused: dict[int, str] = {}
        self._refused_lock = threading.Lock()
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_args: self._connected.clear()
        self._client.on_publish = self._on_publish

    def _on_connect(self, _client: mqtt.Client, _userdata: object, _flags: object,
                    reason: object, _properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the publisher's connection: %s", reason)
            return
        self._connected.set()

    def _on_publish(self, _client: mqtt.Client, _userdata: object, mid: int,
                    reason: object, _properties: object) -> None:
        if getattr(reason, "is_failure", False):
            with self._refused_lock:
                self._refused[mid] = str(reason)

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                timeout: float = 5.0) -> bool:
        """Publish at QoS 1; True once the broker acknowledged it within ``timeout`` s.
        False (never an exception) when the broker is unreachable or refused the message
        (e.g. the ACL does not let this login publish there): the caller retries."""
        if not self._connected.wait(timeout):
            return False
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        try:
            info.wait_for_publish(timeout)
        except (RuntimeError, ValueError):
            return False
        with self._refused_lock:
            refused = self._refused.pop(info.mid, None)
        if refused is not None:
            log.error("broker refused the publish to %s: %s", topic, refused)
            return False
        return info.is_published()
