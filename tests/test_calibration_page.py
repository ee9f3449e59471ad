"""The /calibration page over TestClient on a real gateway context: who sees it, both
languages, the dryer list and the preselected dryer, its own stylesheet and script."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from support.pages import add_dryers, page_client, page_config, page_gateway

from dashboard.i18n import catalog
from dashboard.web import all_nav, nav_for
from gateway.api.app import create_app
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext

SITE = "demo"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayContext]:
    with page_gateway(tmp_path_factory.mktemp("calibration-page"),
                      datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) as context:
        add_dryers(context, ["secador-01", "secador-02"], names={"secador-01": "Secador norte"})
        yield context


def client(context: GatewayContext, role: Role = Role.TECHNICIAN,
           language: str = "es") -> TestClient:
    return page_client(context, Actor("tomas", role), language)


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_page_renders_for_a_technician_in_each_language(gw: GatewayContext,
                                                            language: str) -> None:
    answer = client(gw, language=language).get("/calibration")
    assert answer.status_code == 200
    html = answer.text
    texts = catalog(language)
    for key in ("calibration.title", "calibration.intro", "calibration.pairs_title",
                "calibration.preview", "calibration.save", "calibration.history_title",
                "nav.calibration"):
        assert texts[key] in html, key
    assert "Secador norte (secador-01)" in html and "secador-02" in html
    assert re.search(r'href="/static/css/calibration\.css\?v=[0-9a-f]+"', html)
    assert re.search(r'src="/static/js/calibration\.js\?v=[0-9a-f]+"', html)
    visible = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert not [k for k in texts if f">{k}<" in visible]
    assert page_config(html)["selected"] == ""
    # units: the probe's moisture is shown in the language's unit
    unit = page_config(html)["measurements"]["bean_moisture_pct_wb"]["unit"]
    assert unit == ("% b.h." if language == "es" else "% w.b.")


def test_a_dryer_named_in_the_address_is_chosen(gw: GatewayContext) -> None:
    html = client(gw).get("/calibration", params={"site_id": SITE,
                                                  "node_id": "secador-02"}).text
    assert page_config(html)["selected"] == "demo/secador-02"
    assert '<option value="demo/secador-02" selected>' in html
    unknown = client(gw).get("/calibration", params={"site_id": SITE, "node_id": "nadie"})
    assert page_config(unknown.text)["selected"] == ""


@pytest.mark.parametrize(("role", "status"), [(Role.OPERATOR, 403), (Role.MANAGER, 403),
                                              (Role.TECHNICIAN, 200), (Role.ADMIN, 200)])
def test_only_technicians_and_admins_open_it(gw: GatewayContext, role: Role,
                                             status: int) -> None:
    answer = client(gw, role).get("/calibration")
    assert answer.status_code == status
    if status == 403:  # the dashboard's own 403 page, in the user's language
        assert 'id="forbidden"' in answer.text
        assert catalog("es")["calibration.forbidden"].format(
            role=catalog("es")[f"role.{role.value}"]) in answer.text


def test_without_a_login_the_page_sends_to_the_login(gw: GatewayContext) -> None:
    anonymous = TestClient(create_app(gw), follow_redirects=False)
    answer = anonymous.get("/calibration")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=%2Fcalibration"


def test_the_navigation_lists_it_for_technicians_only() -> None:
    item = next(i for i in all_nav() if i.path == "/calibration")
    assert (item.label_key, item.role, item.order) == ("nav.calibration", Role.TECHNICIAN, 50)
    assert item in nav_for(Actor("t", Role.TECHNICIAN))
    assert item not in nav_for(Actor("o", Role.OPERATOR))
    assert item not in nav_for(Actor("m", Role.MANAGER))
