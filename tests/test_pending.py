"""Pending jobs (refresh/pending.py) through the registered entry points: bounded joins, and requests
that join the running refresh. Azurite tables and queue, the Power BI simulator, virtual time."""

from __future__ import annotations

import json

import azure.functions as func
import pytest

from refresh import tables
from refresh.app import set_app
from refresh.pending import PendingJob, pending_of
from refresh.testing.harness import make_app
from refresh.testing.pump import Pump, VirtualQueue

HOST = "https://refresh.example.net"
CONFIG = {
    "datasets": {
        "sales": {
            "workspace": "Finance Analytics", "dataset": "Sales Model",
            "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}, {"table": "sales/dim_*"}],
            "debounce_seconds": 60, "max_delay_seconds": 900,
        },
    }
}


class World:
    def __init__(self, azurite, sim, registered, token) -> None:
        self.sim = sim
        self.fn = registered
        ws = sim.add_workspace("Finance Analytics", dedicated=True)
        self.dataset = sim.add_dataset(ws, "Sales Model")
        self.app = make_app(azurite.connection_string, CONFIG, token=token, POWERBI_API_URL=sim.base_url)
        self.clock = self.app.clock
        self.app.__dict__["queue"] = VirtualQueue(self.app.queue, self.clock)
        set_app(self.app)
        self.pump = Pump(self.app.queue, registered["run_refresh_job"], advance=[sim.advance],
                         poison=registered["on_refresh_poison"])

    def post(self, body: dict, who: str | None = None) -> func.HttpResponse:
        headers = {"x-ms-client-principal-name": who} if who else {}
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
