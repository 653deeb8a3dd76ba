"""``python -m refresh explain`` and ``check-config``, run as the README shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

ROOT = Path(__file__).resolve().parent.parent

CONFIG = {
    "datasets": {
        "sales": {"workspace": "Finance", "dataset": "Sales Model",
                  "sources": [{"table": "sales/fact_orders", "model_tables": ["Orders"]}]},
        "everything": {"workspace": "Finance", "dataset": "All", "sources": [{"table": "sales/**"}]},
    }
}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "refresh", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "gold" / "sales" / "fact_orders"
    write_deltalake(str(path), pa.table({"id": [1, 2], "region": ["eu", None]}), partition_by=["region"])
    write_deltalake(str(path), pa.table({"id": [3], "region": ["us"]}), partition_by=["region"], mode="append")
    write_deltalake(str(path), pa.table({"id": [4], "region": ["us"]}), partition_by=["region"], mode="append")
    DeltaTable(str(path)).optimize.compact()
    DeltaTable(str(path)).delete("id = 3")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    return path, config


def test_explain_json_has_exactly_the_documented_keys(table):
    path, config = table
    out = run("explain", str(path), "--json", env={"REFRESH_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["version"] for r in rows] == [0, 1, 2, 3, 4]
    for row in rows:
        assert set(row) == {"version", "operation", "timestamp", "data_change", "partitions", "datasets"}
        assert isinstance(row["timestamp"], int)
    by_version = {r["version"]: r for r in rows}
    assert by_version[1]["partitions"] == [{"region": "us"}]
    assert by_version[1]["datasets"] == ["everything", "sales"]
    assert by_version[3]["operation"] == "OPTIMIZE" and by_version[3]["data_change"] is False
    assert by_version[3]["datasets"] == [] and by_version[3]["partitions"] == []
    assert by_version[4]["operation"] == "DELETE" and by_version[4]["data_change"] is True
    assert by_version[4]["partitions"] == [{"region": "us"}]
    assert {"region": None} in by_version[0]["partitions"]


def test_explain_text_and_from_version(table):
    path, config = table
    out = run("explain", str(path), "--from-version", "3", env={"REFRESH_CONFIG": str(config)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "OPTIMIZE" in lines[0] and "nothing (no data change)" in lines[0]
    assert "DELETE" in lines[1] and "sales [Orders]" in lines[1] and "everything [whole model]" in lines[1]


def test_explain_names_the_malformed_commit(table):
    path, config = table
    (path / "_delta_log" / "00000000000000000005.json").write_bytes(b'{"commitInfo": {}}\n[1, 2]\n')
    out = run("explain", str(path), "--json", env={"REFRESH_CONFIG": str(config)})
    assert out.returncode == 1
    assert "version 5" in out.stderr and "line 2" in out.stderr


def test_explain_reads_tables_through_lake_storage(azurite, unique, tmp_path):
    from azure.storage.blob import BlobServiceClient

    container = f"gold{unique}"
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    uri = f"az://{container}/sales/fact_orders"
    write_deltalake(uri, pa.table({"id": [1]}), storage_options=azurite.deltalake_options())
    write_deltalake(uri, pa.table({"id": [2]}), storage_options=azurite.deltalake_options(), mode="append")
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    out = run("explain", "sales/fact_orders", "--json",
              env={"REFRESH_CONFIG": str(config), "LAKE_STORAGE": azurite.connection_string,
                   "GOLD_CONTAINER": container})
    assert out.returncode == 0, out.stderr
    assert [(r["version"], r["datasets"]) for r in json.loads(out.stdout)] == [
        (0, ["everything", "sales"]), (1, ["everything", "sales"])]


def test_check_config_on_the_shipped_config():
    out = run("check-config")
    assert out.returncode == 0, out.stderr
    assert "sales" in out.stdout


def test_check_config_reports_problems(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"datasets": {"sales": {"workspace": "W", "dataset": "D",
                                                       "sources": [{"table": "a/../b"}]}}}))
    out = run("check-config", str(bad))
    assert out.returncode == 1
    assert "datasets.sales.sources[0].table" in out.stderr and ".." in out.stderr
