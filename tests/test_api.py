"""The HTTP API through its registered entry points: real ``func.HttpRequest`` objects, Azurite tables and
queue, the Power BI simulator, azure-identity's real ManagedIdentityCredential, virtual time."""

from __future__ import annotations

import json
import logging
import socket
from datetime import timedelta
from urllib.parse import unquote, urlencode

import azure.functions as func
import pytest

from refresh.core import storage as tables
from refresh.core.clock import FakeClock, parse_iso
from refresh.core.context import App, set_app
from refresh.core.settings import Settings, SettingsError
from refresh.dev.testing.harness import make_app, storage_env
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs.pending import Change
from refresh.surfaces.http_api import MAX_BODY_BYTES, adhoc_key

HOST = "https://refresh.example.net"
CONFIG = {
    "datasets": {
        "sales": {  # capacity not configured: learnt from the refreshes (dedicated in the simulator)
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}, {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900,
        },
        "ops": {
            "workspace": "Ops", "dataset": "Ops Model", "sources": [{"table": "ops/**"}],
            "debounce_seconds": 0, "max_delay_seconds": 0, "dedicated_capacity": False,
            "schedule": "0 30 6 * * MON-FRI", "schedule_skip_if_unchanged": True,
        },
        "hr": {"workspace": "HR", "dataset": "People", "sources": [{"table": "hr/people"}]},
    }
}
HOSTILE = "' or 1 eq 1 or PartitionKey ne '"


def http(method: str, path: str, *, body: object = b"", params: dict | None = None,
         route_params: dict | None = None, headers: dict | None = None) -> func.HttpRequest:
    """A real HttpRequest as the Functions host hands it to the worker."""
    url = HOST + path + ("?" + urlencode(params, errors="surrogatepass") if params else "")
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    headers = dict(headers or {})
    if method == "POST" and not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = "application/json"
    return func.HttpRequest(method, url, headers=headers, params=params or {},
                            route_params=route_params or {}, body=body)


def answer(resp: func.HttpResponse) -> dict:
    assert resp.mimetype == "application/json"
    return json.loads(resp.get_body())


class ApiWorld:
    def __init__(self, azurite, sim, registered, token, config=CONFIG, **settings):
        self.sim = sim
        self.fn = registered
        self.finance = sim.add_workspace("Finance Analytics", dedicated=True)
        self.sales_ds = sim.add_dataset(self.finance, "Sales Model")
        self.ops_ws = sim.add_workspace("Ops", dedicated=False)
        self.ops_ds = sim.add_dataset(self.ops_ws, "Ops Model")
        self.storage_urls: list[str] = []
        self.app = make_app(azurite.connection_string, config, token=token, POWERBI_API_URL=sim.base_url,
                            client_kwargs={"raw_request_hook": self._seen}, **settings)
        self.clock = self.app.clock
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance],
                         poison=registered["on_refresh_poison"])

    def _seen(self, request) -> None:
        self.storage_urls.append(request.http_request.url)

    def call(self, name: str, method: str, path: str, **kwargs) -> func.HttpResponse:
        return self.fn[name](http(method, path, **kwargs))

    def post(self, body: object, headers: dict | None = None, params: dict | None = None) -> func.HttpResponse:
        return self.call("request_refresh", "POST", "/api/refreshes", body=body, headers=headers, params=params)

    def get_job(self, job_id: str) -> func.HttpResponse:
        return self.call("get_refresh", "GET", f"/api/refreshes/{job_id}", route_params={"job_id": job_id})

    def commit(self, dataset="sales", table="sales/fact_orders", versions=(1,), model_tables=frozenset({"Orders"})):
        cfg = self.app.config.datasets[dataset]
        return self.app.states.record(dataset, Change(
            trigger="commit", table=table, versions=tuple(versions), model_tables=model_tables,
            debounce_seconds=cfg.debounce_seconds, max_delay_seconds=cfg.max_delay_seconds))

    def posts(self):
        return [r for r in self.sim.requests if r.method == "POST" and r.path.endswith("/refreshes")]


@pytest.fixture
def make_world(azurite, sim, powerbi_identity, registered, unique):
    """``make_world(**app settings)``: the world with extra app settings."""
    yield lambda **settings: ApiWorld(azurite, sim, registered, unique, **settings)
    set_app(None)


@pytest.fixture
def world(make_world):
    return make_world()


@pytest.fixture
def auth_world(make_world):
    """App Service authentication on: the platform sets WEBSITE_AUTH_ENABLED=True."""
    return make_world(WEBSITE_AUTH_ENABLED="True")


def signed_in(name: str) -> dict[str, str]:
    """The headers App Service authentication sets for a signed-in caller."""
    return {"x-ms-client-principal-name": name, "x-ms-client-principal-idp": "aad",
            "x-ms-client-principal-id": "4c3b2a10-0000-4000-8000-000000000001"}


# --------------------------------------------------------------------------------------------------
# POST /api/refreshes


def test_manual_refresh_of_a_configured_dataset_runs_to_completion(auth_world):
    world = auth_world
    resp = world.post({"dataset": "sales", "model_tables": ["Orders"], "type": "ClearValues", "reason": "month end"},
                      headers=signed_in("alice@contoso.com"))
    assert resp.status_code == 202
    body = answer(resp)
    job_id = body["job_id"]
    assert len(job_id) == 32 and body["dataset"] == "sales" and body["joined"] is False and body["configured"]
    assert body["status_url"] == f"{HOST}/api/refreshes/{job_id}" == resp.headers["Location"]
    queued = answer(world.get_job(job_id))
    assert queued["status"] == "Queued" and queued["trigger"] == "manual"
    assert queued["requested_by"] == ["alice@contoso.com"] and queued["reasons"] == ["month end"]

    world.pump.run()
    [post] = world.posts()
    assert post.body["type"] == "ClearValues" and post.body["objects"] == [{"table": "Orders"}]
    done = world.get_job(job_id)
    assert done.status_code == 200
    row = answer(done)
    assert row["status"] == "Completed" and row["requested_by"] == ["alice@contoso.com"]
    assert parse_iso(row["started_at"]) == parse_iso(row["queued_at"])  # manual: no debounce


def test_manual_refresh_joins_a_pending_commit_driven_job_and_starts_it_now(world):
    commit = world.commit()
    queued_at = world.clock.now()
    world.clock.advance(5)
    resp = world.post({"dataset": "sales", "reason": "need it now"}, params={"code": "s3cret-key=="})
    assert resp.status_code == 202
    body = answer(resp)
    assert body["joined"] is True and body["job_id"] == commit.job_id
    assert "joined" in body["message"]
    row = answer(world.get_job(commit.job_id))
    assert row["triggers"] == ["commit", "manual"] and row["requested_by"] == ["function key"]
    assert "s3cret" not in json.dumps(row)

    world.pump.run()
    assert len(world.posts()) == 1  # one refresh for both
    row = answer(world.get_job(commit.job_id))
    assert row["status"] == "Completed"
    assert row["model_tables"] == []  # the manual request asked for the whole model
    # the join made it due at once: it did not wait for the commit's 60 s debounce
    assert parse_iso(row["started_at"]) - queued_at < timedelta(seconds=60)


def test_adhoc_refresh_by_names_runs_to_completion(make_world):
    world = make_world(ADHOC_REFRESH_WORKSPACES="Marketing O'Brien")
    ws = world.sim.add_workspace("Marketing O'Brien", dedicated=True)
    ds = world.sim.add_dataset(ws, "Campaigns")
    resp = world.post({"workspace": "Marketing O'Brien", "dataset": "Campaigns"})
    assert resp.status_code == 202
    body = answer(resp)
    assert body["configured"] is False and body["dataset"] == adhoc_key("marketing o'brien", "CAMPAIGNS")
    world.pump.run()
    row = answer(world.get_job(body["job_id"]))
    assert row["status"] == "Completed" and row["dataset_id"] == ds and row["workspace_name"] == "Marketing O'Brien"
    lookups = [r for r in world.sim.requests if r.path.endswith("/groups") and r.query.get("$filter")]
    assert lookups and lookups[0].query["$filter"] == "name eq 'Marketing O''Brien'"  # quoted by the client
    history = world.call("dataset_history", "GET", f"/api/datasets/{body['dataset']}/history",
                         route_params={"key": body["dataset"]})
    assert history.status_code == 200 and answer(history)["outcomes"][0]["job_id"] == body["job_id"]


def test_adhoc_names_of_a_configured_dataset_use_its_key(world):
    resp = world.post({"workspace": "finance analytics", "dataset": "SALES MODEL"})
    assert resp.status_code == 202
    assert answer(resp)["dataset"] == "sales" and answer(resp)["configured"] is True


def test_bad_request_bodies(world):
    cases = [
        (b"x" * (MAX_BODY_BYTES + 1), 413, "payload_too_large"),
        (b'{"dataset": "sales"', 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"[1, 2]", 400, "malformed_json"),
        (b'{"dataset": NaN}', 400, "malformed_json"),
        (b'{"dataset": "\xff"}', 400, "malformed_json"),
        (b"[" * 10_000 + b"]" * 10_000, 400, "malformed_json"),
    ]
    for body, status, code in cases:
        resp = world.post(body)
        assert resp.status_code == status, body[:40]
        assert answer(resp)["error"] == code
    resp = world.fn["request_refresh"](http("POST", "/api/refreshes", body=b'{"dataset":"sales"}',
                                            headers={"content-length": str(10 * MAX_BODY_BYTES)}))
    assert resp.status_code == 413


def test_bad_fields_get_a_message_each(world):
    resp = world.post({"dataset": "sales", "model_tables": ["Orders", "", "x" * 129, 5, "orders", "a\u0007b"],
                       "type": "full", "reason": "r" * 501, "colour": "red"})
    assert resp.status_code == 400
    body = answer(resp)
    assert body["error"] == "invalid_request"
    fields = body["fields"]
    assert set(fields) == {"model_tables[1]", "model_tables[2]", "model_tables[3]", "model_tables[4]",
                           "model_tables[5]", "type", "reason", "colour"}
    assert "must not be empty" in fields["model_tables[1]"]
    assert "limit is 128" in fields["model_tables[2]"]
    assert "must be a string" in fields["model_tables[3]"]
    assert "repeats model_tables[0]" in fields["model_tables[4]"]
    assert "control character" in fields["model_tables[5]"]
    assert "'Full'" in fields["type"] and "limit is 500" in fields["reason"] and "unknown field" in fields["colour"]

    more = [
        ({}, "dataset", "is required"),
        ({"dataset": HOSTILE}, "dataset", "not a configured dataset key"),
        ({"dataset": "sales\n"}, "dataset", "not a configured dataset key"),
        ({"dataset": 7}, "dataset", "must be a string"),
        ({"dataset": "sales", "model_tables": []}, "model_tables", "1 to 100"),
        ({"dataset": "sales", "model_tables": ["t"] * 101}, "model_tables", "1 to 100"),
        ({"dataset": "sales", "model_tables": "Orders"}, "model_tables", "must be an array"),
        ({"workspace": "", "dataset": "x"}, "workspace", "must not be empty"),
        ({"workspace": "W\r\nX-Injected: 1", "dataset": "x"}, "workspace", "control character"),
        ({"workspace": "W", "dataset": "d" * 257}, "dataset", "limit is 256"),
        ({"workspace": "W", "dataset": " padded"}, "dataset", "whitespace"),
        ({"dataset": "sales", "reason": ["a"]}, "reason", "must be a string"),
    ]
    for payload, field, text in more:
        resp = world.post(payload)
        assert resp.status_code == 400, payload
        assert text in answer(resp)["fields"][field], (payload, answer(resp))
    resp = world.post(b'{"dataset": "sales", "dataset": "ops"}')
    assert resp.status_code == 400 and "more than once" in answer(resp)["fields"]["dataset"]

    resp = world.post({"dataset": "nosuch"})
    assert resp.status_code == 404 and answer(resp)["error"] == "unknown_dataset"
    # nothing was recorded and nothing reached Power BI
    assert not list(world.app.state_table.query_entities("PartitionKey eq 'dataset'"))
    assert world.sim.requests == []


def test_wrong_method_gets_405_with_allow(world):
    cases = [("request_refresh", "GET", "/api/refreshes", {}, "POST"),
             ("request_refresh", "PUT", "/api/refreshes", {}, "POST"),
             ("get_refresh", "DELETE", "/api/refreshes/" + "a" * 32, {"job_id": "a" * 32}, "GET"),
             ("list_datasets", "POST", "/api/datasets", {}, "GET"),
             ("dataset_history", "PATCH", "/api/datasets/sales/history", {"key": "sales"}, "GET"),
             ("health", "OPTIONS", "/api/health", {}, "GET")]
    for name, method, path, route, allow in cases:
        resp = world.call(name, method, path, route_params=route, body=b"{}")
        assert resp.status_code == 405, (name, method)
        assert resp.headers["Allow"] == allow and answer(resp)["error"] == "method_not_allowed"
    page = world.call("status_page", "POST", "/api/status")
    assert page.status_code == 405 and page.mimetype == "text/html" and page.headers["Allow"] == "GET"


# --------------------------------------------------------------------------------------------------
# GET /api/refreshes/{job_id}


def test_get_refresh_validates_the_id_before_any_lookup(world):
    assert world.get_job("0" * 32).status_code == 404
    assert answer(world.get_job("0" * 32))["error"] == "unknown_job"
    for bad in (HOSTILE, "A" * 32, "a" * 31, "a" * 32 + "\n", "", "../../admin"):
        resp = world.get_job(bad)
        assert resp.status_code == 400, bad
        assert "32 lowercase hexadecimal" in answer(resp)["fields"]["job_id"]
    assert not [u for u in world.storage_urls if "or%201%20eq%201" in u or "or 1 eq 1" in unquote(u)]


# --------------------------------------------------------------------------------------------------
# GET /api/datasets and history


def test_list_datasets_shows_sources_schedule_last_outcome_pending_and_limit_use(world):
    world.commit()
    world.pump.run()
    world.commit(dataset="ops", table="ops/a", model_tables=None)  # pending (not pumped)
    resp = world.call("list_datasets", "GET", "/api/datasets")
    assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
    data = {d["key"]: d for d in answer(resp)["datasets"]}
    assert list(data) == ["hr", "ops", "sales"]
    sales, ops, hr = data["sales"], data["ops"], data["hr"]
    assert sales["sources"] == [{"table": "sales/fact_orders", "model_tables": ["Orders"]},
                                {"table": "sales/dim_*", "model_tables": None}]
    assert sales["last_outcome"]["status"] == "Completed" and sales["pending"] is None and sales["running"] is None
    assert sales["daily_limit"] == {"used": 1, "limit": None, "capacity": "dedicated", "window": "rolling 24 h",
                                    "text": "1 / unlimited (dedicated)"}
    assert ops["pending"]["triggers"] == ["commit"] and ops["pending"]["model_tables"] is None
    assert ops["last_outcome"] is None
    assert ops["daily_limit"]["text"] == "0 / 8 (shared)"
    assert ops["schedule"]["expression"] == "0 30 6 * * MON-FRI" and ops["schedule"]["skip_if_unchanged"]
    assert ops["schedule"]["next_due_at"] == "2026-11-23T06:30:00.000Z"  # 2026-11-21 is a Saturday
    assert hr["daily_limit"]["capacity"] == "unknown"
    assert hr["daily_limit"]["text"] == "0 / 8 if shared (capacity not known yet)"


def test_history_is_newest_first_and_top_is_capped(world):
    start = world.clock.now()
    for i in range(105):
        world.app.outcomes.create("hr", f"{i:032x}", start + timedelta(minutes=i), {"status": "Completed"})

    def history(key="hr", **params):
        return world.call("dataset_history", "GET", f"/api/datasets/{key}/history", route_params={"key": key},
                          params=params)

    body = answer(history(top="500"))
    assert body["top"] == 100 and body["capped"] is True and len(body["outcomes"]) == 100
    assert body["outcomes"][0]["job_id"] == f"{104:032x}" and body["outcomes"][-1]["job_id"] == f"{5:032x}"
    body = answer(history(top="3"))
    assert [r["job_id"] for r in body["outcomes"]] == [f"{i:032x}" for i in (104, 103, 102)]
    assert len(answer(history())["outcomes"]) == 20
    for bad in ("0", "-1", "abc", "1e3", "٣"):
        resp = history(top=bad)
        assert resp.status_code == 400 and "top" in answer(resp)["fields"], bad
    resp = history(key=HOSTILE)
    assert resp.status_code == 400 and "key" in answer(resp)["fields"]
    assert history(key="nosuch").status_code == 404
    assert not [u for u in world.storage_urls if "or 1 eq 1" in unquote(u)]


# --------------------------------------------------------------------------------------------------
# hostile input


def test_hostile_strings_are_stored_as_data_never_in_a_filter_a_log_or_the_page(auth_world, caplog):
    world = auth_world
    caplog.set_level(logging.DEBUG)
    reason = "<script>alert(1)</script>" + HOSTILE
    principal = '<img src=x onerror="alert(2)">'
    resp = world.post({"dataset": "sales", "reason": reason}, headers=signed_in(principal))
    assert resp.status_code == 202
    job_id = answer(resp)["job_id"]
    row = answer(world.get_job(job_id))
    assert row["reasons"] == [reason] and row["requested_by"] == [principal]
    world.pump.run()

    page = world.call("status_page", "GET", "/api/status", params={"dataset": "sales"})
    text = page.get_body().decode()
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "<script" not in text
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in text and "<img" not in text
    for url in world.storage_urls:
        # the hostile texts never reach a filter (the one 'alert' is the alert rows' own PartitionKey)
        assert "alert(" not in unquote(url) and "onerror" not in unquote(url) and "or 1 eq 1" not in unquote(url)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "alert(" not in logged and "or 1 eq 1" not in logged
    assert job_id in logged  # validated values are logged

    for bad in (HOSTILE, "<script>", "sales'--"):
        page = world.call("status_page", "GET", "/api/status", params={"dataset": bad})
        assert page.status_code == 400 and "<script>" not in page.get_body().decode()


# --------------------------------------------------------------------------------------------------
# GET /api/health


def test_health_ok(world):
    resp = world.call("health", "GET", "/api/health")
    body = answer(resp)
    assert resp.status_code == 200, body
    assert body["status"] == "healthy"
    assert body["checks"]["config"] == {"ok": True, "datasets": 3, "scheduled": 1}
    assert body["checks"]["storage"]["ok"] and body["checks"]["powerbi"]["ok"]
    assert "token" not in json.dumps(body["checks"]["powerbi"]).replace("token obtainable", "")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_health_503_names_a_broken_config(azurite, sim, powerbi_identity, registered, unique, tmp_path):
    bad = tmp_path / "refresh-config.json"
    bad.write_text('{"datasets": {"sales": {"workspace": "W", "dataset": "D", "sources": [], "colour": 1}}}')
    env = storage_env(azurite.connection_string, unique, REFRESH_CONFIG=str(bad), POWERBI_API_URL=sim.base_url)
    set_app(App(env=env, clock=FakeClock()))
    try:
        resp = registered["health"](http("GET", "/api/health"))
        body = answer(resp)
        assert resp.status_code == 503 and body["status"] == "unhealthy"
        assert not body["checks"]["config"]["ok"]
        assert "sources: must list at least one source" in body["checks"]["config"]["error"]
        assert body["checks"]["storage"]["ok"] and body["checks"]["powerbi"]["ok"]
        # the other endpoints say so too, as 503
        listed = registered["list_datasets"](http("GET", "/api/datasets"))
        assert listed.status_code == 503 and answer(listed)["error"] == "misconfigured"
    finally:
        set_app(None)


def test_health_503_when_storage_is_unreachable(world, registered):
    port = _closed_port()
    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={'a' * 88};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{port}/"
            f"devstoreaccount1;TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    env = dict(world.app.env, AzureWebJobsStorage=conn)
    set_app(App(env=env, clock=world.clock, config=world.app.config))
    resp = registered["health"](http("GET", "/api/health"))
    body = answer(resp)
    assert resp.status_code == 503
    assert body["checks"]["config"]["ok"] and body["checks"]["powerbi"]["ok"]
    assert not body["checks"]["storage"]["ok"] and body["checks"]["storage"]["error"]
    assert "a" * 88 not in json.dumps(body)


def test_pending_job_states_via_status_url(world):
    """The status URL in the answer is the get_refresh route: following it works."""
    body = answer(world.post({"dataset": "hr"}))
    path = body["status_url"].removeprefix(HOST)
    job_id = path.rsplit("/", 1)[1]
    resp = world.call("get_refresh", "GET", path, route_params={"job_id": job_id})
    assert resp.status_code == 200 and answer(resp)["dataset_key"] == "hr"
    entity = world.app.states.get("hr")
    assert tables.get_json(entity, "pending")["requested_by"] == ["anonymous"]


# --------------------------------------------------------------------------------------------------
# text that is not valid Unicode (issue 9 item 11)


def test_lone_surrogates_in_the_body_are_refused_naming_the_field(make_world):
    world = make_world(ADHOC_REFRESH_WORKSPACES="*")
    cases = [
        (b'{"dataset": "sales", "reason": "\\ud800"}', "reason"),
        (b'{"dataset": "sales", "\\ud800": 1}', "\ufffd"),
        (b'{"workspace": "W\\udfff", "dataset": "Campaigns"}', "workspace"),
        (b'{"workspace": "W", "dataset": "\\ud83d"}', "dataset"),
        (b'{"dataset": "sales", "model_tables": ["Orders", "x\\udc00y"]}', "model_tables[1]"),
    ]
    for body, field in cases:
        resp = world.post(body)
        assert resp.status_code == 400, body
        answer_ = answer(resp)
        assert answer_["error"] == "invalid_request" and "not valid Unicode" in answer_["fields"][field], answer_
    assert not list(world.app.state_table.query_entities("PartitionKey eq 'dataset'"))
    assert world.sim.requests == []


def test_lone_surrogates_in_query_route_and_headers_are_refused_naming_them(world):
    resp = world.call("dataset_history", "GET", "/api/datasets/sales/history", route_params={"key": "sales\ud800"})
    assert resp.status_code == 400 and "route value key" in answer(resp)["fields"]
    resp = world.call("dataset_history", "GET", "/api/datasets/sales/history", route_params={"key": "sales"},
                      params={"top": "\ud800"})
    assert resp.status_code == 400 and "query parameter top" in answer(resp)["fields"]
    resp = world.call("list_datasets", "GET", "/api/datasets", headers={"x-note": "\udfff"})
    assert resp.status_code == 400 and "not valid Unicode" in answer(resp)["fields"]["header x-note"]
    page = world.call("status_page", "GET", "/api/status", params={"dataset": "\ud800"})
    assert page.status_code == 400 and page.mimetype == "text/html"


def test_rows_stored_with_bad_text_are_still_served_with_replacement_characters(world):
    """Rows written before such text was refused must never turn the readers into 500s."""
    bad = "month end \ud800"
    start = world.clock.now()
    job_id = "b" * 32
    world.app.outcomes.create("sales", job_id, start, {"status": "Completed", "reasons": [bad],
                                                       "requested_by": ["\udfffeve"], "detail": bad})
    world.app.states.record("hr", Change(trigger="manual", debounce_seconds=0, max_delay_seconds=0,
                                         model_tables=None, reason=bad, requested_by="\ud800"))
    job = world.get_job(job_id)
    assert job.status_code == 200 and answer(job)["reasons"] == ["month end \ufffd"]
    listed = world.call("list_datasets", "GET", "/api/datasets")
    assert listed.status_code == 200
    data = {d["key"]: d for d in answer(listed)["datasets"]}
    assert data["hr"]["pending"]["reasons"] == ["month end \ufffd"]
    assert data["sales"]["last_outcome"]["requested_by"] == ["\ufffdeve"]
    history = world.call("dataset_history", "GET", "/api/datasets/sales/history", route_params={"key": "sales"})
    assert history.status_code == 200 and answer(history)["outcomes"][0]["detail"] == "month end \ufffd"
    for params in ({}, {"dataset": "sales"}, {"dataset": "hr"}):
        page = world.call("status_page", "GET", "/api/status", params=params)
        assert page.status_code == 200, params
        assert "month end \ufffd" in page.get_body().decode("utf-8")


# --------------------------------------------------------------------------------------------------
# ad-hoc refreshes are opt-in (issue 9 item 14)


def test_adhoc_refresh_is_refused_unless_allowed_and_the_refusal_says_how(world):
    ws = world.sim.add_workspace("Marketing", dedicated=True)
    world.sim.add_dataset(ws, "Campaigns")
    world.sim.add_dataset(ws, "Secret Budget")
    resp = world.post({"workspace": "Marketing", "dataset": "Campaigns"})
    assert resp.status_code == 403
    body = answer(resp)
    assert body["error"] == "adhoc_not_allowed"
    assert "ADHOC_REFRESH_WORKSPACES" in body["message"] and "adhoc_workspaces" in body["message"]
    assert "'Campaigns'" in body["message"] and "'Marketing'" in body["message"]
    assert "Secret Budget" not in body["message"] and "Sales Model" not in body["message"]
    assert not list(world.app.state_table.query_entities("PartitionKey eq 'dataset'"))
    assert world.sim.requests == []  # nothing was asked of Power BI
    # names of a configured dataset are not ad-hoc: still allowed
    assert world.post({"workspace": "Finance Analytics", "dataset": "Sales Model"}).status_code == 202


def test_adhoc_refresh_allowed_by_the_setting_or_the_config(make_world):
    listed = make_world(ADHOC_REFRESH_WORKSPACES="Finance Analytics, marketing")
    assert listed.post({"workspace": "MARKETING", "dataset": "Campaigns"}).status_code == 202
    assert listed.post({"workspace": "Finance Analytics", "dataset": "Other"}).status_code == 202
    assert listed.post({"workspace": "HR", "dataset": "Salaries"}).status_code == 403
    everything = make_world(ADHOC_REFRESH_WORKSPACES="*")
    assert everything.post({"workspace": "HR", "dataset": "Salaries"}).status_code == 202
    by_config = make_world(config={**CONFIG, "adhoc_workspaces": ["HR"]})
    assert by_config.post({"workspace": "hr", "dataset": "Salaries"}).status_code == 202
    assert by_config.post({"workspace": "Ops2", "dataset": "Salaries"}).status_code == 403
    for bad in ("HR,,Ops", "*,HR", "HR,\ud800"):
        with pytest.raises(SettingsError, match="ADHOC_REFRESH_WORKSPACES"):
            Settings.from_env({"ADHOC_REFRESH_WORKSPACES": bad})


# --------------------------------------------------------------------------------------------------
# who asked (issue 9 item 15)


def test_principal_header_is_ignored_when_app_service_authentication_is_off(world):
    """Authentication off: any caller can send the header, so it does not say who asked."""
    resp = world.post({"dataset": "sales"}, headers=signed_in("ceo@contoso.com"), params={"code": "k"})
    row = answer(world.get_job(answer(resp)["job_id"]))
    assert row["requested_by"] == ["function key"]
    resp = world.post({"dataset": "ops"}, headers={**signed_in("ceo@contoso.com"), "x-functions-key": "k"})
    assert answer(world.get_job(answer(resp)["job_id"]))["requested_by"] == ["function key"]
    resp = world.post({"dataset": "hr"}, headers=signed_in("ceo@contoso.com"))
    assert answer(world.get_job(answer(resp)["job_id"]))["requested_by"] == ["anonymous"]


def test_principal_name_is_trusted_only_with_the_platforms_headers(auth_world):
    # authentication on, but the platform's companion headers are missing: not set by the platform
    resp = auth_world.post({"dataset": "hr"}, headers={"x-ms-client-principal-name": "ceo@contoso.com"},
                           params={"code": "k"})
    assert answer(auth_world.get_job(answer(resp)["job_id"]))["requested_by"] == ["function key"]
    # authentication on and the platform's headers present: the signed-in name
    resp = auth_world.post({"dataset": "sales"}, headers=signed_in("alice@contoso.com"))
    assert answer(auth_world.get_job(answer(resp)["job_id"]))["requested_by"] == ["alice@contoso.com"]


# --------------------------------------------------------------------------------------------------
# a JSON API takes JSON only (issue 9 item 16)


def test_post_bodies_must_be_sent_as_application_json(world):
    body = json.dumps({"dataset": "sales"}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         "application/json; charset=latin-1", "application/jsonp", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        resp = world.fn["request_refresh"](func.HttpRequest("POST", HOST + "/api/refreshes", headers=headers,
                                                            params={}, route_params={}, body=body))
        assert resp.status_code == 415, content_type
        out = answer(resp)
        assert out["error"] == "unsupported_media_type" and "Content-Type: application/json" in out["message"]
    assert not list(world.app.state_table.query_entities("PartitionKey eq 'dataset'"))
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        resp = world.call("request_refresh", "POST", "/api/refreshes", body=body,
                          headers={"Content-Type": content_type})
        assert resp.status_code == 202, content_type
