"""Shared fixtures: one Azurite per test session (real storage), fresh names per test."""

from __future__ import annotations

import uuid

import pytest

from refresh.settings import reset_settings
from refresh.testing.azurite import Azurite


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
