"""An App wired to Azurite with names unique to one test (or one demo run)."""

from __future__ import annotations

import uuid
from typing import Any

from refresh.core.clock import Clock, FakeClock
from refresh.core.context import App
from refresh.core.routing import parse_config


def storage_env(connection_string: str, token: str | None = None, **extra: str) -> dict[str, str]:
    """Settings for an app whose host storage and lake are both the given Azurite account."""
    token = token or uuid.uuid4().hex[:10]
    env = {
        "AzureWebJobsStorage": connection_string,
        "LAKE_STORAGE": connection_string,
        "GOLD_CONTAINER": f"gold{token}",
        "REFRESH_QUEUE": f"jobs-{token}",
        "STATE_TABLE": f"State{token}",
        "OUTCOMES_TABLE": f"Outcomes{token}",
    }
    env.update(extra)
    return env


def make_app(connection_string: str, config: dict[str, Any], *, token: str | None = None,
             clock: Clock | None = None, client_kwargs: dict[str, Any] | None = None, **extra: str) -> App:
    """An App on Azurite with ``config`` (a routing-config dict) and a fake clock by default."""
    env = storage_env(connection_string, token, **extra)
    app = App(env=env, clock=clock or FakeClock(), config=parse_config(config, "<test>"),
              client_kwargs=client_kwargs)
    from azure.core.exceptions import ResourceExistsError

    try:
        app.lake.create_container()
    except ResourceExistsError:
        pass
    return app
