"""Pure rules of threshold profiles: which layers apply to a dryer, how they combine, which
batch stage a dryer is in, and how bad values are explained. No I/O: the service
(``gateway.thresholds``) reads the database and calls these.

Layering, later wins (docs/thresholds.md)::

    built-in defaults → site → site + stage → dryer → dryer + stage

Stage layers apply only while a batch is running. A profile stores only the fields it
overrides; the effective ``Thresholds`` are validated as a whole by the contract's own
validators (warn ≤ alarm ≤ limit, …), so an override that is fine alone but contradicts
another layer is refused with one line naming the fields.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import TypeAdapter, ValidationError

from cacao_dryer.contract import Thresholds
from cacao_dryer.errors import ConfigError

FIELDS: tuple[str, ...] = tuple(Thresholds.model_fields)
DEFAULT_LAYER = "default"
ANY = "*"  # in audit targets: every dryer of the site / every stage


class Stage(StrEnum):
    """Where a running batch is. ``early``: the first ``early_phase_h`` hours, or beans wetter
    than ``early_phase_moisture_pct_wb`` [UWI] — dried gently; ``main``: the rest."""

    EARLY = "early"
    MAIN = "main"


ProfileStage = Literal["", "early", "main"]  # "" = every stage (and no batch)


@dataclass(frozen=True)
class Scope:
    """What a profile covers: a site, optionally one dryer, optionally one batch stage."""

    site_id: str
    node_id: str = ""          # "" = every dryer of the site
    stage: ProfileStage = ""   # "" = every stage, also when no batch runs

    @property
    def target(self) -> str:
        """``site/node/stage`` with ``*`` for "every" — the audit log's target."""
        return f"{self.site_id}/{self.node_id or ANY}/{self.stage or ANY}"

    @property
    def layer(self) -> str:
        """The layer's name as shown to technicians: site, site+early, dryer, dryer+main."""
        base = "dryer" if self.node_id else "site"
        return f"{base}+{self.stage}" if self.stage else base


@dataclass(frozen=True)
class Profile:
    """The newest version of one profile, as the rules need it."""

    scope: Scope
    version: int
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Resolved:
    """Effective thresholds of one dryer in one stage, and which layer set each field."""

    thresholds: Thresholds
    sources: dict[str, str]                  # field → "default" / "site" / "dryer+early" …
    layers: dict[str, int] = field(default_factory=dict)  # layer name → profile version used


def layer_scopes(site_id: str, node_id: str, stage: Stage | None) -> list[Scope]:
    """The scopes that apply to a dryer, lowest precedence first."""
    scopes = [Scope(site_id)]
    if stage is not None:
        scopes.append(Scope(site_id, "", stage.value))
    scopes.append(Scope(site_id, node_id))
    if stage is not None:
        scopes.append(Scope(site_id, node_id, stage.value))
    return scopes


def resolve(profiles: Mapping[Scope, Profile], site_id: str, node_id: str,
            stage: Stage | None, *, where: str = "") -> Resolved:
    """Effective thresholds of dryer ``node_id`` in ``stage`` (None = no batch running).

    Raises ConfigError (one line, naming the fields) if the combination is invalid."""
    merged: dict[str, Any] = {}
    sources = dict.fromkeys(FIELDS, DEFAULT_LAYER)
    layers: dict[str, int] = {}
    for scope in layer_scopes(site_id, node_id, stage):
        profile = profiles.get(scope)
        if profile is None:
            continue
        layers[scope.layer] = profile.version
        for name, value in profile.values.items():
            merged[name] = value
            sources[name] = scope.layer
    label = where or context_label(site_id, node_id, stage)
    return Resolved(build_thresholds(merged, label), sources, layers)


def build_thresholds(values: Mapping[str, Any], where: str) -> Thresholds:
    """``Thresholds`` from overrides, or ConfigError with one line saying what and where."""
    try:
        return Thresholds.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(f"thresholds of {where}: {explain(exc, values)}") from None


def context_label(site_id: str, node_id: str, stage: Stage | None) -> str:
    dryer = (f"{site_id}/{node_id}" if node_id not in ("", ANY)
             else f"{site_id} (a dryer without its own profile)")
    return f"{dryer}, {f'{stage.value} stage' if stage else 'no batch'}"


def explain(exc: ValidationError, values: Mapping[str, Any]) -> str:
    """One line: the first problem, with the values of the fields it names."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    named = [name for name in FIELDS if re.search(rf"\b{name}\b", message)]
    if named:
        defaults = Thresholds.model_construct()
        shown = ", ".join(f"{name}={_number(values.get(name, getattr(defaults, name)))}"
                          for name in named)
        message = f"{message} (here {shown})"
    more = len(exc.errors()) - 1
    return f"{where + ': ' if where else ''}{message}{f'; and {more} more' if more else ''}"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@cache
def _adapter(name: str) -> TypeAdapter[Any]:
    info = Thresholds.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, *info.metadata])


def check_overrides(values: Mapping[str, Any]) -> dict[str, float | int]:
    """Each override alone: a known field, a finite number within the field's range.
    Returns them normalised (``18.0`` → ``18`` for hours), in the contract's field order.
    ConfigError (one line, ``values.<field>: …``) otherwise."""
    for name in values:
        if name not in Thresholds.model_fields:
            close = difflib.get_close_matches(str(name), FIELDS, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"values.{name}: not a threshold{hint} "
                              "(GET /api/thresholds/schema lists them)")
    checked: dict[str, float | int] = {}
    for name in FIELDS:
        if name not in values:
            continue
        value = values[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"values.{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"values.{name}: expected a finite number, got {value!r}")
        try:
            checked[name] = _adapter(name).validate_python(value)
        except ValidationError as exc:
            raise ConfigError(f"values.{name}: {exc.errors()[0]['msg']} (got {value!r})"
                              ) from None
    return checked


def batch_stage(started_at: datetime | None, now: datetime, moisture_pct_wb: float | None,
                base: Thresholds, previous: Stage | None = None) -> Stage | None:
    """The stage of the dryer's running batch (None: no batch running).

    Early while the batch is younger than ``early_phase_h`` or the beans are wetter than
    ``early_phase_moisture_pct_wb`` [UWI] — the node's own rule (firmware/control.py). Once
    a batch has reached ``main`` it stays there (``previous``): a moisture reading bouncing
    around the limit must not push configs back and forth. ``previous`` is the stage of the
    last config sent for this same batch (``NodeConfigPush.stage``)."""
    if started_at is None:
        return None
    if previous is Stage.MAIN:
        return Stage.MAIN
    young = (now - started_at).total_seconds() < base.early_phase_h * 3600.0
    wet = moisture_pct_wb is not None and moisture_pct_wb > base.early_phase_moisture_pct_wb
    return Stage.EARLY if young or wet else Stage.MAIN


def changes(old: Thresholds, new: Thresholds) -> dict[str, list[Any]]:
    """Fields whose effective value differs: ``{field: [old, new]}``."""
    old_values, new_values = old.model_dump(), new.model_dump()
    return {name: [old_values[name], new_values[name]] for name in FIELDS
            if old_values[name] != new_values[name]}


def overrides_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Overrides added, changed or removed: ``{field: [old or None, new or None]}``."""
    names: Iterable[str] = [n for n in FIELDS if n in old or n in new]
    return {name: [old.get(name), new.get(name)] for name in names
            if old.get(name) != new.get(name)}
