"""More behaviours of :class:`~refresh.dev.powerbi_sim.simulator.PowerBISimulator`, kept beside it.

* :func:`start_other_refresh`: a refresh started by another client (the portal, a schedule, another
  tool calling the API): it runs like any other, shows in the history with its own ``refreshType``,
  and makes a POST meanwhile answer "Another refresh request is already executing".
* :func:`lose_next_answer`: the next matching request is handled (a POST starts its refresh) but the
  connection closes before the answer: the client sees a dropped connection.
* :func:`take_identity_down` / :func:`bring_identity_up`: the managed-identity token endpoint drops
  every connection until brought up again.
* :func:`align_wall`: make the simulator's wall-clock times (``startTime``...) agree with an app's
  (fake) clock, so both sides tell the same time.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from refresh.dev.powerbi_sim.records import IDENTITY_PATH, Fault, Refresh
from refresh.dev.powerbi_sim.simulator import PowerBISimulator

__all__ = ["align_wall", "bring_identity_up", "lose_next_answer", "start_other_refresh", "take_identity_down"]

REFRESH_TYPES = ("Scheduled", "OnDemand", "ViaApi", "ViaXmlaEndpoint", "ViaEnhancedApi", "OnDemandTraining")


def start_other_refresh(sim: PowerBISimulator, dataset_id: str, *, refresh_type: str = "ViaApi",
                        duration: float | None = None) -> str:
    """Start a refresh of ``dataset_id`` as another client would (no request recorded); returns its id."""
    if refresh_type not in REFRESH_TYPES:
        raise ValueError(f"refresh_type must be one of {REFRESH_TYPES}")
    with sim._lock:
        dataset = sim._datasets[dataset_id.lower()]
        refresh = Refresh(id=str(uuid.uuid4()), dataset_id=dataset.id, enhanced=refresh_type == "ViaEnhancedApi",
                           start=sim.clock(), duration=sim.refresh_duration if duration is None else duration,
                           body={}, kind=refresh_type)
        dataset.refreshes.append(refresh)
    return refresh.id


def lose_next_answer(sim: PowerBISimulator, *, times: int = 1, method: str | None = "POST",
                     path_contains: str | None = "/refreshes") -> None:
    """Handle the next ``times`` matching requests, then close the connection instead of answering."""
    sim._add_fault(Fault("lost_answer", times, method, path_contains))


def take_identity_down(sim: PowerBISimulator) -> None:
    """Every request to the token endpoint has its connection closed until :func:`bring_identity_up`."""
    sim._add_fault(Fault("drop", 10**9, None, IDENTITY_PATH))


def bring_identity_up(sim: PowerBISimulator) -> None:
    """The token endpoint answers again."""
    with sim._lock:
        sim._faults[:] = [f for f in sim._faults if not (f.kind == "drop" and f.path_contains == IDENTITY_PATH)]


def align_wall(sim: PowerBISimulator, now: datetime) -> None:
    """Make the simulator's wall clock read ``now`` at its current clock (times it reports follow from there)."""
    with sim._lock:
        sim._epoch_zero = now.timestamp() - (sim.clock() - sim._clock_zero)
