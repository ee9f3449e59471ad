"""The HTTP API fuzzed from its own OpenAPI schema with schemathesis: no 5xx, and every answer
is one the schema documents (status code, content type, body shape, Allow header).

The schema is the app's live ``GET /openapi.json``, so every route any router adds is fuzzed
without being listed here. schemathesis's engine runs it as its command line would (examples,
coverage, fuzzing and stateful phases), sending each request to the app in-process (ASGI), on
a real gateway context (SQLite metadata and readings, an MQTT publisher on a private
Mosquitto, a live hub) seeded with a dryer, its readings, a running batch, a thresholds
profile and an API token; path parameters often name those objects, so the fuzzer also gets
past the 404s.

- As an administrator (a browser session: cookie + ``X-CSRF-Token``, a fresh one per case),
  positive and negative cases for every operation. ``/api/live`` is fuzzed too: its stream is
  cut after 3 events, and the hub here beats every 50 ms.
- Anonymously, valid requests: every protected route answers 401, the public ones never do.

Deterministic (fixed seed, derandomized hypothesis), ``FUZZ_EXAMPLES`` (default 12) examples
per operation and phase: about a minute on a 2-core machine. Counts and every finding go to
``test-artifacts/api-fuzz-admin.json``. Below: regression tests for what it found.
"""

from __future__ import annotations

import json
import os
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.engine
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.engine import Status, events
from sqlalchemy import select
from support.auth import add_user, api_settings
from support.gateway_context import gateway_context
from support.mosquitto import MosquittoBroker

from cacao_dryer.clock import ManualClock
from gateway.api.app import LOCAL_ADMIN, create_app
from gateway.api.deps import PUBLIC_PATHS
from gateway.auth import SESSION_COOKIE
from gateway.auth.csrf import CSRF_HEADER
from gateway.auth.roles import Role
from gateway.context import GatewayContext
from gateway.live import LiveHub
from gateway.metadata.models import User
from gateway.registry import NodeRegistry
from gateway.timeseries import StoredReading

pytestmark = pytest.mark.integration

SITE, NODE = "demo", "secador-01"
ADMIN = "ana"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
SEED = 20261128
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
NOT_LOGGED_IN = "log in first (POST /api/auth/login)"  # gateway/api/deps.py


@dataclass
class FuzzSite:
    """The running app and what was seeded into it."""

    context: GatewayContext
    app: FastAPI
    known: dict[str, str]            # path parameter name → an existing object's id
    tried: Counter[str] = field(default_factory=Counter)  # cases sent per operation

    def admin_headers(self) -> dict[str, str]:
        """A fresh session of the administrator for one case, started directly in the
        database (no password hash per case). The fuzzer may log out, reset the admin's
        password (ending sessions) or demote them through another admin it created: each
        case starts again from an enabled administrator."""
        auth = self.app.state.auth
        with self.context.metadata.session() as db:
            user = db.scalars(select(User).where(User.username == ADMIN)).one()
            user.role, user.disabled = Role.ADMIN.value, False
            session = auth.sessions.start(db, user)
        return {"Cookie": f"{SESSION_COOKIE}={session.token}", CSRF_HEADER: session.csrf_token}


def seed(context: GatewayContext) -> dict[str, str]:
    """A dryer that has sent readings, a running batch on it and a thresholds profile, through
    the real registry, store and API."""
    readings = [StoredReading(site_id=SITE, node_id=NODE, seq=seq,
                              measured_at=NOW - timedelta(minutes=10 * (6 - seq)),
                              fields={"air_temp_c": 45.0 + seq, "air_rh_pct": 40.0,
                                      "bean_moisture_pct_wb": 50.0 - seq})
                for seq in range(1, 6)]
    context.store.write(readings)
    NodeRegistry(context.metadata, context.clock).batch_received(readings, [], [])
    add_user(context, "olga", Role.OPERATOR)
    client = TestClient(create_app(context))
    login = client.post("/api/auth/login", json={"username": ADMIN,
                                                 "password": "secador-norte-2026"})
    assert login.status_code == 200, login.text
    client.headers[CSRF_HEADER] = login.json()["csrf_token"]
    batch = client.post("/api/batches", json={
        "site_id": SITE, "node_id": NODE, "lot_code": "L-031", "producer": "Coop Alto Mayo",
        "crop": "cacao", "initial_mass_kg": 400, "initial_moisture_pct_wb": 56})
    assert batch.status_code == 201, batch.text
    profile = client.put("/api/thresholds/profiles",
                         json={"site_id": SITE, "values": {"air_temp_warn_c": 52}})
    assert profile.status_code == 200, profile.text
    token = client.post(f"/api/users/{ADMIN}/tokens", json={"name": "grafana"})
    assert token.status_code == 201, token.text
    return {"site_id": SITE, "node_id": NODE, "username": "olga",
            "batch_id": batch.json()["batch_id"],
            "profile_id": str(profile.json()["profile"]["profile_id"]),
            "token_id": str(token.json()["token_id"])}


@pytest.fixture(scope="module")
def fuzz_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzSite]:
    folder = tmp_path_factory.mktemp("fuzz")
    broker = MosquittoBroker(folder / "mosquitto")
    broker.start()
    try:
        with gateway_context(folder / "gateway",
                             broker, f"sqlite:///{folder / 'metadata.sqlite3'}",
                             ManualClock(NOW)) as context:
            api_settings(context)
            add_user(context, ADMIN, Role.ADMIN)
            # A quick heartbeat: an open /api/live stream yields an event every 50 ms, so
            # the fuzzer's reader (cut after a few events) never waits 15 s for one.
            context.live = LiveHub(heartbeat_s=0.05)
            known = seed(context)
            yield FuzzSite(context, create_app(context), known)
            context.live.close()
    finally:
        broker.kill()


def config(mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "max-stream-events": 3,  # /api/live: retry, resync, a heartbeat; then cut
        "max-redirects": 0,  # the login form's 303 is the answer (not the page it leads to)
        "generation": {"mode": mode, "max-examples": EXAMPLES, "deterministic": True,
                       "database": "none"},
        # Off: "a schema-valid request must succeed". The API rightly refuses, with a
        # one-line 422, what no OpenAPI type can express: a password of the wrong kind, a
        # measurement name it does not know, an end before a start, a batch end without its
        # final mass. Invalid input being refused (negative_data_rejection) stays on.
        "checks": {"positive_data_acceptance": {"enabled": False}},
    })


def plain_tuples(node: Any) -> Any:
    """``tuple[int, int]`` as OpenAPI 3.1 writes it (``prefixItems``) → the same constraint
    with ``items``. schemathesis 4.32 turns ``prefixItems`` into an ``items`` list before
    validating a response with a Draft 2020-12 validator, which then rejects the schema
    itself ("Invalid Schema Object", e.g. /api/nodes/{site}/{node}/gaps): a fuzzer bug,
    not the API's."""
    if isinstance(node, list):
        return [plain_tuples(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: plain_tuples(value) for key, value in node.items()}
    prefix = node.get("prefixItems")
    if isinstance(prefix, list) and prefix and all(item == prefix[0] for item in prefix) \
            and "items" not in node:
        node.pop("prefixItems")
        node |= {"items": prefix[0], "minItems": len(prefix), "maxItems": len(prefix)}
    return node


def live_schema(app: FastAPI, mode: str) -> Any:
    """The app's own GET /openapi.json, requests sent to the app in-process (ASGI)."""
    with TestClient(app) as client:
        raw = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(plain_tuples(raw), config=config(mode))
    schema.app = app
    schema.location = "/openapi.json"
    return schema


def admin_schema(fuzz_site: FuzzSite) -> Any:
    """The live schema, each case sent as the administrator, path parameters often naming
    the seeded objects."""
    schema = live_schema(fuzz_site.app, "all")

    @schema.hook
    def map_path_parameters(_context: Any, path_parameters: dict[str, Any]
                            ) -> dict[str, Any]:
        """Every other case, the existing object (chosen from the generated value, so the
        run stays deterministic)."""
        if not path_parameters:
            return path_parameters
        drawn = zlib.crc32(json.dumps(path_parameters, sort_keys=True,
                                      default=str).encode())
        if drawn % 2:
            return path_parameters
        return {name: fuzz_site.known.get(name, value)
                for name, value in path_parameters.items()}

    @schema.auth(refresh_interval=None)
    class AdminSession:
        def get(self, _case: Any, _ctx: Any) -> dict[str, str]:
            return fuzz_site.admin_headers()

        def set(self, case: Any, data: dict[str, str], _ctx: Any) -> None:
            case.headers = {**(case.headers or {}), **data}

    return schema


@dataclass
class FuzzRun:
    cases: Counter[str] = field(default_factory=Counter)  # per operation
    failures: list[str] = field(default_factory=list)     # one line each, with a curl
    errors: list[str] = field(default_factory=list)       # unhandled exceptions (500s)
    phase_s: dict[str, float] = field(default_factory=dict)  # seconds per phase


def run(schema: Any) -> FuzzRun:
    """schemathesis's engine, as its command line runs it (examples, coverage, fuzzing and
    stateful phases), in-process over ASGI."""
    found = FuzzRun()
    started: dict[str, float] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted):
            started[event.phase.name.value] = event.timestamp
        elif isinstance(event, events.PhaseFinished):
            name = event.phase.name.value
            found.phase_s[name] = round(event.timestamp - started.get(name, event.timestamp), 1)
        elif isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, node in recorder.cases.items():
                if case_id in recorder.interactions:
                    found.cases[node.value.operation.label] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        found.failures.append(
                            f"{recorder.label}: {check.name}: {failure.title}: "
                            f"{' '.join(str(failure.message).split())[:300]}\n    "
                            f"{check.failure_info.code_sample}")
        elif isinstance(event, events.NonFatalError):
            # In-process, an exception the app does not handle reaches the caller instead of
            # becoming a 500: it is a server error all the same.
            sample = event.info.code_sample or ""
            found.errors.append(f"{event.label}: {type(event.value).__name__}: "
                                f"{' '.join(str(event.value).split())[:200]}\n    {sample}")
        elif isinstance(event, events.FatalError):
            found.errors.append(f"the fuzzer stopped: {event.exception!r}")
    return found


def test_as_an_admin_no_request_causes_a_server_error_or_an_undocumented_answer(
        fuzz_site: FuzzSite) -> None:
    found = run(admin_schema(fuzz_site))
    operations = operation_labels(fuzz_site.app)
    write_counts("admin", found, operations)
    assert not found.errors, f"{len(found.errors)} server errors:\n" + "\n".join(
        sorted(set(found.errors)))
    assert set(found.cases) == operations, f"not fuzzed: {operations - set(found.cases)}"
    failures = sorted(set(found.failures))
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


def operation_labels(app: FastAPI) -> set[str]:
    return {f"{method.upper()} {path}" for path, methods in app.openapi()["paths"].items()
            for method in methods}


def write_counts(name: str, found: FuzzRun, operations: set[str]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"api-fuzz-{name}.json").write_text(json.dumps(
        {"operations": len(operations), "cases": sum(found.cases.values()),
         "failures": len(found.failures), "server_errors": len(found.errors),
         "phase_s": found.phase_s,
         "per_operation": dict(sorted(found.cases.items())),
         "failure_lines": sorted(set(found.failures)),
         "server_error_lines": sorted(set(found.errors))}, indent=1))


def test_without_a_login_only_the_public_routes_answer(fuzz_site: FuzzSite) -> None:
    """Valid requests of every operation, anonymously: 401 unless the path is public."""
    schema = live_schema(fuzz_site.app, "positive")
    tried: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy())
        def anonymous(case: Any) -> None:
            tried[case.operation.label] += 1
            response = case.call()
            label = case.operation.label
            assert response.status_code < 500, f"{label}: {response.status_code}"
            refused = response.status_code == 401 and response.json()["detail"] == NOT_LOGGED_IN
            if case.operation.path in PUBLIC_PATHS:  # (the login's 401 is a wrong password)
                assert not refused, f"{label} is public"
            else:
                assert refused, f"{label} answered {response.status_code} without a login"

        anonymous()
    operations = operation_labels(fuzz_site.app)
    write_counts("anonymous", FuzzRun(cases=tried), operations)
    assert set(tried) == operations


FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                         database=None, suppress_health_check=list(HealthCheck))


# --- what the fuzzer found, fixed (gateway/api/app.py, deps.py, routes/nodes.py, auth.py) ----

HUGE = 2**63  # beyond SQLite's INTEGER and PostgreSQL's bigint


@pytest.mark.parametrize("method, path", [
    ("GET", f"/api/alerts?offset={HUGE}"),
    ("GET", f"/api/alerts/{HUGE}"),
    ("GET", f"/api/alerts/{2**31}"),                       # beyond PostgreSQL's integer
    ("POST", f"/api/alerts/{HUGE}/ack"),
    ("GET", f"/api/audit?offset={HUGE}"),
    ("GET", f"/api/batches?offset={HUGE}"),
    ("GET", f"/api/thresholds/profiles/{HUGE}"),
])
def test_a_number_the_database_cannot_hold_is_a_422_not_a_500(
        metadata_url: str, tmp_path: Path, mosquitto: MosquittoBroker, method: str,
        path: str) -> None:
    with gateway_context(tmp_path / "gateway", mosquitto, metadata_url,
                         ManualClock(NOW)) as context:
        client = TestClient(create_app(context, local_actor=LOCAL_ADMIN),
                            raise_server_exceptions=False)
        response = client.request(method, path, json={"note": "x"} if method == "POST" else None)
    assert response.status_code in (404, 422), response.text
    if response.status_code == 422:
        assert response.json() == {"detail": "a number or text in the request is out of the "
                                             "range the database can hold"}


def test_every_operation_documents_its_error_answers_in_their_real_shape(
        fuzz_site: FuzzSite) -> None:
    schema = TestClient(fuzz_site.app).get("/openapi.json").json()
    assert "HTTPValidationError" not in json.dumps(schema)  # FastAPI's 422 shape is not ours
    users = schema["paths"]["/api/users"]["post"]["responses"]
    assert {"201", "400", "401", "403", "404", "409", "422", "503"} <= set(users)
    assert users["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"}
    health = schema["paths"]["/api/health"]["get"]["responses"]
    assert "401" not in health  # public
    login = schema["paths"]["/api/auth/login"]["post"]["responses"]
    assert {"303", "401", "403", "422", "429"} <= set(login) and "404" not in login


@pytest.mark.parametrize("method, path, allowed", [
    ("OPTIONS", "/api/users", "GET, POST"),
    ("DELETE", "/api/auth/me", "GET, PATCH"),
    ("PUT", f"/api/nodes/{SITE}/{NODE}", "GET, PATCH"),
    ("PATCH", "/api/thresholds/profiles", "GET, PUT"),
])
def test_a_405_names_every_method_of_the_path(fuzz_site: FuzzSite, method: str, path: str,
                                              allowed: str) -> None:
    response = TestClient(fuzz_site.app).request(method, path,
                                                 headers=fuzz_site.admin_headers())
    assert response.status_code == 405
    assert response.headers["allow"] == allowed
    assert response.json() == {"detail": "Method Not Allowed"}


@pytest.mark.parametrize("since", ["0.5", "1767225600", "2026-03-01T10:00:00"])
def test_a_time_is_iso_8601_with_a_zone_never_a_bare_number(fuzz_site: FuzzSite,
                                                             since: str) -> None:
    response = TestClient(fuzz_site.app).get(f"/api/nodes/{SITE}/{NODE}/events",
                                             params={"since": since},
                                             headers=fuzz_site.admin_headers())
    assert response.status_code == 422
    assert response.json()["detail"].startswith("query.since: ")


@pytest.mark.parametrize("body", [{"vent_open_pct": False, "duration_s": 60},
                                  {"fan_speed_pct": "80", "duration_s": 60},
                                  {"fan_speed_pct": 80, "duration_s": True}])
def test_an_override_takes_numbers_not_booleans_or_text(fuzz_site: FuzzSite,
                                                        body: dict[str, Any]) -> None:
    response = TestClient(fuzz_site.app).post(f"/api/nodes/{SITE}/{NODE}/override", json=body,
                                              headers=fuzz_site.admin_headers())
    assert response.status_code == 422, response.text
