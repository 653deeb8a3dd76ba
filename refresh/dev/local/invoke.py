"""Functions and how they run: the function specs read from the app, the bounded invocation pools, the
delay scheduler. The runners (:mod:`.queues`, :mod:`.blobs`, :mod:`.timers`, :mod:`.http`) and the host
(:mod:`.host`) share these; the runners receive the invoker and scheduler from the host and never
import it.

Invocations run on bounded thread pools, one per trigger kind, as the host bounds each listener on
its own: a pool per queue trigger sized ``batchSize + newBatchThreshold`` (host.json), one for blob
trigger deliveries sized ``blobs.maxDegreeOfParallelism``, one for Event Grid deliveries, one for
timers and one for HTTP functions run through the admin API (HTTP requests run in the server's own
threads). So a refresh-job message never waits behind thousands of commit deliveries. Pools without
a configured size follow ``PYTHON_THREADPOOL_THREAD_COUNT``, default ``min(32, CPUs + 4)``. Every
invocation logs one line naming the function and what triggered it; log lines written while a
function runs carry its name; a function that raises is logged with its traceback and the runtime
carries on.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import importlib
import inspect
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refresh.dev.local.settings import LocalSettingsError, resolve_expression

log = logging.getLogger(__name__)

#: The function whose invocation is running in this thread (for log lines).
current_function: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_function", default=None)

TRIGGERS = ("queueTrigger", "blobTrigger", "eventGridTrigger", "timerTrigger", "httpTrigger")


# ------------------------------------------------------------------------------------------- functions


@dataclass
class FunctionSpec:
    """One registered function: its name, Python callable and binding JSON (as the host receives it)."""

    name: str
    func: Callable[..., Any]
    bindings: list[dict[str, Any]]
    context_param: str | None = None
    error: str | None = None  # why the local runtime cannot run it

    @property
    def trigger(self) -> dict[str, Any]:
        return next(b for b in self.bindings if str(b.get("type", "")).endswith("Trigger"))

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type"))


def load_app(app_root: Path, script: str = "function_app.py") -> Any:
    """Import ``<app_root>/<script>`` and return its one ``FunctionRegister`` (as the worker indexes it)."""
    import azure.functions as func

    root = str(app_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    module = importlib.import_module(Path(script).stem)
    registers = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(registers) != 1:
        raise LocalSettingsError(f"{app_root / script}: expected exactly one FunctionApp, found {len(registers)}")
    return registers[0]


class _QuietAuthWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Auth level is not applied" not in record.getMessage()


def functions_from_app(app: Any) -> list[FunctionSpec]:
    """The app's functions with their raw bindings. Calls ``app.get_functions()``: once per app object."""
    quiet = _QuietAuthWarning()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        functions = app.get_functions()
    finally:
        root.removeFilter(quiet)
    specs = []
    for fn in functions:
        user = fn.get_user_function()
        bindings = [json.loads(b) for b in fn.get_raw_bindings()]
        names = {b.get("name") for b in bindings}
        params = inspect.signature(user).parameters
        context = next((p for p in params if p == "context" and p not in names), None)
        spec = FunctionSpec(fn.get_function_name(), user, bindings, context)
        spec.error = _unsupported(spec)
        specs.append(spec)
    return specs


def _unsupported(spec: FunctionSpec) -> str | None:
    triggers = [b for b in spec.bindings if str(b.get("type", "")).endswith("Trigger")]
    if len(triggers) != 1:
        return f"has {len(triggers)} triggers"
    kind = triggers[0].get("type")
    if kind not in TRIGGERS:
        return f"trigger type {kind!r} is not supported by the local runtime"
    for binding in spec.bindings:
        if binding is triggers[0]:
            continue
        if kind == "httpTrigger" and binding.get("type") == "http" and binding.get("direction") == "OUT":
            continue
        return (f"binding {binding.get('name')!r} of type {binding.get('type')!r} is not supported by the "
                "local runtime")
    return None


def resolve_binding(binding: Mapping[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """A copy of ``binding`` with ``%SETTING%`` expressions in its string properties resolved."""
    return {k: resolve_expression(v, settings) if isinstance(v, str) and "%" in v else v for k, v in binding.items()}


# ------------------------------------------------------------------------------------------- invoking


@dataclass
class Outcome:
    """How one invocation ended."""

    ok: bool
    value: Any = None
    error: BaseException | None = None
    duration: float = 0.0


class InvocationContext:
    """What ``context: func.Context`` receives (the fields the Python worker fills)."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self.invocation_id = invocation_id
        self.function_name = function_name
        self.function_directory = function_directory
        self.trace_context = None
        self.retry_context = None
        self.thread_local_storage = threading.local()


def pool_of(spec: FunctionSpec) -> str:
    """The pool a function's invocations run on: ``queue:<name>``, ``blob``, ``eventgrid``, ``timer``, ``http``."""
    kind = spec.trigger_type if not spec.error else ""
    if kind == "queueTrigger":
        return f"queue:{spec.name}"
    return {"blobTrigger": "blob", "eventGridTrigger": "eventgrid", "timerTrigger": "timer"}.get(kind, "http")


class Invoker:
    """Runs functions on bounded thread pools (one per trigger kind), logs them, writes the optional trace,
    tells listeners."""

    def __init__(self, *, max_workers: int | None = None, trace_path: Path | None = None,
                 app_root: Path | None = None, pool_sizes: Mapping[str, int] | None = None) -> None:
        if max_workers is None:
            configured = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT", "")
            max_workers = int(configured) if configured.isdigit() and int(configured) > 0 else \
                min(32, (os.cpu_count() or 1) + 4)
        self.max_workers = max_workers
        self._pool_sizes: dict[str, int] = dict(pool_sizes or {})
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._pools_lock = threading.Lock()
        self._closed = False
        self._listeners: list[Callable[[FunctionSpec], None]] = []
        self._trace_lock = threading.Lock()
        self._trace = trace_path.open("a", encoding="utf-8", buffering=1) if trace_path else None
        self._app_root = str(app_root or Path.cwd())
        self._busy = 0
        self._idle = threading.Condition()
        self.stats: Counter[tuple[str, bool]] = Counter()

    def add_listener(self, listener: Callable[[FunctionSpec], None]) -> None:
        """``listener(spec)`` runs after every invocation (in the invoking thread)."""
        self._listeners.append(listener)

    def set_pool_size(self, pool: str, size: int) -> None:
        """Bound ``pool`` to ``size`` threads (before its first use)."""
        with self._pools_lock:
            self._pool_sizes[pool] = max(1, int(size))

    def pool_size(self, pool: str) -> int:
        with self._pools_lock:
            return self._pool_sizes.get(pool, self.max_workers)

    def _pool(self, name: str) -> ThreadPoolExecutor:
        with self._pools_lock:
            if self._closed:
                raise RuntimeError("the invoker is shut down")
            pool = self._pools.get(name)
            if pool is None:
                size = self._pool_sizes.get(name, self.max_workers)
                pool = self._pools[name] = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"invoke-{name}")
            return pool

    def submit(self, spec: FunctionSpec, args: Mapping[str, Any], summary: str, *, noticed: float | None = None,
               detail: Mapping[str, Any] | None = None, pool: str | None = None) -> Future[Outcome]:
        """Run the function on its trigger kind's pool (or ``pool``); the future never raises (see
        :class:`Outcome`)."""
        with self._idle:
            self._busy += 1
        try:
            return self._pool(pool or pool_of(spec)).submit(self._run, spec, args, summary, noticed, detail, True)
        except RuntimeError:  # shut down
            self._done()
            raise

    def run_in_pool(self, work: Callable[[], Any], pool: str = "blob") -> Future[Any]:
        """Run plain ``work`` on ``pool`` (it prepares the binding, then uses :meth:`call`)."""
        with self._idle:
            self._busy += 1

        def task() -> Any:
            try:
                return work()
            except Exception:
                log.exception("delivery failed")
                return None
            finally:
                self._done()

        try:
            return self._pool(pool).submit(task)
        except RuntimeError:
            self._done()
            raise

    def call(self, spec: FunctionSpec, args: Mapping[str, Any], summary: str, *, noticed: float | None = None,
             detail: Mapping[str, Any] | None = None, log_start: bool = True) -> Outcome:
        """Run the function in the calling thread (HTTP requests)."""
        with self._idle:
            self._busy += 1
        return self._run(spec, args, summary, noticed, detail, log_start)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no invocation runs; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop taking work and wait (up to ``timeout``) for what runs."""
        if not self.wait_idle(timeout):
            log.warning("%s invocations still running at shutdown; not waiting for them", self._busy)
        with self._pools_lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._trace is not None:
            with self._trace_lock:
                self._trace.close()
                self._trace = None

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()

    def _run(self, spec: FunctionSpec, args: Mapping[str, Any], summary: str, noticed: float | None,
             detail: Mapping[str, Any] | None, log_start: bool) -> Outcome:
        invocation_id = uuid.uuid4().hex
        token = current_function.set(spec.name)
        started = time.time()
        clock = time.perf_counter()
        try:
            if log_start:
                log.info("%s", summary)
            kwargs = dict(args)
            if spec.context_param:
                kwargs[spec.context_param] = InvocationContext(invocation_id, spec.name, self._app_root)
            try:
                value = spec.func(**kwargs)
                if inspect.iscoroutine(value):
                    value = asyncio.run(value)
                outcome = Outcome(True, value, None, time.perf_counter() - clock)
            except Exception as exc:
                outcome = Outcome(False, None, exc, time.perf_counter() - clock)
                log.error("failed after %.0f ms (%s): %s: %s", outcome.duration * 1000, summary,
                          type(exc).__name__, exc, exc_info=exc)
            self.stats[(spec.name, outcome.ok)] += 1
            self._write_trace(spec, invocation_id, summary, noticed, started, outcome, detail)
            for listener in self._listeners:
                try:
                    listener(spec)
                except Exception:
                    log.exception("invocation listener failed")
            return outcome
        finally:
            current_function.reset(token)
            self._done()

    def _write_trace(self, spec: FunctionSpec, invocation_id: str, summary: str, noticed: float | None,
                     started: float, outcome: Outcome, detail: Mapping[str, Any] | None) -> None:
        if self._trace is None:
            return
        record = {"id": invocation_id, "function": spec.name, "trigger": spec.trigger_type, "summary": summary,
                  "noticed": noticed if noticed is not None else started, "start": started,
                  "end": started + outcome.duration, "ok": outcome.ok,
                  "error": f"{type(outcome.error).__name__}: {outcome.error}" if outcome.error else None,
                  "detail": dict(detail or {})}
        with self._trace_lock:
            if self._trace is not None:
                self._trace.write(json.dumps(record, default=str) + "\n")


# ------------------------------------------------------------------------------------------- scheduling


class Scheduler:
    """Runs callables after a delay on one background thread (retries of blob and Event Grid deliveries)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, action: Callable[[], None]) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay), next(self._order), action))
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._stopped:
                    return
                _, _, action = heapq.heappop(self._heap)
            try:
                action()
            except Exception:
                log.exception("scheduled action failed")
