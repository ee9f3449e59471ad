"""Notifications delivered for real (gateway/notify): e-mail to an SMTP server on loopback
(aiosmtpd: plain with login, STARTTLS, implicit TLS), Telegram requests to a local HTTP
server standing in for api.telegram.org, SMS files in a gammu-smsd outbox folder; the
service end to end (durable across a restart, quiet hours, de-duplication, flapping,
permanent failures counted) and its configuration."""

from __future__ import annotations

import json
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from support import wait_for
from support.http_receiver import Answer, HttpReceiver
from support.mosquitto import free_port, make_self_signed_cert

from cacao_dryer.clock import ManualClock
from cacao_dryer.contract import AlertKind, AlertNotice, AlertSeverity, AlertState
from cacao_dryer.errors import ConfigError
from gateway.config import load_gateway_config, parse_gateway_config
from gateway.notify.channels import (
    ChannelName,
    EmailChannel,
    SmsSpoolChannel,
    TelegramChannel,
    telegram_retry_after,
)
from gateway.notify.messages import Message
from gateway.notify.rules import DeliveryRules, Interest, Language, QuietHours
from gateway.notify.service import (
    NotificationService,
    Recipient,
    notification_service,
    recipients_from_settings,
)
from gateway.webhooks import DeliveryState, Outcome, RetryPolicy

LIMA = ZoneInfo("America/Lima")
T0 = datetime(2026, 3, 1, 19, 5, tzinfo=UTC)      # 14:05 in Lima
NIGHT = datetime(2026, 3, 2, 3, 0, tzinfo=UTC)    # 22:00 in Lima
TOKEN = "123456789:AAH-test_token_for_the_cacao_bot_xyz"
PHONE = "+51987654321"
FAST = RetryPolicy(first_delay_s=0.05, max_delay_s=0.2, timeout_s=2.0)
MESSAGE = Message("ALERTA Secador secador-01: temperatura alta",
                  "ALERTA Secador secador-01 (coop-tarapoto): temperatura del aire 68.2 °C desde "
                  "14:05. Abra ventilación.", "ALERTA ... cuerpo con detalle", urgent=True)
SMS_NAME = re.compile(r"^OUT([AC])(\d{8})_(\d{6})_00_(\+\d+)_sms(\d+)\.txt$")


def notice(alert_id: int = 7, *, severity: AlertSeverity = AlertSeverity.CRITICAL,
           opened_at: datetime = T0, closed_at: datetime | None = None,
           node: str = "secador-01", acknowledged: bool = False) -> AlertNotice:
    return AlertNotice(
        site_id="coop-tarapoto", node_id=node, alert_id=alert_id,
        kind=AlertKind.OVER_TEMPERATURE, severity=severity,
        state=AlertState.CLOSED if closed_at else AlertState.OPEN, opened_at=opened_at,
        updated_at=closed_at or opened_at, closed_at=closed_at,
        message="inside air 68.2 °C, at or above the 60.0 °C alarm", value=68.2,
        acknowledged_by="ana" if acknowledged else None,
        acknowledged_at=opened_at if acknowledged else None)


# --- a real SMTP server on loopback -----------------------------------------------------------

@dataclass(frozen=True)
class Mail:
    sender: str
    recipients: list[str]
    content: bytes
    login: str | None

    @property
    def email(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SmtpServer:
    """aiosmtpd on a free loopback port; ``users`` enables AUTH; ``tls`` (cert, key) enables
    STARTTLS (required) or, with ``implicit``, TLS from the first byte; ``answers`` maps a
    recipient to the RCPT answer it gets (e.g. "550 5.1.1 no such mailbox")."""

    def __init__(self, *, users: dict[str, str] | None = None,
                 tls: tuple[Path, Path] | None = None, implicit: bool = False,
                 answers: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.mails: list[Mail] = []
        self.answers = dict(answers or {})
        server = self

        class Handler:
            async def handle_RCPT(self, _server: Any, _session: Any, envelope: Any,
                                  address: str, _options: Any) -> str:
                if address in server.answers:
                    return server.answers[address]
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, _server: Any, session: Any, envelope: Any) -> str:
                login = session.auth_data.login.decode() if session.auth_data else None
                server.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos),
                                         envelope.content, login))
                return "250 Message accepted for delivery"

        def authenticate(_server: Any, _session: Any, _envelope: Any, _mechanism: str,
                         data: Any) -> AuthResult:
            ok = (isinstance(data, LoginPassword) and users is not None
                  and users.get(data.login.decode()) == data.password.decode())
            return AuthResult(success=ok, handled=False, auth_data=data if ok else None)

        options: dict[str, Any] = {}
        if users is not None:
            options |= {"authenticator": authenticate, "auth_require_tls": tls is not None}
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            options |= ({"ssl_context": context} if implicit
                        else {"tls_context": context, "require_starttls": True})
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port,
                                     **options)

    def start(self) -> SmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()


@pytest.fixture
def smtp_servers() -> Iterator[list[SmtpServer]]:
    started: list[SmtpServer] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed_cert(tmp_path_factory.mktemp("smtp-tls"))


def trusting(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


# --- a local stand-in for api.telegram.org ----------------------------------------------------

def telegram_server(*script: tuple[int, dict[str, Any]]) -> HttpReceiver:
    """A stand-in for api.telegram.org: records each Bot API request and answers ``script``
    (status, JSON) first, then ok."""
    def answer(status: int, data: dict[str, Any]) -> Answer:
        return Answer(status, {"Content-Type": "application/json"}, json.dumps(data).encode())

    return HttpReceiver([answer(*step) for step in script],
                        default=answer(200, {"ok": True, "result": {"message_id": 1}}))


@pytest.fixture
def telegram_servers() -> Iterator[list[HttpReceiver]]:
    started: list[HttpReceiver] = []
    yield started
    for server in started:
        server.stop()


# --- e-mail ---------------------------------------------------------------------------------

def test_email_with_login_reaches_the_smtp_server_in_spanish(
        smtp_servers: list[SmtpServer]) -> None:
    server = SmtpServer(users={"alertas": "clave-secreta"}).start()
    smtp_servers.append(server)
    channel = EmailChannel("127.0.0.1", server.port, "Secadores <alertas@coop.pe>",
                           security="plain", username="alertas", password="clave-secreta")
    assert channel.send("luis@coop.pe", MESSAGE).outcome is Outcome.DELIVERED
    [mail] = server.mails
    assert (mail.sender, mail.recipients, mail.login) == ("alertas@coop.pe", ["luis@coop.pe"],
                                                          "alertas")
    email = mail.email
    assert email["Subject"] == MESSAGE.subject and email["Auto-Submitted"] == "auto-generated"
    assert email["X-Priority"] == "1"
    assert email.get_content().strip() == MESSAGE.body


def test_email_over_starttls_with_the_sites_own_certificate(
        smtp_servers: list[SmtpServer], certificate: tuple[Path, Path]) -> None:
    server = SmtpServer(users={"alertas": "clave"}, tls=certificate).start()
    smtp_servers.append(server)
    channel = EmailChannel("127.0.0.1", server.port, "alertas@coop.pe", security="starttls",
                           username="alertas", password="clave",
                           tls_context=trusting(certificate[0]))
    assert channel.send("luis@coop.pe", MESSAGE).outcome is Outcome.DELIVERED
    assert len(server.mails) == 1
    untrusted = EmailChannel("127.0.0.1", server.port, "alertas@coop.pe")
    result = untrusted.send("luis@coop.pe", MESSAGE)   # unknown CA: retried, not delivered
    assert result.outcome is Outcome.RETRY and "CERTIFICATE_VERIFY_FAILED" in (result.error or "")


def test_email_over_implicit_tls(smtp_servers: list[SmtpServer],
                                 certificate: tuple[Path, Path]) -> None:
    server = SmtpServer(tls=certificate, implicit=True).start()
    smtp_servers.append(server)
    channel = EmailChannel("127.0.0.1", server.port, "alertas@coop.pe", security="ssl",
                           tls_context=trusting(certificate[0]))
    assert channel.send("luis@coop.pe", MESSAGE).outcome is Outcome.DELIVERED
    assert len(server.mails) == 1


def test_refused_mailbox_is_given_up_busy_server_and_no_server_are_retried(
        smtp_servers: list[SmtpServer]) -> None:
    server = SmtpServer(answers={"nadie@coop.pe": "550 5.1.1 no such mailbox",
                                 "lleno@coop.pe": "452 4.2.2 mailbox full"}).start()
    smtp_servers.append(server)
    channel = EmailChannel("127.0.0.1", server.port, "alertas@coop.pe", security="plain")
    refused = channel.send("nadie@coop.pe", MESSAGE)
    assert (refused.outcome, refused.status) == (Outcome.GIVE_UP, 550)
    assert "no such mailbox" in (refused.error or "")
    assert channel.send("lleno@coop.pe", MESSAGE).outcome is Outcome.RETRY
    wrong_login = EmailChannel("127.0.0.1", server.port, "a@coop.pe", security="plain",
                               username="x", password="y").send("luis@coop.pe", MESSAGE)
    assert wrong_login.outcome is Outcome.GIVE_UP  # no AUTH offered: configuration
    down = EmailChannel("127.0.0.1", free_port(), "a@coop.pe", security="plain",
                        timeout_s=2).send("luis@coop.pe", MESSAGE)
    assert down.outcome is Outcome.RETRY and "ConnectionRefused" in (down.error or "")
    assert server.mails == []


# --- Telegram -------------------------------------------------------------------------------

def test_telegram_message_goes_to_the_chat_silently_unless_critical(
        telegram_servers: list[HttpReceiver]) -> None:
    server = telegram_server().start()
    telegram_servers.append(server)
    channel = TelegramChannel(TOKEN, api_url=server.url)
    assert channel.send("123456", MESSAGE).outcome is Outcome.DELIVERED
    calm = Message("s", "t", "cuerpo", urgent=False)
    assert channel.send("-100200300", calm).outcome is Outcome.DELIVERED
    first, second = server.requests()
    assert first.path == f"/bot{TOKEN}/sendMessage"
    assert first.json() == {"chat_id": "123456", "text": MESSAGE.body,
                            "disable_web_page_preview": True, "disable_notification": False}
    assert second.json()["chat_id"] == "-100200300"
    assert second.json()["disable_notification"] is True
    channel.close()


def test_telegram_flood_limit_waits_and_blocked_bot_gives_up_without_leaking_the_token(
        telegram_servers: list[HttpReceiver]) -> None:
    server = telegram_server(
        (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 35",
               "parameters": {"retry_after": 35}}),
        (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked"})
    ).start()
    telegram_servers.append(server)
    channel = TelegramChannel(TOKEN, api_url=server.url)
    slow = channel.send("123456", MESSAGE)
    assert (slow.outcome, slow.retry_after_s) == (Outcome.RETRY, 35.0)
    blocked = channel.send("123456", MESSAGE)
    assert (blocked.outcome, blocked.status) == (Outcome.GIVE_UP, 403)
    down = TelegramChannel(TOKEN, api_url=f"http://127.0.0.1:{free_port()}").send("1", MESSAGE)
    assert down.outcome is Outcome.RETRY and TOKEN not in (down.error or "")
    assert telegram_retry_after(b"not json") is None
    channel.close()


def test_telegram_token_must_look_like_one() -> None:
    with pytest.raises(ConfigError, match="telegram token"):
        TelegramChannel("not-a-token")


# --- SMS through the gammu-smsd outbox --------------------------------------------------------

def sms_files(outbox: Path) -> list[Path]:
    return sorted(outbox.iterdir())


def test_sms_is_one_file_named_like_gammus_own_in_utf16_with_gsm_text(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    channel = SmsSpoolChannel(tmp_path, timezone=LIMA, now=clock.now)
    assert channel.send(PHONE, MESSAGE).outcome is Outcome.DELIVERED
    [path] = sms_files(tmp_path)    # no temporary file left behind
    match = SMS_NAME.match(path.name)
    assert match and match.groups() == ("A", "20260301", "140500", PHONE, "0")
    data = path.read_bytes()
    assert data[:2] in (b"\xff\xfe", b"\xfe\xff")  # byte-order mark: gammu reads Unicode
    assert data.decode("utf-16") == ("ALERTA Secador secador-01 (coop-tarapoto): temperatura del "
                                     "aire 68.2 C desde 14:05. Abra ventilacion.")
    for _ in range(2):  # the same second: the next free serial, like gammu-smsd-inject
        channel.send(PHONE, Message("s", "aviso", "b", urgent=False))
    assert [SMS_NAME.match(p.name).group(1, 5) for p in sms_files(tmp_path)] == [  # type: ignore[union-attr]
        ("A", "0"), ("C", "0"), ("C", "1")]


def test_long_sms_becomes_numbered_files_in_sending_order(tmp_path: Path) -> None:
    channel = SmsSpoolChannel(tmp_path, timezone=LIMA, now=ManualClock(T0).now)
    long_text = " ".join(["Secador secador-01 temperatura alta; revise ventilación."] * 5)
    assert channel.send(PHONE, Message("s", long_text, "b")).outcome is Outcome.DELIVERED
    texts = [path.read_bytes().decode("utf-16") for path in sms_files(tmp_path)]
    assert [text[:4] for text in texts] == ["1/2 ", "2/2 "]
    assert all(len(text) <= 160 for text in texts)


def test_missing_outbox_is_retried_and_a_bad_number_given_up(tmp_path: Path) -> None:
    channel = SmsSpoolChannel(tmp_path / "not-mounted-yet", timezone=LIMA)
    result = channel.send(PHONE, MESSAGE)
    assert result.outcome is Outcome.RETRY and "not-mounted-yet" in (result.error or "")
    assert SmsSpoolChannel(tmp_path).send("987654321", MESSAGE).outcome is Outcome.GIVE_UP
    assert list(tmp_path.iterdir()) == []


# --- the service end to end -------------------------------------------------------------------

def luis(*, quiet: str | None = None, per_hour: int = 6,
         channels: tuple[ChannelName, ...] = tuple(ChannelName)) -> Recipient:
    addresses = {ChannelName.EMAIL: "luis@coop.pe", ChannelName.TELEGRAM: "123456",
                 ChannelName.SMS: PHONE}
    return Recipient("luis", Language.ES, {c: addresses[c] for c in channels},
                     Interest(), DeliveryRules(
                         timezone=LIMA, max_messages_per_hour=per_hour,
                         quiet_hours=QuietHours.parse(quiet) if quiet else None))


@pytest.fixture
def services() -> Iterator[list[NotificationService]]:
    made: list[NotificationService] = []
    yield made
    for service in made:
        service.close()


def test_an_alert_reaches_email_telegram_and_sms(
        tmp_path: Path, smtp_servers: list[SmtpServer],
        telegram_servers: list[HttpReceiver], services: list[NotificationService]) -> None:
    smtp = SmtpServer().start()
    smtp_servers.append(smtp)
    telegram = telegram_server().start()
    telegram_servers.append(telegram)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    clock = ManualClock(T0 + timedelta(minutes=2))
    service = NotificationService(
        tmp_path / "notifications.sqlite3", [luis()],
        [EmailChannel("127.0.0.1", smtp.port, "alertas@coop.pe", security="plain"),
         TelegramChannel(TOKEN, api_url=telegram.url),
         SmsSpoolChannel(outbox, timezone=LIMA, now=clock.now)],
        policy=FAST, clock=clock, idle_poll_s=0.05)
    services.append(service)
    service.start()
    assert service.enqueue(notice()) == 3
    wait_for(lambda: len(smtp.mails) == 1 and len(telegram.requests()) == 1
             and len(list(outbox.iterdir())) == 1, 10, "e-mail, Telegram and SMS")
    expected = ("ALERTA Secador secador-01 (coop-tarapoto): temperatura del aire 68.2 °C desde "
                "14:05. Abra ventilación y revise el secador.")
    assert smtp.mails[0].email.get_content().startswith(expected)
    assert telegram.requests()[0].json()["text"].startswith(expected)
    [sms] = list(outbox.iterdir())
    assert sms.read_bytes().decode("utf-16") == expected.replace("°C", "C").replace("ó", "o")
    wait_for(lambda: service.counts()[(ChannelName.SMS, DeliveryState.DELIVERED)] == 1, 10,
             "delivered counted")
    assert service.counts()[(ChannelName.EMAIL, DeliveryState.DELIVERED)] == 1


def test_a_restarted_service_delivers_what_was_queued_once(
        tmp_path: Path, telegram_servers: list[HttpReceiver],
        services: list[NotificationService]) -> None:
    telegram = telegram_server()
    path = tmp_path / "notifications.sqlite3"
    channels = [TelegramChannel(TOKEN, api_url=telegram.url)]
    first = NotificationService(path, [luis(channels=(ChannelName.TELEGRAM,))], channels,
                                policy=FAST, idle_poll_s=0.05)
    services.append(first)
    first.start()
    first.enqueue(notice())
    wait_for(lambda: first.queue.deliveries()[0].attempts >= 2, 10, "failed attempts")
    first.close()
    telegram_servers.append(telegram.start())
    second = NotificationService(path, [luis(channels=(ChannelName.TELEGRAM,))],
                                 [TelegramChannel(TOKEN, api_url=telegram.url)],
                                 policy=FAST, idle_poll_s=0.05)
    services.append(second)
    second.start()
    second.enqueue(notice())   # the same notice again (e.g. announced again): not resent
    wait_for(lambda: second.counts()[(ChannelName.TELEGRAM, DeliveryState.DELIVERED)] == 1,
             10, "delivery after the restart")
    assert len(telegram.requests()) == 1


def test_quiet_hours_hold_warnings_until_a_morning_digest_but_not_critical(
        tmp_path: Path, smtp_servers: list[SmtpServer],
        services: list[NotificationService]) -> None:
    smtp = SmtpServer().start()
    smtp_servers.append(smtp)
    clock = ManualClock(NIGHT)
    service = NotificationService(
        tmp_path / "n.sqlite3", [luis(quiet="21:00-06:00", channels=(ChannelName.EMAIL,))],
        [EmailChannel("127.0.0.1", smtp.port, "alertas@coop.pe", security="plain")],
        clock=clock)
    services.append(service)
    service.enqueue(notice(1, severity=AlertSeverity.WARNING, opened_at=NIGHT))
    service.enqueue(notice(2, severity=AlertSeverity.WARNING, opened_at=NIGHT,
                           node="secador-02"))
    service.enqueue(notice(3, opened_at=NIGHT, node="secador-03"))   # critical
    while service.run_due():
        pass
    assert [m.email["Subject"] for m in smtp.mails] == [
        "ALERTA Secador secador-03 (coop-tarapoto): temperatura alta"]
    assert service.waiting() == {"quiet hours": 2}
    clock.advance(8 * 3600)   # 06:00 in Lima
    while service.run_due():
        pass
    assert smtp.mails[-1].email["Subject"] == "AVISO 2 alertas de secadores"
    assert "secador-01 temperatura alta (abierta); secador-02 temperatura alta (abierta)" in \
        smtp.mails[-1].email.get_content()
    assert service.waiting() == {}


def test_duplicates_and_acknowledgements_are_not_sent_again_a_flapping_one_is_summarised(
        tmp_path: Path, telegram_servers: list[HttpReceiver],
        services: list[NotificationService]) -> None:
    telegram = telegram_server().start()
    telegram_servers.append(telegram)
    clock = ManualClock(T0)
    service = NotificationService(tmp_path / "n.sqlite3",
                                  [luis(channels=(ChannelName.TELEGRAM,), per_hour=20)],
                                  [TelegramChannel(TOKEN, api_url=telegram.url)], clock=clock)
    services.append(service)
    service.enqueue(notice(1))
    service.enqueue(notice(1))
    service.enqueue(notice(1, acknowledged=True))
    while service.run_due():
        pass
    assert len(telegram.requests()) == 1
    for alert_id in (1, 2, 3):   # opens and closes every 20 minutes
        opened = clock.now()
        if alert_id > 1:
            service.enqueue(notice(alert_id, opened_at=opened))
        clock.advance(600)
        service.enqueue(notice(alert_id, opened_at=opened, closed_at=clock.now()))
        clock.advance(600)
        while service.run_due():
            pass
    texts = [request.json()["text"].split("\n")[0] for request in telegram.requests()]
    assert len(texts) == 5, texts   # open 1, close 1, open 2, close 2, then one summary
    assert texts[-1] == ("ALERTA Secador secador-01 (coop-tarapoto): temperatura alta se abrió "
                         "3 veces en la última hora; ahora abierta.")
    assert service.waiting() == {"flapping: summarised once per window": 1}  # closing of 3
    clock.advance(40 * 60)   # an hour after the summary: it calmed down, the closing goes out
    while service.run_due():
        pass
    assert telegram.requests()[-1].json()["text"].startswith(
        "RESUELTO Secador secador-01 (coop-tarapoto): temperatura del aire normal otra vez a "
        "las 14:55 (alerta desde 14:45).")
    assert service.waiting() == {}


def test_permanent_failures_are_counted_and_a_removed_recipient_is_not_tried(
        tmp_path: Path, smtp_servers: list[SmtpServer],
        services: list[NotificationService]) -> None:
    smtp = SmtpServer(answers={"luis@coop.pe": "550 5.1.1 no such mailbox"}).start()
    smtp_servers.append(smtp)
    path = tmp_path / "n.sqlite3"
    email = EmailChannel("127.0.0.1", smtp.port, "alertas@coop.pe", security="plain")
    service = NotificationService(path, [luis(channels=(ChannelName.EMAIL,))], [email],
                                  clock=ManualClock(T0))
    services.append(service)
    service.enqueue(notice())
    while service.run_due():
        pass
    assert service.counts()[(ChannelName.EMAIL, DeliveryState.FAILED)] == 1
    [failed] = service.queue.deliveries()
    assert failed.last_status == 550 and "no such mailbox" in (failed.last_error or "")
    service.enqueue(notice(8, node="secador-02"))   # queued, then luis leaves the config
    service.close()
    services.remove(service)
    later = NotificationService(path, [], [email], clock=ManualClock(T0))
    services.append(later)
    assert later.run_due() == 1 and len(smtp.mails) == 0
    assert later.queue.deliveries()[-1].last_error == ("target 'luis/email' is no longer "
                                                       "configured")
    assert later.counts()[(ChannelName.EMAIL, DeliveryState.FAILED)] == 2


def test_a_recipient_needs_its_channel(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'luis': email address given but that channel is not"):
        NotificationService(tmp_path / "n.sqlite3", [luis()],
                            [SmsSpoolChannel(tmp_path)])


# --- configuration --------------------------------------------------------------------------

EXAMPLE = Path(__file__).parent.parent / "gateway" / "examples" / "notify-example.toml"


def test_the_example_config_loads_with_its_recipients() -> None:
    settings = load_gateway_config(EXAMPLE)
    recipients = {r.name: r for r in recipients_from_settings(settings)}
    assert set(recipients) >= {"luis-operador", "maria-tecnica"}
    luis_ = recipients["luis-operador"]
    assert luis_.language is Language.ES and luis_.rules.quiet_hours == QuietHours.parse(
        "21:00-06:00")
    assert ChannelName.SMS in luis_.addresses and luis_.rules.timezone.key == "America/Lima"


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n", encoding="utf-8")
    return path


def test_service_is_built_from_settings_with_secrets_from_files(tmp_path: Path) -> None:
    token = write_secret(tmp_path / "telegram.token", TOKEN)
    password = write_secret(tmp_path / "smtp.password", "clave")
    settings = parse_gateway_config({
        "data_dir": str(tmp_path / "data"),
        "notify": {
            "email": {"host": "127.0.0.1", "port": 2525, "security": "plain",
                      "sender": "alertas@coop.pe", "username": "alertas",
                      "password_file": str(password)},
            "telegram": {"token_file": str(token), "api_url": "http://127.0.0.1:9"},
            "sms": {"outbox": str(tmp_path / "outbox")},
            "recipients": [{"name": "luis", "email": "luis@coop.pe", "phone": PHONE,
                            "telegram_chat_id": "123456", "quiet_hours": "21:00-06:00"}]}})
    service = notification_service(settings, ManualClock(T0))
    assert service is not None
    try:
        assert set(service.channels) == set(ChannelName)
        assert service.path == tmp_path / "data" / "notifications.sqlite3"
        assert service.queue.policy.max_age_s == 12 * 3600
    finally:
        service.close()
    assert notification_service(parse_gateway_config({})) is None


@pytest.mark.parametrize(("notify", "error"), [
    ({"recipients": [{"name": "luis", "phone": PHONE}]},
     "recipient 'luis': phone is set but [notify.sms] is not configured"),
    ({"sms": {"outbox": "/tmp/x"}, "recipients": [{"name": "luis", "phone": "987654321"}]},
     "E.164"),
    ({"sms": {"outbox": "/tmp/x"}, "recipients": [{"name": "luis", "phone": PHONE},
                                                  {"name": "luis", "phone": PHONE}]},
     "recipient 'luis' is configured twice"),
    ({"recipients": [{"name": "luis"}]}, "has no email, telegram_chat_id or phone"),
    ({"sms": {"outbox": "/tmp/x"}, "recipients": [{"name": "luis", "phone": PHONE,
                                                   "quiet_hours": "9pm-6am"}]},
     "quiet_hours '9pm-6am': expected HH:MM-HH:MM"),
    ({"email": {"host": "h", "sender": "a@b.pe"},
      "recipients": [{"name": "luis", "email": "no-arroba"}]}, "expected an e-mail address"),
    ({"telegram": {"token_file": "t"}, "recipients": [{"name": "luis",
                                                       "telegram_chat_id": "luis"}]},
     "numeric chat id"),
    ({"sms": {"outbox": "/tmp/x"}, "recipients": [{"name": "luis", "phone": PHONE,
                                                   "language": "qu"}]}, "language"),
])
def test_notify_config_mistakes_are_one_line_errors(notify: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_gateway_config({"notify": notify}, "gw.toml")
    assert error in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("gw.toml: notify")


def test_unreadable_token_file_is_a_config_error(tmp_path: Path) -> None:
    settings = parse_gateway_config({"data_dir": str(tmp_path), "notify": {
        "telegram": {"token_file": str(tmp_path / "missing.token")},
        "recipients": [{"name": "luis", "telegram_chat_id": "123456"}]}})
    with pytest.raises(ConfigError, match=r"telegram\.token_file .*missing\.token: cannot read"):
        notification_service(settings)

