"""Shared fixtures: one Azurite per test session (real storage), fresh names per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from refresh.core.settings import reset_settings
from refresh.dev.testing.azurite import Azurite


@pytest.fixture(scope="session")
def azurite():
    with Azurite() as running:
        yield running


@pytest.fixture
def unique() -> str:
    """A short lowercase token to keep each test's containers, queues and tables apart."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(autouse=True)
def _fresh_settings():
    reset_settings()
    yield
    reset_settings()


@pytest.fixture(scope="session")
def registered():
    """The functions registered in function_app.py, by name (get_functions() works once per process)."""
    import function_app

    return {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}


SWAGGER = Path(__file__).resolve().parent / "data" / "powerbi-swagger.json"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "invalid_requests(n): the test sends exactly n requests that the swagger rejects"
    )
    config.addinivalue_line(
        "markers", "virtual_clock: the Power BI simulator's clock moves only when the test advances it"
    )


@pytest.fixture(scope="session")
def validator():
    from refresh.dev.swagger import SwaggerValidator

    return SwaggerValidator(SWAGGER)


@pytest.fixture(autouse=True)
def _loopback_without_proxy(monkeypatch):
    """Loopback traffic must never go to a proxy configured in the environment."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def sim(validator, request):
    """A started Power BI simulator; at teardown every request it received (and every success answer)
    is validated against the official swagger. Marked ``virtual_clock``, its clock moves only by
    ``advance`` (no real time leaks into timing measurements on a loaded machine)."""
    from refresh.dev.powerbi_sim.simulator import PowerBISimulator
    from refresh.dev.swagger import SwaggerMismatch

    options = {"clock": lambda: 0.0} if request.node.get_closest_marker("virtual_clock") else {}
    with PowerBISimulator(**options) as simulator:
        yield simulator
    mismatches = []
    for recorded in simulator.requests:
        try:
            validator.validate(recorded.method, recorded.path, recorded.query, recorded.body)
            if recorded.status is not None and 200 <= recorded.status < 300:
                validator.validate_response(recorded.method, recorded.path, recorded.status, recorded.response)
        except SwaggerMismatch as exc:
            mismatches.append(f"{recorded.method} {recorded.path}?{recorded.raw_query}: {exc}")
    marker = request.node.get_closest_marker("invalid_requests")
    expected = marker.args[0] if marker else 0
    if len(mismatches) != expected:
        pytest.fail(f"expected {expected} swagger mismatch(es), got {len(mismatches)}:\n" + "\n".join(mismatches),
                    pytrace=False)


@pytest.fixture
def powerbi_identity(sim, monkeypatch):
    """azure-identity's real managed-identity code, pointed at the simulator's token endpoint (and no
    other credential in the environment), for apps that build DefaultAzureCredential themselves."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", sim.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", sim.identity_header)
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "MSI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    return sim
