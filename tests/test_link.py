"""The MQTT link: configuration, status and Last Will, subscriptions, authentication, TLS,
flow control, refused and unacknowledged publishes. Brokers are real private Mosquittos."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import wait_for
from support.mosquitto import MosquittoBroker, Subscriber, free_port, make_self_signed_cert

from cacao_dryer.errors import ConfigError
from firmware.config import MqttConfig
from firmware.link import MqttLink
from firmware.outbox import Outbox

TELEMETRY = "cacao/v1/site-a/node-1/telemetry"
STATUS = "cacao/v1/site-a/node-1/status"
CONFIG = "cacao/v1/site-a/node-1/config"
ONLINE = b'{"state": "online"}'
OFFLINE = b'{"state": "offline"}'


def reading(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def seqs_received(subscriber: Subscriber) -> list[int]:
    return [json.loads(payload)["seq"] for payload in subscriber.payloads()]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite", max_bytes=1_000_000, sync="normal")
    yield box
    box.close()


def make_link(settings: MqttConfig, outbox: Outbox, **options: object) -> MqttLink:
    return MqttLink(settings, "node-1", outbox, will=(STATUS, OFFLINE),
                    on_connect_publish=[(STATUS, ONLINE, 1, True)],
                    reconnect_min_s=0.05, reconnect_max_s=0.5, **options)  # type: ignore[arg-type]


@contextmanager
def running(link: MqttLink) -> Iterator[MqttLink]:
    link.start()
    try:
        yield link
    finally:
        link.stop(timeout=2)


def add_readings(outbox: Outbox, link: MqttLink, count: int) -> None:
    for _ in range(count):
        outbox.add(TELEMETRY, reading, "telemetry")
    link.wake()


# --- configuration (no broker needed) ----------------------------------------------------

def test_missing_password_file_is_a_config_error_naming_the_file(
        tmp_path: Path, outbox: Outbox) -> None:
    missing = tmp_path / "nope.secret"
    settings = MqttConfig(username="node-1", password_file=missing)
    with pytest.raises(ConfigError, match=r"nope\.secret"):
        make_link(settings, outbox)


def test_empty_password_file_is_a_config_error(tmp_path: Path, outbox: Outbox) -> None:
    secret = tmp_path / "mqtt.secret"
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        make_link(MqttConfig(username="node-1", password_file=secret), outbox)


def test_password_without_username_is_a_config_error(tmp_path: Path, outbox: Outbox) -> None:
    secret = tmp_path / "mqtt.secret"
    secret.write_text("s3cret\n")
    with pytest.raises(ConfigError, match="username"):
        make_link(MqttConfig(password_file=secret), outbox)


def test_ca_file_without_mqtts_is_a_config_error(tmp_path: Path, outbox: Outbox) -> None:
    settings = MqttConfig(broker="mqtt://127.0.0.1:8883", tls_ca_file=tmp_path / "ca.crt")
    with pytest.raises(ConfigError, match="mqtts://"):
        make_link(settings, outbox)


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path, outbox: Outbox) -> None:
    settings = MqttConfig(broker="mqtts://127.0.0.1:8883", tls_ca_file=tmp_path / "none.crt")
    with pytest.raises(ConfigError, match=r"none\.crt"):
        make_link(settings, outbox)


@pytest.mark.integration
def test_without_a_broker_readings_stay_queued_and_the_failure_is_reported(
        outbox: Outbox) -> None:
    settings = MqttConfig(broker=f"mqtt://127.0.0.1:{free_port()}")
    with running(make_link(settings, outbox)) as link:
        add_readings(outbox, link, 5)
        wait_for(lambda: link.stats().last_error is not None, 10, "a connection failure")
        stats = link.stats()
        assert link.publish_direct(STATUS, ONLINE, 1, True) is None  # not kept while offline
    assert not stats.connected
    assert "cannot connect" in (stats.last_error or "")
    assert stats.depth == 5 and stats.sent_total == 0


# --- status, Last Will, subscriptions ----------------------------------------------------

@pytest.mark.integration
def test_online_status_is_retained_on_connect_and_offline_sent_at_stop(
        mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    link = make_link(MqttConfig(broker=mosquitto.url), outbox)
    link.start()
    wait_for(lambda: link.connected, 10, "the link to connect")
    with Subscriber(mosquitto, STATUS, "status-watch", persistent=False) as watch:
        wait_for(lambda: watch.messages() != [], 10, "the retained status")
        assert watch.messages()[0][1:] == (ONLINE, True)
        link.stop(timeout=5, final_publish=(STATUS, OFFLINE, 1, True))
        wait_for(lambda: watch.payloads()[-1:] == [OFFLINE], 10, "the offline status")
    assert not link.connected


@pytest.mark.integration
def test_on_connect_publish_may_be_computed_at_each_connect(
        mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    connects = []

    def status_now() -> list[tuple[str, bytes, int, bool]]:
        connects.append(1)
        return [(STATUS, json.dumps({"connects": len(connects)}).encode(), 1, True)]

    link = MqttLink(MqttConfig(broker=mosquitto.url), "node-1", outbox,
                    on_connect_publish=status_now, reconnect_min_s=0.05, reconnect_max_s=0.5)
    with Subscriber(mosquitto, STATUS, "status-watch") as watch, running(link):
        wait_for(lambda: watch.payloads() != [], 10, "the first status")
        mosquitto.restart()
        wait_for(lambda: b'{"connects": 2}' in watch.payloads(), 10, "the status after reconnect")
    assert watch.payloads()[0] == b'{"connects": 1}'


@pytest.mark.integration
def test_subscription_is_renewed_after_the_broker_restarts(
        mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    received: list[tuple[str, bytes]] = []
    link = make_link(MqttConfig(broker=mosquitto.url), outbox)  # clean session: broker forgets
    link.subscribe(CONFIG, lambda topic, payload: received.append((topic, payload)))
    with running(link), Subscriber(mosquitto, "unused", "gateway", persistent=False) as gateway:
        gateway.publish(CONFIG, b"thresholds v1", retain=True)
        wait_for(lambda: len(received) == 1, 10, "the retained config at the node")
        mosquitto.restart()
        # Only a renewed subscription brings the retained config a second time.
        wait_for(lambda: len(received) == 2, 10, "the retained config after the restart")
    assert received == [(CONFIG, b"thresholds v1")] * 2


@pytest.mark.integration
def test_a_failing_handler_does_not_break_the_link(
        mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    calls: list[bytes] = []

    def handler(topic: str, payload: bytes) -> None:
        calls.append(payload)
        raise ValueError("bad config payload")

    link = make_link(MqttConfig(broker=mosquitto.url), outbox)
    link.subscribe(CONFIG, handler)
    with Subscriber(mosquitto, TELEMETRY, "gateway", persistent=False) as gateway, \
            running(link):
        gateway.publish(CONFIG, b"broken", retain=True)
        wait_for(lambda: calls == [b"broken"], 10, "the handler to be called")
        add_readings(outbox, link, 3)
        wait_for(lambda: sorted(set(seqs_received(gateway))) == [1, 2, 3], 10, "readings")
        assert link.connected
        assert "bad config payload" in (link.stats().last_error or "")


# --- authentication and TLS --------------------------------------------------------------

@pytest.mark.integration
def test_username_and_password_from_file_are_accepted(tmp_path: Path, outbox: Outbox) -> None:
    secret = tmp_path / "mqtt.secret"
    secret.write_text("s3cret-node\n")
    broker = MosquittoBroker(tmp_path / "broker", users={"node-1": "s3cret-node",
                                                         "gateway": "s3cret-gw"})
    settings = MqttConfig(broker=broker.url, username="node-1", password_file=secret)
    with broker, Subscriber(broker, TELEMETRY, "gateway", username="gateway",
                            password="s3cret-gw") as gateway, \
            running(make_link(settings, outbox)) as link:
        add_readings(outbox, link, 20)
        wait_for(lambda: set(seqs_received(gateway)) == set(range(1, 21)), 10, "20 readings")
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")


@pytest.mark.integration
def test_wrong_password_is_reported_and_readings_stay_queued(
        tmp_path: Path, outbox: Outbox) -> None:
    secret = tmp_path / "mqtt.secret"
    secret.write_text("wrong\n")
    broker = MosquittoBroker(tmp_path / "broker", users={"node-1": "s3cret-node"})
    settings = MqttConfig(broker=broker.url, username="node-1", password_file=secret)
    with broker, running(make_link(settings, outbox)) as link:
        add_readings(outbox, link, 5)
        wait_for(lambda: "refused the connection" in (link.stats().last_error or ""), 10,
                 "the broker to refuse the connection")
        assert not link.connected
        assert outbox.depth() == 5


@pytest.mark.integration
def test_tls_connection_is_verified_with_the_ca_file(tmp_path: Path, outbox: Outbox) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    broker = MosquittoBroker(tmp_path / "broker", tls=(cert, key))
    settings = MqttConfig(broker=broker.url, tls_ca_file=cert)
    assert broker.url.startswith("mqtts://")
    with broker, running(make_link(settings, outbox)) as link:
        add_readings(outbox, link, 10)
        wait_for(lambda: outbox.depth() == 0, 10, "the broker to acknowledge over TLS")
        assert link.stats().acked_total == 10


@pytest.mark.integration
def test_tls_broker_with_an_unknown_certificate_is_refused(
        tmp_path: Path, outbox: Outbox) -> None:
    cert, key = make_self_signed_cert(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _ = make_self_signed_cert(other)
    broker = MosquittoBroker(tmp_path / "broker", tls=(cert, key))
    settings = MqttConfig(broker=broker.url, tls_ca_file=other_ca)
    with broker, running(make_link(settings, outbox)) as link:
        add_readings(outbox, link, 3)
        wait_for(lambda: link.stats().last_error is not None, 10, "the TLS failure")
        assert not link.connected
        assert outbox.depth() == 3


# --- flow control, refusals, lost acknowledgements ---------------------------------------

@pytest.mark.integration
def test_in_flight_messages_respect_the_broker_receive_maximum(
        tmp_path: Path, outbox: Outbox) -> None:
    # Mosquitto announces max_inflight_messages as its MQTT v5 Receive Maximum.
    broker = MosquittoBroker(tmp_path / "broker", extra=("max_inflight_messages 5",))
    with broker, running(make_link(MqttConfig(broker=broker.url, max_inflight=100),
                                   outbox)) as link:
        wait_for(lambda: link.connected, 10, "the link to connect")
        broker.pause()  # no PUBACKs while paused
        try:
            add_readings(outbox, link, 50)
            wait_for(lambda: link.stats().inflight == 5, 10, "5 messages in flight")
            assert link.stats().sent_total == 5
        finally:
            broker.resume()
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")


@pytest.mark.integration
def test_refused_publish_is_kept_and_retried_until_the_broker_accepts_it(
        tmp_path: Path, outbox: Outbox) -> None:
    users = {"node-1": "s3cret-node", "gateway": "s3cret-gw"}
    denied = f"user node-1\ntopic write {STATUS}\n\nuser gateway\ntopic read #\n"
    allowed = "user node-1\ntopic write cacao/v1/site-a/node-1/#\n\nuser gateway\ntopic read #\n"
    secret = tmp_path / "mqtt.secret"
    secret.write_text("s3cret-node")
    broker = MosquittoBroker(tmp_path / "broker", users=users, acl=denied)
    settings = MqttConfig(broker=broker.url, username="node-1", password_file=secret)
    link = make_link(settings, outbox, refused_retry_min_s=0.1, refused_retry_max_s=0.2)
    with broker, Subscriber(broker, TELEMETRY, "gateway", username="gateway",
                            password="s3cret-gw") as gateway, running(link):
        add_readings(outbox, link, 5)
        wait_for(lambda: link.stats().refused_total >= 10, 10, "refusals and retries")
        assert outbox.depth() == 5
        assert "Not authorized" in (link.stats().last_error or "")
        assert gateway.payloads() == []
        broker.write_acl(allowed)
        broker.reload()
        wait_for(lambda: set(seqs_received(gateway)) == {1, 2, 3, 4, 5}, 10, "the readings")
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")


@pytest.mark.integration
def test_message_without_puback_is_sent_again_after_the_ack_timeout(
        mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    link = make_link(MqttConfig(broker=mosquitto.url), outbox, ack_timeout_s=0.2)
    with Subscriber(mosquitto, TELEMETRY, "gateway") as gateway, running(link):
        wait_for(lambda: link.connected, 10, "the link to connect")
        mosquitto.pause()  # the connection stays up, but no PUBACK comes
        try:
            add_readings(outbox, link, 3)
            wait_for(lambda: link.stats().resent_total >= 3, 10, "re-sends after the timeout")
        finally:
            mosquitto.resume()
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
        wait_for(lambda: len(gateway.payloads()) >= 6, 10, "both copies of each reading")
    assert sorted(seqs_received(gateway)) == [1, 1, 2, 2, 3, 3]


@pytest.mark.integration
def test_stop_waits_for_messages_in_flight(mosquitto: MosquittoBroker, outbox: Outbox) -> None:
    link = make_link(MqttConfig(broker=mosquitto.url), outbox)
    link.start()
    wait_for(lambda: link.connected, 10, "the link to connect")
    mosquitto.pause()
    add_readings(outbox, link, 3)
    wait_for(lambda: link.stats().inflight == 3, 10, "3 messages in flight")
    threading.Timer(0.3, mosquitto.resume).start()  # acknowledgements arrive during stop()
    link.stop(timeout=10)
    assert outbox.depth() == 0


@pytest.mark.integration
def test_messages_in_flight_at_a_disconnect_are_sent_once_after_reconnect(
        tmp_path: Path, outbox: Outbox) -> None:
    # paho re-sends its own copies of unacknowledged messages after a reconnect; the link
    # drops them and re-sends from the outbox instead, so each goes out once, in order.
    broker = MosquittoBroker(tmp_path / "broker", extra=("log_type debug",))
    with broker, running(make_link(MqttConfig(broker=broker.url), outbox)) as link:
        wait_for(lambda: link.connected, 10, "the link to connect")
        broker.pause()
        add_readings(outbox, link, 5)
        wait_for(lambda: link.stats().inflight == 5, 10, "5 messages in flight")
        broker.kill()  # the paused broker never read them
        log_before = broker.log_file.read_text()
        broker.start()
        wait_for(lambda: outbox.depth() == 0, 10, "the outbox to drain")
        log_after = broker.log_file.read_text()[len(log_before):]
    received = [line for line in log_after.splitlines()
                if "Received PUBLISH from node-1" in line and TELEMETRY in line]
    assert len(received) == 5, "\n".join(received)
