"""Alert delivery (gateway/webhooks.py): the alert message on MQTT (contract, retained
notices on a real Mosquitto) and webhooks (pure retry policy and signature; delivery to a
real HTTP server on loopback through the durable SQLite queue)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from support import wait_for
from support.http_receiver import Answer, HttpReceiver
from support.mosquitto import MosquittoBroker, Subscriber

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import (
    AlertKind,
    AlertNotice,
    AlertSeverity,
    AlertState,
    Channel,
    alert_topic,
    decode,
    decode_message,
    encode,
    parse_alert_topic,
    parse_topic,
    topic,
)
from cacao_dryer.errors import ConfigError, PayloadError, TopicError
from gateway.config import GatewayMqttConfig, parse_gateway_config
from gateway.ingest import Ingest
from gateway.mqtt_out import MqttPublisher
from gateway.stores.sqlite import SqliteStore
from gateway.webhooks import (
    AlertPublisher,
    DeliveryState,
    Outcome,
    RetryPolicy,
    WebhookSender,
    WebhookTarget,
    backoff_schedule,
    classify_status,
    event_of,
    parse_retry_after,
    retry_delay_s,
    sign,
    verify_signature,
)

SITE, NODE = "demo", "secador-01"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cret-for-the-whatsapp-bridge"
FAST = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, timeout_s=2.0)


def notice(**changes: object) -> AlertNotice:
    fields: dict[str, object] = dict(
        site_id=SITE, node_id=NODE, alert_id=7, kind=AlertKind.OVER_TEMPERATURE,
        severity=AlertSeverity.WARNING, state=AlertState.OPEN, opened_at=T0, updated_at=T0,
        message="inside air 61.2 °C, at or above the 60.0 °C alarm", value=61.2,
        batch_id="lote-1")
    return AlertNotice(**(fields | changes))


def closed(**changes: object) -> AlertNotice:
    later = T0 + timedelta(minutes=30)
    return notice(state=AlertState.CLOSED, closed_at=later, updated_at=later,
                  message="inside air back to 55.0 °C, below 58.0 °C", **changes)


# --- the alert message on MQTT (contract) -------------------------------------------------

def test_alert_topic_has_one_level_per_kind_and_parses_back() -> None:
    name = alert_topic(SITE, NODE, AlertKind.NODE_OFFLINE)
    assert name == "cacao/v1/demo/secador-01/alert/node_offline"
    assert parse_topic(name) == (SITE, NODE, Channel.ALERT)
    assert parse_alert_topic(name) == (SITE, NODE, AlertKind.NODE_OFFLINE)


@pytest.mark.parametrize(("name", "reason"), [
    ("cacao/v1/demo/secador-01/alert", "alert topics end with /alert/<kind>"),
    ("cacao/v1/demo/secador-01/alert/boiling", "unknown alert kind 'boiling'"),
    ("cacao/v1/demo/secador-01/status/node_offline", "expected cacao/v1"),
])
def test_malformed_alert_topics_are_named(name: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason):
        parse_topic(name)


def test_topic_refuses_the_alert_channel_without_a_kind() -> None:
    with pytest.raises(TopicError, match="use alert_topic"):
        topic(SITE, NODE, Channel.ALERT)


def test_alert_notice_round_trips_on_its_topic() -> None:
    message = closed(acknowledged_by="operador-luis", acknowledged_at=T0)
    name = alert_topic(SITE, NODE, message.kind)
    assert decode_message(name, encode(message)) == (SITE, NODE, message)


def test_alert_notice_on_another_kinds_topic_is_rejected() -> None:
    with pytest.raises(PayloadError, match="payload is a over_temperature alert"):
        decode_message(alert_topic(SITE, NODE, AlertKind.HIGH_HUMIDITY), encode(notice()))


def test_closed_notice_without_closed_at_is_rejected() -> None:
    payload = encode(notice()).replace(b'"state":"open"', b'"state":"closed"')
    with pytest.raises(PayloadError, match="closed_at must be set exactly when state is closed"):
        decode(Channel.ALERT, payload)


def test_gateway_ingest_does_not_subscribe_to_alerts(tmp_path: Path) -> None:
    settings = parse_gateway_config({"data_dir": str(tmp_path), "sites": [SITE]})
    store = SqliteStore(tmp_path / "readings.sqlite3")
    try:
        subscriptions = Ingest(settings, store).subscriptions()
    finally:
        store.close()
    name = alert_topic(SITE, NODE, AlertKind.OVER_TEMPERATURE)
    assert subscriptions and not any(mqtt.topic_matches_sub(s, name) for s in subscriptions)
    node_subscriptions = [topic(SITE, NODE, Channel.CONFIG), topic(SITE, NODE, Channel.COMMAND)]
    assert not any(mqtt.topic_matches_sub(s, name) for s in node_subscriptions)


# --- AlertPublisher on a real Mosquitto ---------------------------------------------------

@pytest.fixture
def paho_client(mosquitto: MosquittoBroker) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="alert-publisher",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    wait_for(client.is_connected, 10, "publisher connected")
    yield client
    client.disconnect()
    client.loop_stop()


def test_dashboard_connecting_late_receives_the_open_alert(
        mosquitto: MosquittoBroker, paho_client: mqtt.Client) -> None:
    assert AlertPublisher(paho_client).publish(notice())
    with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/alert/+", "dashboard") as dashboard:
        wait_for(lambda: len(dashboard.messages()) == 1, 10, "the retained alert")
    name, payload, retained = dashboard.messages()[0]
    assert retained and decode_message(name, payload) == (SITE, NODE, notice())


def test_closing_replaces_the_retained_alert_and_clear_removes_it(
        mosquitto: MosquittoBroker) -> None:
    publisher = MqttPublisher(GatewayMqttConfig(broker=mosquitto.url, client_id="gw"))
    publisher.start()
    try:
        alerts = AlertPublisher(publisher)
        humid = notice(kind=AlertKind.HIGH_HUMIDITY, alert_id=8)
        assert alerts.publish(notice()) and alerts.publish(closed()) and alerts.publish(humid)
        with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/alert/+", "late-1") as late:
            wait_for(lambda: len(late.messages()) == 2, 10, "two retained alerts")
        states = {decode_message(n, p)[2].kind: decode_message(n, p)[2].state  # type: ignore[attr-defined]
                  for n, p, _ in late.messages()}
        assert states == {AlertKind.OVER_TEMPERATURE: AlertState.CLOSED,
                          AlertKind.HIGH_HUMIDITY: AlertState.OPEN}
        assert alerts.clear(SITE, NODE, AlertKind.OVER_TEMPERATURE)
        with Subscriber(mosquitto, f"cacao/v1/{SITE}/+/alert/+", "late-2") as later:
            wait_for(lambda: len(later.messages()) >= 1, 10, "the remaining retained alert")
        assert [n for n, _, _ in later.messages()] == [
            alert_topic(SITE, NODE, AlertKind.HIGH_HUMIDITY)]
    finally:
        publisher.stop()


# --- retry policy, classification, signature (pure) ---------------------------------------

def test_backoff_doubles_from_ten_seconds_up_to_an_hour() -> None:
    schedule = backoff_schedule(RetryPolicy())
    assert schedule[:10] == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]
    assert set(schedule[10:]) == {3600} and len(schedule) == 19  # 20 attempts
    assert sum(schedule) / 3600 == pytest.approx(11.4, abs=0.1)


def test_backoff_stops_at_the_maximum_age() -> None:
    schedule = backoff_schedule(RetryPolicy(max_age_s=100, max_attempts=50))
    assert schedule == [10, 20, 40] and sum(schedule) <= 100


def test_jitter_shortens_a_delay_by_at_most_its_fraction() -> None:
    policy = RetryPolicy(jitter_fraction=0.2)
    delays = [retry_delay_s(policy, 4, draw) for draw in (0.0, 0.5, 0.999)]
    assert delays[0] == 80 and delays[1] == pytest.approx(72)
    assert 64 < delays[2] < delays[1] < delays[0]


def test_retry_after_is_a_floor_capped_at_the_longest_delay() -> None:
    policy = RetryPolicy()
    assert retry_delay_s(policy, 1, 0.0, retry_after_s=300) == 300
    assert retry_delay_s(policy, 1, 0.0, retry_after_s=1) == 10
    assert retry_delay_s(policy, 1, 0.0, retry_after_s=86400) == 3600


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (301, Outcome.GIVE_UP),
    (400, Outcome.GIVE_UP), (401, Outcome.GIVE_UP), (404, Outcome.GIVE_UP),
    (408, Outcome.RETRY), (410, Outcome.GIVE_UP), (429, Outcome.RETRY),
    (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY),
])
def test_status_codes_are_delivered_retried_or_given_up(status: int, outcome: Outcome) -> None:
    assert classify_status(status) is outcome


@pytest.mark.parametrize(("header", "seconds"), [
    ("120", 120.0), (" 5 ", 5.0), ("Sun, 01 Mar 2026 12:02:00 GMT", 120.0),
    ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0), ("soon", None), (None, None),
])
def test_retry_after_header_is_read_as_seconds_or_a_date(header: str | None,
                                                         seconds: float | None) -> None:
    assert parse_retry_after(header, T0) == seconds


def test_signature_is_githubs_hmac_sha256_scheme() -> None:
    # The example from GitHub's "Validating webhook deliveries" documentation.
    header = sign("It's a Secret to Everybody", b"Hello, World!")
    assert header == ("sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b04"
                      "3e17")
    assert verify_signature("It's a Secret to Everybody", b"Hello, World!", header)
    assert not verify_signature("It's a Secret to Everybody", b"Hello, World?", header)


def test_target_takes_only_the_kinds_and_severities_it_asked_for() -> None:
    phone = WebhookTarget("https://bridge.example/hook", SECRET,
                          kinds=frozenset({AlertKind.OVER_TEMPERATURE}),
                          min_severity=AlertSeverity.CRITICAL)
    assert not phone.wants(notice())
    assert phone.wants(notice(severity=AlertSeverity.CRITICAL))
    assert not phone.wants(notice(kind=AlertKind.NODE_OFFLINE, severity=AlertSeverity.CRITICAL))


@pytest.mark.parametrize(("url", "secret", "reason"), [
    ("ftp://example.org/x", SECRET, "url must be http"),
    ("https://example.org/x", "short", "at least 16 characters"),
])
def test_bad_target_is_a_config_error(url: str, secret: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        WebhookTarget(url, secret)


def test_event_header_says_opened_updated_or_closed() -> None:
    assert event_of(notice()) == "alert.opened"
    assert event_of(notice(updated_at=T0 + timedelta(minutes=1))) == "alert.updated"
    assert event_of(notice(acknowledged_by="ana", acknowledged_at=T0)) == "alert.updated"
    assert event_of(closed()) == "alert.closed"


# --- delivery to a real HTTP server -------------------------------------------------------

def webhook_receiver(*answers: Answer, hang: int = 0) -> HttpReceiver:
    """A webhook receiver (POST /hooks/cacao) answering ``answers`` first, then 200."""
    return HttpReceiver(answers, hang=hang, path="/hooks/cacao")


@pytest.fixture
def receivers() -> Iterator[list[HttpReceiver]]:
    """Receivers a test starts are stopped at teardown."""
    started: list[HttpReceiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def running(receivers: list[HttpReceiver], receiver: HttpReceiver) -> HttpReceiver:
    receivers.append(receiver.start())
    return receiver


@pytest.fixture
def senders() -> Iterator[list[WebhookSender]]:
    made: list[WebhookSender] = []
    yield made
    for sender in made:
        sender.close()


def make_sender(senders: list[WebhookSender], path: Path, *targets: WebhookTarget,
                **options: object) -> WebhookSender:
    sender = WebhookSender(path, list(targets), **options)  # type: ignore[arg-type]
    senders.append(sender)
    return sender


def test_alert_is_delivered_once_with_a_valid_signature(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver())
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), policy=FAST, idle_poll_s=0.05)
    sender.start()
    [delivery_id] = sender.enqueue(notice())
    wait_for(lambda: sender.get(delivery_id).state is DeliveryState.DELIVERED, 10,  # type: ignore[union-attr]
             "delivery")
    [request] = receiver.requests()
    assert request.path == "/hooks/cacao" and request.body == encode(notice())
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-cacao-signature"] == expected
    assert request.headers["x-cacao-delivery"] == delivery_id
    assert request.headers["x-cacao-event"] == "alert.opened"
    assert request.headers["content-type"] == "application/json"
    assert AlertNotice.model_validate(json.loads(request.body)) == notice()


def test_server_failing_first_requests_gets_it_after_retries_with_one_delivery_id(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(Answer(500), Answer(503), Answer(502)))
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), policy=FAST, idle_poll_s=0.05)
    sender.start()
    [delivery_id] = sender.enqueue(notice())
    wait_for(lambda: sender.get(delivery_id).state is DeliveryState.DELIVERED, 10,  # type: ignore[union-attr]
             "delivery after three failures")
    assert [r.headers["x-cacao-delivery"] for r in receiver.requests()] == [delivery_id] * 4
    assert sender.get(delivery_id).attempts == 4  # type: ignore[union-attr]


def test_server_down_then_up_gets_the_alert_when_it_is_back(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = webhook_receiver()
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), policy=FAST, idle_poll_s=0.05)
    sender.start()
    [delivery_id] = sender.enqueue(notice())
    wait_for(lambda: sender.get(delivery_id).attempts >= 3, 10, "failed attempts")  # type: ignore[union-attr]
    assert "ConnectError" in (sender.get(delivery_id).last_error or "")  # type: ignore[union-attr]
    running(receivers, receiver)
    wait_for(lambda: sender.get(delivery_id).state is DeliveryState.DELIVERED, 10,  # type: ignore[union-attr]
             "delivery once the server is back")
    assert len(receiver.requests()) == 1


def test_a_restarted_sender_delivers_what_was_pending(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    queue = tmp_path / "webhooks.sqlite3"
    receiver = webhook_receiver()
    target = WebhookTarget(receiver.url, SECRET)
    first = make_sender(senders, queue, target, policy=FAST, idle_poll_s=0.05)
    first.start()
    [delivery_id] = first.enqueue(notice())
    wait_for(lambda: first.get(delivery_id).attempts >= 1, 10, "a failed attempt")  # type: ignore[union-attr]
    first.close()
    running(receivers, receiver)
    second = make_sender(senders, queue, target, policy=FAST, idle_poll_s=0.05)
    second.start()
    wait_for(lambda: second.get(delivery_id).state is DeliveryState.DELIVERED, 10,  # type: ignore[union-attr]
             "delivery by the restarted sender")
    assert [r.headers["x-cacao-delivery"] for r in receiver.requests()] == [delivery_id]


def test_bad_request_is_given_up_not_retried(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(*[Answer(400)] * 5))
    clock = ManualClock(T0)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), clock=clock)
    [delivery_id] = sender.enqueue(notice())
    assert sender.run_due() == 1
    delivery = sender.get(delivery_id)
    assert delivery is not None and delivery.state is DeliveryState.FAILED
    assert (delivery.last_status, delivery.last_error) == (400, "HTTP 400")
    clock.advance(86400)
    assert sender.run_due() == 0 and len(receiver.requests()) == 1


def test_too_many_requests_waits_for_retry_after(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(Answer(429, {"Retry-After": "120"})))
    clock = ManualClock(T0)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), clock=clock, random=lambda: 0.0)
    [delivery_id] = sender.enqueue(notice())
    assert sender.run_due() == 1
    assert sender.get(delivery_id).next_attempt_at == T0 + timedelta(seconds=120)  # type: ignore[union-attr]
    clock.advance(119)
    assert sender.run_due() == 0
    clock.advance(1)
    assert sender.run_due() == 1
    assert sender.get(delivery_id).state is DeliveryState.DELIVERED  # type: ignore[union-attr]


def test_retries_follow_the_backoff_and_stop_at_max_attempts(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(*[Answer(500)] * 10))
    clock = ManualClock(T0)
    policy = RetryPolicy(max_attempts=3)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), policy=policy, clock=clock,
                         random=lambda: 0.0)
    [delivery_id] = sender.enqueue(notice())
    assert sender.run_due() == 1
    for wait_s in backoff_schedule(policy):  # 10 s, then 20 s
        clock.advance(wait_s - 0.5)
        assert sender.run_due() == 0
        clock.advance(0.5)
        assert sender.run_due() == 1
    delivery = sender.get(delivery_id)
    assert delivery is not None and delivery.state is DeliveryState.FAILED
    assert delivery.attempts == 3 and delivery.last_error == "HTTP 500; 3 attempts"
    assert len(receiver.requests()) == 3


def test_slow_server_times_out_and_is_retried(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(hang=1))
    policy = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, timeout_s=0.3)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), policy=policy, idle_poll_s=0.05)
    sender.start()
    [delivery_id] = sender.enqueue(notice())
    wait_for(lambda: sender.get(delivery_id).state is DeliveryState.DELIVERED, 10,  # type: ignore[union-attr]
             "delivery after a timeout")
    delivery = sender.get(delivery_id)
    assert delivery is not None and delivery.attempts == 2 and len(receiver.requests()) == 2


def test_closed_never_overtakes_opened_for_one_target(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver(Answer(503)))
    clock = ManualClock(T0)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), clock=clock, random=lambda: 0.0)
    sender.enqueue(notice())
    sender.enqueue(closed())
    assert sender.run_due() == 1  # the opened one fails; the closed one waits behind it
    clock.advance(10)
    while sender.run_due():
        pass
    events = [r.headers["x-cacao-event"] for r in receiver.requests()]
    assert events == ["alert.opened", "alert.opened", "alert.closed"]


def test_each_target_gets_only_what_it_asked_for(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    everything = running(receivers, webhook_receiver())
    critical = running(receivers, webhook_receiver())
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(everything.url, SECRET, name="log"),
                         WebhookTarget(critical.url, SECRET + "-2", name="phone",
                                       min_severity=AlertSeverity.CRITICAL),
                         clock=ManualClock(T0))
    assert len(sender.enqueue(notice())) == 1
    assert len(sender.enqueue(notice(severity=AlertSeverity.CRITICAL))) == 2
    while sender.run_due():
        pass
    assert (len(everything.requests()), len(critical.requests())) == (2, 1)
    assert verify_signature(SECRET + "-2", critical.requests()[0].body,
                            critical.requests()[0].headers["x-cacao-signature"])
    assert sender.counts() == {DeliveryState.PENDING: 0, DeliveryState.DELIVERED: 3,
                               DeliveryState.FAILED: 0}


def test_delivery_for_a_removed_target_fails_with_a_reason(
        tmp_path: Path, senders: list[WebhookSender]) -> None:
    queue = tmp_path / "webhooks.sqlite3"
    first = make_sender(senders, queue, WebhookTarget("http://127.0.0.1:9/x", SECRET,
                                                      name="old"), clock=ManualClock(T0))
    [delivery_id] = first.enqueue(notice())
    first.close()
    second = make_sender(senders, queue, clock=ManualClock(T0))
    second.run_due()
    delivery = second.get(delivery_id)
    assert delivery is not None and delivery.state is DeliveryState.FAILED
    assert delivery.last_error == "target 'old' is no longer configured"


def test_two_targets_with_one_name_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="target 'x' is configured twice"):
        WebhookSender(tmp_path / "q.sqlite3", [
            WebhookTarget("http://a.example/", SECRET, name="x"),
            WebhookTarget("http://b.example/", SECRET, name="x")])


def test_finished_deliveries_are_pruned_after_a_week(
        tmp_path: Path, receivers: list[HttpReceiver], senders: list[WebhookSender]) -> None:
    receiver = running(receivers, webhook_receiver())
    clock = ManualClock(T0)
    sender = make_sender(senders, tmp_path / "webhooks.sqlite3",
                         WebhookTarget(receiver.url, SECRET), clock=clock)
    [delivery_id] = sender.enqueue(notice())
    sender.run_due()
    clock.advance(6 * 86400)
    assert sender.prune() == 0
    clock.advance(2 * 86400)
    assert sender.prune() == 1 and sender.get(delivery_id) is None
