"""GET /api/health and the OpenAPI schema."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import create_engine

from gateway.api.app import create_app
from gateway.context import GatewayContext


def test_health_answers_ok_without_login(gateway: GatewayContext) -> None:
    client = TestClient(create_app(gateway))
    response = client.get("/api/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["metadata_database"] == "ok"
    assert body["problems"] == []


def test_health_reports_a_lost_metadata_database(gateway: GatewayContext) -> None:
    client = TestClient(create_app(gateway))
    gateway.metadata.engine.dispose()  # as if the database's disk went away
    gateway.metadata.engine = create_engine("sqlite:////nonexistent-dir/metadata.sqlite3")
    body = client.get("/api/health").json()
    assert body["status"] == "degraded" and body["metadata_database"] == "unavailable"
    assert "metadata database" in body["problems"][0]


def test_openapi_schema_lists_the_health_route(gateway: GatewayContext) -> None:
    schema = TestClient(create_app(gateway)).get("/openapi.json").json()
    assert "/api/health" in schema["paths"]
