"""The live view's own MQTT subscription, for a dashboard run apart from the gateway
(``cacao-dryer dashboard run``).

The gateway's ingest owns the persistent session and the shared subscription: it stores each
reading exactly once and acknowledges it only then. A dashboard in another process must not
take messages from that session, so it listens on its own connection instead:

- a fresh client id each start (``<client_id>-live-<random>``), clean start, no session kept
  on the broker, plain (non-shared) subscriptions at QoS 0: the broker copies every message
  to it and to the gateway alike, and nothing here is ever acknowledged for the gateway;
- what arrives is decoded with the ingest's own rules and handed to the live hub only (it is
  never stored: the metadata and readings the pages fetch come from the gateway's stores);
- QoS 0 is enough: a message lost here only means a card waits for the next reading, and the
  browser refetches the truth from the API on every resync;
- the gateway's alert notices (retained ``.../alert/<kind>``) reach the hub as ``alert``
  events too, so this dashboard's pages see alerts open and close like the gateway's own.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import Counter

import paho.mqtt.client as mqtt

from cacao_dryer.contract import (
    TOPIC_PREFIX,
    AlertNotice,
    NodeEvent,
    NodeStatus,
    Telemetry,
    parse_alert_topic,
)
from cacao_dryer.errors import CacaoDryerError, PayloadError
from gateway.config import GatewayMqttConfig
from gateway.ingest import decode_payload
from gateway.live import LiveHub
from gateway.mqtt_out import gateway_client
from gateway.timeseries import StoredReading

log = logging.getLogger("cacao_dryer.gateway")

CHANNELS = ("telemetry", "status", "event")


class LiveFeed:
    """Broker → live hub, read-only and best effort (see the module docstring)."""

    def __init__(self, settings: GatewayMqttConfig, sites: list[str], hub: LiveHub) -> None:
        self.hub = hub
        self.client_id = f"{settings.client_id[:40]}-live-{secrets.token_hex(4)}"
        self.topics = [f"{TOPIC_PREFIX}/{site}/+/{channel}" for site in sites
                       for channel in CHANNELS]
        self.topics += [f"{TOPIC_PREFIX}/{site}/+/alert/+" for site in sites]
        self.received = 0
        self.invalid: Counter[str] = Counter()
        self._subscribed = threading.Event()
        self._client, self._host, self._port = gateway_client(settings, self.client_id)
        self._keepalive = settings.keepalive_s
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.on_disconnect = lambda *_args: self._subscribed.clear()
        self._client.on_message = self._on_message

    def start(self) -> None:
        # clean_start: the broker keeps no session for this client (session expiry 0).
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive,
                                   clean_start=True)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    @property
    def connected(self) -> bool:
        """Connected and subscribed (what ``/api/health`` reports)."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def _on_connect(self, client: mqtt.Client, _userdata: object, _flags: object,
                    reason: object, _properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.error("broker refused the live view's connection: %s", reason)
            return
        client.subscribe([(name, 0) for name in self.topics])

    def _on_message(self, _client: mqtt.Client, _userdata: object,
                    message: mqtt.MQTTMessage) -> None:
        self.received += 1
        if "/alert/" in message.topic:
            self._alert(message)
            return
        try:
            _site, _node, decoded = decode_payload(message.topic, message.payload)
        except CacaoDryerError as exc:
            self.invalid[type(exc).__name__] += 1
            return
        except Exception as exc:  # nothing a node sends may stop the live view
            log.debug("live view ignored %s: %r", message.topic, exc)
            self.invalid["other"] += 1
            return
        try:
            if isinstance(decoded, Telemetry):
                self.hub.batch_received([StoredReading.from_telemetry(decoded)], (), ())
            elif isinstance(decoded, NodeStatus):
                self.hub.batch_received((), [decoded], ())
            elif isinstance(decoded, NodeEvent):
                self.hub.batch_received((), (), [decoded])
        except Exception as exc:  # best effort, like the gateway's FanOutListener
            log.warning("live update failed (%r); dashboards will resync", exc)

    def _alert(self, message: mqtt.MQTTMessage) -> None:
        if not message.payload:  # a cleared retained notice: nothing to show
            return
        try:
            site_id, node_id, kind = parse_alert_topic(message.topic)
            notice = AlertNotice.model_validate_json(message.payload)
            if (notice.site_id, notice.node_id, notice.kind) != (site_id, node_id, kind):
                raise PayloadError(f"{message.topic}: the notice names another node or kind")
        except (CacaoDryerError, ValueError) as exc:
            self.invalid[type(exc).__name__] += 1
            return
        try:
            self.hub.publish_alert(notice)
        except Exception as exc:  # best effort, like every live message
            log.warning("live update of an alert failed (%r); dashboards will resync", exc)
