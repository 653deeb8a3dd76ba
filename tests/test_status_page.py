"""The status page (``GET /api/status``): what the registered ``status_page`` function returns, checked as
HTML and rendered in a real headless Chromium driven over chromedriver's W3C HTTP API (no selenium).

The browser tests install Chromium when it is missing (scripts/install_chromium.sh; CI runs as root on
Debian) and are never skipped. They serve the page from a loopback ``http.server`` that hands each
request to the registered entry point as a real ``func.HttpRequest``, assert that the page renders the
seeded outcomes without a single console message (CSP violations, errors), and save a screenshot to
docs/status-page.png.
"""

from __future__ import annotations

import base64
import http.server
import json
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func
import pytest
import requests

from refresh.core.clock import iso
from refresh.core.context import set_app
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs import summaries
from refresh.jobs.outcomes import to_public
from refresh.jobs.pending import Change
from refresh.jobs.schedules import run_schedules
from refresh.surfaces.status_page import CSP, fmt_duration, relative, timeline_svg

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "status-page.png"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PBI_MESSAGE = "The credentials provided for the SQL source 'sqlsrv-finance' are invalid."
HOSTILE_REASON = "<script>alert('x')</script> close the books' or 1 eq 1"
CONFIG = {
    "datasets": {
        "sales": {
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}, {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900, "freshness_slo_minutes": 60,
        },
        "ops": {
            "workspace": "Ops", "dataset": "Ops Model", "sources": [{"table": "ops/**"}],
            "debounce_seconds": 0, "max_delay_seconds": 0,
            "schedule": "0 0 */4 * * *", "schedule_skip_if_unchanged": True,
        },
        "finance-close": {
            "workspace": "Finance Analytics", "dataset": "Month-End Close",
            "sources": [{"table": "finance/gl_*"}], "daily_limit": 3, "schedule": "0 30 6 * * MON-FRI",
        },
        "hr": {"workspace": "HR", "dataset": "People", "sources": [{"table": "hr/people"}]},
    }
}


# --------------------------------------------------------------------------------------------------
# the world: seeded history plus real refreshes through the worker


class PageWorld:
    def __init__(self, azurite, sim, registered, token):
        self.sim = sim
        self.fn = registered
        finance = sim.add_workspace("Finance Analytics", dedicated=True)
        self.sales_ds = sim.add_dataset(finance, "Sales Model")
        sim.add_dataset(finance, "Month-End Close")
        ops = sim.add_workspace("Ops", dedicated=False)
        sim.add_dataset(ops, "Ops Model")
        self.app = make_app(azurite.connection_string, CONFIG, token=token, POWERBI_API_URL=sim.base_url,
                            WEBSITE_AUTH_ENABLED="True")  # App Service authentication names the requester
        self.clock = self.app.clock
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance])

    def seed_history(self) -> None:
        """A day of earlier outcomes (rows as the worker writes them)."""
        now = self.clock.now()
        plan = {
            "sales": [(22, "Completed", 410), (19, "Completed", 380), (16, "Failed", 95), (13, "Completed", 455),
                      (10, "Completed", 520), (8, "TimedOut", 1800), (6, "Completed", 430), (4, "Cancelled", 120),
                      (3, "Completed", 400)],
            "ops": [(20, "Completed", 35), (16, "Skipped", None), (12, "Completed", 42), (8, "Skipped", None),
                    (4, "Completed", 38)],
            "finance-close": [(23, "Completed", 1500), (21, "Failed", 300), (20, "Completed", 1650)],
        }
        for key, items in plan.items():
            for i, (hours, status, duration) in enumerate(items):
                queued = now - timedelta(hours=hours)
                started = queued + timedelta(seconds=60)
                fields: dict = {"status": status, "trigger": "commit", "triggers": ["commit"],
                                "requested_by": [], "reasons": [], "model_tables": ["Orders"] if i % 2 else [],
                                "refresh_type": "standard" if key == "ops" else "enhanced"}
                if status == "Skipped":
                    fields.update(trigger="schedule", triggers=["schedule"], requested_by=["schedule"],
                                  detail="nothing changed since the last completed refresh", ended_at=iso(queued))
                else:
                    fields.update(started_at=iso(started), ended_at=iso(started + timedelta(seconds=duration)),
                                  duration_seconds=float(duration),
                                  sources={"sales/fact_orders": {"first_version": 10 + i, "last_version": 11 + i,
                                                                 "commits": 2}})
                if status == "Failed":
                    fields.update(error_code="ModelRefreshFailed_CredentialsNotSpecified",
                                  error_message=f"{PBI_MESSAGE} (seeded)")
                if status == "TimedOut":
                    fields.update(error_code="TimedOut", error_message="refresh exceeded timeout_minutes=30; cancelled")
                row = self.app.outcomes.create(key, f"{abs(hash((key, i))) % 16**32:032x}", queued, fields)
                summaries.note_end(self.app.states, key, to_public(row))  # as the worker does at each end

    def commit(self, dataset: str, table: str, version: int):
        cfg = self.app.config.datasets[dataset]
        return self.app.states.record(dataset, Change(
            trigger="commit", table=table, versions=(version,), model_tables=None,
            debounce_seconds=cfg.debounce_seconds, max_delay_seconds=cfg.max_delay_seconds))

    def live_activity(self) -> None:
        """Real refreshes: a failure with Power BI's message, a completed one, a running one, a pending
        manual request, and a scheduled skip."""
        self.sim.fail_refresh(self.sales_ds,
                              service_exception={"errorCode": "ModelRefreshFailed_CredentialsNotSpecified"},
                              messages=[{"code": "0xC112001A", "message": PBI_MESSAGE, "type": "Error"}])
        self.commit("sales", "sales/fact_orders", 40)
        self.pump.run()
        self.commit("ops", "ops/events", 7)
        self.pump.run()
        run_schedules(self.app)  # first sight of the schedules
        self.clock.set(self.clock.now().replace(hour=16, minute=0, second=2))
        self.sim.advance(3600)
        run_schedules(self.app)  # ops at 16:00: nothing new since its refresh -> skipped
        self.sim.refresh_duration = 1800
        self.commit("sales", "sales/dim_store", 3)
        self.pump.run(until=self.clock.now() + timedelta(minutes=5))  # running now ...
        self.clock.advance(420)  # ... for a while
        self.sim.advance(420)
        resp = self.fn["request_refresh"](func.HttpRequest(
            "POST", "https://refresh.example.net/api/refreshes",
            headers={"x-ms-client-principal-name": "<b>eve</b>", "x-ms-client-principal-idp": "aad",
                     "x-ms-client-principal-id": "e0e0e0e0-0000-4000-8000-000000000001",
                     "Content-Type": "application/json"},
            params={}, route_params={}, body=json.dumps({"dataset": "finance-close", "reason": HOSTILE_REASON,
                                                         "model_tables": ["GL Entries"]}).encode()))
        assert resp.status_code == 202


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = PageWorld(azurite, sim, registered, unique)
    yield w
    set_app(None)


def page(registered, **params) -> func.HttpResponse:
    url = "https://refresh.example.net/api/status"
    return registered["status_page"](func.HttpRequest("GET", url, headers={}, params=params, route_params={},
                                                      body=b""))


# --------------------------------------------------------------------------------------------------
# the HTML itself


def test_page_is_self_contained_escaped_and_carries_a_strict_csp(world, registered):
    world.seed_history()
    world.live_activity()
    resp = page(registered, code="abc/def==")
    html = resp.get_body().decode()
    assert resp.status_code == 200 and resp.mimetype == "text/html" and resp.charset == "utf-8"
    assert resp.headers["Content-Security-Policy"] == CSP
    assert CSP.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:")
    assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Referrer-Policy"] == "no-referrer"
    assert "<script" not in html.lower() and "@import" not in html and "url(" not in html
    assert re.findall(r"https?://[^\s\"'<]+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")
    for attr in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert attr.startswith("?") or attr == "data:,", attr
    assert 'href="?dataset=sales&amp;code=abc%2Fdef%3D%3D"' in html  # links keep the function key
    rows = re.findall(r'<tr class="dataset" id="ds-([^"]+)"', html)
    assert rows == ["finance-close", "hr", "ops", "sales"]
    assert html.count("<rect ") >= 9 + 5 + 3 + 3
    assert PBI_MESSAGE.replace("'", "&#x27;") in html  # Failed bar title and last-outcome cell
    limits = [" ".join(re.sub(r"<[^>]+>", " ", cell).split())
              for cell in re.findall(r'<td class="limit">(.*?)</td>', html)]
    assert limits == ["0 / 3 (configured)", "0 / 8 if shared (capacity not known yet)",
                      "1 / 8 (shared)",             # ops: one refresh started in 24 h, standard: shared
                      "2 / unlimited (dedicated)"]  # sales: the failed one and the running one, enhanced
    # pending manual request with the hostile reason: escaped (shown on the dataset's own page)
    detail = page(registered, dataset="finance-close").get_body().decode()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in detail and "<script" not in detail
    assert "&lt;b&gt;eve&lt;/b&gt;" in detail and "<b>" not in detail


def test_dataset_view_and_its_errors(world, registered):
    world.seed_history()
    html = page(registered, dataset="sales").get_body().decode()
    assert html.count('<tr class="outcome"') == 9 and "Finance Analytics / Sales Model" in html
    assert "sales/fact_orders" in html and "whole model" in html
    bad = page(registered, dataset="sales' or 1 eq 1")
    assert bad.status_code == 400 and bad.mimetype == "text/html"
    assert bad.headers["Content-Security-Policy"] == CSP
    missing = page(registered, dataset="nosuch")
    assert missing.status_code == 404 and "nosuch" in missing.get_body().decode()


def test_render_helpers():
    from refresh.core.clock import FakeClock

    now = FakeClock().now()
    assert [fmt_duration(s) for s in (None, 4.4, 65, 3725)] == ["", "4 s", "1 min 5 s", "1 h 2 min"]
    assert relative(now - timedelta(seconds=10), now) == "just now"
    assert relative(now - timedelta(minutes=5), now) == "5 min ago"
    assert relative(now + timedelta(hours=3), now) == "in 3 h"
    assert "no refreshes yet" in timeline_svg([], now, label="x")
    svg = timeline_svg([{"status": "Failed", "queued_at": iso(now), "error_message": "<boom> & 'quote'",
                         "job_id": "j"}], now, label="<l>")
    assert "&lt;boom&gt; &amp; &#x27;quote&#x27;" in svg and 'aria-label="&lt;l&gt;"' in svg


# --------------------------------------------------------------------------------------------------
# a real browser


@pytest.fixture(scope="session")
def chromium():
    """Chromium and chromedriver, installed by the project's script when missing (never skipped)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        subprocess.run(["bash", str(ROOT / "scripts" / "install_chromium.sh")], check=True, timeout=1800)
    assert CHROMIUM.exists() and CHROMEDRIVER.exists()
    return CHROMIUM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A headless Chromium session over chromedriver's W3C HTTP API, with its console log."""

    def __init__(self, binary: Path) -> None:
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="status-page-chromium-")
        self.driver = subprocess.Popen([str(CHROMEDRIVER), f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only, never through a proxy
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get(f"{self.base}/status", timeout=2).json()["value"]["ready"]:
                    break
            except (requests.RequestException, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromedriver did not become ready")
            time.sleep(0.05)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={self.profile}", "--window-size=1280,900"]
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome", "goog:chromeOptions": {"binary": str(binary), "args": args},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        answer = self.http.post(f"{self.base}/session", json=caps, timeout=60).json()["value"]
        self.session = f"{self.base}/session/{answer['sessionId']}"

    def _call(self, method: str, path: str, body: dict | None = None):
        resp = self.http.request(method, self.session + path, json=body, timeout=60)
        data = resp.json()
        assert resp.status_code == 200, data
        return data["value"]

    def open(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def script(self, source: str, *args):
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def console(self) -> list[dict]:
        """Every browser log entry since the last call (console messages, CSP reports, uncaught errors)."""
        return self._call("POST", "/se/log", {"type": "browser"})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", "/screenshot"))

    def close(self) -> None:
        try:
            self.http.delete(self.session, timeout=30)
        finally:
            self.driver.terminate()
            try:
                self.driver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.driver.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium):
    b = Browser(chromium)
    yield b
    b.close()


SELFTEST = (b"<!doctype html><html><head><link rel='icon' href='data:,'></head><body>"
            b"<script>console.error('selftest-console-error')</script></body></html>")


@pytest.fixture(scope="module")
def server(registered):
    """Loopback HTTP server: /api/status goes to the registered status_page function."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/selftest":
                self._send(200, {"Content-Type": "text/html"}, SELFTEST)
                return
            if parts.path != "/api/status":
                self._send(404, {"Content-Type": "text/plain"}, b"not found")
                return
            req = func.HttpRequest("GET", f"http://{self.headers['Host']}{self.path}", headers=dict(self.headers),
                                   params=dict(parse_qsl(parts.query)), route_params={}, body=b"")
            resp = registered["status_page"](req)
            headers = dict(resp.headers)
            headers["Content-Type"] = f"{resp.mimetype}; charset={resp.charset}"
            self._send(resp.status_code, headers, resp.get_body())

        def _send(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    srv.server_close()


def test_console_capture_works(browser, server):
    """The no-console-errors checks below are not vacuous: a page that logs an error is seen."""
    browser.console()
    browser.open(f"{server}/selftest")
    assert any("selftest-console-error" in e["message"] for e in browser.console())


def _breach(world, key: str, hours: int) -> None:
    """A commit ``hours`` old that no refresh included (as detection records it): past a 1 h objective."""
    from refresh.monitoring.freshness import FreshnessRecord, commit_time, record_commits

    now = world.clock.now()

    def put(data: dict) -> bool:
        record = FreshnessRecord.from_entity(data)
        record_commits(record, "sales/fact_orders",
                       [commit_time(41, int((now - timedelta(hours=hours)).timestamp() * 1000), None, now)])
        record.to_entity(data)
        return True

    world.app.states.update(key, put)


def test_status_page_renders_in_chromium_without_console_errors(world, browser, server):
    world.seed_history()
    world.live_activity()
    _breach(world, "sales", 3)
    browser.console()  # drop anything older
    browser.open(f"{server}/api/status?code=k3y")
    assert browser.console() == []
    facts = browser.script("""
        const rows = [...document.querySelectorAll('tr.dataset')];
        const failed = document.querySelector('tr#ds-sales rect[data-status="Failed"] title');
        const badge = document.querySelector('tr#ds-sales .badge');
        return {
          title: document.title,
          rows: rows.map(r => r.dataset.key),
          bars: Object.fromEntries(rows.map(r => [r.dataset.key, r.querySelectorAll('svg rect').length])),
          statuses: [...document.querySelectorAll('tr#ds-sales rect')].map(r => r.dataset.status),
          failedTitle: failed ? failed.textContent : null,
          last: rows.map(r => r.querySelector('td.last').innerText),
          activity: rows.map(r => r.querySelector('td.activity').innerText),
          limits: rows.map(r => r.querySelector('td.limit').innerText),
          freshness: rows.map(r => r.querySelector('td.freshness').innerText),
          counts: [...document.querySelectorAll('.summary .count')].map(c => c.innerText),
          scripts: document.scripts.length,
          resources: performance.getEntriesByType('resource').length,
          badgeColour: badge ? getComputedStyle(badge).backgroundColor : null,
          svgWidth: document.querySelector('svg.timeline').getBoundingClientRect().width,
          link: document.querySelector('tr#ds-sales a').getAttribute('href'),
        };""")
    assert facts["title"] == "Power BI refresh status"
    assert facts["rows"] == ["finance-close", "hr", "ops", "sales"]
    assert facts["bars"] == {"finance-close": 4, "hr": 0, "ops": 7, "sales": 11}
    assert facts["statuses"][-2:] == ["Failed", "Running"]
    assert PBI_MESSAGE in facts["failedTitle"] and "ModelRefreshFailed" in facts["failedTitle"]
    assert facts["scripts"] == 0 and facts["resources"] == 0  # nothing loaded from anywhere
    assert facts["badgeColour"] != "rgba(0, 0, 0, 0)"  # inline CSS applies under the CSP
    assert facts["svgWidth"] > 100
    assert facts["link"] == "?dataset=sales&code=k3y"
    last = dict(zip(facts["rows"], facts["last"], strict=True))
    assert last["sales"].startswith("Failed") and PBI_MESSAGE in last["sales"]
    assert last["ops"].startswith("Skipped") and last["hr"] == "no refresh yet"
    freshness = dict(zip(facts["rows"], facts["freshness"], strict=True))
    assert freshness["sales"].startswith("breached since") and "breached for" in freshness["sales"]
    assert freshness["hr"].startswith("unknown")
    assert "breached 1" in facts["counts"]
    activity = dict(zip(facts["rows"], facts["activity"], strict=True))
    assert activity["sales"].startswith("Running") and activity["finance-close"].startswith("Queued")
    assert activity["hr"] == "idle"
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    png = browser.screenshot()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    SCREENSHOT.write_bytes(png)

    # one dataset's history, with the hostile reason shown as text
    browser.open(f"{server}/api/status?dataset=sales&code=k3y")
    assert browser.console() == []
    assert browser.script("return document.querySelectorAll('tr.outcome').length") == 11
    browser.open(f"{server}/api/status?dataset=finance-close&code=k3y")
    assert browser.console() == []
    detail = browser.script("""
        return {rows: document.querySelectorAll('tr.outcome').length, scripts: document.scripts.length,
                text: document.body.innerText, back: document.querySelector('header a').getAttribute('href')};""")
    assert detail["rows"] == 4 and detail["scripts"] == 0
    assert HOSTILE_REASON in detail["text"] and "<b>eve</b>" in detail["text"]
    assert detail["back"] == "?code=k3y"

    browser.open(f"{server}/api/status?dataset=nosuch")
    assert browser.script("return document.querySelector('h1').textContent") == "404"
    assert [e["message"] for e in browser.console()] == [f"{server}/api/status?dataset=nosuch - Failed to load "
                                                         "resource: the server responded with a status of 404 "
                                                         "(Not Found)"]
