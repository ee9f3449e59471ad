"""The dashboard's pages over FastAPI's TestClient against a real gateway context: every page in
both languages, the language switch, login redirects, static files with their cache policy,
translation catalogs complete and used, and nothing loaded from another host."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from support.auth import PASSWORD, add_user
from support.pages import add_dryers, page_client, page_config, page_gateway, visible_text

from dashboard import i18n
from dashboard.i18n import catalog, dynamic_keys, format_datetime, format_number
from dashboard.web import NAV, NavItem, all_nav, nav_for, safe_next
from gateway.api.app import LOCAL_ADMIN
from gateway.api.deps import Actor, Role
from gateway.context import GatewayContext
from gateway.metadata.models import Node

ROOT = Path(__file__).parent.parent / "dashboard"
SITE, NODE = "demo", "secador-01"
PAGE_WEIGHT_LIMIT = 200 * 1024  # the limit for the live view's first load


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayContext]:
    """One real gateway context for the module (pages only read it; each test has its own app
    and cookies): a known site and dryer."""
    with page_gateway(tmp_path_factory.mktemp("pages"),
                      datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) as context:
        add_dryers(context, [NODE], names={NODE: "Secador norte"},
                   site_name="Cooperativa Demo")
        with context.metadata.session() as session:
            node = session.get(Node, (SITE, NODE))
            assert node is not None
            node.firmware_version = "0.1.0"
        yield context


@pytest.fixture
def client(gateway: GatewayContext) -> Iterator[TestClient]:
    with page_client(gateway, LOCAL_ADMIN) as client:
        yield client


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="(/static/[^"]+)"', html)


# --- pages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("language", ["es", "en"])
def test_overview_renders_in_each_language(client: TestClient, language: str) -> None:
    client.cookies.set("cacao_lang", language)
    answer = client.get("/")
    assert answer.status_code == 200
    html = answer.text
    texts = catalog(language)
    assert f'<html lang="{language}">' in html
    assert texts["overview.title"] in html and texts["nav.overview"] in html
    assert "Cooperativa Demo" in html
    config = page_config(html)
    assert config["lang"] == language and config["locale"] == texts["meta.locale"]
    assert config["zone"] == "America/Lima" and config["target_moisture_pct_wb"] == 7.0
    assert config["measurements"]["bean_moisture_pct_wb"]["unit"] == (
        "% b.h." if language == "es" else "% w.b.")
    assert config["measurements"]["air_temp_c"]["label"] == texts["measure.air_temperature"]


def test_a_new_visitor_gets_spanish(client: TestClient) -> None:
    html = client.get("/").text
    assert '<html lang="es">' in html and catalog("es")["app.name"] in html


def test_the_users_saved_language_applies_without_a_cookie(gateway: GatewayContext) -> None:
    with page_client(gateway, Actor("ana", Role.OPERATOR, language="en")) as client:
        html = client.get("/").text
    assert '<html lang="en">' in html and "ana" in html and "(operator)" in html


def test_the_language_switch_remembers_the_choice_and_goes_back(client: TestClient) -> None:
    answer = client.get("/lang/en", params={"next": "/nodes/demo/secador-01"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/nodes/demo/secador-01"
    assert "cacao_lang=en" in answer.headers["set-cookie"]
    assert '<html lang="en">' in client.get("/nodes/demo/secador-01").text
    client.get("/lang/es", params={"next": "/"})
    assert '<html lang="es">' in client.get("/").text


def test_the_language_switch_never_sends_anyone_to_another_host(client: TestClient) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        assert client.get("/lang/en", params={"next": target}).headers["location"] == "/"
    assert safe_next("/nodes/demo/x?y=1") == "/nodes/demo/x?y=1"


def test_an_unknown_language_is_not_stored(client: TestClient) -> None:
    answer = client.get("/lang/xx")
    assert answer.status_code == 303 and "set-cookie" not in answer.headers


def test_the_top_bar_links_every_language_from_the_current_page(client: TestClient) -> None:
    html = client.get("/nodes/demo/secador-01").text
    assert 'href="/lang/en?next=/nodes/demo/secador-01"' in html
    assert '<strong aria-current="true" title="Español">ES</strong>' in html


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_node_page_renders_in_each_language(client: TestClient, language: str) -> None:
    client.cookies.set("cacao_lang", language)
    answer = client.get(f"/nodes/{SITE}/{NODE}")
    assert answer.status_code == 200
    texts = catalog(language)
    html = answer.text
    assert "Secador norte" in html and texts["node.charts_title"] in html
    assert texts["node.events_title"] in html and texts["node.batch_title"] in html
    assert "uPlot.iife.min.js" in html
    config = page_config(html)
    assert (config["site_id"], config["node_id"]) == (SITE, NODE)
    # first seen, in the site's zone and the language's way (the fixture clock: 12:00 UTC)
    assert ("01/03/2026 07:00" if language == "es" else "03/01/2026 07:00 AM") in html


def test_an_unknown_node_is_a_404_page(client: TestClient) -> None:
    answer = client.get("/nodes/demo/nadie")
    assert answer.status_code == 404
    assert "text/html" in answer.headers["content-type"]
    assert catalog("es")["error.not_found_node"].format(what="demo/nadie") in answer.text


@pytest.mark.parametrize("language", ["es", "en"])
def test_the_login_page_renders_without_a_login(gateway: GatewayContext, language: str) -> None:
    with page_client(gateway, None, language) as client:
        answer = client.get("/login", params={"next": "/nodes/demo/secador-01"})
    assert answer.status_code == 200
    html = answer.text
    assert catalog(language)["login.password"] in html
    assert 'action="/api/auth/login"' in html and 'data-next="/nodes/demo/secador-01"' in html
    assert 'id="logout"' not in html  # nobody to log out


def test_the_login_page_only_returns_to_local_pages(gateway: GatewayContext) -> None:
    with page_client(gateway, None) as client:
        html = client.get("/login", params={"next": "https://evil.example/"}).text
    assert 'data-next="/"' in html


def test_a_page_without_a_login_goes_to_the_login_page(gateway: GatewayContext) -> None:
    with page_client(gateway, None) as client:
        answer = client.get("/nodes/demo/secador-01", params={"from": "alerts"})
        assert answer.status_code == 303
        assert answer.headers["location"] == \
            "/login?next=%2Fnodes%2Fdemo%2Fsecador-01%3Ffrom%3Dalerts"
        assert client.get("/").headers["location"] == "/login?next=%2F"
        api = client.get("/api/nodes")  # the API keeps answering in JSON
        assert api.status_code == 401 and api.headers["content-type"] == "application/json"


def test_a_logged_in_user_sees_pages_in_their_saved_language(gateway: GatewayContext) -> None:
    add_user(gateway, "tomas", Role.TECHNICIAN, language="en")
    with page_client(gateway, None) as client:
        login = client.post("/api/auth/login", json={"username": "tomas", "password": PASSWORD})
        assert login.status_code == 200
        html = client.get("/").text
    assert '<html lang="en">' in html and "tomas" in html and "(technician)" in html
    assert 'id="logout"' in html


@pytest.mark.parametrize(("code", "key"), [("wrong", "login.error_wrong"),
                                           ("locked", "login.error_locked"),
                                           ("disabled", "login.error_disabled")])
def test_a_plain_form_login_that_failed_says_why(gateway: GatewayContext, code: str,
                                                 key: str) -> None:
    with page_client(gateway, None) as client:
        html = client.get("/login", params={"error": code, "next": "/"}).text
    assert f'<p class="error" id="login-error" role="alert">{catalog("es")[key]}</p>' in html


def test_pages_are_html_with_a_same_origin_only_policy(client: TestClient) -> None:
    answer = client.get("/")
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "http" not in policy
    assert answer.headers["cache-control"] == "no-cache, private"
    assert answer.headers["x-content-type-options"] == "nosniff"


def test_pages_stay_out_of_the_api_schema_but_the_live_stream_is_in(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/api/live" in paths
    assert not [p for p in paths if not p.startswith("/api/") and p != "/metrics"]


def test_navigation_shows_what_the_role_may_open() -> None:
    items = (NavItem("/", "nav.overview", Role.OPERATOR),
             NavItem("/thresholds", "nav.thresholds", Role.TECHNICIAN),
             NavItem("/reports", "nav.reports", Role.MANAGER))
    assert [i.path for i in nav_for(Actor("o", Role.OPERATOR), items)] == ["/"]
    assert [i.path for i in nav_for(Actor("t", Role.TECHNICIAN), items)] == ["/", "/thresholds"]
    assert [i.path for i in nav_for(Actor("m", Role.MANAGER), items)] == ["/", "/reports"]
    assert len(nav_for(Actor("a", Role.ADMIN), items)) == 3
    assert nav_for(None, items) == []
    both = (NavItem("/audit", "nav.audit", (Role.TECHNICIAN, Role.MANAGER)),)
    assert [len(nav_for(Actor(r.value, r), both)) for r in Role] == [
        0 if r is Role.OPERATOR else 1 for r in Role]
    assert [i.path for i in nav_for(Actor("a", Role.ADMIN))] == [i.path for i in all_nav()]
    assert set(NAV) <= set(all_nav())  # the page modules' items join the core ones


# --- static files ---------------------------------------------------------------------------

def test_every_asset_a_page_links_is_served_and_cached_for_good(client: TestClient) -> None:
    urls = set(asset_urls(client.get("/").text) + asset_urls(client.get("/login").text)
               + asset_urls(client.get(f"/nodes/{SITE}/{NODE}").text))
    assert len(urls) >= 8
    types = {".css": "text/css", ".js": "javascript", ".svg": "image/svg+xml"}
    for url in urls:
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert answer.headers["cache-control"] == "public, max-age=31536000, immutable", url
        suffix = Path(url.split("?")[0]).suffix
        assert types[suffix] in answer.headers["content-type"], url
        version = url.split("?v=")[1]
        assert hashlib.sha256(answer.content).hexdigest().startswith(version), url


def test_an_asset_without_its_version_is_revalidated_by_etag(client: TestClient) -> None:
    answer = client.get("/static/js/app.js")
    assert answer.headers["cache-control"] == "no-cache"
    etag = answer.headers["etag"]
    again = client.get("/static/js/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert client.get("/static/js/app.js?v=old").headers["cache-control"] == "no-cache"


def test_a_missing_asset_is_a_404(client: TestClient) -> None:
    assert client.get("/static/js/nothing.js").status_code == 404
    assert client.get("/static/../web.py").status_code == 404


def test_text_is_sent_compressed_to_browsers_that_accept_it(client: TestClient) -> None:
    answer = client.get("/static/vendor/uplot/uPlot.iife.min.js",
                        headers={"Accept-Encoding": "gzip"})
    assert answer.headers["content-encoding"] == "gzip"
    assert int(answer.headers["content-length"]) < 30_000  # 51 kB → ~23 kB
    assert answer.content.startswith(b"/*! https://github.com/leeoniya/uPlot")  # decoded


def test_the_overview_first_load_is_light(client: TestClient) -> None:
    """The issue's budget: the live view's first load under 200 KB transferred (page, every
    asset it links, and the /api/nodes it fetches), compressed as a browser receives it.
    The browser test measures the same from the browser's own resource timings."""
    headers = {"Accept-Encoding": "gzip"}
    page = client.get("/", headers=headers)
    answers = [page, *(client.get(url, headers=headers) for url in asset_urls(page.text)),
               client.get("/api/nodes", headers=headers)]
    assert all(a.status_code == 200 for a in answers)
    assert sum(int(a.headers["content-length"]) for a in answers) < PAGE_WEIGHT_LIMIT


def test_the_vendored_chart_library_is_the_npm_release(client: TestClient) -> None:
    """uPlot's files are byte for byte the ones its README lists (npm uplot@1.6.32)."""
    folder = ROOT / "static" / "vendor" / "uplot"
    rows = re.findall(r"\| (\S+) \| (\d+) \| ([0-9a-f]{64}) \|", (folder / "README.md").read_text())
    assert {name for name, _, _ in rows} == {"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"}
    for name, size, digest in rows:
        data = (folder / name).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (int(size), digest), name


# --- offline: nothing from another host -----------------------------------------------------

URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'<>)]*""")
NAMESPACE = re.compile(r'xmlns(?::\w+)?="http://www\.w3\.org/[^"]+"')
LICENCE_BANNER = re.compile(r"\A/\*!.*?\*/", re.S)  # a vendored file's "/*! name (version) */"


def shipped_files() -> list[Path]:
    return [path for folder in ("templates", "static") for path in (ROOT / folder).rglob("*")
            if path.is_file() and path.suffix in {".html", ".js", ".css", ".svg", ".json"}]


def test_no_template_or_static_file_names_another_host() -> None:
    """No CDN, no web font, no analytics: a URL with a host anywhere a page could load it
    from. (XML namespace names and a vendored file's licence banner are not requests.)"""
    files = shipped_files()
    assert len(files) >= 10
    found = []
    for path in files:
        text = LICENCE_BANNER.sub("", NAMESPACE.sub("", path.read_text(encoding="utf-8")))
        found += [f"{path.relative_to(ROOT)}: {url}" for url in URL.findall(text)]
    assert found == []


def test_the_url_check_would_catch_a_cdn() -> None:
    sample = '<script src="https://cdn.jsdelivr.net/npm/uplot"></script>' \
             '<link href="//fonts.googleapis.com/css">'
    assert len(URL.findall(sample)) == 2


# --- translations ---------------------------------------------------------------------------

FILE_TYPES = {"html", "js", "css", "svg", "json"}
KEY_LITERAL = re.compile(r"""["']([a-z]+\.[a-z0-9_]+)["']""")


def used_keys() -> set[str]:
    """Every quoted text key in the templates, the scripts and the page code whose namespace
    (the part before the dot) is a catalog namespace (file names like "node.html" are not)."""
    namespaces = {key.split(".")[0] for key in catalog("es")}
    sources = [*(ROOT / "templates").rglob("*.html"), *(ROOT / "static" / "js").rglob("*.js"),
               ROOT / "web.py", *(ROOT / "pages").glob("*.py")]
    keys = set()
    for path in sources:
        keys |= {k for k in KEY_LITERAL.findall(path.read_text(encoding="utf-8"))
                 if k.split(".")[0] in namespaces and k.split(".")[1] not in FILE_TYPES
                 and not k.endswith("_")}  # "thresholds.name_": a prefix of keys
    return keys


def test_every_language_has_the_same_keys() -> None:
    reference = set(catalog(i18n.DEFAULT_LANGUAGE))
    for language in i18n.LANGUAGES:
        assert set(catalog(language)) == reference, language


def test_every_key_the_pages_use_is_in_the_catalogs() -> None:
    keys = used_keys() | dynamic_keys()
    assert len(keys) > 80
    missing = sorted(keys - set(catalog("es")))
    assert missing == []


def test_no_catalog_text_is_left_unused() -> None:
    unused = sorted(set(catalog("es")) - used_keys() - dynamic_keys()
                    - {k for k in catalog("es") if k.startswith("meta.")})
    assert unused == []


def test_translations_keep_their_parameters() -> None:
    param = re.compile(r"\{([a-z_]+)\}")
    for key, text in catalog("es").items():
        assert set(param.findall(text)) == set(param.findall(catalog("en")[key])), key


def test_no_text_is_left_untranslated_on_a_page(client: TestClient) -> None:
    """A missing key would show as the key itself ("node.charts_title")."""
    keys = set(catalog("es"))
    for path in ("/", f"/nodes/{SITE}/{NODE}", "/login"):
        html = client.get(path).text
        assert not [k for k in keys if f">{k}<" in visible_text(html)], path


def test_a_broken_catalog_is_a_one_line_config_error() -> None:
    from cacao_dryer.errors import ConfigError

    with pytest.raises(ConfigError, match="not one of es, en"):
        catalog("xx")


def test_a_key_defined_in_two_catalog_files_is_refused(tmp_path: Path) -> None:
    from cacao_dryer.errors import ConfigError

    twice, apart = tmp_path / "twice", tmp_path / "apart"
    for folder, area_texts in ((twice, '{"app.name": "Otro"}'),
                               (apart, '{"batch.title": "Lotes"}')):
        (folder / "batches").mkdir(parents=True)
        (folder / "es.json").write_text('{"app.name": "Secador"}', encoding="utf-8")
        (folder / "batches" / "es.json").write_text(area_texts, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"batches/es\.json: key 'app\.name' is already"):
        catalog("es", twice)
    assert catalog("es", apart) == {"app.name": "Secador", "batch.title": "Lotes"}
    assert catalog("es")["app.name"] != "Secador"  # the package's own catalog is untouched


def test_the_packages_catalog_is_read_once_however_its_folder_is_named() -> None:
    assert catalog("es", i18n.CATALOG_DIR) is catalog("es")


# --- formatting helpers ---------------------------------------------------------------------

def test_numbers_are_written_the_languages_way() -> None:
    assert format_number(12345.678, "es") == "12,345.7"  # Peru writes 12,345.7 [es-PE]
    assert format_number(47.25, "en", 2) == "47.25"
    assert format_number(-3.0, "es", 0) == "-3"
    assert format_number(-0.01, "en") == "0.0"
    assert format_number(None, "es") == "–" and format_number(float("nan"), "en") == "–"


def test_times_are_written_in_the_sites_zone_and_the_languages_way() -> None:
    moment = datetime(2026, 11, 23, 20, 5, tzinfo=UTC)
    lima = ZoneInfo("America/Lima")
    assert format_datetime(moment, "es", lima) == "23/11/2026 15:05"
    assert format_datetime(moment, "en", lima) == "11/23/2026 03:05 PM"
    assert format_datetime(None, "es", lima) == "–"


def test_units_are_written_the_languages_way() -> None:
    assert i18n.unit("es", "% w.b.") == "% b.h."
    assert i18n.unit("en", "% w.b.") == "% w.b."
    assert i18n.unit("es", "°C") == "°C"


def test_the_language_comes_from_cookie_then_user_then_site_default() -> None:
    assert i18n.choose_language("en", "es") == "en"
    assert i18n.choose_language(None, "en") == "en"
    assert i18n.choose_language("xx", None) == "es"
