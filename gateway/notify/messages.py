"""What people read: short alert messages in Spanish or English, SMS-safe text.

Templates live in ``gateway/notify/texts/{es,en}.json`` (flat key → text, the same keys
and ``{params}`` in both, tested): per alert kind a name, what is wrong (with the value and
its unit), what to do, and what "resolved" means. A message names the dryer and site, the
value, since when (local time of the site) and what to do::

    ALERTA Secador secador-01 (coop-tarapoto): temperatura del aire 68.2 °C desde 14:05.
    Abra ventilación y revise el secador.

SMS text goes through ``to_gsm7`` (the GSM 03.38 alphabet: no "°", "≥", "á", "ó" ...) and
``split_sms`` (160 characters a part, numbered "1/2 ", at most 3 parts).
"""

from __future__ import annotations

import json
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from cacao_dryer.contract import SEVERITY_RANK, AlertKind, AlertNotice, AlertSeverity, AlertState
from gateway.notify.rules import Language, MessageKind, Outgoing, subject_of

MESSAGES_DIR = Path(__file__).parent / "texts"
KIND_PARTS = ("name", "what", "action", "closed")
# digits after the point for each kind's value (its unit is in the template)
DECIMALS: dict[AlertKind, int] = {
    AlertKind.OVER_TEMPERATURE: 1, AlertKind.HIGH_HUMIDITY: 0, AlertKind.SENSOR_FAULT: 0,
    AlertKind.NODE_OFFLINE: 0, AlertKind.SEQUENCE_GAP: 0, AlertKind.DRYING_STALLED: 1,
    AlertKind.TARGET_REACHED: 1, AlertKind.CONFIG_NOT_APPLIED: 0, AlertKind.CLOCK_WRONG: 0,
}
MAX_DETAILS = 10


@cache
def catalog(language: Language) -> Mapping[str, str]:
    """The templates of one language (read once)."""
    data = json.loads((MESSAGES_DIR / f"{Language(language).value}.json")
                      .read_text(encoding="utf-8"))
    return dict(data)


def params_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


@dataclass(frozen=True)
class Message:
    """One message for people: ``text`` is the short form (SMS, first paragraph elsewhere),
    ``body`` adds technical detail (e-mail, Telegram), ``urgent`` marks critical ones."""

    subject: str
    text: str
    body: str
    urgent: bool = False

    def to_json(self) -> bytes:
        return json.dumps({"subject": self.subject, "text": self.text, "body": self.body,
                           "urgent": self.urgent}, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Message:
        value = json.loads(data)
        return cls(str(value["subject"]), str(value["text"]), str(value["body"]),
                   bool(value["urgent"]))


class Renderer:
    """Renders ``Outgoing`` messages in one language, times in ``timezone``."""

    def __init__(self, language: Language, timezone: ZoneInfo) -> None:
        self.language = Language(language)
        self.timezone = timezone
        self.texts = catalog(self.language)

    def t(self, key: str, **params: object) -> str:
        return self.texts[key].format(**params)

    def _local(self, moment: datetime, now: datetime) -> str:
        local = moment.astimezone(self.timezone)
        if local.date() == now.astimezone(self.timezone).date():
            return f"{local:%H:%M}"
        return f"{local:%d/%m %H:%M}"

    def _label(self, notices: Sequence[AlertNotice]) -> str:
        if all(n.state is AlertState.CLOSED for n in notices):
            return self.t("label.closed")
        worst = max((n.severity for n in notices if n.state is AlertState.OPEN),
                    key=SEVERITY_RANK.__getitem__, default=AlertSeverity.INFO)
        return self.t(f"label.{worst.value}")

    def _dryer(self, notice: AlertNotice) -> str:
        return self.t("dryer", node=notice.node_id, site=notice.site_id)

    def _kind(self, kind: AlertKind, part: str, **params: object) -> str:
        return self.t(f"kind.{kind.value}.{part}", **params)

    def _value(self, notice: AlertNotice) -> str:
        assert notice.value is not None
        return f"{notice.value:.{DECIMALS[notice.kind]}f}"

    def alert_text(self, notice: AlertNotice, now: datetime) -> str:
        label, dryer = self._label([notice]), self._dryer(notice)
        since = self._local(notice.opened_at, now)
        if notice.state is AlertState.CLOSED:
            assert notice.closed_at is not None
            return self.t("message.closed", label=label, dryer=dryer,
                          closed=self._kind(notice.kind, "closed"),
                          at=self._local(notice.closed_at, now), since=since)
        what = (self._kind(notice.kind, "name") if notice.value is None
                else self._kind(notice.kind, "what", value=self._value(notice)))
        return self.t("message.open", label=label, dryer=dryer, what=what, since=since,
                      action=self._kind(notice.kind, "action"))

    def _state(self, notice: AlertNotice) -> str:
        return self.t(f"state.{notice.state.value}")

    def flapping_text(self, notices: Sequence[AlertNotice], openings: int) -> str:
        latest = notices[-1]
        return self.t("message.flapping", label=self._label([latest]),
                      dryer=self._dryer(latest), name=self._kind(latest.kind, "name"),
                      count=openings, state=self._state(latest))

    def digest_text(self, notices: Sequence[AlertNotice]) -> str:
        by_subject: dict[tuple[str, str, AlertKind], list[AlertNotice]] = {}
        for notice in notices:
            by_subject.setdefault(subject_of(notice), []).append(notice)
        items = []
        for (_, node, kind), group in by_subject.items():
            times = len({n.alert_id for n in group})
            name, state = self._kind(kind, "name"), self._state(group[-1])
            items.append(self.t("digest.item", node=node, name=name, state=state) if times == 1
                         else self.t("digest.item_repeated", node=node, name=name,
                                     times=times, state=state))
        return self.t("message.digest", label=self._label(notices), count=len(by_subject),
                      items="; ".join(items))

    def render(self, outgoing: Outgoing, now: datetime) -> Message:
        notices = outgoing.notices
        first = notices[0]
        if outgoing.kind is MessageKind.ALERT:
            text = self.alert_text(first, now)
        elif outgoing.kind is MessageKind.FLAPPING:
            text = self.flapping_text(notices, outgoing.openings)
        else:
            text = self.digest_text(notices)
        if outgoing.kind is MessageKind.DIGEST:
            count = len({subject_of(n) for n in notices})
            subject = self.t("email.subject_digest", label=self._label(notices), count=count)
        else:
            subject = self.t("email.subject", label=self._label(notices[-1:]),
                             dryer=self._dryer(first), name=self._kind(first.kind, "name"))
        details = [self.t("email.detail", alert_id=n.alert_id, message=n.message)
                   for n in notices[-MAX_DETAILS:]]
        body = "\n\n".join([text, "\n".join(details),
                            self.t("email.footer", timezone=self.timezone.key)])
        return Message(subject, text, body, outgoing.urgent)


# --- SMS ------------------------------------------------------------------------------------

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("^{}\\[~]|€")  # two septets each (escape + character)
_REPLACE = {"°": "", "≥": ">=", "≤": "<=", "–": "-", "—": "-", "…": "...", "‘": "'",
            "’": "'", "“": '"', "”": '"', "·": "-", "×": "x", "\t": " "}
SMS_SEPTETS = 160
SMS_MAX_PARTS = 3


def to_gsm7(text: str) -> str:
    """Text a GSM modem sends in the 7-bit alphabet: accents the alphabet lacks are dropped
    (á → a, ó → o; é, ñ, ü, ¿, ¡ stay), "°C" becomes "C", anything else unknown "?"."""
    out = []
    for char in text:
        if char in GSM7_BASIC or char in GSM7_EXTENSION:
            out.append(char)
            continue
        if char in _REPLACE:
            out.append(_REPLACE[char])
            continue
        plain = "".join(c for c in unicodedata.normalize("NFKD", char)
                        if not unicodedata.combining(c))
        out.append(plain if plain and all(c in GSM7_BASIC for c in plain) else "?")
    return "".join(out)


def gsm7_length(text: str) -> int:
    """Septets ``text`` takes in one SMS (extension characters count twice)."""
    return sum(2 if char in GSM7_EXTENSION else 1 for char in text)


def _wrap(words: list[str], width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in words:
        while gsm7_length(word) > width:  # a word longer than a part: cut it
            if line:
                lines.append(line)
                line = ""
            cut = width
            while gsm7_length(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}" if line else word
        if gsm7_length(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


def split_sms(text: str, max_parts: int = SMS_MAX_PARTS) -> list[str]:
    """``text`` (GSM-7) as SMS of at most 160 septets each: one if it fits, else parts
    numbered "1/2 ", "2/2 " cut between words; beyond ``max_parts`` the last part ends "..."."""
    text = " ".join(text.split())
    if gsm7_length(text) <= SMS_SEPTETS:
        return [text]
    for count in range(2, 10):
        width = SMS_SEPTETS - len(f"{count}/{count} ")
        parts = _wrap(text.split(" "), width)
        if len(parts) <= count:
            break
    if len(parts) > max_parts:
        count = max_parts
        width = SMS_SEPTETS - len(f"{count}/{count} ")
        parts = _wrap(text.split(" "), width)[:max_parts]
        last = parts[-1]
        while gsm7_length(last) > width - 3:
            last = last[:-1]
        parts[-1] = last.rstrip() + "..."
    total = len(parts)
    return [f"{index}/{total} {part}" for index, part in enumerate(parts, start=1)]
