"""SwaggerValidator: the operations this app uses, the negative cases and the patched gaps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from refresh.dev.swagger import SwaggerMismatch, SwaggerValidator

DATA = Path(__file__).resolve().parent.parent / "data"
G = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
D = "cfafbeb1-8037-4d0c-896e-a46fb27ff229"
R = "87f31ef7-1e3a-4006-9b0b-191693e79e9e"
REFRESHES = f"groups/{G}/datasets/{D}/refreshes"


def test_the_spec_is_the_unchanged_upstream_copy():
    digest = hashlib.sha256((DATA / "powerbi-swagger.json").read_bytes()).hexdigest()
    assert digest == "5bb57f9c01e09cb24a1a60d396b297061abb0f333c289f607e6f8c92019e7182"
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    assert "4ad33dd6bd49691bfe16725407ea478ca98a8acb" in readme and "MIT" in readme


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "operation"),
    [
        ("GET", "groups", {"$filter": "name eq 'O''Brien'", "$top": "5", "$skip": 0}, None, "Groups_GetGroups"),
        ("GET", f"groups/{G}", None, None, "Groups_GetGroup"),
        ("GET", f"groups/{G}/datasets", None, None, "Datasets_GetDatasetsInGroup"),
        ("POST", REFRESHES, None, {"notifyOption": "NoNotification"}, "Datasets_RefreshDatasetInGroup"),
        ("POST", REFRESHES, None, None, "Datasets_RefreshDatasetInGroup"),
        ("GET", REFRESHES, {"$top": 1}, None, "Datasets_GetRefreshHistoryInGroup"),
        ("GET", f"{REFRESHES}/{R}", None, None, "Datasets_GetRefreshExecutionDetailsInGroup"),
        ("DELETE", f"{REFRESHES}/{R}", None, None, "Datasets_CancelRefreshInGroup"),
        ("GET", f"groups/{G}/datasets/{D}/refreshSchedule", None, None, "Datasets_GetRefreshScheduleInGroup"),
    ],
)
def test_operations_this_app_uses(validator, method, path, query, body, operation):
    assert validator.validate(method, path, query, body) == operation


def test_paths_may_be_relative_absolute_or_full_urls(validator):
    for url in (
        REFRESHES,
        f"/v1.0/myorg/{REFRESHES}",
        f"https://api.powerbi.com/v1.0/myorg/{REFRESHES}?$top=3",
        f"http://127.0.0.1:8080/v1.0/myorg/{REFRESHES}?%24top=3",
    ):
        assert validator.validate("GET", url) == "Datasets_GetRefreshHistoryInGroup"
    with pytest.raises(SwaggerMismatch, match=r"\$top"):
        validator.validate("GET", f"https://api.powerbi.com/v1.0/myorg/{REFRESHES}?$top=0")
    assert validator.operation("post", REFRESHES) == "Datasets_RefreshDatasetInGroup"


@pytest.mark.parametrize(
    ("method", "path", "query", "body", "message"),
    [
        ("GET", "groups/nope/extra/deep", None, None, "unknown path"),
        ("GET", "/v2.0/myorg/groups", None, None, "not under /v1.0/myorg"),
        ("PUT", REFRESHES, None, None, "PUT is not defined"),
        ("GET", REFRESHES, {"$top": "0"}, None, r"must be >= 1"),
        ("GET", REFRESHES, {"$top": "ten"}, None, "must be an integer"),
        ("GET", REFRESHES, {"$top": True}, None, "must be an integer"),
        ("GET", REFRESHES, {"$filter": "status eq 'Failed'"}, None, "unknown query parameter '\\$filter'"),
        ("GET", f"groups/{G}/datasets", {"$filter": "name eq 'x'"}, None, "unknown query parameter"),
        ("GET", "groups", {"$top": "3000000000"}, None, "int32"),
        ("GET", "groups/not-a-guid/datasets", None, None, "must be a UUID"),
        ("GET", f"{REFRESHES}/latest", None, None, "refreshId.*must be a UUID"),
        ("GET", REFRESHES, None, {"notifyOption": "NoNotification"}, "takes no request body"),
    ],
)
def test_requests_that_do_not_match(validator, method, path, query, body, message):
    with pytest.raises(SwaggerMismatch, match=message):
        validator.validate(method, path, query, body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"type": "Fast"}, "'Fast' is not one of"),
        ({"type": "full"}, "is not one of"),  # the enum is PascalCase; the client normalises
        ({"commitMode": "Transactional", "notifyOption": "Sometimes"}, "is not one of"),
        ({"notifyOption": "Always"}, "is not one of"),
        ({"retryCount": "3"}, "is not of type 'integer'"),
        ({"objects": {"table": "Sales"}}, "is not of type 'array'"),
        ({"objects": [{"table": 5}]}, "is not of type 'string'"),
        ({"applyRefreshPolicy": "false"}, "is not of type 'boolean'"),
        ({"notifyOptions": "NoNotification"}, "Additional properties|is not valid"),
        ({"type": "Full", "objects": [{"table": "Sales", "column": "x"}]}, "Additional properties"),
        ([{"type": "Full"}], "is not of type 'object'"),
    ],
)
def test_refresh_bodies_that_do_not_match(validator, body, message):
    with pytest.raises(SwaggerMismatch, match=message):
        validator.validate("POST", REFRESHES, None, body)


def test_known_gap_timeout_is_accepted_with_the_documented_pattern(validator):
    for timeout in ("05:00:00", "1:30:00", "23:59:59"):
        validator.validate("POST", REFRESHES, None, {"type": "Full", "timeout": timeout})
    for timeout in ("24:00:00", "5h", "00:60:00", 300):
        with pytest.raises(SwaggerMismatch, match="timeout"):
            validator.validate("POST", REFRESHES, None, {"type": "Full", "timeout": timeout})


def test_known_gap_notify_option_is_for_standard_refreshes_only(validator):
    validator.validate("POST", REFRESHES, None, {"notifyOption": "MailOnCompletion"})
    validator.validate(
        "POST",
        REFRESHES,
        None,
        {
            "type": "Full",
            "commitMode": "PartialBatch",
            "maxParallelism": 2,
            "retryCount": 1,
            "objects": [{"table": "Sales", "partition": "2025"}],
            "applyRefreshPolicy": False,
            "effectiveDate": "2025-01-31T00:00:00",
            "timeout": "02:00:00",
        },
    )
    for field, value in [("retryCount", 0), ("objects", []), ("applyRefreshPolicy", True)]:
        validator.validate("POST", REFRESHES, None, {field: value})  # any enhanced field alone is enough
    with pytest.raises(SwaggerMismatch, match="needs notifyOption"):
        validator.validate("POST", REFRESHES, None, {})  # neither standard nor enhanced
    with pytest.raises(SwaggerMismatch, match="must be excluded from an enhanced refresh body"):
        validator.validate("POST", REFRESHES, None, {"notifyOption": "NoNotification", "retryCount": 3})


def test_non_strict_mode_allows_undeclared_body_fields():
    lenient = SwaggerValidator(DATA / "powerbi-swagger.json", strict_bodies=False)
    lenient.validate("POST", REFRESHES, None, {"notifyOption": "NoNotification", "extra": 1})


def test_the_spec_file_must_be_swagger_2(tmp_path):
    bogus = tmp_path / "openapi.json"
    bogus.write_text(json.dumps({"openapi": "3.0.0", "paths": {}}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"Swagger 2\.0"):
        SwaggerValidator(bogus)


def test_responses_are_checked_against_their_schemas(validator):
    assert (
        validator.validate_response(
            "GET", f"{REFRESHES}/{R}", 202, {"status": "Unknown", "extendedStatus": "InProgress"}
        )
        == "Datasets_GetRefreshExecutionDetailsInGroup"
    )
    validator.validate_response("POST", REFRESHES, 202, None)
    validator.validate_response(
        "GET", "groups", 200, {"value": [{"id": G, "name": "x", "isOnDedicatedCapacity": True}]}
    )
    with pytest.raises(SwaggerMismatch, match="status 201 is not declared"):
        validator.validate_response("POST", REFRESHES, 201, None)
    with pytest.raises(SwaggerMismatch, match="is not one of"):
        validator.validate_response("GET", f"{REFRESHES}/{R}", 200, {"extendedStatus": "Exploded"})
    with pytest.raises(SwaggerMismatch, match="'id' is a required property"):
        validator.validate_response("GET", "groups", 200, {"value": [{"name": "no id"}]})
    with pytest.raises(SwaggerMismatch, match="none was sent"):
        validator.validate_response("GET", REFRESHES, 200, None)
