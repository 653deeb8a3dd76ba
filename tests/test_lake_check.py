"""Lake preconditions checked with the app's own data-plane access (issue 10 item 7): the gold container
exists and is listable (a firewall's 403 AuthorizationFailure named as network access), and the account's
hierarchical namespace (Azurite reports none: the warning). Real Azurite, and a loopback HTTP server that
answers like a storage account behind a firewall."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from refresh.core.context import App, set_app
from refresh.core.lake_check import check_config_lake, check_lake
from refresh.core.settings import Settings
from refresh.dev.testing.harness import storage_env
from refresh.surfaces.check_config import check_config_main
from tests.test_api import answer, http

KEY = "a" * 86 + "=="


class _Refusing(BaseHTTPRequestHandler):
    """Every request gets the storage service's 403 in its error format (x-ms-error-code + XML body)."""

    code = "AuthorizationFailure"
    message = "This request is not authorized to perform this operation."
    seen: list[str]

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{self.code}</Code><Message>'
                f"{self.message}\nRequestId:0b5b7a1e-001e-0000-0000-000000000000\n"
                "Time:2026-12-01T22:00:00.0000000Z</Message></Error>").encode()
        self.send_response(403, self.message)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-ms-error-code", self.code)
        self.send_header("x-ms-request-id", "0b5b7a1e-001e-0000-0000-000000000000")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, *args: object) -> None:
        pass


def _refusing(code: str, message: str) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Refusing,), {"code": code, "message": message, "seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    try:
        yield conn, seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def firewalled() -> Iterator[tuple[str, list[str]]]:
    """A lake whose firewall refuses the app."""
    yield from _refusing("AuthorizationFailure", "This request is not authorized to perform this operation.")


@pytest.fixture
def no_role() -> Iterator[tuple[str, list[str]]]:
    """A lake that the app reaches but may not read."""
    yield from _refusing("AuthorizationPermissionMismatch",
                         "This request is not authorized to perform this operation using this permission.")


def _settings(env: dict[str, str]) -> Settings:
    return Settings.from_env(env)


def test_azurite_lake_is_readable_and_warns_about_the_missing_hierarchical_namespace(azurite, unique):
    env = storage_env(azurite.connection_string, unique)
    App(env=env).lake.create_container()
    result = check_lake(_settings(env), env)
    assert result.ok and result.error is None
    assert result.container == f"gold{unique}"
    assert not result.hierarchical_namespace  # Azurite reports none
    [warning] = result.warnings
    assert "no hierarchical namespace" in warning and "BlobRenamed" in warning and "sweep" in warning
    assert result.to_dict()["warnings"] == [warning]


def test_missing_gold_container_is_an_error_naming_it(azurite, unique):
    env = storage_env(azurite.connection_string, unique)
    result = check_lake(_settings(env), env)
    assert not result.ok
    assert result.error == f"the gold container 'gold{unique}' does not exist in the lake account (GOLD_CONTAINER)"


def test_firewall_denial_names_network_access(firewalled, unique):
    conn, seen = firewalled
    env = storage_env(conn, unique)
    result = check_lake(_settings(env), env)
    assert not result.ok and not result.warnings
    assert result.error.startswith(f"403 AuthorizationFailure listing 'gold{unique}': the lake's network access")
    assert "firewall" in result.error and "VNet integration" in result.error
    assert len(seen) == 1 and f"/gold{unique}?restype=container&comp=list" in seen[0]  # one attempt, no retries


def test_missing_role_is_named_apart_from_the_firewall(no_role, unique):
    conn, _ = no_role
    env = storage_env(conn, unique)
    result = check_lake(_settings(env), env)
    assert not result.ok
    assert "AuthorizationPermissionMismatch" in result.error and "Storage Blob Data Reader" in result.error
    assert "firewall" not in result.error


def test_health_shows_the_lake_warning_and_stays_healthy(azurite, sim, powerbi_identity, registered, unique):
    env = storage_env(azurite.connection_string, unique, POWERBI_API_URL=sim.base_url)
    app = App(env=env)
    app.lake.create_container()
    set_app(app)
    try:
        resp = registered["health"](http("GET", "/api/health"))
    finally:
        set_app(None)
    body = answer(resp)
    assert resp.status_code == 200, body
    lake = body["checks"]["lake"]
    assert lake["ok"] and lake["container"] == f"gold{unique}" and not lake["hierarchical_namespace"]
    assert "BlobRenamed" in lake["warnings"][0]


def test_health_503_when_the_lake_firewall_refuses_the_app(azurite, sim, powerbi_identity, registered, unique,
                                                           firewalled):
    conn, _ = firewalled
    env = storage_env(azurite.connection_string, unique, POWERBI_API_URL=sim.base_url, LAKE_STORAGE=conn)
    set_app(App(env=env))
    try:
        resp = registered["health"](http("GET", "/api/health"))
    finally:
        set_app(None)
    body = answer(resp)
    assert resp.status_code == 503 and body["status"] == "unhealthy"
    assert body["checks"]["storage"]["ok"] and body["checks"]["powerbi"]["ok"]
    assert not body["checks"]["lake"]["ok"]
    assert "network access" in body["checks"]["lake"]["error"]
    assert KEY not in json.dumps(body)


def _config(tmp_path):
    path = tmp_path / "refresh-config.json"
    path.write_text(json.dumps({"datasets": {"sales": {"workspace": "W", "dataset": "D",
                                                       "sources": [{"table": "sales/orders"}]}}}))
    return path


def test_check_config_checks_the_lake_when_configured(azurite, unique, tmp_path, capsys, monkeypatch):
    env = storage_env(azurite.connection_string, unique)
    App(env=env).lake.create_container()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert check_config_main([str(_config(tmp_path))]) == 0
    out, err = capsys.readouterr()
    assert "Routing config" in out and "lake" not in out
    lines = err.splitlines()
    assert lines[0].startswith("lake: WARNING: the lake account reports no hierarchical namespace")
    assert lines[-1] == f"lake: gold container 'gold{unique}' is readable"


def test_check_config_fails_when_the_firewall_refuses_the_app(firewalled, unique, tmp_path, capsys, monkeypatch):
    conn, _ = firewalled
    for name, value in storage_env(conn, unique).items():
        monkeypatch.setenv(name, value)
    assert check_config_main([str(_config(tmp_path))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("lake: ERROR: 403 AuthorizationFailure") and "network access" in err


def test_check_config_without_a_lake_connection_checks_nothing(capsys):
    assert check_config_lake({"REFRESH_CONFIG": "x.json"}) == 0
    assert capsys.readouterr() == ("", "")
