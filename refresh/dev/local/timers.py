"""Timer triggers on their NCRONTAB schedules (UTC), read with :mod:`refresh.core.ncrontab`.

As on the host: ``runOnStartup`` fires once when the runtime starts (``--run-timers-now`` does that
for every timer); an occurrence that comes while the previous invocation still runs is skipped;
a failed invocation is not retried. With ``useMonitor`` the schedule status (``Last``, ``Next``,
``LastUpdated``) is kept in the ``azure-webjobs-hosts`` container of ``AzureWebJobsStorage``
(``timers/<host id>/Host.Functions.<name>/status``), and an occurrence missed while the runtime
was down fires at start with ``past_due`` true. The function gets an
``azure.functions.timer.TimerRequest`` with ``past_due``, ``schedule_status`` and ``schedule``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import UTC, datetime
from typing import Any

from refresh.core.clock import iso, parse_iso
from refresh.core.ncrontab import CronError, Schedule, parse
from refresh.dev.local.invoke import FunctionSpec, Invoker
from refresh.dev.local.settings import LocalSettingsError

log = logging.getLogger(__name__)

PAST_DUE_SECONDS = 1.0


class BlobScheduleMonitor:
    """Schedule status of each timer, as a small JSON blob (the host's ``ScheduleMonitor``)."""

    def __init__(self, container: Any, host_id: str) -> None:
        self.container = container
        self.host_id = host_id
        self._created = False

    def _name(self, function: str) -> str:
        return f"timers/{self.host_id}/Host.Functions.{function}/status"

    def load(self, function: str) -> dict[str, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            data = json.loads(self.container.download_blob(self._name(function)).readall())
        except ResourceNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def save(self, function: str, status: Mapping[str, str]) -> None:
        from azure.core.exceptions import ResourceExistsError

        if not self._created:
            try:
                self.container.create_container()
            except ResourceExistsError:
                pass
            self._created = True
        self.container.upload_blob(self._name(function), json.dumps(status), overwrite=True)


class TimerRunner:
    """Fires one timer function on its schedule."""

    def __init__(self, spec: FunctionSpec, trigger: Mapping[str, Any], invoker: Invoker, stop: threading.Event,
                 *, run_now: bool = False, monitor: BlobScheduleMonitor | None = None,
                 now: Any = None) -> None:
        self.spec = spec
        self.arg = str(trigger["name"])
        try:
            self.schedule: Schedule = parse(str(trigger["schedule"]))
        except CronError as exc:
            raise LocalSettingsError(f"schedule {trigger['schedule']!r}: {exc}") from None
        self.run_on_startup = bool(trigger.get("runOnStartup")) or run_now
        self.use_monitor = bool(trigger.get("useMonitor", True)) and monitor is not None
        self.monitor = monitor
        self.invoker = invoker
        self.stop_event = stop
        self._now = now or (lambda: datetime.now(UTC))
        self._running: Future[Any] | None = None
        self._last: datetime | None = None
        self.fired = 0
        self._thread = threading.Thread(target=self._loop, name=f"timer-{spec.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        now = self._now()
        past_due = False
        status = self._load_status()
        if status and status.get("Next"):
            try:
                recorded_next = parse_iso(status["Next"])
                past_due = recorded_next < now
                self._last = parse_iso(status["Last"]) if status.get("Last") else None
            except ValueError:
                past_due = False
        if self.run_on_startup or past_due:
            reason = "past due (missed while the runtime was down)" if past_due else "at startup"
            self.fire(now, past_due=past_due, reason=reason)
        occurrence = self.schedule.next_after(now)
        if not self.run_on_startup and not past_due:
            self._save_status({"Last": iso(self._last) if self._last else "", "Next": iso(occurrence),
                               "LastUpdated": iso(now)})
        log.info("timer %s: next run at %s UTC", self.spec.name, occurrence.strftime("%Y-%m-%d %H:%M:%S"))
        while not self.stop_event.is_set():
            wait = (occurrence - self._now()).total_seconds()
            if wait > 0:
                if self.stop_event.wait(min(wait, 60.0)):
                    break
                continue
            late = -wait > PAST_DUE_SECONDS
            self.fire(occurrence, past_due=late, reason="schedule")
            occurrence = self.schedule.next_after(max(occurrence, self._now()))

    def fire(self, occurrence: datetime, *, past_due: bool = False, reason: str = "schedule") -> bool:
        """Invoke the function once (unless the previous invocation still runs); True when started."""
        import azure.functions.timer as ft

        if self._running is not None and not self._running.done():
            log.info("timer %s: still running; this occurrence is skipped", self.spec.name)
            return False
        now = self._now()
        nxt = self.schedule.next_after(max(occurrence, now))
        status = {"Last": iso(self._last or occurrence), "Next": iso(nxt), "LastUpdated": iso(now)}
        request = ft.TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": False})
        summary = f"timer ({reason}{', past due' if past_due and reason == 'schedule' else ''})"
        try:
            self._running = self.invoker.submit(self.spec, {self.arg: request}, summary,
                                                detail={"past_due": past_due, "reason": reason})
        except RuntimeError:
            return False
        self.fired += 1
        self._last = occurrence
        self._save_status({"Last": iso(occurrence), "Next": iso(nxt), "LastUpdated": iso(now)})
        return True

    def _load_status(self) -> dict[str, str] | None:
        if not self.use_monitor or self.monitor is None:
            return None
        try:
            return self.monitor.load(self.spec.name)
        except Exception as exc:
            log.warning("timer %s: schedule monitor unreadable (%s); not checking for a missed run",
                        self.spec.name, type(exc).__name__)
            return None

    def _save_status(self, status: Mapping[str, str]) -> None:
        if not self.use_monitor or self.monitor is None:
            return
        try:
            self.monitor.save(self.spec.name, status)
        except Exception as exc:
            log.warning("timer %s: could not record its schedule status (%s)", self.spec.name, type(exc).__name__)
