"""The optional per-dataset ``freshness_slo_minutes`` key of the routing config."""

from __future__ import annotations

import pytest

from refresh.core.routing import MAX_SLO_MINUTES, ConfigError, parse_config
from refresh.surfaces.check_config import describe


def _config(**extra: object) -> dict:
    ds = {"workspace": "W", "dataset": "D", "sources": [{"table": "sales/orders"}], **extra}
    return {"datasets": {"sales": ds}}


def test_slo_is_optional_and_absent_means_none():
    config = parse_config(_config(), "<test>")
    assert config.datasets["sales"].freshness_slo_minutes is None
    assert "freshness objective none" in describe(config)


def test_slo_is_read_as_minutes_and_described():
    config = parse_config(_config(freshness_slo_minutes=90), "<test>")
    assert config.datasets["sales"].freshness_slo_minutes == 90
    assert "freshness objective 1 h 30 min" in describe(config)


def test_null_slo_means_none():
    config = parse_config(_config(freshness_slo_minutes=None), "<test>")
    assert config.datasets["sales"].freshness_slo_minutes is None


@pytest.mark.parametrize(("value", "problem"), [
    (0, f"must be between 1 and {MAX_SLO_MINUTES} minutes, got 0"),
    (MAX_SLO_MINUTES + 1, f"must be between 1 and {MAX_SLO_MINUTES} minutes, got {MAX_SLO_MINUTES + 1}"),
    (1.5, "must be a whole number, got a number"),
    (30.0, "must be a whole number without a decimal point, got 30.0"),
    ("30", "must be a whole number, got a string"),
    (True, "must be a whole number, got a boolean"),
])
def test_bad_slo_is_reported_with_its_path(value, problem):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(freshness_slo_minutes=value), "<test>")
    assert info.value.problems == [("datasets.sales.freshness_slo_minutes", problem)]
