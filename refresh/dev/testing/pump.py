"""Drive queue-triggered functions over a real (Azurite) queue in *virtual* time.

The worker delays messages with the queue's visibility timeout: seconds to hours of real time.
Tests cannot wait that long, so :class:`VirtualQueue` wraps the real ``QueueClient``: each message is
sent for real (same encoding, same storage) but visible at once, and the delay it asked for is
remembered as its due time on the virtual clock. :class:`Pump` then plays the Functions host:
it receives messages, delivers each (earliest due first) to the function's registered entry point as
an ``azure.functions.queue.QueueMessage`` with its real id, body and dequeue count, deletes it when
the function returns, and makes it visible again when the function raises (redelivery, with the
dequeue count going up as on the host). Before each delivery the clocks jump to its due time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from refresh.core.clock import FakeClock


class VirtualQueue:
    """A QueueClient stand-in that sends for real but records visibility delays as virtual due times."""

    def __init__(self, real: Any, clock: FakeClock) -> None:
        self.real = real
        self.clock = clock
        self.due: dict[str, datetime] = {}
        self.delays: list[tuple[str, float]] = []  # (content, requested delay) in send order

    def send_message(self, content: Any, visibility_timeout: int | None = None, time_to_live: int | None = None,
                     **kwargs: Any) -> Any:
        sent = self.real.send_message(content, visibility_timeout=0, time_to_live=time_to_live, **kwargs)
        delay = float(visibility_timeout or 0)
        self.due[sent.id] = self.clock.now() + timedelta(seconds=delay)
        self.delays.append((content, delay))
        return sent

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@dataclass
class Delivery:
    """One message handed to the function."""

    at: datetime
    body: str
    dequeue_count: int
    result: Any = None
    error: BaseException | None = None


@dataclass
class Pump:
    """Deliver a VirtualQueue's messages to ``handler`` in due order, moving the clocks."""

    queue: VirtualQueue
    handler: Callable[[Any], Any]
    advance: list[Callable[[float], Any]] = field(default_factory=list)  # extra clocks (e.g. the simulator)
    max_dequeue_count: int = 5
    poison: Callable[[Any], Any] | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    _held: dict[str, Any] = field(default_factory=dict)
    _order: itertools.count = field(default_factory=itertools.count)

    def _receive_all(self) -> None:
        while True:
            batch = list(self.queue.real.receive_messages(max_messages=32, visibility_timeout=600))
            if not batch:
                return
            for msg in batch:
                self._held[msg.id] = (next(self._order), msg)

    def pending(self) -> int:
        self._receive_all()
        return len(self._held)

    def step(self, until: datetime | None = None) -> Delivery | None:
        """Deliver the next due message (None when the queue is empty or the next is after ``until``)."""
        import azure.functions.queue as fq

        self._receive_all()
        if not self._held:
            return None
        clock = self.queue.clock
        now = clock.now()

        def due(item: tuple[int, Any]) -> tuple[datetime, int]:
            return (self.queue.due.get(item[1].id, now), item[0])

        _, msg = min(self._held.values(), key=due)
        at = max(self.queue.due.get(msg.id, now), now)
        if until is not None and at > until:
            return None
        if at > now:
            seconds = (at - now).total_seconds()
            clock.set(at)
            for tick in self.advance:
                tick(seconds)
        del self._held[msg.id]
        delivery = Delivery(at=at, body=msg.content, dequeue_count=msg.dequeue_count)
        binding = fq.QueueMessage(id=msg.id, body=msg.content.encode("utf-8"), dequeue_count=msg.dequeue_count,
                                  pop_receipt=msg.pop_receipt, insertion_time=msg.inserted_on,
                                  expiration_time=msg.expires_on, time_next_visible=msg.next_visible_on)
        try:
            delivery.result = self.handler(binding)
        except Exception as exc:  # the host logs it and lets the message come back
            delivery.error = exc
            if msg.dequeue_count >= self.max_dequeue_count:
                self.queue.real.delete_message(msg)
                if self.poison is not None:
                    self.poison(fq.QueueMessage(id=msg.id, body=msg.content.encode("utf-8"),
                                                dequeue_count=msg.dequeue_count))
            else:  # visible again after the host's visibilityTimeout (host.json: 30 s)
                self.queue.real.update_message(msg, visibility_timeout=0)
                self.queue.due[msg.id] = clock.now() + timedelta(seconds=30)
        else:
            self.queue.real.delete_message(msg)
        self.deliveries.append(delivery)
        return delivery

    def run(self, max_steps: int = 500, until: datetime | None = None) -> list[Delivery]:
        """Deliver until the queue is empty (or ``until`` / ``max_steps``); returns what was delivered."""
        done = []
        for _ in range(max_steps):
            delivery = self.step(until)
            if delivery is None:
                break
            done.append(delivery)
        else:
            raise RuntimeError(f"queue still busy after {max_steps} deliveries")
        return done
