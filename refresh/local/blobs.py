"""The lake watcher: Event Grid's part, played locally (Azurite sends no blob events).

In Azure the lake's system topic sends ``Microsoft.Storage.BlobCreated`` for each new Delta commit
to the blob trigger (``on_delta_commit``, ``source=EventGrid``) and to the Event Grid trigger
(``on_lake_event``), filtered to names under ``/_delta_log/`` ending in ``.json``
(infra/app/lake-subscriptions.bicep). Locally a watcher per watched container lists the Delta logs
and delivers the same thing for every commit blob that appears while it runs:

* the blob trigger gets an ``azure.functions.blob.InputStream`` (name ``<container>/<blob>``,
  uri, length, the content), if the blob name matches the trigger's path pattern; a blob that is
  gone by then is skipped, as the host does;
* every Event Grid trigger gets the ``azure.functions.EventGridEvent`` of the BlobCreated event in
  the documented schema (``refresh.testing.events``).

Events are for new writes only, as in Azure: blobs that exist when the runtime starts are
delivered only with ``replay_existing`` (``--replay-existing``); the app's sweep timer is the
safety net for commits written while nothing listened. Each blob (name and ETag) is delivered at
most once per process.

Cost per poll (default every 250 ms): one small listing per table, of the 10-version "decade" of
its ``_delta_log/`` that holds the next version (``<table>/_delta_log/<first 19 digits>``), plus
the next decade when that one is full. New tables are found by a folder walk every couple of
seconds that never lists inside a known table. Data files are never listed.

Failures: a blob trigger is retried after ``visibilityTimeout`` up to ``maxDequeueCount`` times,
then a message goes to ``webjobs-blobtrigger-poison`` (as the host does); an Event Grid delivery
is retried on Event Grid's schedule (10 s, 30 s, 1 min, 5 min, ...) a few times, then dropped with
an error (Azure would dead-letter it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..deltalog import split_commit_path
from .host import FunctionSpec, Invoker, Scheduler
from .settings import QueueOptions

log = logging.getLogger(__name__)

LOG_DIR = "_delta_log/"
MAX_DEPTH = 12
EVENT_GRID_RETRY_DELAYS = (10.0, 30.0, 60.0, 300.0, 600.0)
SLOW_LISTING_SECONDS = 2.0
_VERSION = re.compile(r"^(\d{20})")


def wanted(name: str) -> bool:
    """The event subscriptions' filter: a ``.json`` blob under a ``/_delta_log/`` folder."""
    return name.endswith(".json") and ("/" + LOG_DIR) in ("/" + name)


def describe_blob(container: str, name: str) -> str:
    """``sales/fact_orders v3`` for a commit, else ``<container>/<name>``."""
    found = split_commit_path(name)
    return f"{found[0]} v{found[1]}" if found else f"{container}/{name}"


@dataclass
class BlobTarget:
    """A blob trigger: its function, argument name, connection, container and name pattern."""

    spec: FunctionSpec
    arg: str
    connection: str
    container: str
    pattern: re.Pattern[str]
    path: str

    @classmethod
    def from_binding(cls, spec: FunctionSpec, trigger: Mapping[str, Any]) -> BlobTarget:
        path = str(trigger["path"]).lstrip("/")
        container, _, pattern = path.partition("/")
        if not container or "{" in container:
            raise ValueError(f"blob path {path!r}: the container must be a literal name")
        regex = "".join(
            f"(?P<{part[1:-1]}>.*)" if part.startswith("{") and part.endswith("}") else re.escape(part)
            for part in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern or "{name}")
        )
        return cls(spec, str(trigger["name"]), str(trigger.get("connection") or "AzureWebJobsStorage"),
                   container.lower(), re.compile(f"^{regex}$"), path)

    def matches(self, name: str) -> bool:
        return bool(self.pattern.match(name))


@dataclass
class EventTarget:
    """An Event Grid trigger."""

    spec: FunctionSpec
    arg: str


@dataclass
class NewBlob:
    """A blob the watcher saw appear."""

    name: str
    etag: str
    size: int
    noticed: float


@dataclass
class _Table:
    root: str
    frontier: int = -1                                   # highest commit version seen
    seen: dict[str, str] = field(default_factory=dict)   # blob name -> ETag delivered (recent decades)


class LakeWatcher:
    """Watches the Delta logs of one container and delivers BlobCreated for each new commit blob."""

    def __init__(self, container: Any, container_name: str, blob_targets: list[BlobTarget],
                 event_targets: list[EventTarget], invoker: Invoker, scheduler: Scheduler, stop: threading.Event,
                 *, poll_seconds: float = 0.25, rescan_seconds: float = 2.0, replay_existing: bool = False,
                 queues: QueueOptions | None = None, blob_parallelism: int = 8,
                 poison: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.container = container
        self.container_name = container_name
        self.blob_targets = blob_targets
        self.event_targets = event_targets
        self.invoker = invoker
        self.scheduler = scheduler
        self.stop_event = stop
        self.poll_seconds = poll_seconds
        self.rescan_seconds = rescan_seconds
        self.replay_existing = replay_existing
        self.queues = queues or QueueOptions()
        self.poison = poison
        self.tables: dict[str, _Table] = {}
        self.delivered = 0
        self.ready = threading.Event()   # set after the first scan (the baseline)
        self._blob_slots = threading.BoundedSemaphore(max(1, blob_parallelism))
        self._probe_pool: ThreadPoolExecutor | None = None
        self._thread = threading.Thread(target=self._loop, name=f"lake-{container_name}", daemon=True)
        self._last_error = ""
        url = str(getattr(container, "url", "")).rstrip("/")
        self.base_url = url[: -len(container_name) - 1] if url.endswith("/" + container_name) else url
        self.account = str(getattr(container, "account_name", "") or "lake")

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._probe_pool is not None:
            self._probe_pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        first = True
        next_rescan = 0.0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if started >= next_rescan:
                    self.rescan(initial=first)
                    first = False
                    self.ready.set()
                    next_rescan = started + self.rescan_seconds
                self.poll()
                self._last_error = ""
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}".splitlines()[0]
                if text != self._last_error:
                    log.warning("lake watcher (%s): %s; retrying", self.container_name, text)
                    self._last_error = text
            self.stop_event.wait(max(0.0, self.poll_seconds - (time.monotonic() - started)))

    # finding tables -----------------------------------------------------------------------------
    def rescan(self, initial: bool = False) -> list[str]:
        """Find table roots not known yet; returns the new ones. On the first scan they are the baseline."""
        from azure.core.exceptions import ResourceNotFoundError

        found: list[str] = []
        stack: list[tuple[str, int]] = [("", 0)]
        try:
            while stack:
                prefix, depth = stack.pop()
                children, is_table = [], False
                for item in self.container.walk_blobs(name_starts_with=prefix or None, delimiter="/"):
                    name = item.name
                    if not name.endswith("/"):
                        continue
                    if name == prefix + LOG_DIR:
                        is_table = True
                    else:
                        children.append(name)
                if is_table:
                    if prefix:
                        found.append(prefix.rstrip("/"))
                    continue
                if depth < MAX_DEPTH:
                    stack.extend((c, depth + 1) for c in children if c.rstrip("/") not in self.tables)
        except ResourceNotFoundError:
            return []  # the container does not exist yet
        for root in sorted(found):
            table = _Table(root)
            deliver = self.replay_existing or not initial
            blobs = self._list(f"{root}/{LOG_DIR}", table)
            self.tables[root] = table
            if deliver:
                log.info("lake watcher: new table %s/%s (%s commit files)", self.container_name, root, len(blobs))
                for blob in blobs:
                    self.deliver(blob)
            else:
                log.debug("lake watcher: existing table %s at version %s", root, table.frontier)
        return found

    # polling ------------------------------------------------------------------------------------
    def poll(self) -> int:
        """Probe every known table once; returns how many new blobs were delivered."""
        tables = list(self.tables.values())
        if len(tables) > 2:
            if self._probe_pool is None:
                self._probe_pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="lake-probe")
            return sum(self._probe_pool.map(self._probe, tables))
        return sum(self._probe(t) for t in tables)

    def _probe(self, table: _Table) -> int:
        delivered = 0
        while True:
            nxt = table.frontier + 1
            decade = f"{nxt:020d}"[:19]
            before = table.frontier
            blobs = self._list(f"{table.root}/{LOG_DIR}{decade}", table)
            for blob in blobs:
                self.deliver(blob)
            delivered += len(blobs)
            if table.frontier >= nxt and table.frontier % 10 == 9 and table.frontier != before:
                continue  # that decade is full: the next commit is in the next one
            break
        floor = (table.frontier + 1) // 10 * 10 - 10
        if len(table.seen) > 40:
            table.seen = {n: e for n, e in table.seen.items() if _version_of(n, table.root) >= floor}
        return delivered

    def _list(self, prefix: str, table: _Table) -> list[NewBlob]:
        """New blobs under ``prefix`` (recorded as seen; the table's frontier moved)."""
        from azure.core.exceptions import ResourceNotFoundError

        started = time.monotonic()
        try:
            items = list(self.container.list_blobs(name_starts_with=prefix))
        except ResourceNotFoundError:
            return []
        noticed = time.time()
        if time.monotonic() - started > SLOW_LISTING_SECONDS:
            log.warning("lake watcher: listing %s took %.1f s (storage slow or retrying)", prefix,
                        time.monotonic() - started)
        fresh = []
        log_prefix = f"{table.root}/{LOG_DIR}"
        for item in items:
            name = item.name
            if not wanted(name):
                continue
            rest = name[len(log_prefix):]
            match = _VERSION.match(rest)
            if match and rest == match.group(1) + ".json":
                table.frontier = max(table.frontier, int(match.group(1)))
            etag = str(item.etag)
            if table.seen.get(name) == etag:
                continue
            table.seen[name] = etag
            fresh.append(NewBlob(name, etag, int(item.size or 0), noticed))
        fresh.sort(key=lambda b: b.name)
        return fresh

    # delivering ---------------------------------------------------------------------------------
    def deliver(self, blob: NewBlob) -> None:
        """Hand a new blob to every matching blob trigger and every Event Grid trigger."""
        self.delivered += 1
        event = self.created_event(blob)
        for target in self.blob_targets:
            if target.matches(blob.name):
                self._submit(lambda t=target: self._run_blob(t, blob, 1))
        for target in self.event_targets:
            self._submit(lambda t=target: self.run_event(t, event, 1, blob.noticed))

    def created_event(self, blob: NewBlob) -> dict[str, Any]:
        """The ``Microsoft.Storage.BlobCreated`` event Azure would send for ``blob``."""
        from ..testing import events

        event = events.blob_created(self.base_url, self.container_name, blob.name, api="PutBlob", etag=blob.etag,
                                    length=blob.size)
        event["topic"] = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                          f"Microsoft.Storage/storageAccounts/{self.account}")
        return event

    def _submit(self, work: Callable[[], Any]) -> None:
        try:
            self.invoker.run_in_pool(work)
        except RuntimeError:
            pass  # shutting down

    def _run_blob(self, target: BlobTarget, blob: NewBlob, attempt: int) -> None:
        import azure.functions.blob as fb
        from azure.core.exceptions import ResourceNotFoundError

        if self.stop_event.is_set():
            return
        with self._blob_slots:
            try:
                data = self.container.download_blob(blob.name).readall()
            except ResourceNotFoundError:
                log.info("blob %s/%s is gone; its trigger is skipped", self.container_name, blob.name)
                return
            stream = fb.InputStream(data=data, name=f"{self.container_name}/{blob.name}", length=len(data),
                                    uri=f"{self.base_url}/{self.container_name}/{blob.name}")
            summary = describe_blob(self.container_name, blob.name) + (f" (attempt {attempt})" if attempt > 1 else "")
            outcome = self.invoker.call(target.spec, {target.arg: stream}, summary, noticed=blob.noticed,
                                        detail={"container": self.container_name, "blob": blob.name,
                                                "attempt": attempt})
        if outcome.ok or self.stop_event.is_set():
            return
        if attempt < self.queues.max_dequeue_count:
            delay = self.queues.visibility_timeout
            log.info("%s: blob %s will be retried in %.0f s (attempt %s of %s failed)", target.spec.name,
                     blob.name, delay, attempt, self.queues.max_dequeue_count)
            self.scheduler.call_later(delay, lambda: self._submit(lambda: self._run_blob(target, blob, attempt + 1)))
            return
        log.error("%s: blob %s failed %s times; moved to webjobs-blobtrigger-poison", target.spec.name, blob.name,
                  attempt)
        if self.poison is not None:
            try:
                self.poison({"FunctionId": f"Host.Functions.{target.spec.name}", "BlobType": "BlockBlob",
                             "ContainerName": self.container_name, "BlobName": blob.name, "ETag": blob.etag})
            except Exception as exc:
                log.warning("could not write to webjobs-blobtrigger-poison: %s", exc)

    def run_event(self, target: EventTarget, event: dict[str, Any], attempt: int, noticed: float | None = None) -> bool:
        """Deliver one Event Grid event (retrying on Event Grid's schedule); True when the function succeeded."""
        from ..testing.events import to_function_event

        if self.stop_event.is_set():
            return False
        subject = str(event.get("subject", ""))
        name = subject.split("/blobs/", 1)[1] if "/blobs/" in subject else subject
        short = str(event.get("eventType", "")).rsplit(".", 1)[-1]
        summary = f"{short} {describe_blob(self.container_name, name)}" + (
            f" (attempt {attempt})" if attempt > 1 else "")
        outcome = self.invoker.call(target.spec, {target.arg: to_function_event(event)}, summary, noticed=noticed,
                                    detail={"event_id": event.get("id"), "subject": subject, "attempt": attempt})
        if outcome.ok or self.stop_event.is_set():
            return outcome.ok
        if attempt <= len(EVENT_GRID_RETRY_DELAYS):
            delay = EVENT_GRID_RETRY_DELAYS[attempt - 1]
            log.info("%s: event %s will be retried in %.0f s", target.spec.name, event.get("id"), delay)
            self.scheduler.call_later(delay, lambda: self._submit(lambda: self.run_event(target, event, attempt + 1)))
        else:
            log.error("%s: event %s failed %s times; dropped (Azure would dead-letter it)", target.spec.name,
                      event.get("id"), attempt)
        return False

    def deliver_named(self, target: BlobTarget, name: str) -> bool:
        """Run ``target`` for the existing blob ``name`` (the blobs webhook); False when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.container.get_blob_client(name).get_blob_properties()
        except ResourceNotFoundError:
            return False
        blob = NewBlob(name, str(props.etag), int(props.size or 0), time.time())
        self._submit(lambda: self._run_blob(target, blob, 1))
        return True


def _version_of(name: str, root: str) -> int:
    match = _VERSION.match(name[len(root) + 1 + len(LOG_DIR):])
    return int(match.group(1)) if match else -1
