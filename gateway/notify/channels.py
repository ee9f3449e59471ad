"""Ways to reach people: e-mail (SMTP), Telegram (Bot API) and SMS (a gammu-smsd spool).

Each ``Channel`` sends one ``Message`` to one address and says how it went (an ``Attempt``
from ``gateway.webhooks``): delivered, retry later, or give up (it would fail again). The
notification queue retries with the webhooks' backoff.

- **E-mail**: ``smtplib`` with ``starttls`` (port 587), ``ssl`` (465) or ``plain`` (a relay
  on the LAN); login when a username is set. 4xx answers, timeouts and dropped connections
  are retried; 5xx (unknown mailbox, refused login) given up.
- **Telegram**: ``POST <api_url>/bot<token>/sendMessage`` with the chat id and plain text;
  non-critical messages arrive silently (``disable_notification``). 429 waits for
  ``retry_after``; 400/401/403 (no such chat, bad token, bot blocked) give up. The token never
  appears in logs.
- **SMS**: one file per SMS in gammu-smsd's outbox folder (files backend), named like gammu's
  own ``OUTC<YYYYMMDD>_<HHMMSS>_00_<number>_sms<n>.txt`` (``OUTA`` for critical: gammu sends
  alphabetically, A first), written as UTF-16 with a byte-order mark so gammu reads it the
  same whatever its locale, GSM-7-safe, at most 160 characters each, and atomically (a hidden
  temporary file linked into place; gammu skips names starting with a dot). Delivered = in
  the spool; gammu-smsd does the rest (its log and error folder say what the modem did).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import smtplib
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from enum import StrEnum
from pathlib import Path
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import httpx

from cacao_dryer import __version__
from cacao_dryer.errors import ConfigError
from gateway.notify.messages import Message, split_sms, to_gsm7
from gateway.webhooks import Attempt, Outcome, post_attempt

E164 = re.compile(r"^\+[1-9][0-9]{7,14}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
TELEGRAM_CHAT = re.compile(r"^(-?[0-9]{1,20}|@[A-Za-z][A-Za-z0-9_]{4,31})$")
TELEGRAM_TEXT_MAX = 4096


class ChannelName(StrEnum):
    EMAIL = "email"
    TELEGRAM = "telegram"
    SMS = "sms"


def check_address(channel: ChannelName, address: str) -> str:
    """The address if it is valid for ``channel``; a one-line ConfigError otherwise."""
    patterns = {ChannelName.EMAIL: (EMAIL, "an e-mail address like ana@coop.pe"),
                ChannelName.TELEGRAM: (TELEGRAM_CHAT, "a numeric chat id or @channel"),
                ChannelName.SMS: (E164, "an international number like +51987654321 (E.164)")}
    pattern, expected = patterns[channel]
    if not pattern.match(address):
        raise ConfigError(f"{channel.value} {address!r}: expected {expected}")
    return address


class Channel(Protocol):
    name: ChannelName

    def send(self, address: str, message: Message) -> Attempt:
        """Send ``message`` to ``address``; never raises for a delivery problem."""
        ...

    def close(self) -> None: ...


# --- e-mail ---------------------------------------------------------------------------------

SmtpSecurity = Literal["starttls", "ssl", "plain"]


class EmailChannel:
    name = ChannelName.EMAIL

    def __init__(self, host: str, port: int, sender: str, *,
                 security: SmtpSecurity = "starttls", username: str | None = None,
                 password: str | None = None, timeout_s: float = 20.0,
                 tls_context: ssl.SSLContext | None = None) -> None:
        if security not in ("starttls", "ssl", "plain"):
            raise ConfigError(f"email security {security!r}: expected starttls, ssl or plain")
        if username is not None and password is None:
            raise ConfigError(f"email username {username!r} needs a password_file")
        self.host, self.port, self.sender = host, port, sender
        self.security: SmtpSecurity = security
        self.username, self._password = username, password
        self.timeout_s = timeout_s
        self.tls_context = tls_context or ssl.create_default_context()

    def _connect(self) -> smtplib.SMTP:
        if self.security == "ssl":
            return smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout_s,
                                    context=self.tls_context)
        smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout_s)
        if self.security == "starttls":
            smtp.starttls(context=self.tls_context)
        return smtp

    def email(self, address: str, message: Message) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = address
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid("cacao-dryer")
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
        mail["X-Mailer"] = f"cacao-dryer-gateway/{__version__}"
        if message.urgent:
            mail["X-Priority"] = "1"
        mail.set_content(message.body)
        return mail

    def send(self, address: str, message: Message) -> Attempt:
        try:
            with self._connect() as smtp:
                if self.username is not None:
                    smtp.login(self.username, self._password or "")
                smtp.send_message(self.email(address, message))
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return _smtp_answer(code, text)
        except smtplib.SMTPConnectError as exc:  # a greeting other than 220: busy, later
            return Attempt(Outcome.RETRY, exc.smtp_code, f"SMTP {exc.smtp_code} on connect")
        except smtplib.SMTPResponseException as exc:  # sender/data refused, login failed ...
            return _smtp_answer(exc.smtp_code, exc.smtp_error)
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS / AUTH: configuration
            return Attempt(Outcome.GIVE_UP, None, f"SMTP server: {exc}")
        except (smtplib.SMTPException, OSError) as exc:  # timeouts, refused, TLS, dropped
            return Attempt(Outcome.RETRY, None, f"{type(exc).__name__}: {exc}")
        return Attempt(Outcome.DELIVERED, 250)

    def close(self) -> None:
        pass


def _smtp_answer(code: int, text: bytes | str) -> Attempt:
    reason = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    outcome = Outcome.GIVE_UP if 500 <= code < 600 else Outcome.RETRY
    return Attempt(outcome, code, f"SMTP {code}: {reason}"[:300])


# --- Telegram -------------------------------------------------------------------------------

def telegram_retry_after(body: bytes) -> float | None:
    """``parameters.retry_after`` of a Telegram error answer (seconds), if present."""
    try:
        value = json.loads(body)["parameters"]["retry_after"]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and value >= 0 else None


class TelegramChannel:
    name = ChannelName.TELEGRAM

    def __init__(self, token: str, *, api_url: str = "https://api.telegram.org",
                 timeout_s: float = 10.0, now: Callable[[], datetime] | None = None) -> None:
        if not re.match(r"^[0-9]+:[A-Za-z0-9_-]{20,}$", token):
            raise ConfigError("telegram token: expected <bot id>:<secret> as @BotFather gives it")
        self._token = token
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self._now = now or (lambda: datetime.now(UTC))
        self._http = httpx.Client(timeout=timeout_s, follow_redirects=False,
                                  headers={"User-Agent": f"cacao-dryer-gateway/{__version__}"})

    def send(self, address: str, message: Message) -> Attempt:
        payload = {"chat_id": address, "text": message.body[:TELEGRAM_TEXT_MAX],
                   "disable_web_page_preview": True,
                   "disable_notification": not message.urgent}
        return post_attempt(self._http, f"{self.api_url}/bot{self._token}/sendMessage", {},
                            self._now, self.timeout_s, json_body=payload, redact=self._token,
                            retry_after_in_body=telegram_retry_after)

    def close(self) -> None:
        self._http.close()


# --- SMS through gammu-smsd's spool ---------------------------------------------------------

class SmsSpoolChannel:
    name = ChannelName.SMS

    def __init__(self, outbox: Path, *, timezone: ZoneInfo | None = None,
                 now: Callable[[], datetime] | None = None, max_parts: int = 3) -> None:
        self.outbox = outbox
        self.timezone = timezone or ZoneInfo("UTC")
        self._now = now or (lambda: datetime.now(UTC))
        self.max_parts = max_parts

    def file_names(self, number: str, urgent: bool, count: int) -> list[str]:
        """Free names for ``count`` SMS to ``number`` now, in sending order."""
        stamp = self._now().astimezone(self.timezone).strftime("%Y%m%d_%H%M%S")
        priority = "A" if urgent else "C"
        names: list[str] = []
        for serial in range(100):
            name = f"OUT{priority}{stamp}_00_{number}_sms{serial}.txt"
            if not (self.outbox / name).exists():
                names.append(name)
                if len(names) == count:
                    return names
        raise FileExistsError(f"no free SMS file name in {self.outbox} for {stamp}")

    def send(self, address: str, message: Message) -> Attempt:
        if not E164.match(address):
            return Attempt(Outcome.GIVE_UP, None, f"SMS: {address!r} is not an E.164 number")
        parts = split_sms(to_gsm7(message.text), self.max_parts)
        temporaries: list[Path] = []
        try:
            for part in parts:  # every part on disk before any is visible to gammu
                temporary = self.outbox / f".cacao-{uuid.uuid4().hex}.tmp"
                temporaries.append(temporary)
                with open(temporary, "wb") as handle:
                    handle.write(part.encode("utf-16"))  # BOM + UTF-16: gammu's "unicode"
                    handle.flush()
                    os.fsync(handle.fileno())
            for temporary, name in zip(temporaries, self.file_names(
                    address, message.urgent, len(parts)), strict=True):
                os.link(temporary, self.outbox / name)  # fails rather than overwrite
            _fsync_dir(self.outbox)
        except OSError as exc:  # no folder yet, no permission, disk full: try again later
            return Attempt(Outcome.RETRY, None, f"SMS spool {self.outbox}: {exc}")
        finally:
            for temporary in temporaries:
                with contextlib.suppress(OSError):
                    temporary.unlink()
        return Attempt(Outcome.DELIVERED)

    def close(self) -> None:
        pass


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
