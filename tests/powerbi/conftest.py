"""Fixtures for the Power BI layer (the swagger-validating ``sim`` and ``validator`` fixtures live in
tests/conftest.py, shared with the worker tests): the REAL
``ManagedIdentityCredential`` pointed at the simulator's identity endpoint, and clients.

A test that sends swagger-invalid requests on purpose says how many with
``@pytest.mark.invalid_requests(n)``; the check then requires exactly ``n`` mismatches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential

from refresh.dev.powerbi_sim.simulator import PowerBISimulator
from refresh.powerbi.client import PowerBIClient

SPEC = Path(__file__).resolve().parent.parent / "data" / "powerbi-swagger.json"
SCOPE = "https://analysis.windows.net/powerbi/api/.default"


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock for cache TTLs that moves only on ``advance``."""
    return FakeClock()


@pytest.fixture
def credential(sim: PowerBISimulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ManagedIdentityCredential]:
    """The real ManagedIdentityCredential (App Service flavour) getting tokens from the simulator."""
    for name in ("IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", sim.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", sim.identity_header)
    with ManagedIdentityCredential() as cred:
        yield cred


@pytest.fixture
def make_client(sim: PowerBISimulator, credential: ManagedIdentityCredential) -> Iterator[Callable[..., PowerBIClient]]:
    """Build clients against the simulator (keyword arguments go to PowerBIClient)."""
    made: list[PowerBIClient] = []

    def make(**kwargs: Any) -> PowerBIClient:
        kwargs.setdefault("timeout", 5)
        client = PowerBIClient(sim.base_url, SCOPE, kwargs.pop("credential", credential), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client: Callable[..., PowerBIClient]) -> PowerBIClient:
    return make_client()


@pytest.fixture
def dedicated(sim: PowerBISimulator) -> tuple[str, str]:
    """(workspace id, dataset id) on dedicated capacity: enhanced refreshes allowed."""
    workspace = sim.add_workspace("Gold Premium", dedicated=True)
    return workspace, sim.add_dataset(workspace, "Sales Model")


@pytest.fixture
def shared(sim: PowerBISimulator) -> tuple[str, str]:
    """(workspace id, dataset id) on shared capacity: standard refreshes only, 8 a day."""
    workspace = sim.add_workspace("Gold Shared", dedicated=False)
    return workspace, sim.add_dataset(workspace, "Finance Model")
