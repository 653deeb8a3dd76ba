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
