"""The chaos scenarios (dev only). Each owns its datasets and tables, so figures are per scenario.

Every scenario gets a :class:`Context` and runs for about ``ctx.seconds`` of active chaos; the runner
then lets the app settle (no more faults, no more commits) and measures.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from refresh.dev.testing.chaos.env import ChaosEnv, DatasetSpec
from refresh.dev.testing.chaos.proxy import Fault

FAILED_POST_KINDS = ("500", "503", "busy", "kill", "token")


@dataclass
class Context:
    env: ChaosEnv
    rng: random.Random
    seconds: float
    token_outage: float = 40.0
    parallel: bool = False  # scenarios run side by side (and the failed-POST kinds too)
    stop: threading.Event = field(default_factory=threading.Event)
    notes: list[str] = field(default_factory=list)
    bounce_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def wait_limit(self) -> float:
        """How long a scenario waits for the app to do one step (a refresh, a POST) before moving on."""
        return max(20.0, min(60.0, 2 * self.seconds))

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.env.say(f"  {text}")

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; False when stopped."""
        return not self.stop.wait(max(0.0, seconds))

    def bounce(self, name: str = "main") -> None:
        """kill -9 the runtime ``name`` and start it again (serialised: scenarios may run together)."""
        with self.bounce_lock:
            runtime = self.env.runtime(name)
            runtime.kill()
            runtime.start()

    def ds(self, key: str) -> str:
        return self.env.dataset_ids[key]


@dataclass(frozen=True)
class Scenario:
    name: str
    datasets: tuple[DatasetSpec, ...]
    run: Callable[[Context], None]
    summary: str


# helpers -------------------------------------------------------------------------------------------
def _writer(ctx: Context, scenario: str, tables: list[str], low: float, high: float, until: float) -> None:
    while time.monotonic() < until and not ctx.stop.is_set():
        try:
            ctx.env.commit(ctx.rng.choice(tables), scenario)
        except Exception as exc:  # storage hiccup: the commit did not happen, so it is not counted
            ctx.note(f"{scenario}: a commit failed ({type(exc).__name__}: {exc})")
        ctx.sleep(ctx.rng.uniform(low, high))


def _start_writer(ctx: Context, scenario: str, tables: list[str], low: float, high: float,
                  seconds: float) -> threading.Thread:
    thread = threading.Thread(target=_writer, args=(ctx, scenario, tables, low, high, time.monotonic() + seconds),
                              name=f"writer-{scenario}", daemon=True)
    thread.start()
    return thread


def _post_path(ctx: Context, key: str) -> str:
    return f"/datasets/{ctx.ds(key)}/refreshes"


def _wait_completed_after(ctx: Context, key: str, at: float, timeout: float) -> bool:
    from refresh.dev.testing.chaos.figures import _epoch

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ctx.stop.is_set():
        for refresh in ctx.env.sim.refreshes(ctx.ds(key)):
            if refresh.get("status") == "Completed" and (_epoch(refresh.get("startTime")) or 0) > at:
                return True
        ctx.sleep(0.25)
    return False


def _wait_post(ctx: Context, key: str, since: float, timeout: float) -> bool:
    assert ctx.env.proxy is not None
    path = _post_path(ctx, key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ctx.stop.is_set():
        if any(p.method == "POST" and path in p.path and p.at >= since for p in list(ctx.env.proxy.log)):
            return True
        ctx.sleep(0.1)
    return False


def _deliver(ctx: Context, events: list[dict], blob_trigger: bool = True, attempts: int = 20) -> None:
    """Deliver ``events`` to the Event Grid trigger (and the blob trigger), retrying while the runtime restarts."""
    for _ in range(attempts):
        if ctx.env.post_events(events) in (200, 202):
            break
        ctx.sleep(1.0)
    if blob_trigger:
        for _ in range(attempts):
            if ctx.env.post_blob_events(events) in (200, 202):
                break
            ctx.sleep(1.0)


# scenarios -----------------------------------------------------------------------------------------
def kill_loop(ctx: Context) -> None:
    """Commits flow; the runtime is SIGKILLed and restarted at random points, some while a POST is in flight."""
    writer = _start_writer(ctx, "kill9", ["kill/t1", "kill/t2"], 0.2, 1.0, ctx.seconds)
    until = time.monotonic() + ctx.seconds
    kills = 0
    while time.monotonic() < until and ctx.sleep(ctx.rng.uniform(3.0, 9.0)):
        if ctx.rng.random() < 0.4:  # wait for a refresh POST and kill while its answer is held
            hit = threading.Event()
            assert ctx.env.proxy is not None
            fault = ctx.env.proxy.arm(Fault("hold", method="POST", seconds=3.0, on_hit=hit.set,
                                            path_contains=_post_path(ctx, ctx.rng.choice(["kill_a", "kill_b"]))))
            hit.wait(8.0)
            ctx.env.proxy.disarm(fault)
        ctx.bounce()
        kills += 1
        if ctx.rng.random() < 0.25:  # a burst: several kills in a row, each soon after the restart
            for _ in range(ctx.rng.randint(3, 6)):
                if not ctx.sleep(ctx.rng.uniform(0.5, 2.0)):
                    break
                ctx.bounce()
                kills += 1
    writer.join()
    ctx.note(f"kill9: {kills} kills")


def racing_runtimes(ctx: Context) -> None:
    """Two runtimes on the same storage; one of them is SIGKILLed and restarted now and then."""
    second = ctx.env.runtime("second")
    if not second.alive:
        second.start()
    writer = _start_writer(ctx, "race", ["race/t1", "race/t2"], 0.2, 1.0, ctx.seconds)
    until = time.monotonic() + ctx.seconds
    kills = 0
    while time.monotonic() < until and ctx.sleep(ctx.rng.uniform(5.0, 12.0)):
        ctx.bounce(ctx.rng.choice(["main", "second"]))
        kills += 1
    writer.join()
    second.stop()
    ctx.note(f"race: two runtimes, {kills} kills")


def duplicate_messages(ctx: Context) -> None:
    """Copies of job messages (for running and pending jobs) and of every message seen on the queue."""
    keys = ["dup_a", "dup_b"]
    writer = _start_writer(ctx, "dupes", ["dup/t1", "dup/t2"], 0.5, 2.0, ctx.seconds)
    queue = ctx.env.queue()
    seen: set[str] = set()
    copies = 0
    until = time.monotonic() + ctx.seconds
    while time.monotonic() < until and ctx.sleep(ctx.rng.uniform(0.2, 1.0)):
        with contextlib.suppress(Exception):
            for key, job_id in ctx.env.running_jobs(keys).items():
                for _ in range(ctx.rng.randint(1, 3)):
                    queue.send_message(ctx.env.job_message("job", key, job_id),
                                       visibility_timeout=ctx.rng.choice([0, 0, 1, 3]))
                    copies += 1
            for message in queue.peek_messages(max_messages=32):
                if message.id in seen or not any(f'"{k}"' in message.content for k in keys):
                    continue
                seen.add(message.id)
                queue.send_message(message.content, visibility_timeout=ctx.rng.choice([0, 1, 5]))
                copies += 1
    writer.join()
    ctx.note(f"dupes: {copies} duplicate messages sent")


def _wait_idle(ctx: Context, key: str, after: float, timeout: float) -> bool:
    """Until Power BI completed a refresh started after ``after`` and the app holds no job of ``key``."""
    deadline = time.monotonic() + timeout
    if not _wait_completed_after(ctx, key, after, timeout):
        return False
    while time.monotonic() < deadline and not ctx.stop.is_set():
        state = ctx.env.dataset_states().get(key) or {}
        if not state.get("pending") and not state.get("running"):
            return True
        ctx.sleep(0.25)
    return False


def _one_failed_post(ctx: Context, kind: str) -> None:
    """A completed refresh; then one commit whose first POST fails with ``kind``; then silence."""
    assert ctx.env.proxy is not None
    proxy = ctx.env.proxy
    key, table = f"fp_{kind}", f"fp/{kind}"
    baseline = ctx.env.commit(table, "failed_post")
    if not _wait_idle(ctx, key, baseline.at, ctx.wait_limit):
        ctx.note(f"failed_post {kind}: the baseline job did not end within {ctx.wait_limit:.0f} s")
    path = _post_path(ctx, key)
    fault: Fault | None = None
    if kind in ("500", "503"):
        fault = proxy.arm(Fault("status", method="POST", path_contains=path, status=int(kind)))
    elif kind == "busy":
        fault = proxy.arm(Fault("busy", method="POST", path_contains=path))
    elif kind == "kill":
        def kill_now() -> None:  # after any restart in progress (kill9 and race bounce the same runtime)
            with ctx.bounce_lock:
                ctx.env.runtime("main").kill()

        fault = proxy.arm(Fault("hold", method="POST", path_contains=path, seconds=3.0, on_hit=kill_now))
    else:  # token: every token issued so far expires and the identity endpoint goes down
        ctx.env.sim.expire_tokens()
        fault = proxy.token_outage(ctx.token_outage)
    ctx.env.commit(table, "failed_post")
    deadline = time.monotonic() + (ctx.token_outage if kind == "token" else ctx.wait_limit)
    while time.monotonic() < deadline and not ctx.stop.is_set() and (kind == "token" or fault.hits == 0):
        ctx.sleep(0.1)
    if kind == "kill":
        with ctx.bounce_lock:
            runtime = ctx.env.runtime("main")
            if not runtime.alive:
                runtime.start()
    ctx.note(f"failed_post {kind}: " + (f"fault applied to {fault.hits} request(s)" if fault.hits else
                                         "the POST never came (fault not applied)"))
    proxy.disarm(fault)


def failed_post(ctx: Context) -> None:
    """For each fault kind: a completed refresh, then one commit whose first POST fails, then silence.

    500, 503 and busy run side by side (their own datasets); the kill and the token outage, which hit
    the whole runtime, run after them, one at a time (with ``ctx.parallel``: all five at once).
    """
    together = FAILED_POST_KINDS if ctx.parallel else ("500", "503", "busy")
    threads = [threading.Thread(target=_one_failed_post, args=(ctx, kind), name=f"failed-post-{kind}")
               for kind in together]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for kind in FAILED_POST_KINDS:
        if kind not in together and not ctx.stop.is_set():
            _one_failed_post(ctx, kind)


def token_outage(ctx: Context) -> None:
    """A refresh is running when every token expires and the identity endpoint goes down for the outage."""
    assert ctx.env.proxy is not None
    first = ctx.env.commit("tok/t1", "token")
    _wait_post(ctx, "tok_a", first.at - 1, ctx.wait_limit)
    ctx.env.sim.expire_tokens()
    ctx.env.proxy.token_outage(ctx.token_outage)
    ctx.note(f"token: identity endpoint down for {ctx.token_outage:.0f} s")
    writer = _start_writer(ctx, "token", ["tok/t1", "tok/t2"], 1.0, 4.0, ctx.token_outage)
    writer.join()
    ctx.sleep(2.0)
    ctx.env.commit("tok/t2", "token")  # one more after the outage


def powerbi_faults(ctx: Context) -> None:
    """429 with Retry-After, 5xx bursts, answers dropped after Power BI acted, slow answers."""
    assert ctx.env.proxy is not None
    proxy = ctx.env.proxy
    writer = _start_writer(ctx, "pbi", ["pf/t1", "pf/t2"], 0.5, 2.0, ctx.seconds)
    armed: list[Fault] = []
    until = time.monotonic() + ctx.seconds
    while time.monotonic() < until and ctx.sleep(ctx.rng.uniform(1.0, 4.0)):
        path = f"/datasets/{ctx.ds(ctx.rng.choice(['pf_a', 'pf_b']))}"
        pick = ctx.rng.random()
        if pick < 0.35:
            fault = Fault("status", path_contains=path, status=429, retry_after=ctx.rng.choice([1, 2, 5]),
                          times=ctx.rng.randint(1, 3))
        elif pick < 0.7:
            fault = Fault("status", path_contains=path, status=ctx.rng.choice([500, 502, 503]),
                          times=ctx.rng.randint(2, 6))
        elif pick < 0.85:
            fault = Fault("forward_then_drop", method="POST", path_contains=path + "/refreshes")
        else:
            fault = Fault("delay", path_contains=path, seconds=ctx.rng.uniform(1.0, 4.0), times=2)
        armed.append(proxy.arm(fault))
    writer.join()
    for fault in armed:
        proxy.disarm(fault)


def events(ctx: Context) -> None:
    """Duplicate and reversed BlobCreated events; first sight of a new table out of order or ahead of its log."""
    env = ctx.env
    until = time.monotonic() + ctx.seconds
    round_ = 0
    while time.monotonic() < until and not ctx.stop.is_set():
        round_ += 1
        # a known table: three commits, their events twice and in reverse order
        done = [env.commit("ev/t1", "events") for _ in range(3)]
        batch = [env.blob_created_event(c.table, c.version) for c in reversed(done)]
        _deliver(ctx, batch + batch[::2])
        # a table seen for the first time, its events newest first: two appends, then an OPTIMIZE (no data)
        table = f"evnew/t{round_}"
        appends = [env.commit(table, "events") for _ in range(2)]
        optimized = env.optimize(table)
        _deliver(ctx, [env.blob_created_event(table, optimized)]
                 + [env.blob_created_event(c.table, c.version) for c in reversed(appends)])
        # a table seen for the first time through an event naming a version that does not exist (yet)
        table = f"evfut/t{round_}"
        written = [env.commit(table, "events") for _ in range(2)]
        _deliver(ctx, [env.blob_created_event(table, written[-1].version + 2)], blob_trigger=False)
        ctx.sleep(ctx.rng.uniform(1.0, 3.0))
    ctx.note(f"events: {round_} rounds")


def _specs(*items: tuple[str, tuple[str, ...]]) -> tuple[DatasetSpec, ...]:
    return tuple(DatasetSpec(key, tables) for key, tables in items)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("events", _specs(("ev_dup", ("ev/t1",)), ("ev_new", ("evnew/**",)), ("ev_future", ("evfut/**",))),
             events, "duplicate and out-of-order events, first sight of a table"),
    Scenario("dupes", _specs(("dup_a", ("dup/t1",)), ("dup_b", ("dup/t2", "dup/t1"))),
             duplicate_messages, "duplicate job messages"),
    Scenario("failed_post", _specs(*((f"fp_{k}", (f"fp/{k}",)) for k in FAILED_POST_KINDS)),
             failed_post, "one failed POST (500, 503, busy, kill in flight, token down), then silence"),
    Scenario("pbi", _specs(("pf_a", ("pf/t1",)), ("pf_b", ("pf/t2",))),
             powerbi_faults, "Power BI faults: 429 + Retry-After, 5xx bursts, dropped answers, delays"),
    Scenario("token", _specs(("tok_a", ("tok/t1",)), ("tok_b", ("tok/t2",))),
             token_outage, "token outage (every token expired, identity endpoint down)"),
    Scenario("race", _specs(("race_a", ("race/t1",)), ("race_b", ("race/t2", "race/t1"))),
             racing_runtimes, "two racing runtimes on the same storage, with kills"),
    Scenario("kill9", _specs(("kill_a", ("kill/t1",)), ("kill_b", ("kill/t2", "kill/t1"))),
             kill_loop, "kill -9 loop while commits flow"),
)}
