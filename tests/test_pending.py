"""Pending jobs (refresh/jobs/pending.py) through the registered entry points: bounded joins, and requests
that join the running refresh. Azurite tables and queue, the Power BI simulator, virtual time."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from refresh.core import storage as tables
from refresh.core.context import set_app
from refresh.dev.testing.harness import make_app
from refresh.dev.testing.pump import Pump, VirtualQueue
from refresh.jobs.pending import PendingJob, pending_of

HOST = "https://refresh.example.net"
CONFIG = {
    "datasets": {
        "sales": {
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}, {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900, "schedule": "0 */10 * * * *",
        },
    }
}


class World:
    def __init__(self, azurite, sim, registered, token) -> None:
        self.sim = sim
        self.fn = registered
        ws = sim.add_workspace("Finance Analytics", dedicated=True)
        self.dataset = sim.add_dataset(ws, "Sales Model")
        self.app = make_app(azurite.connection_string, CONFIG, token=token, POWERBI_API_URL=sim.base_url,
                            WEBSITE_AUTH_ENABLED="True")
        self.clock = self.app.clock
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance],
                         poison=registered["on_refresh_poison"])

    def post(self, body: dict, who: str | None = None) -> func.HttpResponse:
        headers = {"Content-Type": "application/json"}
        if who:  # as App Service authentication sets them (trusted only with WEBSITE_AUTH_ENABLED)
            headers.update({"x-ms-client-principal-name": who, "x-ms-client-principal-idp": "aad",
                            "x-ms-client-principal-id": "00000000-0000-0000-0000-000000000001"})
        req = func.HttpRequest("POST", HOST + "/api/refreshes", headers=headers, params={}, route_params={},
                               body=json.dumps(body, ensure_ascii=False).encode())
        return self.fn["request_refresh"](req)

    def row(self, job_id: str) -> dict:
        return self.app.outcomes.get(job_id)

    def entity(self):
        return self.app.states.get("sales")

    def posts(self):
        return [r for r in self.sim.requests if r.method == "POST" and r.path.endswith("/refreshes")]


@pytest.fixture
def world(azurite, sim, powerbi_identity, registered, unique):
    w = World(azurite, sim, registered, unique)
    yield w
    set_app(None)


def stored_bytes(entity) -> int:
    """An entity's size as Table Storage counts it (strings in UTF-16, as their JSON-escaped text is stored)."""
    total = 0
    for key, value in dict(entity).items():
        raw = getattr(value, "value", value)
        total += 8 + 2 * len(key)
        if isinstance(raw, str):
            total += 4 + len(raw.encode("utf-16-le"))
        else:
            total += 8
    return total


# --------------------------------------------------------------------------------------------------
# bounded joins (issue 9, item 12)


def test_many_large_joins_never_fail_and_the_job_stays_bounded(world):
    answers = []
    for i in range(30):
        names = [f"\U0001F600{i:02d}{j:03d}" + "\U0001F4C8" * 120 for j in range(100)]
        reason = f"{i} " + "\U0001F525" * 490
        answers.append(world.post({"dataset": "sales", "model_tables": names, "reason": reason},
                                  who=f"user{i}@" + "\u00e9" * 200))
    assert [a.status_code for a in answers] == [202] * 30
    job_ids = {json.loads(a.get_body())["job_id"] for a in answers}
    assert len(job_ids) == 1
    job_id = job_ids.pop()
    entity = world.entity()
    assert stored_bytes(entity) < 512 * 1024
    pending = tables.get_json(entity, "pending")
    assert pending["whole_model"] is True and pending["model_tables"] == []  # widened at the cap
    assert 0 < len(pending["requested_by"]) <= 20 and pending["omitted"] > 0
    row = world.row(job_id)
    assert row["model_tables"] == [] and row["requested_by"] == pending["requested_by"]
    assert row["requested_by"][0] == "user0@" + "\u00e9" * 200
    assert row["reasons"][0].startswith("0 ") and row["reasons"][-1].startswith(f"(+{pending['omitted']} more")
    world.pump.run()
    [post] = world.posts()
    assert "objects" not in post.body  # the whole model
    assert world.row(job_id)["status"] == "Completed"


def test_the_model_table_cap_widens_to_the_whole_model(world):
    first = None
    for i in range(3):  # 3 x 40 distinct small names: over the 100-table cap at the third join
        body = json.loads(world.post({"dataset": "sales", "model_tables": [f"T{i}_{j}" for j in range(40)]},
                                     who="ops").get_body())
        first = first or body["job_id"]
        assert body["job_id"] == first
        job = pending_of(world.entity())
        assert job.whole_model is (i == 2) and len(job.model_tables) == (0 if i == 2 else 40 * (i + 1))
    assert world.row(first)["model_tables"] == []


def test_a_job_merged_beyond_the_caps_is_stored_within_them(world):
    """However a job grew (e.g. the worker merging a newer pending job into one it gives back), what is
    stored stays within the caps."""
    job = PendingJob(job_id="a" * 32, trigger="manual", created_at="2026-12-01T00:00:00.000Z",
                     last_change_at="2026-12-01T00:00:00.000Z", due_at="2026-12-01T00:00:00.000Z",
                     requested_by=[f"user{i}" for i in range(500)], reasons=["x" * 5000] * 3 + ["y"] * 100,
                     model_tables=[f"T{i}" for i in range(101)], triggers=["manual", "schedule"] * 50)
    data = job.to_dict()
    assert data["whole_model"] and data["model_tables"] == []
    assert data["triggers"] == ["manual", "schedule"]
    assert data["requested_by"] == [f"user{i}" for i in range(20)]
    assert data["reasons"][0] == "x" * 500 and data["reasons"][1] == "y"
    assert data["omitted"] == 480 and data["reasons"][-1].startswith("(+480 more")  # repeats are not new

    def store(entity: dict) -> bool:
        tables.put_json(entity, "pending", data)
        tables.put_json(entity, "running", {"job_id": job.job_id, "job": data})
        return True

    world.app.states.update("sales", store)  # both copies in one entity: accepted by Table Storage
    again = pending_of(world.entity()).to_dict()
    assert again == data  # bounding is stable: nothing more is dropped on the next write


# --------------------------------------------------------------------------------------------------
# requests that arrive while a refresh runs (issue 9, item 4)


def start_first(world, **body) -> str:
    """POST a manual refresh and let the worker claim it and POST it to Power BI."""
    first = json.loads(world.post({"dataset": "sales", **body}, who="user0").get_body())
    world.pump.step()  # the job message: claim, POST, first check queued
    assert world.row(first["job_id"])["status"] == "Running" and len(world.posts()) == 1
    return first["job_id"]


def test_a_burst_of_manual_requests_is_one_refresh(world):
    job_id = start_first(world, reason="first")
    answers = []
    for i in range(1, 20):  # the rest of a burst of 20 within 3 s
        world.clock.advance(0.15)
        answers.append(json.loads(world.post({"dataset": "sales", "reason": f"burst {i}"}, who=f"user{i}").get_body()))
    assert {a["job_id"] for a in answers} == {job_id}
    assert all(a["joined"] == "running" and "running" in a["message"] for a in answers)
    assert answers[0]["status_url"] == f"{HOST}/api/refreshes/{job_id}"
    assert pending_of(world.entity()) is None  # no follow-up job
    world.pump.run()
    assert len(world.posts()) == 1
    [row] = world.app.outcomes.history("sales")
    assert row["job_id"] == job_id and row["status"] == "Completed"
    assert row["requested_by"] == [f"user{i}" for i in range(20)]
    assert row["reasons"] == ["first"] + [f"burst {i}" for i in range(1, 20)]
    assert row["triggers"] == ["manual"]


def test_a_scheduled_run_joins_the_running_refresh(world):
    from refresh.jobs.schedules import run_schedules

    [started] = run_schedules(world.app)  # 12:00:00: the schedule starts counting
    assert started.action == "started"
    world.clock.advance(590)
    job_id = start_first(world)
    world.clock.advance(11)  # 12:10:01: due while the refresh runs
    [run] = run_schedules(world.app)
    assert (run.action, run.job_id) == ("joined", job_id)
    assert pending_of(world.entity()) is None
    world.pump.run()
    [row] = world.app.outcomes.history("sales")
    assert row["triggers"] == ["manual", "schedule"] and row["requested_by"] == ["user0", "schedule"]
    assert len(world.posts()) == 1


@pytest.mark.parametrize(("first", "then"), [
    ({"model_tables": ["Orders"]}, {}),                                      # the whole model: more than runs
    ({"model_tables": ["Orders"]}, {"model_tables": ["Orders", "Stores"]}),  # a table the running job lacks
    ({}, {"type": "ClearValues"}),                                           # another refresh type
])
def test_requests_for_more_than_the_running_refresh_make_a_follow_up(world, first, then):
    job_id = start_first(world, **first)
    answer = json.loads(world.post({"dataset": "sales", **then}, who="user1").get_body())
    assert answer["joined"] is False and answer["job_id"] != job_id
    again = json.loads(world.post({"dataset": "sales", **then}, who="user2").get_body())
    assert again["joined"] is True and again["job_id"] == answer["job_id"]  # joins the follow-up
    world.pump.run()
    assert len(world.posts()) == 2


def test_a_request_for_part_of_the_running_refresh_joins_it(world):
    job_id = start_first(world, model_tables=["Orders", "Stores"])
    answer = json.loads(world.post({"dataset": "sales", "model_tables": ["Stores"]}, who="user1").get_body())
    assert (answer["joined"], answer["job_id"]) == ("running", job_id)


def test_a_source_change_since_the_refresh_started_makes_a_follow_up(world):
    from refresh.jobs.pending import Change

    job_id = start_first(world)
    world.app.states.record("sales", Change(trigger="commit", table="sales/fact_orders", versions=(7,),
                                            model_tables=frozenset({"Orders"}), debounce_seconds=60,
                                            max_delay_seconds=900))
    follow_up = pending_of(world.entity())
    answer = json.loads(world.post({"dataset": "sales"}, who="user1").get_body())
    assert answer["joined"] is True and answer["job_id"] == follow_up.job_id != job_id
    world.pump.run()
    assert len(world.posts()) == 2


def test_a_running_job_whose_lease_expired_is_not_joined(world):
    job_id = start_first(world)

    def expire(entity: dict) -> bool:
        running = tables.get_json(entity, "running")
        running["lease_until"] = "2000-01-01T00:00:00.000Z"
        tables.put_json(entity, "running", running)
        return True

    world.app.states.update("sales", expire)
    answer = json.loads(world.post({"dataset": "sales"}, who="user1").get_body())
    assert answer["joined"] is False and answer["job_id"] != job_id


def test_an_unreadable_running_entry_is_never_joined(world):
    from refresh.jobs.pending import running_of

    def garble(entity: dict) -> bool:
        tables.put_json(entity, "running", {"job_id": "b" * 32, "job": {"job_id": 5, "surprise": True}})
        return True

    world.app.states.update("sales", garble)
    assert running_of(world.entity()) is None  # unreadable: no running job to join
    answer = json.loads(world.post({"dataset": "sales"}, who="user1").get_body())
    assert answer["joined"] is False
