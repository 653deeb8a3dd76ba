"""Queue triggers: poll a Storage queue and hand each message to its function, as the host's queue listener does.

* **Polling** (host.json ``extensions.queues``): up to ``batchSize`` messages per request; a new
  batch is fetched while no more than ``newBatchThreshold`` messages are in flight, so at most
  ``batchSize + newBatchThreshold`` run at once. After a poll that found messages the next poll is
  immediate; after an empty one the wait doubles (with jitter) from 100 ms up to
  ``maxPollingInterval``. While more than ``newBatchThreshold`` messages are in flight the poller
  makes no request and uses no CPU: it waits on a condition until a message completes (waking only
  to renew locks). Its messages run on the queue's own pool of ``batchSize + newBatchThreshold``
  threads, so no other trigger's backlog delays them. By default the runtime also polls soon after
  any function ran in this process (it may have queued work; the host does that only for its output
  bindings): at once, but no sooner than :data:`WAKE_INTERVAL` (0.1 s) after the previous poll, so a
  burst of thousands of invocations costs at most 10 polls a second; ``--strict-polling`` turns that off.
* **Peek-lock**: a message is received invisible for the *message lock* (the host: 10 minutes;
  here ``--message-lock``, default 60 s) and the lock is renewed while the function runs, so a
  runtime that is killed leaves its messages to reappear once the lock runs out.
* **Outcome**: success deletes the message. Failure makes it visible again after
  ``visibilityTimeout``; when its ``dequeue_count`` has reached ``maxDequeueCount`` it is copied
  to ``<queue>-poison`` (created on demand) and deleted. A message that arrives with a dequeue
  count already above the maximum goes to the poison queue without running.
* **Binding**: ``azure.functions.queue.QueueMessage`` with the message id, body (bytes, decoded
  per ``messageEncoding``: ``base64`` or ``none``), dequeue count, insertion, expiration and
  next-visible times and pop receipt. A body that is not valid base64 counts as a failed delivery
  (as a binding error does on the host) and ends in the poison queue.
* A queue that does not exist yet is polled as empty (the listener does not create it).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from refresh.dev.local.invoke import FunctionSpec, Invoker, Outcome, pool_of
from refresh.dev.local.settings import QueueOptions

log = logging.getLogger(__name__)

WAKE_INTERVAL = 0.1  # a poll asked for by wake() starts no sooner than this after the previous poll


@dataclass
class _InFlight:
    message: Any
    pop_receipt: str
    received: float
    renewed: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: bool = False


class QueueRunner:
    """Polls one queue for one function."""

    def __init__(self, spec: FunctionSpec, trigger: Mapping[str, Any], service: Any, options: QueueOptions,
                 invoker: Invoker, stop: threading.Event, *, message_lock: float = 60.0) -> None:
        self.spec = spec
        self.arg = str(trigger["name"])
        self.queue_name = str(trigger["queueName"]).lower()
        self.options = options
        self.invoker = invoker
        self.stop_event = stop
        self.lock_seconds = max(2, round(message_lock))
        self.client = service.get_queue_client(self.queue_name)  # raw text in and out: encoding is ours
        self.poison_name = f"{self.queue_name}-poison"
        self._poison_client: Any = None
        self._service = service
        self._inflight: dict[str, _InFlight] = {}
        self._guard = threading.Lock()
        self._changed = threading.Condition(self._guard)  # a message finished, or wake() was called
        self._woken = False
        self.limit = options.batch_size + options.new_batch_threshold
        self.polls = 0
        self.wake_interval = WAKE_INTERVAL
        self.monotonic = time.monotonic
        self._last_poll = float("-inf")
        invoker.set_pool_size(pool_of(spec), self.limit)
        self._thread = threading.Thread(target=self._loop, name=f"queue-{self.queue_name}", daemon=True)
        self._last_error = ""
        self.delivered = 0

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def wake(self) -> None:
        """Poll now (new work may have been queued), or as soon as there is room for a new batch."""
        with self._changed:
            self._woken = True
            self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        with self._guard:
            return len(self._inflight)

    # polling ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        delay = self.options.min_polling_interval
        while not self.stop_event.is_set():
            busy = self._wait_for_room()
            if self.stop_event.is_set():
                break
            with self._changed:
                self._woken = False
            found = self._poll(min(self.options.batch_size, self.limit - busy))
            self._renew_locks()
            if found:
                delay = self.options.min_polling_interval
                continue
            wait = min(self.options.max_polling_interval, delay * random.uniform(0.8, 1.2))
            delay = min(self.options.max_polling_interval, delay * 2)
            if self._wait_woken(min(wait, self.lock_seconds / 3)):
                delay = self.options.min_polling_interval
                self._pace()
        log.debug("queue %s: poller stopped", self.queue_name)

    def _wait_for_room(self) -> int:
        """Block while more than ``newBatchThreshold`` messages are in flight (the host fetches no new batch
        then); returns how many are in flight. Wakes to renew locks, on a completion and at stop."""
        def room() -> bool:
            return len(self._inflight) <= self.options.new_batch_threshold or self.stop_event.is_set()

        while True:
            with self._changed:
                if self._changed.wait_for(room, self.lock_seconds / 3):
                    return len(self._inflight)
            self._renew_locks()

    def _wait_woken(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for :meth:`wake` (or stop); True when woken."""
        with self._changed:
            return self._changed.wait_for(lambda: self._woken or self.stop_event.is_set(), timeout)

    def _pace(self) -> None:
        """Before a poll asked for by :meth:`wake`: wait until :attr:`wake_interval` has passed since the previous
        poll (the wakes that come meanwhile are served by that one poll)."""
        left = self._last_poll + self.wake_interval - self.monotonic()
        if left > 0:
            self.stop_event.wait(left)

    def _poll(self, count: int) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        noticed = time.time()
        self.polls += 1
        self._last_poll = self.monotonic()
        try:
            pages = self.client.receive_messages(messages_per_page=count, visibility_timeout=self.lock_seconds)
            messages = list(next(pages.by_page(), []))
        except ResourceNotFoundError:
            return 0  # not created yet: the host treats it as empty
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if text != self._last_error:
                log.warning("queue %s: polling failed (%s); retrying", self.queue_name, text)
                self._last_error = text
            return 0
        self._last_error = ""
        for message in messages:
            self._dispatch(message, noticed)
        return len(messages)

    def _dispatch(self, message: Any, noticed: float) -> None:
        import azure.functions.queue as fq

        entry = _InFlight(message, message.pop_receipt, time.monotonic(), time.monotonic())
        with self._guard:
            self._inflight[message.id] = entry
        count = message.dequeue_count or 1
        if count > self.options.max_dequeue_count:
            self._finish(entry, poison=True, reason=f"dequeue count {count} is above maxDequeueCount "
                                                    f"{self.options.max_dequeue_count}")
            return
        try:
            body = self._decode(message.content)
        except ValueError as exc:
            log.error("queue %s: message %s cannot be decoded (%s); counted as a failed delivery",
                      self.queue_name, message.id, exc)
            self._failed(entry)
            return
        binding = fq.QueueMessage(id=message.id, body=body, dequeue_count=count, pop_receipt=message.pop_receipt,
                                  insertion_time=message.inserted_on, expiration_time=message.expires_on,
                                  time_next_visible=message.next_visible_on)
        detail = {"queue": self.queue_name, "message_id": message.id, "dequeue_count": count,
                  "body": body[:1000].decode("utf-8", "replace")}
        try:
            future = self.invoker.submit(self.spec, {self.arg: binding}, _summary(message.id, count, body),
                                         noticed=noticed, detail=detail)
        except RuntimeError:  # shutting down: leave it to reappear
            with self._guard:
                self._inflight.pop(message.id, None)
            return
        self.delivered += 1
        future.add_done_callback(functools.partial(self._completed, entry))

    def _decode(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            raw = content
        else:
            raw = str(content or "").encode("utf-8")
        if self.options.message_encoding == "none":
            return raw
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not valid base64 (host.json messageEncoding is base64)") from None

    # outcomes -----------------------------------------------------------------------------------
    def _completed(self, entry: _InFlight, future: Future[Outcome]) -> None:
        outcome = future.result()
        if outcome.ok:
            self._finish(entry)
        else:
            self._failed(entry)
        self.wake()

    def _failed(self, entry: _InFlight) -> None:
        count = entry.message.dequeue_count or 1
        if count >= self.options.max_dequeue_count:
            self._finish(entry, poison=True, reason=f"failed on delivery {count} of {self.options.max_dequeue_count}")
            return
        with entry.lock:
            entry.finished = True
            try:
                self.client.update_message(entry.message.id, entry.pop_receipt,
                                           visibility_timeout=int(self.options.visibility_timeout))
                log.info("queue %s: message %s will be redelivered in %.0f s (delivery %s of %s failed)",
                         self.queue_name, entry.message.id, self.options.visibility_timeout, count,
                         self.options.max_dequeue_count)
            except Exception as exc:
                log.warning("queue %s: could not release message %s (%s); it reappears when its lock ends",
                            self.queue_name, entry.message.id, type(exc).__name__)
        self._forget(entry)

    def _finish(self, entry: _InFlight, poison: bool = False, reason: str = "") -> None:
        with entry.lock:
            entry.finished = True
            try:
                if poison:
                    self._send_poison(entry.message.content)
                    log.error("queue %s: message %s moved to %s: %s", self.queue_name, entry.message.id,
                              self.poison_name, reason)
                self.client.delete_message(entry.message.id, entry.pop_receipt)
            except Exception as exc:
                log.warning("queue %s: could not delete message %s (%s: lock lost?); it may be delivered again",
                            self.queue_name, entry.message.id, type(exc).__name__)
        self._forget(entry)

    def _send_poison(self, content: Any) -> None:
        from azure.core.exceptions import ResourceExistsError

        if self._poison_client is None:
            client = self._service.get_queue_client(self.poison_name)
            try:
                client.create_queue()
            except ResourceExistsError:
                pass
            self._poison_client = client
        self._poison_client.send_message(content)  # the same encoded text as the original

    def _forget(self, entry: _InFlight) -> None:
        with self._changed:
            self._inflight.pop(entry.message.id, None)
            self._changed.notify_all()

    def _renew_locks(self) -> None:
        now = time.monotonic()
        with self._guard:
            entries = [e for e in self._inflight.values() if now - e.renewed >= self.lock_seconds / 2]
        for entry in entries:
            with entry.lock:
                if entry.finished:
                    continue
                try:
                    receipt = self.client.update_message(entry.message.id, entry.pop_receipt,
                                                         visibility_timeout=self.lock_seconds)
                    entry.pop_receipt = receipt.pop_receipt
                    entry.renewed = time.monotonic()
                except Exception as exc:
                    log.warning("queue %s: could not renew the lock of message %s (%s)", self.queue_name,
                                entry.message.id, type(exc).__name__)


def _summary(message_id: str, dequeue_count: int, body: bytes) -> str:
    """``message 1a2b3c4d (delivery 1): type=job dataset=sales job_id=3f2a1b2c...``."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = []
        for key, value in data.items():
            if isinstance(value, str | int | float) and not isinstance(value, bool) and key not in ("v",):
                value = str(value)
                if key.endswith("id") and len(value) > 12:
                    value = value[:8] + ".."
                parts.append(f"{key}={value if len(value) <= 24 else value[:22] + '..'}")
        text = " ".join(parts)
    text = text if len(text) <= 110 else text[:107] + "..."
    return f"message {message_id[:8]} (delivery {dequeue_count}): {text}"
