"""The routing configuration (refresh/core/routing*.py): validation, globs, routing; the check-config command."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest

from refresh.core.routing import (
    DATASET_KEYS,
    REFRESH_KEYS,
    SOURCE_KEYS,
    ConfigError,
    DatasetConfig,
    RefreshOptions,
    RoutingConfig,
    Source,
    load_config,
    parse_config,
)
from refresh.surfaces.check_config import check_config_main, describe

ROOT = Path(__file__).resolve().parent.parent

SALES = {
    "workspace": "Finance Analytics",
    "dataset": "Sales Model",
    "sources": [
        {"table": "sales/fact_orders", "model_tables": ["Orders"]},
        {"table": "sales/dim_*"},
    ],
    "debounce_seconds": 60,
    "max_delay_seconds": 900,
}


def config_with(**changes: object) -> dict:
    """The sales example with dataset keys changed (a value of ... removes the key)."""
    ds = copy.deepcopy(SALES)
    for key, value in changes.items():
        if value is ...:
            ds.pop(key, None)
        else:
            ds[key] = value
    return {"datasets": {"sales": ds}}


def problems_of(data: object) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def only_problem(data: object) -> tuple[str, str]:
    problems = problems_of(data)
    assert len(problems) == 1, problems
    return problems[0]


# -- a valid config and its defaults ---------------------------------------------------------------


def test_example_parses_with_defaults():
    config = parse_config({"datasets": {"sales": {
        "workspace": "Finance Analytics", "dataset": "Sales Model",
        "sources": [{"table": "sales/fact_orders"}],
    }}})
    ds = config.datasets["sales"]
    assert ds == DatasetConfig(key="sales", workspace="Finance Analytics", dataset="Sales Model",
                               sources=(Source("sales/fact_orders"),))
    assert (ds.debounce_seconds, ds.max_delay_seconds, ds.timeout_minutes) == (60, 900, 120)
    assert ds.schedule is None and ds.schedule_skip_if_unchanged is False
    assert ds.refresh == RefreshOptions()
    assert ds.refresh.type == "Full" and ds.refresh.notify_option == "NoNotification"
    assert ds.dedicated_capacity is None and ds.daily_limit is None
    assert config.source_file is None


def test_full_dataset_parses():
    config = parse_config(config_with(
        schedule="0 30 6 * * MON-FRI", schedule_skip_if_unchanged=True,
        refresh={"type": "DataOnly", "commit_mode": "PartialBatch", "max_parallelism": 200, "retry_count": 0,
                 "timeout": "23:59:59", "apply_refresh_policy": False, "effective_date": "2024-02-29",
                 "notify_option": "MailOnFailure"},
        dedicated_capacity=False, daily_limit=8, timeout_minutes=1440,
    ))
    ds = config.datasets["sales"]
    assert ds.schedule == "0 30 6 * * MON-FRI" and ds.schedule_skip_if_unchanged is True
    assert ds.refresh == RefreshOptions(type="DataOnly", commit_mode="PartialBatch", max_parallelism=200,
                                        retry_count=0, timeout="23:59:59", apply_refresh_policy=False,
                                        effective_date="2024-02-29", notify_option="MailOnFailure")
    assert (ds.dedicated_capacity, ds.daily_limit, ds.timeout_minutes) == (False, 8, 1440)
    assert ds.sources == (Source("sales/fact_orders", ("Orders",)), Source("sales/dim_*"))


def test_nullable_keys_accept_null():
    ds = parse_config(config_with(dedicated_capacity=None, daily_limit=None)).datasets["sales"]
    assert ds.dedicated_capacity is None and ds.daily_limit is None
    assert parse_config(config_with(dedicated_capacity=True)).datasets["sales"].dedicated_capacity is True


def test_enhanced_options_has_only_set_values_in_snake_case():
    assert RefreshOptions().enhanced_options() == {"type": "Full"}
    options = RefreshOptions(type="Full", commit_mode="Transactional", max_parallelism=4, retry_count=2,
                             timeout="02:00:00", apply_refresh_policy=True, effective_date="2024-01-31",
                             notify_option="MailOnFailure")
    assert options.enhanced_options() == {
        "type": "Full", "commit_mode": "Transactional", "max_parallelism": 4, "retry_count": 2,
        "timeout": "02:00:00", "apply_refresh_policy": True, "effective_date": "2024-01-31",
    }
    assert RefreshOptions(apply_refresh_policy=False).enhanced_options() == {"type": "Full",
                                                                            "apply_refresh_policy": False}


def test_schema_key_is_allowed_and_ignored():
    config = parse_config({"$schema": "./refresh-config.schema.json", **config_with()})
    assert list(config.datasets) == ["sales"]
    assert only_problem({"$schema": 1, **config_with()}) == ("$schema", "must be a string, got a number")


def test_datasets_are_sorted_by_key_and_read_only():
    data = config_with()
    data["datasets"]["a-first"] = {**copy.deepcopy(SALES), "dataset": "Other Model"}
    config = parse_config(data)
    assert list(config.datasets) == ["a-first", "sales"]
    with pytest.raises(TypeError):
        config.datasets["x"] = config.datasets["sales"]  # type: ignore[index]


def test_sample_config_at_repo_root_is_valid():
    config = load_config(ROOT / "refresh-config.json")
    assert config.source_file == str(ROOT / "refresh-config.json")
    assert set(config.datasets) == {"sales", "inventory"}
    assert config.datasets["sales"].sources == (Source("sales/fact_orders", ("Orders",)),
                                                Source("sales/dim_*"))
    inventory = config.datasets["inventory"]
    assert inventory.schedule is not None
    assert any("**" in s.table.split("/") for s in inventory.sources)


# -- key tables stay in step with the dataclasses and the docs ---------------------------------------


def test_key_tables_match_dataclass_fields_and_defaults():
    ds_fields = {f.name: f for f in dataclasses.fields(DatasetConfig)}
    assert [k.name for k in DATASET_KEYS] == [name for name in ds_fields if name != "key"]
    for key in DATASET_KEYS:
        f = ds_fields[key.name]
        if f.default is not dataclasses.MISSING:
            assert key.default == f.default, key.name
        elif f.default_factory is not dataclasses.MISSING:
            assert key.default == f.default_factory(), key.name
    refresh_fields = [f for f in dataclasses.fields(RefreshOptions)]
    assert [k.name for k in REFRESH_KEYS] == [f.name for f in refresh_fields]
    assert [k.default for k in REFRESH_KEYS] == [f.default for f in refresh_fields]
    assert [k.name for k in SOURCE_KEYS] == [f.name for f in dataclasses.fields(Source) if f.init]


def test_config_reference_documents_every_key():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for key in ("$schema", "datasets", *(k.name for k in DATASET_KEYS + SOURCE_KEYS + REFRESH_KEYS)):
        assert f"`{key}`" in text, key


# -- problems: shape and reporting ----------------------------------------------------------------


def test_all_problems_are_reported_at_once_with_exact_paths():
    data = {
        "datasets": {
            "sales": {
                "workspace": "",
                "dataset": "Sales Model",
                "sources": [{"table": "sales/fact_orders"}, {"table": "sales/../secrets"}],
                "debounce_seconds": -1,
                "max_delay_seconds": 900,
                "refresh": {"type": "Everything"},
            },
            "bad key!": {"workspace": "W", "dataset": "D", "sources": [{"table": "x", "model_tables": [""]}]},
        },
        "extra": True,
    }
    assert problems_of(data) == [
        ("extra", "unknown key (expected one of: $schema, datasets, adhoc_workspaces)"),
        ("datasets.sales.workspace", "must not be empty"),
        ("datasets.sales.sources[1].table", "glob may not contain '..'"),
        ("datasets.sales.debounce_seconds", "must be between 0 and 604740 seconds, got -1"),
        ("datasets.sales.refresh.type",
         "must be one of Full, ClearValues, Calculate, DataOnly, Automatic, Defragment; got 'Everything'"),
        ('datasets["bad key!"]',
         "dataset key must be 1-64 letters, digits, '_' or '-', starting with a letter or digit"),
        ('datasets["bad key!"].sources[0].model_tables[0]', "must not be empty"),
    ]


def test_error_message_has_one_line_per_problem_prefixed_by_the_file(tmp_path):
    path = tmp_path / "routing.json"
    path.write_text(json.dumps(config_with(debounce_seconds="60", timeout_minutes=0)), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).splitlines() == [
        f"{path}: datasets.sales.debounce_seconds: must be a whole number, got a string",
        f"{path}: datasets.sales.timeout_minutes: must be between 1 and 1440 minutes, got 0",
    ]
    assert info.value.source == str(path)
    assert isinstance(info.value, ValueError)


def test_parse_config_prefixes_with_the_given_source():
    with pytest.raises(ConfigError) as info:
        parse_config({"datasets": {}}, source="inline.json")
    assert str(info.value) == "inline.json: datasets: must configure at least one dataset"


# -- top level ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "problem"), [
    ([], ("(top level)", "must be an object, got an array")),
    ({}, ("datasets", "is required")),
    ({"datasets": []}, ("datasets", "must be an object of datasets by key, got an array")),
    ({"datasets": {}}, ("datasets", "must configure at least one dataset")),
    ({"datasets": {"sales": "x"}}, ("datasets.sales", "must be an object, got a string")),
    ({**config_with(), "dataset": {}}, ("dataset", "unknown key (did you mean 'datasets'?)")),
])
def test_top_level_problems(data, problem):
    assert only_problem(data) == problem


@pytest.mark.parametrize("key", ["sales", "S", "0", "a_b-c", "x" * 64, "Finance-2024_v2"])
def test_valid_dataset_keys(key):
    data = {"datasets": {key: copy.deepcopy(SALES)}}
    assert list(parse_config(data).datasets) == [key]


@pytest.mark.parametrize(("key", "path"), [
    ("", 'datasets[""]'), ("-sales", "datasets.-sales"), ("_x", "datasets._x"),
    ("x" * 65, f"datasets.{'x' * 65}"),
    ("sales.model", 'datasets["sales.model"]'), ("sales model", 'datasets["sales model"]'),
    ("sälj", 'datasets["s\\u00e4lj"]'), ("a/b", 'datasets["a/b"]'),
])
def test_invalid_dataset_keys(key, path):
    data = {"datasets": {key: copy.deepcopy(SALES)}}
    assert only_problem(data) == (
        path, "dataset key must be 1-64 letters, digits, '_' or '-', starting with a letter or digit")


def test_two_keys_for_the_same_model_are_rejected():
    data = config_with()
    data["datasets"]["sales2"] = {**copy.deepcopy(SALES), "workspace": "finance analytics"}
    assert only_problem(data) == (
        "datasets.sales2",
        "refreshes the same workspace and dataset as datasets.sales; use one key per semantic model")


# -- dataset keys -----------------------------------------------------------------------------------


def test_unknown_dataset_key_suggests_the_closest():
    assert only_problem(config_with(debounce=5)) == (
        "datasets.sales.debounce", "unknown key (did you mean 'debounce_seconds'?)")
    path, problem = only_problem(config_with(colour="red"))
    assert path == "datasets.sales.colour"
    assert problem.startswith("unknown key (expected one of: workspace, dataset, sources, debounce_seconds")


@pytest.mark.parametrize("key", ["workspace", "dataset", "sources"])
def test_required_keys(key):
    assert only_problem(config_with(**{key: ...})) == (f"datasets.sales.{key}", "is required")


@pytest.mark.parametrize("key", ["workspace", "dataset"])
@pytest.mark.parametrize(("value", "problem"), [
    ("", "must not be empty"),
    ("   ", "must not be empty"),
    (" Finance", "has leading or trailing whitespace"),
    ("Fin\tance", "contains a control character"),
    ("Fin\x7fance", "contains a control character"),
    ("x" * 257, "is 257 characters long; the limit is 256"),
    (42, "must be a string, got a number"),
    (None, "must not be null (leave the key out for the default)"),
    (["a"], "must be a string, got an array"),
])
def test_workspace_and_dataset_names(key, value, problem):
    assert only_problem(config_with(**{key: value})) == (f"datasets.sales.{key}", problem)


@pytest.mark.parametrize("value", ["x" * 256, "f0b3a1c2-1234-4cde-9abc-0123456789ab",
                                   "Ventes & Marge (FR) - 2024 \u00e9t\u00e9"])
def test_names_and_guids_accepted(value):
    assert parse_config(config_with(workspace=value)).datasets["sales"].workspace == value


@pytest.mark.parametrize(("changes", "problem"), [
    ({"debounce_seconds": -1}, ("debounce_seconds", "must be between 0 and 604740 seconds, got -1")),
    ({"debounce_seconds": 604741}, ("debounce_seconds", "must be between 0 and 604740 seconds, got 604741")),
    ({"max_delay_seconds": 604741},
     ("max_delay_seconds", "must be between 0 and 604740 seconds, got 604741")),
    ({"debounce_seconds": 1.5}, ("debounce_seconds", "must be a whole number, got a number")),
    ({"debounce_seconds": 60.0},
     ("debounce_seconds", "must be a whole number without a decimal point, got 60.0")),
    ({"debounce_seconds": True}, ("debounce_seconds", "must be a whole number, got a boolean")),
    ({"debounce_seconds": "60"}, ("debounce_seconds", "must be a whole number, got a string")),
    ({"debounce_seconds": 120, "max_delay_seconds": 119},
     ("max_delay_seconds", "must be at least debounce_seconds (120), got 119")),
    ({"debounce_seconds": ..., "max_delay_seconds": 59},
     ("max_delay_seconds", "must be at least debounce_seconds (60), got 59")),
    ({"timeout_minutes": 0}, ("timeout_minutes", "must be between 1 and 1440 minutes, got 0")),
    ({"timeout_minutes": 1441}, ("timeout_minutes", "must be between 1 and 1440 minutes, got 1441")),
    ({"daily_limit": 0}, ("daily_limit", "must be between 1 and 1000, got 0")),
    ({"daily_limit": 1001}, ("daily_limit", "must be between 1 and 1000, got 1001")),
    ({"dedicated_capacity": "yes"}, ("dedicated_capacity", "must be true or false, got a string")),
    ({"schedule_skip_if_unchanged": 1},
     ("schedule_skip_if_unchanged", "must be true or false, got a number")),
    ({"schedule_skip_if_unchanged": True}, ("schedule_skip_if_unchanged", "is true but no schedule is set")),
    ({"schedule": None}, ("schedule", "must not be null (leave the key out for the default)")),
    ({"timeout_minutes": None}, ("timeout_minutes", "must not be null (leave the key out for the default)")),
])
def test_numbers_booleans_and_cross_checks(changes, problem):
    path, message = problem
    assert only_problem(config_with(**changes)) == (f"datasets.sales.{path}", message)


def test_limits_at_their_bounds_are_accepted():
    ds = parse_config(config_with(debounce_seconds=604740, max_delay_seconds=604740, daily_limit=1000,
                                  timeout_minutes=1)).datasets["sales"]
    assert (ds.debounce_seconds, ds.max_delay_seconds, ds.daily_limit, ds.timeout_minutes) == (604740, 604740,
                                                                                               1000, 1)
    ds = parse_config(config_with(debounce_seconds=0, max_delay_seconds=0)).datasets["sales"]
    assert (ds.debounce_seconds, ds.max_delay_seconds) == (0, 0)


# -- schedule ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "problem"), [
    ("0 */5 * * *", "NCRONTAB needs 6 fields: {second} {minute} {hour} {day} {month} {day-of-week}; got 5 "
                    "(a 5-field cron expression lacks {second}: prepend '0 ')"),
    ("0 0 25 * * *", "hour field item '25': 25 is out of range 0-23"),
    ("0 0 0 30 2 *", "schedule never fires: day 30 does not occur in month 2"),
    (300, "must be a string, got a number"),
])
def test_invalid_schedules(schedule, problem):
    assert only_problem(config_with(schedule=schedule)) == ("datasets.sales.schedule", problem)


def test_skip_if_unchanged_false_is_fine_without_schedule():
    assert parse_config(config_with(schedule_skip_if_unchanged=False)).datasets["sales"].schedule is None


# -- refresh options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "path", "problem"), [
    ("Full", "refresh", "must be an object, got a string"),
    ({"type": "full"}, "refresh.type",
     "must be one of Full, ClearValues, Calculate, DataOnly, Automatic, Defragment; got 'full' "
     "(did you mean 'Full'? values are case-sensitive)"),
    ({"commit_mode": "Partial"}, "refresh.commit_mode",
     "must be one of Transactional, PartialBatch; got 'Partial'"),
    ({"max_parallelism": 0}, "refresh.max_parallelism", "must be between 1 and 200, got 0"),
    ({"max_parallelism": 201}, "refresh.max_parallelism", "must be between 1 and 200, got 201"),
    ({"retry_count": -1}, "refresh.retry_count", "must be between 0 and 10, got -1"),
    ({"retry_count": 11}, "refresh.retry_count", "must be between 0 and 10, got 11"),
    ({"timeout": "24:00:00"}, "refresh.timeout",
     "must be a duration hh:mm:ss below 24:00:00, got '24:00:00'"),
    ({"timeout": "1:60:00"}, "refresh.timeout", "must be a duration hh:mm:ss below 24:00:00, got '1:60:00'"),
    ({"timeout": "PT2H"}, "refresh.timeout", "must be a duration hh:mm:ss below 24:00:00, got 'PT2H'"),
    ({"timeout": 3600}, "refresh.timeout", "must be a string, got a number"),
    ({"apply_refresh_policy": "true"}, "refresh.apply_refresh_policy", "must be true or false, got a string"),
    ({"effective_date": "2023-02-29"}, "refresh.effective_date",
     "must be a date YYYY-MM-DD, got '2023-02-29'"),
    ({"effective_date": "20240101"}, "refresh.effective_date", "must be a date YYYY-MM-DD, got '20240101'"),
    ({"effective_date": "12/31/2023"}, "refresh.effective_date",
     "must be a date YYYY-MM-DD, got '12/31/2023'"),
    ({"notify_option": "Always"}, "refresh.notify_option",
     "must be one of NoNotification, MailOnFailure, MailOnCompletion; got 'Always'"),
    ({"commit_mode": "PartialBatch", "apply_refresh_policy": True}, "refresh",
     "commit_mode 'PartialBatch' cannot be combined with apply_refresh_policy true "
     "(Power BI does not support it)"),
    ({"objects": []}, "refresh.objects", "unknown key (expected one of: type, commit_mode, max_parallelism, "
     "retry_count, timeout, apply_refresh_policy, effective_date, notify_option)"),
    ({"commitMode": "Transactional"}, "refresh.commitMode", "unknown key (did you mean 'commit_mode'?)"),
    ({"commit_mode": None}, "refresh.commit_mode", "must not be null (leave the key out for the default)"),
])
def test_invalid_refresh_options(options, path, problem):
    assert only_problem(config_with(refresh=options)) == (f"datasets.sales.{path}", problem)


@pytest.mark.parametrize("timeout", ["0:00:01", "05:00:00", "9:30:00", "19:59:59", "23:59:59"])
def test_valid_timeouts(timeout):
    config = parse_config(config_with(refresh={"timeout": timeout}))
    assert config.datasets["sales"].refresh.timeout == timeout


@pytest.mark.parametrize("kind", ["Full", "ClearValues", "Calculate", "DataOnly", "Automatic", "Defragment"])
def test_every_refresh_type(kind):
    assert parse_config(config_with(refresh={"type": kind})).datasets["sales"].refresh.type == kind


def test_partial_batch_without_refresh_policy_is_fine():
    ds = parse_config(config_with(refresh={"commit_mode": "PartialBatch", "apply_refresh_policy": False}))
    assert ds.datasets["sales"].refresh.commit_mode == "PartialBatch"


# -- sources --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sources", "path", "problem"), [
    ([], "sources", "must list at least one source"),
    ({"table": "x"}, "sources", "must be a non-empty array of sources, got an object"),
    (["sales/fact_orders"], "sources[0]", "must be an object, got a string"),
    ([{}], "sources[0].table", "is required"),
    ([{"table": "x", "tables": ["A"]}], "sources[0].tables", "unknown key (did you mean 'table'?)"),
    ([{"table": "x", "model_tables": []}], "sources[0].model_tables",
     "must not be empty (leave the key out to refresh the whole model)"),
    ([{"table": "x", "model_tables": "Orders"}], "sources[0].model_tables",
     "must be a non-empty array of model table names, got a string"),
    ([{"table": "x", "model_tables": None}], "sources[0].model_tables",
     "must not be null (leave the key out for the default)"),
    ([{"table": "x", "model_tables": ["Orders", 3]}], "sources[0].model_tables[1]",
     "must be a string, got a number"),
    ([{"table": "x", "model_tables": ["Orders", " "]}], "sources[0].model_tables[1]", "must not be empty"),
    ([{"table": "x", "model_tables": ["Or\nders"]}], "sources[0].model_tables[0]",
     "contains a control character"),
    ([{"table": "x", "model_tables": ["Orders", "Dates", "orders"]}], "sources[0].model_tables[2]",
     "'orders' repeats 'Orders' (model table names are case-insensitive)"),
    ([{"table": "a/b"}, {"table": "a/b", "model_tables": ["X"]}], "sources[1].table",
     "'a/b' is already listed in datasets.sales.sources[0]; merge the two sources"),
])
def test_invalid_sources(sources, path, problem):
    assert only_problem(config_with(sources=sources)) == (f"datasets.sales.{path}", problem)


@pytest.mark.parametrize(("table", "problems"), [
    ("", ["must not be empty"]),
    ("  ", ["must not be empty"]),
    (7, ["must be a string, got a number"]),
    ("/sales/orders", ["must not start or end with '/'"]),
    ("sales/orders/", ["must not start or end with '/'"]),
    ("sales//orders", ["contains an empty segment ('//')"]),
    ("sales/../hr/salaries", ["glob may not contain '..'"]),
    ("..", ["glob may not contain '..'"]),
    ("sales/./orders", ["glob may not contain '.'"]),
    ("sales\\orders", ["contains a backslash; separate segments with '/'"]),
    ("sales/orders/_delta_log", ["must name the table, not its '_delta_log' folder"]),
    ("_delta_log", ["must name the table, not its '_delta_log' folder"]),
    ("sales/order?", ["'?' is not supported; use '*' (any characters within a segment)"]),
    ("sales/**x", ["'**' must be a whole segment (got '**x')"]),
    ("sales/***", ["'**' must be a whole segment (got '***')"]),
    ("**/**/orders", ["'**/**' is redundant; use a single '**'"]),
    ("sales/ord\x00ers", ["contains a control character"]),
    ("a/" + "b" * 1023, ["is 1025 characters long; the limit is 1024"]),
    ("/../x?/", ["must not start or end with '/'", "glob may not contain '..'",
                 "'?' is not supported; use '*' (any characters within a segment)"]),
])
def test_invalid_tables(table, problems):
    found = problems_of(config_with(sources=[{"table": "ok"}, {"table": table}]))
    assert all(path == "datasets.sales.sources[1].table" for path, _ in found)
    assert sorted(p for _, p in found) == sorted(problems)


def test_source_checks_its_table_when_built_directly():
    with pytest.raises(ValueError, match=r"source table 'a/\.\./b': glob may not contain '\.\.'"):
        Source("a/../b")
    with pytest.raises(ValueError, match="model_tables must be None"):
        Source("a/b", ())


# -- globs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("sales/fact_orders", "sales/fact_orders", True),
    ("sales/fact_orders", "sales/fact_orders_v2", False),
    ("sales/fact_orders", "Sales/fact_orders", False),  # paths are case-sensitive
    ("sales/dim_*", "sales/dim_customer", True),
    ("sales/dim_*", "sales/dim_", True),
    ("sales/dim_*", "sales/dim_customer/history", False),  # '*' does not cross '/'
    ("sales/dim_*", "sales/fact_orders", False),
    ("sales/*", "sales/x", True),
    ("sales/*", "sales", False),
    ("sales/*", "sales/a/b", False),
    ("*/orders", "eu/orders", True),
    ("*/orders", "eu/fr/orders", False),
    ("*_raw/*", "a_raw/t", True),
    ("sales/**", "sales/a", True),
    ("sales/**", "sales/a/b", True),
    ("sales/**", "sales/a/b/c/d", True),
    ("sales/**", "sales", True),  # '**' matches zero segments
    ("sales/**", "salesx/a", False),
    ("sales/**", "hr/sales/a", False),
    ("**/orders", "orders", True),
    ("**/orders", "eu/orders", True),
    ("**/orders", "eu/fr/orders", True),
    ("**/orders", "eu/fr/orders_x", False),
    ("sales/**/orders", "sales/orders", True),
    ("sales/**/orders", "sales/eu/orders", True),
    ("sales/**/orders", "sales/eu/fr/orders", True),
    ("sales/**/orders", "salesorders", False),
    ("sales/**/orders", "sales/eu/orders/x", False),
    ("sales/**/dim_*", "sales/eu/dim_date", True),
    ("sales/**/dim_*", "sales/eu/fact", False),
    ("**", "anything/at/all", True),
    ("**", "t", True),
    ("a/**/b/**", "a/b", True),
    ("a/**/b/**", "a/x/b/y/z", True),
    ("a/**/b/**", "a/x/c", False),
    ("sales/f.ct+(x)", "sales/f.ct+(x)", True),  # regex characters are literal
    ("sales/f.ct", "sales/fact", False),
    ("sales/[ab]", "sales/a", False),  # no character classes
])
def test_glob_matching(pattern, path, expected):
    assert Source(pattern).matches(path) is expected


@pytest.mark.parametrize(("pattern", "is_glob", "prefix"), [
    ("sales/dim_*", True, "sales/"),
    ("sales/**", True, "sales/"),
    ("sales/eu/*/orders", True, "sales/eu/"),
    ("**/orders", True, ""),
    ("*", True, ""),
    ("sales/fact_orders", False, "sales/fact_orders/"),
])
def test_is_glob_and_static_prefix(pattern, is_glob, prefix):
    source = Source(pattern)
    assert source.is_glob is is_glob
    assert source.static_prefix() == prefix


# -- routing -------------------------------------------------------------------------------------------


def two_datasets() -> RoutingConfig:
    return parse_config({"datasets": {
        "sales": {"workspace": "Finance", "dataset": "Sales", "sources": [
            {"table": "sales/fact_orders", "model_tables": ["Orders"]},
            {"table": "sales/fact_*", "model_tables": ["Facts", "Orders"]},
            {"table": "sales/dim_*"},
            {"table": "shared/dim_date", "model_tables": ["Date"]},
        ]},
        "finance": {"workspace": "Finance", "dataset": "Ledger", "sources": [
            {"table": "shared/dim_date", "model_tables": ["Calendar"]},
            {"table": "finance/**", "model_tables": ["GL"]},
        ]},
    }})


def test_route_unions_model_tables_of_matching_sources():
    ds = two_datasets().datasets["sales"]
    assert ds.route("sales/fact_orders") == (True, frozenset({"Orders", "Facts"}))
    assert ds.route("sales/fact_returns") == (True, frozenset({"Facts", "Orders"}))
    assert ds.route("shared/dim_date") == (True, frozenset({"Date"}))
    assert ds.route("hr/people") == (False, frozenset())


def test_route_whole_model_wins_when_any_matching_source_has_no_model_tables():
    ds = parse_config(config_with(sources=[
        {"table": "sales/dim_customer", "model_tables": ["Customer"]}, {"table": "sales/dim_*"},
    ])).datasets["sales"]
    assert ds.route("sales/dim_customer") == (True, None)
    assert ds.route("sales/dim_product") == (True, None)


def test_routes_for_one_table_feeding_several_datasets_sorted_by_key():
    config = two_datasets()
    assert config.routes_for("shared/dim_date") == [
        ("finance", frozenset({"Calendar"})), ("sales", frozenset({"Date"})),
    ]
    assert config.routes_for("sales/dim_customer") == [("sales", None)]
    assert config.routes_for("sales/fact_orders") == [("sales", frozenset({"Orders", "Facts"}))]
    assert config.routes_for("finance/gl/2024") == [("finance", frozenset({"GL"}))]
    assert config.routes_for("finance") == [("finance", frozenset({"GL"}))]
    assert config.routes_for("hr/people") == []


def test_routes_for_agrees_with_route_and_is_cached():
    config = two_datasets()
    for path in ("shared/dim_date", "sales/fact_orders", "sales/dim_x", "finance/a/b", "nope"):
        expected = [(key, tables) for key, ds in config.datasets.items()
                    for listens, tables in [ds.route(path)] if listens]
        first = config.routes_for(path)
        assert first == expected
        first.append(("mutated", None))  # callers get a copy
        assert config.routes_for(path) == expected


def test_routes_for_is_fast_with_many_datasets():
    datasets = {
        f"ds{i:03}": {"workspace": "W", "dataset": f"D{i}", "sources": [
            {"table": f"area{i % 20}/fact_{i}", "model_tables": ["F"]},
            {"table": f"area{i % 20}/dim_*"},
            {"table": f"area{i % 20}/**/history_{i}"},
        ]}
        for i in range(200)
    }
    config = parse_config({"datasets": datasets})
    paths = [f"area{i % 20}/dim_{i}" for i in range(500)]
    paths += [f"area{i % 20}/x/y/history_{i}" for i in range(200)]
    routes = {path: config.routes_for(path) for path in paths}  # speed: benchmarks/bench_routing.py
    assert routes["area3/dim_3"] == [(f"ds{i:03d}", None) for i in range(3, 200, 20)]
    assert len(config.routes_for("area3/dim_x")) == 10
    assert config.routes_for("area3/a/history_3") == [("ds003", None)]


def test_explicit_tables_and_glob_sources():
    config = two_datasets()
    assert config.explicit_tables() == ["sales/fact_orders", "shared/dim_date"]
    assert config.glob_sources() == ["finance/**", "sales/dim_*", "sales/fact_*"]


def test_to_dict_round_trips_with_defaults_filled_in():
    config = parse_config(config_with(schedule="0 0 6 * * *", refresh={"commit_mode": "Transactional"},
                                      daily_limit=20))
    data = config.to_dict()
    assert data["datasets"]["sales"]["refresh"] == {"type": "Full", "commit_mode": "Transactional",
                                                     "notify_option": "NoNotification"}
    assert data["datasets"]["sales"]["dedicated_capacity"] is None
    assert data["datasets"]["sales"]["timeout_minutes"] == 120
    assert parse_config(json.loads(json.dumps(data))) == config
    minimal = parse_config({"datasets": {"x": {"workspace": "W", "dataset": "D",
                                               "sources": [{"table": "t"}]}}})
    assert "schedule" not in minimal.to_dict()["datasets"]["x"]
    assert parse_config(minimal.to_dict()) == minimal


def test_routing_config_checks_keys_when_built_directly():
    ds = parse_config(config_with()).datasets["sales"]
    with pytest.raises(ValueError, match="dataset under key 'other' says its key is 'sales'"):
        RoutingConfig(datasets={"other": ds})


# -- loading files -------------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: routing config file not found (check the REFRESH_CONFIG setting)"


def test_bad_json_reports_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "datasets": {\n    "sales": {,}\n  }\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: invalid JSON at line 3, column 15: "
                               "Expecting property name enclosed in double quotes")


def test_not_utf8_is_reported(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"datasets": {"caf\xe9": 1}}')
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(invalid continuation byte at byte 18\)"):
        load_config(path)


def test_directory_is_reported(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot be read: ")


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(config_with()).encode())
    assert list(load_config(path).datasets) == ["sales"]


def test_duplicate_json_keys_are_reported(tmp_path):
    path = tmp_path / "dupes.json"
    path.write_text('{"datasets": {"sales": {"workspace": "A", "workspace": "B", "dataset": "D", '
                    '"sources": [{"table": "t"}]}, "sales": {}}}', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [  # the last "sales" ({}) is the one validated
        ("datasets.sales", "is given more than once (only the last would count)"),
        ("datasets.sales.workspace", "is required"),
        ("datasets.sales.dataset", "is required"),
        ("datasets.sales.sources", "is required"),
    ]


def test_duplicate_keys_inside_a_dataset_are_reported(tmp_path):
    path = tmp_path / "dupes.json"
    path.write_text('{"datasets": {"sales": {"workspace": "A", "workspace": "B", "dataset": "D", '
                    '"sources": [{"table": "t"}]}}}', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        ("datasets.sales.workspace", "is given more than once (only the last would count)")]


# -- describe and check-config -------------------------------------------------------------------------


def test_describe_lists_datasets_sources_timing_schedule_and_limits():
    text = describe(load_config(ROOT / "refresh-config.json"))
    assert "2 datasets" in text
    assert "sales: workspace 'Finance Analytics', dataset 'Sales Model'" in text
    assert "  sales/fact_orders -> Orders" in text
    assert "  sales/dim_* (glob) -> whole model" in text
    assert "  debounce 1 min, max delay 15 min" in text
    assert "  schedule none (commits only)" in text
    assert "  schedule 0 30 6 * * MON-FRI (UTC), skipped when nothing changed" in text
    assert "daily limit 8 refreshes/day on shared capacity, unlimited on dedicated" in text
    assert "  capacity dedicated; daily limit unlimited" in text
    assert "refresh timeout 180 min" in text


def test_describe_shared_capacity_and_explicit_limit():
    text = describe(parse_config(config_with(dedicated_capacity=False, debounce_seconds=0,
                                             max_delay_seconds=3661)))
    assert "capacity shared; daily limit 8 refreshes/day" in text
    assert "debounce 0 s, max delay 1 h 1 min 1 s" in text
    assert "daily limit 5 refreshes/day" in describe(parse_config(config_with(daily_limit=5)))
    assert describe(parse_config(config_with())).startswith("Routing config (in memory): 1 dataset\n")


def write(tmp_path: Path, data: object, name: str = "routing.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_check_config_prints_the_description(tmp_path, capsys):
    path = write(tmp_path, config_with())
    assert check_config_main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == describe(load_config(path)) + "\n"
    assert err == ""


def test_check_config_json(tmp_path, capsys):
    path = write(tmp_path, config_with(schedule="0 0 * * * *"))
    assert check_config_main([str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["datasets"]["sales"]["schedule"] == "0 0 * * * *"
    assert out["datasets"]["sales"]["debounce_seconds"] == 60
    assert parse_config(out).datasets == load_config(path).datasets


def test_check_config_problems_go_to_stderr_with_exit_1(tmp_path, capsys):
    path = write(tmp_path, config_with(debounce_seconds=-5, sources=[{"table": "a/../b"}]))
    assert check_config_main([str(path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"{path}: datasets.sales.sources[0].table: glob may not contain '..'",
        f"{path}: datasets.sales.debounce_seconds: must be between 0 and 604740 seconds, got -5",
        "2 problems; the config is not valid",
    ]


def test_check_config_missing_file(tmp_path, capsys):
    assert check_config_main([str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing.json'}: routing config file not found" in err
    assert "1 problem; the config is not valid" in err


def test_check_config_defaults_to_the_refresh_config_setting(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, config_with(), "from-setting.json")
    monkeypatch.setenv("REFRESH_CONFIG", str(path))
    assert check_config_main([]) == 0
    assert f"Routing config {path}: 1 dataset" in capsys.readouterr().out


def test_check_config_reports_a_bad_setting(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("REFRESH_CONFIG", str(tmp_path / "x.json"))
    monkeypatch.setenv("GOLD_CONTAINER", "Not_Valid")
    assert check_config_main([]) == 1
    assert "setting GOLD_CONTAINER" in capsys.readouterr().err


def test_check_config_usage(capsys):
    with pytest.raises(SystemExit) as info:
        check_config_main(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: python -m refresh check-config [-h] [--json] [PATH]")
    with pytest.raises(SystemExit) as info:
        check_config_main(["a.json", "b.json"])
    assert info.value.code == 2


# -- text must be valid Unicode (issue 9 item 11) ----------------------------------------------------


def test_lone_surrogates_anywhere_in_the_file_are_config_errors_naming_the_key(tmp_path):
    """JSON's ``\\ud800`` escape decodes to a lone surrogate, which can never be stored or shown."""
    text = json.dumps({"datasets": {"sales": {
        "workspace": "Finance \ud800", "dataset": "Sales Model",
        "sources": [{"table": "sales/fact_\udfff", "model_tables": ["Orders\ud83d"]}],
        "refresh": {"timeout": "\ud800"}, "schedule": "\udc00"}}})
    assert "\\ud800" in text  # escaped in the file, as an editor would write it
    path = tmp_path / "routing.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = dict(info.value.problems)
    for key, code in (("datasets.sales.workspace", "D800"), ("datasets.sales.sources[0].table", "DFFF"),
                      ("datasets.sales.sources[0].model_tables[0]", "D83D"),
                      ("datasets.sales.refresh.timeout", "D800"), ("datasets.sales.schedule", "DC00")):
        assert found[key].startswith(f"is not valid Unicode: a lone surrogate U+{code}"), (key, found)
    str(info.value).encode("utf-8")  # the error itself can always be printed


def test_adhoc_workspaces_key():
    assert not parse_config(config_with()).adhoc.enabled
    everything = parse_config({**config_with(), "adhoc_workspaces": "*"})
    assert everything.adhoc.allows("Anything") and everything.to_dict()["adhoc_workspaces"] == "*"
    listed = parse_config({**config_with(), "adhoc_workspaces": ["Marketing", "0f1e2d3c-0000-4000-8000-00000000abcd"]})
    assert listed.adhoc.allows("marketing") and listed.adhoc.allows("0F1E2D3C-0000-4000-8000-00000000ABCD")
    assert not listed.adhoc.allows("Finance")
    assert parse_config(listed.to_dict()).adhoc == listed.adhoc
    assert "Ad-hoc refreshes of unconfigured datasets allowed in: 0f1e2d3c" in describe(listed)
    for value, path, problem in (
            ([], "adhoc_workspaces", "non-empty array"), ("Marketing", "adhoc_workspaces", "non-empty array"),
            (["*", "x"], "adhoc_workspaces[0]", "alone"), (["A", "a"], "adhoc_workspaces[1]", "listed twice"),
            ([" A"], "adhoc_workspaces[0]", "whitespace"), (["\ud800"], "adhoc_workspaces[0]", "not valid Unicode")):
        [(where, text)] = problems_of({**config_with(), "adhoc_workspaces": value})
        assert where == path and problem in text, (value, where, text)


def test_app_settings_that_are_not_valid_unicode_are_refused_naming_the_setting():
    """os.environ turns bytes that are not UTF-8 into lone surrogates (surrogateescape)."""
    from refresh.core.settings import Settings, SettingsError

    for name in ("GOLD_CONTAINER", "POWERBI_SCOPE", "REFRESH_CONFIG", "ADHOC_REFRESH_WORKSPACES"):
        with pytest.raises(SettingsError, match=f"setting {name}: is not valid Unicode"):
            Settings.from_env({name: b"caf\xe9".decode("utf-8", "surrogateescape")})
