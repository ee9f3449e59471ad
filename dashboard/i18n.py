"""Translations and locale formatting for the dashboard.

Every text a person reads is in ``dashboard/i18n/<language>.json`` (shared texts) and
``dashboard/i18n/<area>/<language>.json`` (one page area's): flat objects of ``key → text`` per
language, the same keys in each (a test holds them equal and checks every
key the templates and scripts use). ``{name}`` in a text is replaced by a parameter.

Each catalog also carries how its language writes numbers and dates (``meta.*`` keys): the
browser formats live values with ``Intl`` and ``meta.locale``; the server formats what it
renders itself with ``format_number`` and ``format_datetime`` below, which follow the same
conventions without a locale database (Babel's would add ~30 MB to a Raspberry Pi).

Adding a language = copying ``es.json`` to ``<code>.json``, translating the values and listing
the code in ``LANGUAGES`` (docs/dashboard.md).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from functools import cache
from pathlib import Path

from cacao_dryer.contract import Alarm, EventType, Mode, NodeState
from cacao_dryer.errors import ConfigError
from cacao_dryer.measurements import MEASUREMENTS

CATALOG_DIR = Path(__file__).parent / "i18n"
LANGUAGES = ("es", "en")   # the switch in the top bar shows them in this order
DEFAULT_LANGUAGE = "es"    # a new site speaks Spanish (Peruvian cooperatives first)
LANGUAGE_COOKIE = "cacao_lang"
ROLES = ("operator", "technician", "manager", "admin")
# Units written differently per language (the others — °C, %, kg, V — are the same in all).
UNIT_KEYS = {"% w.b.": "unit.pct_wb"}

_PARAM = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def dynamic_keys() -> set[str]:
    """Keys the code builds from data (a node's state, an event's type, a measurement's label)
    rather than writing them out; a test checks each exists in every catalog."""
    return ({f"measure.{m.label}" for m in MEASUREMENTS}
            | {f"state.{s.value}" for s in NodeState} | {"state.unknown", "state.stale"}
            | {f"event.{e.value}" for e in EventType}
            | {f"alarm.{a.value}" for a in Alarm}
            | {f"mode.{m.value}" for m in Mode}
            | {f"role.{r}" for r in ROLES}
            | {f"language.{code}" for code in LANGUAGES}
            | set(UNIT_KEYS.values()))


def catalog(language: str, folder: Path = CATALOG_DIR) -> Mapping[str, str]:
    """The texts of ``language`` from ``folder`` (the package's ``i18n`` folder unless said
    otherwise), read once per process and folder; ConfigError if a file is broken.

    ``<folder>/<language>.json`` holds the shared texts; each page area may keep its own in
    ``<folder>/<area>/<language>.json`` (one file per area keeps edits apart). A key defined
    in two files is an error, so no text silently wins over another.
    """
    return _load_catalog(language, folder)  # one cache entry per folder, however it is named


@cache
def _load_catalog(language: str, folder: Path) -> Mapping[str, str]:
    if language not in LANGUAGES:
        raise ConfigError(f"dashboard language {language!r}: not one of {', '.join(LANGUAGES)}")
    paths = [folder / f"{language}.json", *sorted(folder.glob(f"*/{language}.json"))]
    texts: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for path in paths:
        for key, text in _read_catalog_file(path).items():
            if key in texts:
                raise ConfigError(f"{path}: key {key!r} is already defined in {origin[key]}")
            texts[key], origin[key] = text, path
    return texts


@cache
def shared_keys(language: str, folder: Path = CATALOG_DIR) -> frozenset[str]:
    """The keys of the shared file ``<folder>/<language>.json`` (the top bar, cards, states,
    units...: what every page's scripts may need)."""
    catalog(language, folder)  # checks the language and every file first
    return frozenset(_read_catalog_file(folder / f"{language}.json"))


@cache
def page_catalog(language: str, prefixes: tuple[str, ...] = ()) -> Mapping[str, str]:
    """What one page's scripts may translate: the shared texts plus the keys starting with one
    of ``prefixes`` (a page area's namespace, ``"alerts."``, or a part of one,
    ``"thresholds.name_"``). Pages send only this, not every area's texts, so a page does not
    grow with every new area.

    >>> texts = page_catalog("en", ("alerts.",))
    >>> "alerts.title" in texts, "card.fan_off" in texts, "batches.title" in texts
    (True, True, False)
    """
    shared = shared_keys(language)
    return {key: text for key, text in catalog(language).items()
            if key in shared or key.startswith(prefixes)}


def _read_catalog_file(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the translation catalog ({exc})") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"{path}: a catalog is one JSON object of text keys to texts")
    return data


def translate(language: str, key: str, **params: object) -> str:
    """The text for ``key`` with ``{name}`` parameters filled in. A missing key shows as the
    key itself (visible, never a crash); tests keep that from reaching a release."""
    text = catalog(language).get(key, key)
    if not params:
        return text
    return _PARAM.sub(lambda m: str(params.get(m.group(1), m.group(0))), text)


def unit(language: str, symbol: str) -> str:
    """A unit as the language writes it ("% w.b." is "% b.h." in Spanish).

    >>> unit("es", "% w.b."), unit("en", "% w.b."), unit("es", "°C")
    ('% b.h.', '% w.b.', '°C')
    """
    key = UNIT_KEYS.get(symbol)
    return translate(language, key) if key else symbol


def choose_language(cookie: str | None, user_language: str | None) -> str:
    """The page language: the switch's cookie, else the user's saved choice, else the site
    default.

    >>> choose_language("en", "es"), choose_language(None, "en"), choose_language("xx", None)
    ('en', 'en', 'es')
    """
    for candidate in (cookie, user_language):
        if candidate in LANGUAGES:
            return candidate  # type: ignore[return-value]
    return DEFAULT_LANGUAGE


@dataclass(frozen=True)
class LocaleFormat:
    """How a language writes numbers and times (from its catalog's ``meta.*`` keys)."""

    locale: str              # BCP 47 tag for the browser's Intl (es-PE, en-US)
    decimal: str             # decimal separator
    group: str               # thousands separator
    datetime_pattern: str    # strftime pattern with numeric fields only (no month names)
    hour_cycle: str          # h23 (15:05) or h12 (3:05 PM), for the browser's Intl

    @classmethod
    def of(cls, language: str) -> LocaleFormat:
        texts = catalog(language)
        return cls(texts["meta.locale"], texts["meta.decimal"], texts["meta.group"],
                   texts["meta.datetime_pattern"], texts["meta.hour_cycle"])


def format_number(value: float | None, language: str, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals in the language's way; "–" when there is none.

    >>> format_number(12345.678, "es"), format_number(None, "en"), format_number(-0.04, "en")
    ('12,345.7', '–', '0.0')
    """
    if value is None or not math.isfinite(value):
        return "–"
    fmt = LocaleFormat.of(language)
    text = f"{abs(value):,.{digits}f}"
    if text.strip("0.,") == "":
        value = 0.0  # no "-0.0"
    whole, _, fraction = text.partition(".")
    out = whole.replace(",", fmt.group) + (fmt.decimal + fraction if fraction else "")
    return ("-" if value < 0 else "") + out


def format_datetime(moment: datetime | None, language: str, zone: tzinfo) -> str:
    """A moment in the site's time zone, written the language's way; "–" when there is none.

    >>> from datetime import UTC
    >>> from zoneinfo import ZoneInfo
    >>> t = datetime(2026, 11, 23, 20, 5, tzinfo=UTC)
    >>> format_datetime(t, "es", ZoneInfo("America/Lima")), format_datetime(t, "en", UTC)
    ('23/11/2026 15:05', '11/23/2026 08:05 PM')
    """
    if moment is None:
        return "–"
    return moment.astimezone(zone).strftime(LocaleFormat.of(language).datetime_pattern)
