"""The lake watcher: Event Grid's part, played locally (Azurite sends no blob events).

In Azure each event kind of a Delta commit has exactly one consumer (infra/): ``BlobCreated`` of a
``/_delta_log/*.json`` blob (delta-rs and other PUT-style writers) goes to the blob trigger
(``on_delta_commit``, ``source=EventGrid``) only, and ``BlobRenamed`` (Spark and Databricks on ADLS
Gen2 commit by renaming a temp file) goes to the Event Grid trigger (``on_lake_event``) only.
Locally a watcher per watched container finds every commit blob that appears while it runs and
delivers it the same way (:meth:`LakeWatcher.route` for events built from the documented schema):

* to each blob trigger whose path pattern matches it, with what the function's parameter declares
  (:func:`binding_kind`): an ``azure.storage.blob.BlobClient`` for the blob when it is annotated
  with the SDK type (``azurefunctions.extensions.bindings.blob.BlobClient``, or the SDK's own class;
  built from the trigger's connection, nothing downloaded: one HEAD checks the blob is still there),
  a ``ContainerClient`` or ``StorageStreamDownloader`` likewise, else an
  ``azure.functions.blob.InputStream`` with the content (name ``<container>/<blob>``, uri, length);
  a blob that is gone by then is skipped, as the host does;
* only when no blob trigger takes it, to every Event Grid trigger as the ``BlobCreated`` event in
  the documented schema (``refresh.dev.testing.events``).

Azurite has no hierarchical namespace, so it never renames: a ``BlobRenamed`` reaches the Event Grid
trigger through :meth:`LakeWatcher.route` or the host's ``/runtime/webhooks/EventGrid`` endpoint.

Events are for new writes only, as in Azure: blobs that exist when the runtime starts are
delivered only with ``replay_existing`` (``--replay-existing``); the app's sweep timer is the
safety net for commits written while nothing listened. Each blob name is delivered at most once
while it exists (a commit that is deleted and written again is delivered again).

Cost, independent of the number of tables: every ``rescan_seconds`` (0.25 s, the poll interval;
on a large container at least 8x the last scan's duration) one names-only listing of the whole
container (one request per 5,000 blobs) finds new tables and new commits. Tables that committed in
the last minute are *hot*: each poll (every 250 ms) also lists, for at most ``hot_probes`` (4) of them,
the least recently probed first, the 10-version "decade" of their ``_delta_log/`` that holds the next
version (and the next decades while they are full), so a burst is followed closely even when the
container scan is stretched, and a burst over many tables costs at most 4 probes a poll (with 50 hot
tables each is probed about every 3 s, as Event Grid's delivery lag may be; every new commit is found
by its first probe). An idle lake costs one listing per scan and nothing else.

Failures: a blob trigger is retried after ``visibilityTimeout`` up to ``maxDequeueCount`` times,
then a message goes to ``webjobs-blobtrigger-poison`` (as the host does); an Event Grid delivery
is retried on Event Grid's schedule (10 s, 30 s, 1 min, 5 min, ...) a few times, then dropped with
an error (Azure would dead-letter it).
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
import time
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from refresh.detection.deltalog import split_commit_path
from refresh.dev.local.invoke import FunctionSpec, Invoker, Scheduler
from refresh.dev.local.settings import QueueOptions

log = logging.getLogger(__name__)

LOG_DIR = "_delta_log/"
EVENT_GRID_RETRY_DELAYS = (10.0, 30.0, 60.0, 300.0, 600.0)
SLOW_LISTING_SECONDS = 2.0
HOT_SECONDS = 60.0
HOT_PROBES = 4  # hot tables probed per poll at most (least recently probed first)
SCAN_DUTY = 8  # the next scan waits at least 8x the last one's duration (large containers)
CREATED = "Microsoft.Storage.BlobCreated"
RENAMED = "Microsoft.Storage.BlobRenamed"
_VERSION = re.compile(r"^(\d{20})")
_SUBJECT = "/blobServices/default/containers/"


def wanted(name: str) -> bool:
    """The event subscriptions' filter: a ``.json`` blob under a ``/_delta_log/`` folder."""
    return name.endswith(".json") and ("/" + LOG_DIR) in ("/" + name)


def describe_blob(container: str, name: str) -> str:
    """``sales/fact_orders v3`` for a commit, else ``<container>/<name>``."""
    found = split_commit_path(name)
    return f"{found[0]} v{found[1]}" if found else f"{container}/{name}"


#: SDK types a blob trigger parameter may declare (azurefunctions-extensions-bindings-blob), by class name.
SDK_KINDS = {"BlobClient": "client", "ContainerClient": "container", "StorageStreamDownloader": "downloader"}
_SDK_MODULES = ("azurefunctions.extensions.bindings.blob", "azure.storage.blob")


def binding_kind(func: Callable[..., Any], arg: str) -> str:
    """What a blob trigger's function wants for ``arg``: ``client``, ``container``, ``downloader`` (the SDK
    types of azurefunctions-extensions-bindings-blob, or the SDK's own classes) or ``stream``
    (``func.InputStream``, also for no annotation)."""
    try:
        annotation = typing.get_type_hints(func).get(arg)
    except Exception:  # an annotation that does not resolve: read it as written
        annotation = None
    if annotation is None:
        try:
            annotation = inspect.signature(func).parameters[arg].annotation
        except (KeyError, TypeError, ValueError):
            return "stream"
    if isinstance(annotation, str):
        annotation = annotation.strip("'\" ")
        name = annotation.rsplit(".", 1)[-1]
        return SDK_KINDS.get(name, "stream") if "blob" in annotation.lower() or name in SDK_KINDS else "stream"
    name, module = getattr(annotation, "__name__", ""), str(getattr(annotation, "__module__", ""))
    if name in SDK_KINDS and module.startswith(_SDK_MODULES):
        return SDK_KINDS[name]
    return "stream"


@dataclass
class BlobTarget:
    """A blob trigger: its function, argument name, connection, container, name pattern and binding kind."""

    spec: FunctionSpec
    arg: str
    connection: str
    container: str
    pattern: re.Pattern[str]
    path: str
    kind: str = "stream"

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
        arg = str(trigger["name"])
        return cls(spec, arg, str(trigger.get("connection") or "AzureWebJobsStorage"), container.lower(),
                   re.compile(f"^{regex}$"), path, binding_kind(spec.func, arg))

    def matches(self, name: str) -> bool:
        return bool(self.pattern.match(name))


@dataclass
class EventTarget:
    """An Event Grid trigger."""

    spec: FunctionSpec
    arg: str


@dataclass
class NewBlob:
    """A blob the watcher saw appear (ETag and size are filled in when it is delivered)."""

    name: str
    etag: str = ""
    size: int = 0
    noticed: float = 0.0


@dataclass
class _Table:
    root: str
    frontier: int = -1                               # highest commit version seen
    seen: set[str] = field(default_factory=set)      # commit blob names seen (all of the log)
    hot_until: float = 0.0                           # probed in turn until then (monotonic)
    probed: int = 0                                  # the poll that last probed it (0: never)


class LakeWatcher:
    """Watches the Delta logs of one container and delivers each new commit blob to its one consumer."""

    def __init__(self, container: Any, container_name: str, blob_targets: list[BlobTarget],
                 event_targets: list[EventTarget], invoker: Invoker, scheduler: Scheduler, stop: threading.Event,
                 *, poll_seconds: float = 0.25, rescan_seconds: float = 0.25, replay_existing: bool = False,
                 queues: QueueOptions | None = None, blob_parallelism: int = 8,
                 poison: Callable[[dict[str, Any]], None] | None = None, hot_seconds: float = HOT_SECONDS,
                 hot_probes: int = HOT_PROBES) -> None:
        self.container = container
        self.container_name = container_name
        self.blob_targets = blob_targets
        self.event_targets = event_targets
        self.invoker = invoker
        self.scheduler = scheduler
        self.stop_event = stop
        self.poll_seconds = poll_seconds
        self.rescan_seconds = rescan_seconds
        self.hot_seconds = hot_seconds
        self.hot_probes = max(1, hot_probes)
        self.polls = 0
        self.replay_existing = replay_existing
        self.queues = queues or QueueOptions()
        self.poison = poison
        self.tables: dict[str, _Table] = {}
        self.delivered = 0
        self.ready = threading.Event()   # set after the first scan (the baseline)
        invoker.set_pool_size("blob", max(1, blob_parallelism))  # host.json blobs.maxDegreeOfParallelism
        self._count_lock = threading.Lock()
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
        next_scan = 0.0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if started >= next_scan:
                    self.rescan(initial=first)
                    first = False
                    self.ready.set()
                    took = time.monotonic() - started
                    next_scan = started + max(self.rescan_seconds, SCAN_DUTY * took)
                self.poll()
                self._last_error = ""
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}".splitlines()[0]
                if text != self._last_error:
                    log.warning("lake watcher (%s): %s; retrying", self.container_name, text)
                    self._last_error = text
            self.stop_event.wait(max(0.0, self.poll_seconds - (time.monotonic() - started)))

    # scanning -----------------------------------------------------------------------------------
    def rescan(self, initial: bool = False) -> list[str]:
        """One names-only listing of the container: new tables and new commits of every table. Returns the
        tables not known before; on the first scan (``initial``) what exists is the baseline."""
        from azure.core.exceptions import ResourceNotFoundError

        started = time.monotonic()
        by_root: dict[str, list[str]] = {}
        try:
            for name in self.container.list_blob_names(results_per_page=5000):
                if not wanted(name):
                    continue
                cut = name.find("/" + LOG_DIR)
                if cut > 0:  # a table at the container's root is not a gold table
                    by_root.setdefault(name[:cut], []).append(name)
        except ResourceNotFoundError:
            return []  # the container does not exist yet
        noticed = time.time()
        self._slow("the container", started)
        deliver = self.replay_existing or not initial
        found = []
        fresh_by_table: list[list[str]] = []
        for root in sorted(by_root):
            table = self.tables.get(root)
            if table is None:
                table = self.tables[root] = _Table(root)
                found.append(root)
                if deliver:
                    log.info("lake watcher: new table %s/%s (%s commit files)", self.container_name, root,
                             len(by_root[root]))
                else:
                    log.debug("lake watcher: existing table %s", root)
            current = set(by_root[root])
            fresh = sorted(current - table.seen)
            table.seen = current  # commits deleted since are forgotten
            self._advance(table, fresh)
            if fresh and deliver:
                table.hot_until = time.monotonic() + self.hot_seconds
                fresh_by_table.append(fresh)
        for root in [r for r in self.tables if r not in by_root]:
            del self.tables[root]  # the table is gone
        # Event Grid sends events roughly in the order the blobs were written; a names-only listing does not
        # say when, so tables that committed together are interleaved (each one's commits in version order)
        # rather than delivered a whole table after another
        for name in _interleaved(fresh_by_table):
            self.deliver(NewBlob(name, noticed=noticed))
        return found

    # polling ------------------------------------------------------------------------------------
    def poll(self) -> int:
        """Probe up to ``hot_probes`` hot tables (those that committed lately), the least recently probed
        first; returns how many new blobs were delivered."""
        now = time.monotonic()
        self.polls += 1
        hot = sorted((t for t in list(self.tables.values()) if t.hot_until > now), key=lambda t: t.probed)
        tables = hot[:self.hot_probes]
        for table in tables:
            table.probed = self.polls
        if len(tables) > 2:
            if self._probe_pool is None:
                self._probe_pool = ThreadPoolExecutor(max_workers=self.hot_probes, thread_name_prefix="lake-probe")
            found = list(self._probe_pool.map(self._probe, tables))
        else:
            found = [self._probe(t) for t in tables]
        noticed = time.time()
        fresh = _interleaved(found)  # as in rescan: about the order they were written in
        for name in fresh:
            self.deliver(NewBlob(name, noticed=noticed))
        return len(fresh)

    def _probe(self, table: _Table) -> list[str]:
        """The new commit blobs of ``table``, in version order (delivered by :meth:`poll`)."""
        from azure.core.exceptions import ResourceNotFoundError

        delivered: list[str] = []
        while True:
            nxt = table.frontier + 1
            decade = f"{nxt:020d}"[:19]
            before = table.frontier
            prefix = f"{table.root}/{LOG_DIR}{decade}"
            started = time.monotonic()
            try:
                names = list(self.container.list_blob_names(name_starts_with=prefix))
            except ResourceNotFoundError:
                return delivered
            self._slow(prefix, started)
            fresh = sorted(n for n in names if wanted(n) and n not in table.seen)
            table.seen.update(fresh)
            self._advance(table, fresh)
            delivered.extend(fresh)
            if table.frontier >= nxt and table.frontier % 10 == 9 and table.frontier != before:
                continue  # that decade is full: the next commit is in the next one
            break
        if delivered:
            table.hot_until = time.monotonic() + self.hot_seconds
        return delivered

    def _advance(self, table: _Table, names: list[str]) -> None:
        for name in names:
            version = _version_of(name, table.root)
            if version > table.frontier:
                table.frontier = version

    def _slow(self, what: str, started: float) -> None:
        if time.monotonic() - started > SLOW_LISTING_SECONDS:
            log.warning("lake watcher: listing %s took %.1f s (storage slow or retrying)", what,
                        time.monotonic() - started)

    # delivering ---------------------------------------------------------------------------------
    def deliver(self, blob: NewBlob) -> int:
        """BlobCreated of ``blob``: to every blob trigger whose path matches it, else to every Event Grid trigger
        (one consumer per event kind, as the lake's subscriptions). Returns the number of functions."""
        with self._count_lock:
            self.delivered += 1
        targets = [t for t in self.blob_targets if t.matches(blob.name)]
        for target in targets:
            self._submit(functools.partial(self._run_blob, target, blob, 1), "blob")
        if targets:
            return len(targets)
        for event_target in self.event_targets:
            self._submit(functools.partial(self._run_created, event_target, blob), "eventgrid")
        return len(self.event_targets)

    def route(self, event: Mapping[str, Any]) -> int:
        """Deliver one storage event of this container the way the subscriptions do: ``BlobCreated`` as
        :meth:`deliver`, ``BlobRenamed`` to the Event Grid triggers only. Returns the number of functions."""
        kind = event.get("eventType")
        if kind == CREATED:
            subject = str(event.get("subject", ""))
            container, _, name = subject[len(_SUBJECT):].partition("/blobs/") if subject.startswith(_SUBJECT) \
                else ("", "", "")
            if container != self.container_name or not name:
                return 0
            given = event.get("data")
            data: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
            return self.deliver(NewBlob(unquote(name), str(data.get("eTag", "")), int(data.get("contentLength") or 0),
                                        time.time()))
        if kind == RENAMED:
            payload = dict(event)
            for event_target in self.event_targets:
                self._submit(functools.partial(self._run_renamed, event_target, payload), "eventgrid")
            return len(self.event_targets)
        return 0

    def created_event(self, blob: NewBlob) -> dict[str, Any]:
        """The ``Microsoft.Storage.BlobCreated`` event Azure would send for ``blob``."""
        from refresh.dev.testing import events

        event = events.blob_created(self.base_url, self.container_name, blob.name, api="PutBlob", etag=blob.etag,
                                    length=blob.size)
        event["topic"] = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local/providers/"
                          f"Microsoft.Storage/storageAccounts/{self.account}")
        return event

    def _submit(self, work: Callable[[], Any], pool: str) -> None:
        try:
            self.invoker.run_in_pool(work, pool)
        except RuntimeError:
            pass  # shutting down

    def _binding(self, target: BlobTarget, blob: NewBlob) -> Any:
        """What ``target``'s function receives for ``blob`` (ETag and size filled in); None when it is gone."""
        import azure.functions.blob as fb
        from azure.core.exceptions import ResourceNotFoundError

        client = self.container.get_blob_client(blob.name)
        try:
            if target.kind == "stream":
                downloader = client.download_blob()
                data = downloader.readall()
                blob.etag, blob.size = str(downloader.properties.etag), len(data)
                return fb.InputStream(data=data, name=f"{self.container_name}/{blob.name}", length=len(data),
                                      uri=f"{self.base_url}/{self.container_name}/{blob.name}")
            if target.kind == "downloader":
                downloader = client.download_blob()
                blob.etag, blob.size = str(downloader.properties.etag), int(downloader.size or 0)
                return downloader
            props = client.get_blob_properties()  # the host checks the blob is there; nothing is downloaded
            blob.etag, blob.size = str(props.etag), int(props.size or 0)
            return self.container if target.kind == "container" else client
        except ResourceNotFoundError:
            return None

    def _run_blob(self, target: BlobTarget, blob: NewBlob, attempt: int) -> None:
        if self.stop_event.is_set():
            return
        value = self._binding(target, blob)
        if value is None:
            log.info("blob %s/%s is gone; its trigger is skipped", self.container_name, blob.name)
            return
        summary = describe_blob(self.container_name, blob.name) + (f" (attempt {attempt})" if attempt > 1 else "")
        outcome = self.invoker.call(target.spec, {target.arg: value}, summary, noticed=blob.noticed,
                                    detail={"container": self.container_name, "blob": blob.name, "attempt": attempt})
        if outcome.ok or self.stop_event.is_set():
            return
        if attempt < self.queues.max_dequeue_count:
            delay = self.queues.visibility_timeout
            log.info("%s: blob %s will be retried in %.0f s (attempt %s of %s failed)", target.spec.name,
                     blob.name, delay, attempt, self.queues.max_dequeue_count)
            self.scheduler.call_later(delay, lambda: self._submit(lambda: self._run_blob(target, blob, attempt + 1),
                                                                  "blob"))
            return
        log.error("%s: blob %s failed %s times; moved to webjobs-blobtrigger-poison", target.spec.name, blob.name,
                  attempt)
        if self.poison is not None:
            try:
                self.poison({"FunctionId": f"Host.Functions.{target.spec.name}", "BlobType": "BlockBlob",
                             "ContainerName": self.container_name, "BlobName": blob.name, "ETag": blob.etag})
            except Exception as exc:
                log.warning("could not write to webjobs-blobtrigger-poison: %s", exc)

    def _run_created(self, target: EventTarget, blob: NewBlob) -> bool:
        """BlobCreated to an Event Grid trigger (the event carries the blob's ETag and length)."""
        from azure.core.exceptions import ResourceNotFoundError

        if not blob.etag:
            try:
                props = self.container.get_blob_client(blob.name).get_blob_properties()
            except ResourceNotFoundError:
                log.info("blob %s/%s is gone; no event", self.container_name, blob.name)
                return False
            blob.etag, blob.size = str(props.etag), int(props.size or 0)
        return self.run_event(target, self.created_event(blob), 1, blob.noticed)

    def _run_renamed(self, target: EventTarget, event: dict[str, Any]) -> bool:
        return self.run_event(target, event, 1, time.time())

    def run_event(self, target: EventTarget, event: dict[str, Any], attempt: int, noticed: float | None = None) -> bool:
        """Deliver one Event Grid event (retrying on Event Grid's schedule); True when the function succeeded."""
        from refresh.dev.testing.events import to_function_event

        if self.stop_event.is_set():
            return False
        subject = str(event.get("subject", ""))
        name = unquote(subject.split("/blobs/", 1)[1]) if "/blobs/" in subject else subject
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
            self.scheduler.call_later(delay, lambda: self._submit(lambda: self.run_event(target, event, attempt + 1),
                                                                  "eventgrid"))
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
        self._submit(lambda: self._run_blob(target, blob, 1), "blob")
        return True


def _interleaved(lists: list[list[str]]) -> list[str]:
    """The first item of each list, then the second of each, and so on."""
    out: list[str] = []
    for i in range(max((len(x) for x in lists), default=0)):
        out.extend(x[i] for x in lists if i < len(x))
    return out


def _version_of(name: str, root: str) -> int:
    rest = name[len(root) + 1 + len(LOG_DIR):]
    match = _VERSION.match(rest)
    return int(match.group(1)) if match and rest == match.group(1) + ".json" else -1
