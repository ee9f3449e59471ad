"""What people read (gateway/notify/messages.py): templates for every alert kind in Spanish
and English, the texts themselves, and SMS-safe text (GSM 7-bit alphabet, 160 characters)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cacao_dryer.contract import AlertKind, AlertNotice, AlertSeverity, AlertState
from gateway.notify.messages import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    KIND_PARTS,
    MESSAGES_DIR,
    SMS_SEPTETS,
    Message,
    Renderer,
    gsm7_length,
    params_of,
    split_sms,
    to_gsm7,
)
from gateway.notify.rules import Language, MessageKind, Outgoing, Pending

LIMA = ZoneInfo("America/Lima")
T0 = datetime(2026, 3, 1, 19, 5, tzinfo=UTC)  # 14:05 in Lima


def notice(kind: AlertKind = AlertKind.OVER_TEMPERATURE, *, alert_id: int = 7,
           severity: AlertSeverity = AlertSeverity.CRITICAL, value: float | None = 68.2,
           closed_at: datetime | None = None, node: str = "secador-01",
           opened_at: datetime = T0) -> AlertNotice:
    return AlertNotice(
        site_id="coop-tarapoto", node_id=node, alert_id=alert_id, kind=kind,
        severity=severity, state=AlertState.CLOSED if closed_at else AlertState.OPEN,
        opened_at=opened_at, updated_at=closed_at or opened_at, closed_at=closed_at,
        message="inside air 68.2 °C, at or above the 60.0 °C alarm", value=value)


def render(language: Language, *notices: AlertNotice, kind: MessageKind = MessageKind.ALERT,
           openings: int = 0, now: datetime = T0) -> Message:
    items = tuple(Pending(i, n, now) for i, n in enumerate(notices))
    return Renderer(language, LIMA).render(Outgoing(kind, items, openings=openings), now)


# --- the catalogs ---------------------------------------------------------------------------

def catalogs() -> dict[str, dict[str, str]]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted(MESSAGES_DIR.glob("*.json"))}


def test_both_languages_have_the_same_keys_and_parameters() -> None:
    found = catalogs()
    assert set(found) == {language.value for language in Language}
    spanish, english = found["es"], found["en"]
    assert set(spanish) == set(english)
    for key in spanish:
        assert params_of(spanish[key]) == params_of(english[key]), key


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_alert_kind_has_its_templates(language: Language, kind: AlertKind) -> None:
    texts = catalogs()[language.value]
    for part in KIND_PARTS:
        assert texts.get(f"kind.{kind.value}.{part}"), f"{language} {kind} {part}"
    assert params_of(texts[f"kind.{kind.value}.what"]) == {"value"}


class RecordingRenderer(Renderer):
    """Notes every template key it uses."""

    used: ClassVar[set[str]] = set()

    def t(self, key: str, **params: object) -> str:
        self.used.add(key)
        return super().t(key, **params)


def test_every_template_is_used() -> None:
    for language in Language:
        renderer = RecordingRenderer(language, LIMA)
        for kind in AlertKind:
            for severity in AlertSeverity:
                for closed_at in (None, T0 + timedelta(hours=1)):
                    for value in (None, 1.0):
                        item = notice(kind, severity=severity, closed_at=closed_at, value=value)
                        twice = (Pending(1, item, T0), Pending(2, notice(kind, alert_id=8), T0))
                        for outgoing in (Outgoing(MessageKind.ALERT, twice[:1]),
                                         Outgoing(MessageKind.FLAPPING, twice, openings=3),
                                         Outgoing(MessageKind.DIGEST, twice),
                                         Outgoing(MessageKind.DIGEST, (twice[0],))):
                            renderer.render(outgoing, T0)
        assert RecordingRenderer.used == set(catalogs()[language.value]), language
        RecordingRenderer.used = set()


# --- the texts ------------------------------------------------------------------------------

def test_spanish_alert_names_dryer_value_since_and_what_to_do() -> None:
    message = render(Language.ES, notice())
    assert message.text == ("ALERTA Secador secador-01 (coop-tarapoto): temperatura del aire "
                            "68.2 °C desde 14:05. Abra ventilación y revise el secador.")
    assert message.subject == "ALERTA Secador secador-01 (coop-tarapoto): temperatura alta"
    assert "Detalle técnico (alerta 7): inside air 68.2 °C" in message.body
    assert message.urgent


def test_english_warning_and_resolved_texts() -> None:
    warning = render(Language.EN, notice(AlertKind.HIGH_HUMIDITY, severity=AlertSeverity.WARNING,
                                         value=83.4))
    assert warning.text == ("WARNING Dryer secador-01 (coop-tarapoto): air humidity 83 % RH "
                            "with dry beans since 14:05. Close the vents and cover the beans.")
    assert not warning.urgent
    closed = render(Language.EN, notice(closed_at=T0 + timedelta(minutes=40)))
    assert closed.text == ("RESOLVED Dryer secador-01 (coop-tarapoto): air temperature normal "
                           "again at 14:45 (alert since 14:05).")


def test_alert_without_a_value_names_the_kind_and_an_old_one_shows_its_date() -> None:
    message = render(Language.ES, notice(AlertKind.SENSOR_FAULT, value=None,
                                         opened_at=T0 - timedelta(days=1)))
    assert message.text.startswith("ALERTA Secador secador-01 (coop-tarapoto): falla de sensor "
                                   "desde 28/02 14:05.")


def test_flapping_and_digest_texts() -> None:
    flapping = render(Language.ES, notice(severity=AlertSeverity.WARNING),
                      notice(severity=AlertSeverity.WARNING, closed_at=T0 + timedelta(minutes=9)),
                      kind=MessageKind.FLAPPING, openings=5)
    assert flapping.text == ("RESUELTO Secador secador-01 (coop-tarapoto): temperatura alta se "
                             "abrió 5 veces en la última hora; ahora resuelta.")
    digest = render(Language.EN, notice(alert_id=1), notice(alert_id=2),
                    notice(AlertKind.NODE_OFFLINE, alert_id=3, node="secador-02",
                           severity=AlertSeverity.WARNING), kind=MessageKind.DIGEST)
    assert digest.text == ("ALERT 2 alerts: secador-01 over-temperature x2 (open); secador-02 "
                           "dryer offline (open)")
    assert digest.subject == "ALERT 2 dryer alerts"


def test_message_survives_the_queue_as_json() -> None:
    message = render(Language.ES, notice())
    assert Message.from_json(message.to_json()) == message


@pytest.mark.parametrize("language", list(Language))
@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_alert_fits_one_sms(language: Language, kind: AlertKind) -> None:
    for closed_at in (None, T0 + timedelta(hours=2)):
        text = to_gsm7(render(language, notice(kind, value=1234.5, closed_at=closed_at)).text)
        assert gsm7_length(text) <= SMS_SEPTETS, text


# --- SMS text -------------------------------------------------------------------------------

def test_gsm7_drops_what_the_alphabet_lacks_and_keeps_what_it_has() -> None:
    assert to_gsm7("Abra ventilación: 68.2 °C ≥ 65 °C") == "Abra ventilacion: 68.2 C >= 65 C"
    assert to_gsm7("¿Señal? ¡Sí! Über café") == "¿Señal? ¡Si! Über café"
    assert to_gsm7("emoji 🔥 – fin…") == "emoji ? - fin..."


@settings(max_examples=200)
@given(st.text(max_size=600))
def test_gsm7_text_uses_only_the_gsm_alphabet(text: str) -> None:
    assert set(to_gsm7(text)) <= GSM7_BASIC | GSM7_EXTENSION


def test_extension_characters_count_twice() -> None:
    assert gsm7_length("a{b}€") == 8


def test_short_text_is_one_sms_and_long_text_numbered_parts() -> None:
    assert split_sms("hola  mundo") == ["hola mundo"]
    words = " ".join(f"palabra{i}" for i in range(40))
    parts = split_sms(words)
    assert [part[:4] for part in parts] == ["1/3 ", "2/3 ", "3/3 "]
    assert " ".join(part[4:] for part in parts) == words


@settings(max_examples=200)
@given(st.lists(st.text(alphabet="abcdefghijklmnñ{}0123456789.,", min_size=1, max_size=200),
                max_size=80))
def test_every_sms_part_fits_and_at_most_three_are_sent(words: list[str]) -> None:
    parts = split_sms(" ".join(words))
    assert 1 <= len(parts) <= 3
    assert all(gsm7_length(part) <= SMS_SEPTETS for part in parts)
